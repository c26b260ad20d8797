"""E-mail: raw RFC 5322 messages and Postmark-style inbound webhook JSON in, MIME out.

Mapping (documented in docs/channels.md):

* ``provider_message_id`` is the ``Message-ID`` without its angle brackets; a message
  without one gets ``sha256:<hex of the raw bytes>`` (stable, so a redelivery still
  deduplicates). ``reply_to`` is the first id of ``In-Reply-To``; ``references`` the ids
  of ``References`` (the last 100), all without angle brackets.
* ``sent_at`` is the ``Date`` header (a date without an offset is read as UTC); when it is
  missing or unreadable, ``received_at`` (else ``clock.now()``, else the system clock),
  with ``time_source`` ``received`` so that a redelivery still deduplicates.
* A raw message without a usable sender address (no ``From``/``Sender``, or an address
  the e-mail normalizer refuses, such as ``user@localhost``) parses to
  :class:`Unsupported` (``kind="no-sender"``): it is a message, but nobody to attribute
  it to. A Postmark payload without a From address is a ParseError.
* The sender is the first ``From`` address, a **claimed** e-mail identifier: anyone can
  write any ``From``. It becomes **asserted** (method ``"dmarc"`` or ``"dkim"``) only
  when an ``Authentication-Results`` header (RFC 8601) written by an authentication
  service the adapter is told to trust (``trusted_authserv_ids``) reports ``dmarc=pass``,
  or ``dkim=pass`` for a signing domain (``header.d``) aligned with the From domain (the
  same domain or a parent of it). SPF alone never counts: it checks the envelope sender,
  not the From a person reads. Headers from other authentication services are ignored,
  because a sender can write any header into a message (RFC 8601 section 5).
* Text: the ``text/plain`` body, else the ``text/html`` body with tags removed; then
  quoted replies and signatures are stripped (:func:`strip_quoted`). If stripping leaves
  nothing, the unstripped text is kept. Text beyond ``MAX_TEXT`` is cut
  (``metadata["truncated"] = True``).
* Attachments: metadata only (kind from the MIME type, file name, MIME type, size and
  SHA-256 of the decoded bytes; Postmark's ``ContentID`` as ``media_id``).
* Postmark JSON: ``Headers`` gives Message-ID, In-Reply-To, References and
  Authentication-Results; ``MessageID`` (Postmark's own id) is used only when no
  Message-ID header is present; ``OriginalRecipient`` is the recipient.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import hashlib
import html
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import getaddresses, parsedate_to_datetime
from html.parser import HTMLParser
from typing import Any, Final

import msgspec

from convthread.channels.base import (
    Capabilities,
    Outbound,
    Rendered,
    arr,
    check_size,
    clip,
    degrade,
    fail,
    guard,
    load_json,
    obj,
    opt_str,
    received,
)
from convthread.domain.identifiers import email as email_identifier
from convthread.domain.model import (
    MAX_ATTACHMENTS,
    MAX_TEXT,
    Attachment,
    Channel,
    Content,
    Inbound,
    SenderIdentifier,
    TimeSource,
    Trust,
)
from convthread.domain.updates import ChannelResult, Unsupported
from convthread.errors import ConvthreadError, ValidationError
from convthread.ports import Clock

__all__ = [
    "CAPABILITIES",
    "EmailAdapter",
    "adapter",
    "authentication_verdict",
    "message_ids",
    "parse",
    "render",
    "strip_quoted",
]

CHANNEL: Final = Channel.EMAIL
CAPABILITIES: Final = Capabilities(
    channel=CHANNEL,
    max_text=MAX_TEXT,
    rich_content=False,
    attachments=True,
    quick_replies=0,
    list_items=0,
    threading=True,
    subject=True,
    links=True,
)
_POLICY: Final = email.policy.default
_MSGID_RE: Final = re.compile(r"<([^<>\s]{1,510})>")

# ---------------------------------------------------------------------- quote stripping

_ON_WROTE: Final = re.compile(
    r"^\s*(On\s.{1,300}wrote|Le\s.{1,300}a\s+écrit|Am\s.{1,300}schrieb)\s*:\s*$",
    re.IGNORECASE,
)
_ON_START: Final = re.compile(r"^\s*(On|Le|Am)\s", re.IGNORECASE)
_ORIGINAL: Final = re.compile(
    r"^\s*-{2,}\s*(Original Message|Forwarded message|Ursprüngliche Nachricht)\s*-{2,}\s*$",
    re.IGNORECASE,
)
_UNDERSCORES: Final = re.compile(r"^\s*_{20,}\s*$")
_HEADER_LINE: Final = re.compile(r"^\s*\*?(From|Sent|Date|To|Subject|Cc)\s*:\*?\s", re.I)


def strip_quoted(text: str) -> str:
    """Remove quoted replies and signatures from a plain-text e-mail body.

    The rules, applied in this order:

    1. The text is cut at the first **attribution line** ``On <date>, <name> wrote:``
       (also when the client wrapped it over two lines; French ``Le ... a écrit :`` and
       German ``Am ... schrieb:`` too).
    2. It is cut at an Outlook separator ``-----Original Message-----`` (or
       ``---------- Forwarded message ----------``), at a line of 20 or more underscores,
       or at an Outlook header block: a ``From:`` line followed within the next three
       lines by ``Sent:``/``Date:`` and ``To:``/``Subject:`` lines.
    3. It is cut at the **signature delimiter**: a line that is exactly ``-- `` (or
       ``--``, as clients that strip trailing spaces send it).
    4. Lines starting with ``>`` (quoted text, also inline between answers) are removed.
    5. Trailing whitespace is trimmed and runs of more than two blank lines collapsed.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    cut = len(lines)
    for i, line in enumerate(lines):
        if _ON_WROTE.match(line):
            cut = i
            break
        if (
            _ON_START.match(line)
            and i + 1 < len(lines)
            and _ON_WROTE.match(line.rstrip() + " " + lines[i + 1].strip())
        ):
            cut = i
            break
        if _ORIGINAL.match(line) or _UNDERSCORES.match(line):
            cut = i
            break
        if line.rstrip("\n") in ("-- ", "--"):
            cut = i
            break
        if re.match(r"^\s*\*?From\s*:", line, re.I):
            window = lines[i + 1 : i + 4]
            names = {m.group(1).lower() for w in window if (m := _HEADER_LINE.match(w))}
            if names & {"sent", "date"} and names & {"to", "subject"}:
                cut = i
                break
    kept = [ln.rstrip() for ln in lines[:cut] if not ln.lstrip().startswith(">")]
    out = "\n".join(kept).strip()
    return re.sub(r"\n{3,}", "\n\n", out)


class _TextOfHtml(HTMLParser):
    _BLOCK: Final = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "table"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head"):
            self._skip += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head") and self._skip:
            self._skip -= 1
        elif tag == "blockquote":
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    """Visible text of an HTML body (scripts, styles and the head dropped)."""
    parser = _TextOfHtml()
    parser.feed(markup)
    parser.close()
    text = "".join(parser.parts)
    text = re.sub(r"[ \t\xa0]+", " ", html.unescape(text))
    return re.sub(r"\n\s*\n+", "\n\n", text).strip()


# ---------------------------------------------------------------------- helpers


def message_ids(value: str | None) -> tuple[str, ...]:
    """The message ids in a Message-ID, In-Reply-To or References value, without angle
    brackets (a bare id without brackets is accepted as one id)."""
    if not value:
        return ()
    found = tuple(_MSGID_RE.findall(value))
    if found:
        return found
    bare = value.strip()
    if bare and len(bare) <= 512 and not any(c.isspace() for c in bare):
        return (bare,)
    return ()


_RESINFO: Final = re.compile(r"([a-z0-9_-]+)\s*=\s*([a-z]+)((?:\s+[a-z0-9_.-]+=\S+)*)", re.I)


def authentication_verdict(
    headers: Iterable[str], from_domain: str, trusted_authserv_ids: Iterable[str]
) -> str:
    """``"dmarc"`` or ``"dkim"`` when a trusted Authentication-Results header says the From
    domain passed (DMARC pass; or DKIM pass with an aligned ``header.d``), else ``""``."""
    trusted = {t.lower() for t in trusted_authserv_ids}
    if not trusted or not from_domain:
        return ""
    domain = from_domain.lower().rstrip(".")
    for value in headers:
        authserv, _, rest = str(value).partition(";")
        authserv_id = authserv.strip().split()[0].lower() if authserv.strip() else ""
        if authserv_id not in trusted:
            continue
        verdict = ""
        for clause in rest.split(";"):
            m = _RESINFO.match(clause.strip())
            if not m:
                continue
            method, result, props = m.group(1).lower(), m.group(2).lower(), m.group(3)
            if result != "pass":
                continue
            if method == "dmarc":
                return "dmarc"
            if method == "dkim":
                d = re.search(r"header\.d=([^\s;]+)", props, re.I)
                signer = d.group(1).lower().rstrip(".") if d else ""
                if signer and (domain == signer or domain.endswith("." + signer)):
                    verdict = "dkim"
        if verdict:
            return verdict
    return ""


def _attachment_kind(mime: str) -> str:
    main = mime.split("/", 1)[0].lower()
    return main if main in ("image", "audio", "video") else "document"


def _date(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        return None


def _text_of(part: Message) -> str:
    """A text part's content as str, tolerating unknown charsets and bad encodings."""
    try:
        if isinstance(part, EmailMessage):
            content = part.get_content()
            if isinstance(content, str):
                return content
    except (LookupError, ValueError, AssertionError, UnicodeError, KeyError, TypeError):
        pass
    raw = part.get_payload(decode=True)
    if isinstance(raw, bytes):
        charset = part.get_content_charset() or "utf-8"
        try:
            return raw.decode(charset, errors="replace")
        except LookupError:
            return raw.decode("utf-8", errors="replace")
    payload = part.get_payload()
    return payload if isinstance(payload, str) else ""


def _header(msg: Message, name: str) -> str:
    """A header as text; a header the policy cannot parse is read raw."""
    try:
        value = msg.get(name)
    except (ValueError, TypeError, IndexError, AttributeError, LookupError):
        raws = [v for k, v in msg.raw_items() if k.lower() == name.lower()]
        value = raws[0] if raws else None
    return "" if value is None else str(value)


def _all_headers(msg: Message, name: str) -> list[str]:
    try:
        return [str(v) for v in (msg.get_all(name) or [])]
    except (ValueError, TypeError, IndexError, AttributeError, LookupError):
        return [v for k, v in msg.raw_items() if k.lower() == name.lower()]


def _first_address(value: str) -> str:
    for _name, addr in getaddresses([value]):
        if addr and "@" in addr:
            return addr
    return ""


class EmailAdapter:
    """The e-mail adapter.

    ``trusted_authserv_ids``: the authentication service ids (the first token of an
    ``Authentication-Results`` header, e.g. your MX host or your provider's) whose
    verdicts may raise a From address to asserted. Empty (the default): every sender is
    claimed.
    """

    channel: Final = CHANNEL
    capabilities: Final = CAPABILITIES

    def __init__(self, *, trusted_authserv_ids: Iterable[str] = ()) -> None:
        self.trusted_authserv_ids = tuple(trusted_authserv_ids)

    # ------------------------------------------------------------------ parse

    def parse(
        self,
        payload: Any,
        *,
        received_at: datetime | None = None,
        clock: Clock | None = None,
        **options: Any,
    ) -> list[ChannelResult]:
        """Parse raw RFC 5322 bytes (or str), or Postmark inbound JSON (bytes, str or a
        decoded dict): JSON is recognised by a leading ``{``. A message without a usable
        ``Date`` is stamped with ``received_at``, else ``clock.now()``, else the system
        clock (``TimeSource.RECEIVED``)."""
        now = received(received_at, clock)
        if isinstance(payload, Mapping):
            with guard(CHANNEL, "postmark payload"):
                return [self._postmark(dict(payload), now)]
        if isinstance(payload, str):
            check_size(CHANNEL, payload)
            if payload.lstrip().startswith("{"):
                return self.parse(load_json(CHANNEL, payload), received_at=now)
            try:
                payload = payload.encode("utf-8", errors="surrogateescape")
            except UnicodeError:
                fail(CHANNEL, "the message text cannot be encoded")
        if isinstance(payload, (bytearray, memoryview)):
            payload = bytes(payload)
        if not isinstance(payload, bytes):
            fail(CHANNEL, f"expected MIME bytes, str or Postmark JSON, not {type(payload)}")
        check_size(CHANNEL, payload)
        if payload.lstrip().startswith(b"{"):
            data = load_json(CHANNEL, payload)
            with guard(CHANNEL, "postmark payload"):
                return [self._postmark(obj(CHANNEL, data, "payload"), now)]
        with guard(CHANNEL, "MIME message"):
            return [self._mime(payload, now)]

    def _mime(self, raw: bytes, now: datetime) -> Inbound | Unsupported:
        if not raw.strip():
            fail(CHANNEL, "empty message")
        msg = BytesParser(policy=_POLICY).parsebytes(raw)
        if not isinstance(msg, EmailMessage):  # pragma: no cover - policy.default gives one
            fail(CHANNEL, "the parser did not return a message")
        from_value = _header(msg, "From") or _header(msg, "Sender")
        address = _first_address(from_value)
        ids = message_ids(_header(msg, "Message-ID"))
        msg_id = ids[0] if ids else "sha256:" + hashlib.sha256(raw).hexdigest()
        problem = ""
        if not address:
            problem = "the message has no sender address (no usable From or Sender header)"
        else:
            try:
                email_identifier(address)
            except ConvthreadError as exc:
                problem = f"the sender address is not usable: {exc}"
        if problem:
            return Unsupported(
                channel=CHANNEL,
                reason=problem,
                kind="no-sender",
                provider_message_id=clip(msg_id, 512),
                at=_date(_header(msg, "Date")) or now,
                raw={"from": from_value[:512], "subject": _header(msg, "Subject")[:2000]},
            )
        text, attachments, truncated = self._body(msg)
        verdict = authentication_verdict(
            _all_headers(msg, "Authentication-Results"),
            address.rpartition("@")[2],
            self.trusted_authserv_ids,
        )
        to = _first_address(_header(msg, "Delivered-To") or _header(msg, "To"))
        sent_at = _date(_header(msg, "Date"))
        return self._inbound(
            msg_id=msg_id,
            address=address,
            verdict=verdict,
            text=text,
            attachments=attachments,
            truncated=truncated,
            sent_at=sent_at or now,
            time_source=TimeSource.PROVIDER if sent_at else TimeSource.RECEIVED,
            recipient=to,
            in_reply_to=_header(msg, "In-Reply-To"),
            references=_header(msg, "References"),
            subject=_header(msg, "Subject"),
        )

    def _body(self, msg: EmailMessage) -> tuple[str, list[Attachment], bool]:
        body: Message | None
        try:
            body = msg.get_body(preferencelist=("plain", "html"))
        except (KeyError, ValueError, AttributeError, TypeError, IndexError):
            body = None
        if body is None and msg.get_content_maintype() == "text":
            body = msg
        text = ""
        if body is not None:
            text = _text_of(body)
            if body.get_content_subtype() == "html":
                text = html_to_text(text)
        attachments: list[Attachment] = []
        try:
            parts = list(msg.iter_attachments()) if msg.is_multipart() else []
        except (KeyError, ValueError, AttributeError, TypeError):
            parts = []
        for part in parts[:MAX_ATTACHMENTS]:
            data = part.get_payload(decode=True)
            size = len(data) if isinstance(data, bytes) else None
            mime = part.get_content_type()
            try:
                filename = part.get_filename() or ""
            except (ValueError, TypeError, AttributeError, LookupError):
                filename = ""
            attachments.append(
                Attachment(
                    kind=_attachment_kind(mime),
                    mime_type=mime,
                    filename=clip(filename, 512),
                    size=size,
                    sha256=hashlib.sha256(data).hexdigest() if isinstance(data, bytes) else "",
                    media_id=clip(message_ids(_header(part, "Content-ID"))[0], 512)
                    if message_ids(_header(part, "Content-ID"))
                    else "",
                )
            )
        stripped = strip_quoted(text) or text.strip()
        truncated = len(stripped) > MAX_TEXT
        return clip(stripped, MAX_TEXT), attachments, truncated

    def _postmark(self, data: dict[str, Any], now: datetime) -> Inbound:
        headers: dict[str, list[str]] = {}
        for i, h in enumerate(arr(CHANNEL, data.get("Headers", []), "Headers")):
            h = obj(CHANNEL, h, f"Headers[{i}]")
            name = opt_str(CHANNEL, h, "Name", f"Headers[{i}]").lower()
            headers.setdefault(name, []).append(opt_str(CHANNEL, h, "Value", f"Headers[{i}]"))

        def first(name: str) -> str:
            return headers.get(name.lower(), [""])[0]

        from_full = data.get("FromFull")
        address = ""
        if isinstance(from_full, dict):
            address = opt_str(CHANNEL, from_full, "Email", "FromFull")
        if not address:
            address = _first_address(opt_str(CHANNEL, data, "From", "payload"))
        if not address:
            fail(CHANNEL, "Postmark payload has no From address")
        ids = message_ids(first("Message-ID"))
        msg_id = ids[0] if ids else opt_str(CHANNEL, data, "MessageID", "payload")
        if not msg_id:
            fail(CHANNEL, "Postmark payload has neither a Message-ID header nor a MessageID")
        text = opt_str(CHANNEL, data, "TextBody", "payload")
        if not text.strip():
            html_body = opt_str(CHANNEL, data, "HtmlBody", "payload")
            text = html_to_text(html_body) if html_body else ""
        if not text.strip():
            text = opt_str(CHANNEL, data, "StrippedTextReply", "payload")
        stripped = strip_quoted(text) or text.strip()
        attachments: list[Attachment] = []
        for i, att in enumerate(arr(CHANNEL, data.get("Attachments", []), "Attachments")):
            att = obj(CHANNEL, att, f"Attachments[{i}]")
            mime = opt_str(CHANNEL, att, "ContentType", "attachment") or "application/octet-stream"
            content = opt_str(CHANNEL, att, "Data", "attachment")
            digest = ""
            size = att.get("ContentLength")
            if content:
                try:
                    decoded = base64.b64decode(content, validate=True)
                except (binascii.Error, ValueError):
                    fail(CHANNEL, f"Attachments[{i}].Data is not base64")
                digest = hashlib.sha256(decoded).hexdigest()
                size = len(decoded)
            attachments.append(
                Attachment(
                    kind=_attachment_kind(mime),
                    mime_type=clip(mime, 255),
                    filename=clip(opt_str(CHANNEL, att, "Name", "attachment"), 512),
                    size=size if isinstance(size, int) and not isinstance(size, bool) else None,
                    sha256=digest,
                    media_id=clip(opt_str(CHANNEL, att, "ContentID", "attachment"), 512),
                )
            )
            if len(attachments) >= MAX_ATTACHMENTS:
                break
        verdict = authentication_verdict(
            headers.get("authentication-results", []),
            address.rpartition("@")[2],
            self.trusted_authserv_ids,
        )
        sent_at = _date(opt_str(CHANNEL, data, "Date", "payload"))
        return self._inbound(
            msg_id=msg_id,
            address=address,
            verdict=verdict,
            text=clip(stripped, MAX_TEXT),
            attachments=attachments,
            truncated=len(stripped) > MAX_TEXT,
            sent_at=sent_at or now,
            time_source=TimeSource.PROVIDER if sent_at else TimeSource.RECEIVED,
            recipient=opt_str(CHANNEL, data, "OriginalRecipient", "payload")
            or _first_address(opt_str(CHANNEL, data, "To", "payload")),
            in_reply_to=first("In-Reply-To"),
            references=first("References"),
            subject=opt_str(CHANNEL, data, "Subject", "payload"),
        )

    def _inbound(
        self,
        *,
        msg_id: str,
        address: str,
        verdict: str,
        text: str,
        attachments: list[Attachment],
        truncated: bool,
        sent_at: datetime,
        time_source: TimeSource,
        recipient: str,
        in_reply_to: str,
        references: str,
        subject: str,
    ) -> Inbound:
        try:
            ident = email_identifier(address)
        except ConvthreadError as exc:
            raise ValidationError(f"the sender address is not usable: {exc}") from None
        trust = Trust.ASSERTED if verdict else Trust.CLAIMED
        metadata: dict[str, Any] = {"truncated": True} if truncated else {}
        reply_ids = message_ids(in_reply_to)
        refs = tuple(r for r in message_ids(references) if len(r) <= 512)[-100:]
        return Inbound(
            channel=CHANNEL,
            provider_message_id=clip(msg_id, 512),
            sender=(SenderIdentifier(ident, trust, verdict),),
            content=Content(text=text, attachments=tuple(attachments), metadata=metadata),
            sent_at=sent_at,
            recipient=clip(recipient, 512),
            reply_to=clip(reply_ids[0], 512) if reply_ids else None,
            references=refs,
            subject=clip(" ".join(subject.split()), 2000),
            time_source=time_source,
        )

    # ------------------------------------------------------------------ render

    def render(self, outbound: Outbound) -> Rendered:
        """Render one MIME message (bytes, CRLF line ends, ``policy.SMTP``).

        Threading: ``In-Reply-To`` is ``reply_to``; ``References`` is ``references``
        followed by ``reply_to`` (RFC 5322 section 3.6.4); ``thread_ref``, if given and not
        already there, is put first. Options and cards degrade to text and links.
        Attachments with a URL are listed as links (convthread never holds the bytes).
        """
        if not outbound.to or not outbound.sender:
            raise ValidationError("an e-mail needs 'to' and 'sender' addresses")
        body, options, notes = degrade(
            outbound, msgspec.structs.replace(CAPABILITIES, attachments=False)
        )
        text = "\n\n".join(p for p in (body, options) if p)
        if len(text) > MAX_TEXT:  # what an inbound e-mail may hold; more is not a message
            text = text[: MAX_TEXT - 1].rstrip() + "…"
            notes.append(f"text cut to {MAX_TEXT} characters")
        msg = EmailMessage(policy=email.policy.SMTP)
        _set_header(msg, "From", outbound.sender)
        _set_header(msg, "To", outbound.to)
        # a subject is one line: line breaks in it (pasted text) become spaces
        _set_header(msg, "Subject", " ".join(outbound.subject.split()) or _DEFAULT_SUBJECT)
        if outbound.message_id:
            _set_header(msg, "Message-ID", _angle(outbound.message_id, "message_id"))
        refs = [_bare(r, "references") for r in outbound.references]
        if outbound.thread_ref and _bare(outbound.thread_ref, "thread_ref") not in refs:
            refs.insert(0, _bare(outbound.thread_ref, "thread_ref"))
        if outbound.reply_to:
            _set_header(msg, "In-Reply-To", _angle(outbound.reply_to, "reply_to"))
            if _bare(outbound.reply_to, "reply_to") not in refs:
                refs.append(_bare(outbound.reply_to, "reply_to"))
        if refs:
            _set_header(msg, "References", " ".join(f"<{r}>" for r in refs))
        msg.set_content(text or " ")
        try:
            raw = msg.as_bytes()
        except (UnicodeError, ValueError, TypeError, IndexError) as exc:
            raise ValidationError(f"cannot write the e-mail: {exc}") from None
        return Rendered(channel=CHANNEL, payloads=(raw,), text=text, degraded=tuple(notes))


_DEFAULT_SUBJECT: Final = "Your conversation with us"


def _bare(value: str, what: str) -> str:
    """A message id without its angle brackets; ValidationError unless it is one token of
    visible ASCII characters (RFC 5322 section 3.6.4: no spaces, line breaks, control or
    non-ASCII characters inside an id)."""
    bare = value.strip().strip("<>")
    if not bare or any(not c.isascii() or not c.isprintable() or c in " <>" for c in bare):
        raise ValidationError(f"{what} {value!r} is not a message id")
    return bare


def _angle(value: str, what: str) -> str:
    return f"<{_bare(value, what)}>"


def _set_header(msg: EmailMessage, name: str, value: str) -> None:
    """Set a header, or raise ValidationError when the value cannot be one (line breaks,
    an unparsable address)."""
    try:
        msg[name] = value
    except (ValueError, TypeError, IndexError) as exc:
        raise ValidationError(f"cannot write the e-mail header {name}: {exc}") from None


#: The default adapter (no trusted authentication service: every sender is claimed).
adapter: Final = EmailAdapter()
parse: Final = adapter.parse
render: Final = adapter.render
