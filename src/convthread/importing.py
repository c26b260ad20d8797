"""Reading history files for :meth:`Conversations.import_history`.

Each reader yields what the import takes: channel results (:class:`~convthread.Inbound`
and others) from a channel adapter, :class:`~convthread.HistoryReply` for company replies,
and :class:`~convthread.ImportFailure` for an input it could not read (with ``where``,
the line, row or file), so one bad record never stops an import. Readers parse with the
channel adapters of :mod:`convthread.channels`; they never write.

* :func:`read_jsonl`: one raw provider payload per line, for the channel's adapter (a
  WhatsApp webhook envelope, a Twitter/X v2 response, Postmark inbound JSON, ...).
* :func:`read_email_folder`: a folder of raw RFC 5322 messages (``*.eml``, or every
  file), through the e-mail adapter.
* :func:`read_twitter_csv`: a CSV shaped like the public "Customer Support on Twitter"
  corpus (``tweet_id, author_id, inbound, created_at, text, response_tweet_id,
  in_response_to_tweet_id``): customer tweets (``inbound`` True) through the social
  adapter, company tweets (``inbound`` False) as replies by ``agent:{author_id}`` to the
  tweet they answer.

A message keeps the time its payload carries. Where a payload has none (an e-mail
without a readable ``Date``), the adapter's fallback ``received_at`` is the file's
modification time, so a rerun reads the same message again and skips it. SMS form
webhooks carry no time at all: :func:`read_jsonl` refuses the ``sms`` channel.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

from convthread.channels import email, social, voice, webchat, whatsapp
from convthread.channels.base import ChannelAdapter
from convthread.domain.model import Inbound, Party, PartyKind
from convthread.domain.updates import ChannelResult
from convthread.errors import ConvthreadError, ValidationError
from convthread.service._import import HistoryReply, ImportFailure

__all__ = [
    "ADAPTERS",
    "TWITTER_COLUMNS",
    "HistoryInput",
    "read_email_folder",
    "read_jsonl",
    "read_twitter_csv",
]

#: What a reader yields.
HistoryInput = ChannelResult | HistoryReply | ImportFailure

#: The adapters :func:`read_jsonl` uses, by ``--channel`` name.
ADAPTERS: Final[dict[str, ChannelAdapter]] = {
    "whatsapp": whatsapp.adapter,
    "email": email.adapter,
    "twitter": social.adapter,
    "voice": voice.adapter,
    "webchat": webchat.adapter,
}

#: The columns :func:`read_twitter_csv` needs.
TWITTER_COLUMNS: Final = ("tweet_id", "author_id", "inbound", "created_at", "text")


def _mtime(path: Path) -> datetime:
    return datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)


def _unreadable(channel: str, where: str, exc: ConvthreadError, pid: str = "") -> ImportFailure:
    return ImportFailure(
        index=0,
        channel=channel,
        provider_message_id=pid,
        error=type(exc).__name__,
        reason=str(exc),
        where=where,
    )


def read_jsonl(path: str | Path, channel: str) -> Iterator[HistoryInput]:
    """The results of each line of ``path`` (a raw payload) parsed by ``channel``'s
    adapter (:data:`ADAPTERS`). Blank lines are passed over."""
    adapter = ADAPTERS.get(channel)
    if adapter is None:
        if channel == "sms":
            raise ValidationError(
                "sms webhooks carry no time of their own, so their history cannot be "
                "imported with its times; build Inbound messages with sent_at instead"
            )
        known = ", ".join(sorted(ADAPTERS))
        raise ValidationError(f"no history reader for channel {channel!r}; one of {known}")
    source = Path(path)
    fallback = _mtime(source)
    with source.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield from adapter.parse(line, received_at=fallback)
            except ConvthreadError as exc:
                yield _unreadable(channel, f"{source.name}:{number}", exc)


def read_email_folder(path: str | Path, *, pattern: str = "*.eml") -> Iterator[HistoryInput]:
    """The messages of every file of the folder ``path`` matching ``pattern`` (``"*"``
    for every file), in name order, parsed as raw RFC 5322 by the e-mail adapter."""
    folder = Path(path)
    if not folder.is_dir():
        raise ValidationError(f"{folder} is not a folder")
    for file in sorted(p for p in folder.glob(pattern) if p.is_file()):
        try:
            yield from email.parse(file.read_bytes(), received_at=_mtime(file))
        except ConvthreadError as exc:
            yield _unreadable("email", file.name, exc)


def _tweet(row: dict[str, Any]) -> dict[str, Any]:
    """A CSV row as the Twitter/X v2 tweet the social adapter reads."""
    tweet: dict[str, Any] = {
        "id": row["tweet_id"],
        "author_id": row["author_id"],
        "created_at": row["created_at"],
        "text": row["text"] or "",
    }
    parent = row.get("in_response_to_tweet_id") or ""
    if parent:
        tweet["in_reply_to_tweet_id"] = parent
    return {"data": tweet}


def _from_row(row: dict[str, Any]) -> HistoryInput:
    inbound = social.parse(_tweet(row))[0]  # one result per tweet
    if row["inbound"] == "True" or not isinstance(inbound, Inbound):
        return inbound
    if inbound.reply_to is None:
        raise ValidationError("a company tweet that answers no tweet has no thread to go on")
    return HistoryReply(
        channel=inbound.channel,
        provider_message_id=inbound.provider_message_id,
        reply_to=inbound.reply_to,
        sender=Party(PartyKind.AGENT, row["author_id"]),
        content=inbound.content,
        sent_at=inbound.sent_at,
    )


def read_twitter_csv(path: str | Path) -> Iterator[HistoryInput]:
    """Customer tweets and company replies from a CSV shaped like the Customer Support
    on Twitter corpus (see the module doc)."""
    source = Path(path)
    with source.open(newline="", encoding="utf-8") as f:
        rows = csv.DictReader(f)
        missing = [c for c in TWITTER_COLUMNS if c not in (rows.fieldnames or ())]
        if missing:
            raise ValidationError(f"{source.name} lacks the column(s) {', '.join(missing)}")
        for row in rows:
            try:
                if row["inbound"] not in ("True", "False"):
                    raise ValidationError(f"inbound must be True or False, not {row['inbound']!r}")
                yield _from_row(row)
            except ConvthreadError as exc:
                where = f"{source.name} line {rows.line_num}"
                yield _unreadable("twitter", where, exc, row.get("tweet_id") or "")
