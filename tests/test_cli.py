"""The command line and the examples, run as a user would run them."""

from __future__ import annotations

import io
import json
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import convthread as ct
from convthread.cli import main
from convthread.stores import SQLiteStore

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> str:
    out = io.StringIO()
    assert main(list(args), out=out) == 0
    return out.getvalue()


def test_demo_plays_one_journey_across_channels_into_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    text = run_cli("demo", "--db", str(db))
    assert "channels: twitter → twitter.dm → whatsapp → email → voice" in text
    # every customer message shows both decisions with their reason
    assert text.count("who:    [") == 7
    assert text.count("thread: [") == 7
    assert "[explicit_reference] the message replies to 'refund-ac4471@acme.example'" in text
    assert "[recency]" in text
    # the WhatsApp number was linked by the continuation code, with its evidence
    assert "phone:+447911123456 (asserted; token on whatsapp" in text
    assert "agent:lee took control (fencing token 1)" in text
    # the external audience sees no identifier
    external = text.split("external bot vendor", 1)[1]
    for secret in ("dana", "+447911123456", "2244", "example.com"):
        assert secret not in external
    assert "Redelivered all 7 inbound payloads: 7 recognised as duplicates" in text
    # it really is in the SQLite file: one customer, one thread across five channels
    with ct.Conversations(SQLiteStore(db)) as convs:
        states = convs.customer_threads(convs.find_customer(ct.phone("+447911123456")) or "")
        assert len(states) == 1
        assert states[0].channels == ("twitter", "twitter.dm", "whatsapp", "email", "voice")
        assert states[0].controller == ct.Party.parse("agent:lee")
        assert len(convs.events(states[0].id)) == 16


def test_demo_is_deterministic(tmp_path: Path) -> None:
    import re

    def masked(text: str) -> str:  # continuation codes come from `secrets`: they differ
        return re.sub(r"\b[0-9A-Z]{3}-[0-9A-Z]{3}-[0-9A-Z]{3}\b", "XXX-XXX-XXX", text)

    first = run_cli("demo", "--db", str(tmp_path / "a.db"))
    second = run_cli("demo", "--db", str(tmp_path / "a.db"))  # replaces the file
    assert first != second  # a fresh code each run
    assert masked(first) == masked(second)
    with ct.Conversations(SQLiteStore(tmp_path / "a.db")) as convs:
        assert len(convs.events("th_0001")) == 16


def test_show_prints_a_thread_and_a_customer(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    run_cli("demo", "--db", str(db))
    thread = run_cli("show", "thread", "th_0001", "--store", f"sqlite:///{db}")
    assert "Thread th_0001" in thread and "voice" in thread
    customer = run_cli("show", "customer", "cu_0001", "--store", str(db))
    assert "phone:+447911123456 (asserted)" in customer
    as_json = run_cli("show", "thread", "th_0001", "--store", str(db), "--json")
    assert '"type":"message_received"' in as_json


def test_show_unknown_thread_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "empty.db"
    SQLiteStore(db).close()  # an existing store without that thread
    assert main(["show", "thread", "th_nope", "--store", str(db)]) == 1
    assert "no thread 'th_nope'" in capsys.readouterr().err


@pytest.mark.parametrize("form", ["path", "url", "environment"])
@pytest.mark.parametrize("what", ["thread", "customer"])
def test_show_refuses_a_sqlite_file_that_does_not_exist(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    form: str,
    what: str,
) -> None:
    typo = tmp_path / "typo.db"
    store = {"path": [str(typo)], "url": [f"sqlite:///{typo}"], "environment": []}[form]
    if form == "environment":
        monkeypatch.setenv("CONVTHREAD_STORE", str(typo))
    out = io.StringIO()
    assert main(["show", what, "x_1", *(["--store", *store] if store else [])], out=out) == 1
    err = capsys.readouterr().err
    assert f"no SQLite store at {typo}" in err and "does not exist" in err
    assert out.getvalue() == ""
    assert list(tmp_path.iterdir()) == []  # nothing created: no file, no -wal, no -shm


def test_writing_commands_still_create_their_sqlite_file(tmp_path: Path) -> None:
    db = tmp_path / "new" / "fresh.db"
    db.parent.mkdir()
    run_cli("demo", "--store", f"sqlite:///{db}")
    assert db.is_file()
    assert "Thread th_0001" in run_cli("show", "thread", "th_0001", "--store", str(db))


def test_store_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "env.db"
    run_cli("demo", "--db", str(db))
    monkeypatch.setenv("CONVTHREAD_STORE", f"sqlite:///{db}")
    assert "Thread th_0001" in run_cli("show", "thread", "th_0001")


def test_console_script_and_module_entry_point(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "convthread", "demo", "--db", str(tmp_path / "m.db")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "twitter → twitter.dm → whatsapp → email → voice" in proc.stdout


def test_quickstart_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = runpy.run_path(str(ROOT / "examples" / "quickstart.py"))
    thread_id = module["main"](tmp_path / "q.db")
    out = capsys.readouterr().out
    assert f"email -> {thread_id}" in out and "within the 24h00m window" in out


@pytest.mark.parametrize("which", ["snapshot", "events"])
def test_schema_command_prints_json_schema(which: str) -> None:
    import json

    schema = json.loads(run_cli("schema", which))
    assert schema.get("$defs")
    assert "$ref" in schema or "anyOf" in schema or "type" in schema


# --------------------------------------------------------------------------- conventions


def run_status(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    status = main(list(args), out=out)
    return status, out.getvalue()


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    db = tmp_path_factory.mktemp("cli") / "demo.db"
    run_cli("demo", "--db", str(db))
    return str(db)


@pytest.fixture(scope="module")
def five_threads(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Five customers texting one after another, a minute apart."""
    from datetime import datetime, timedelta, timezone

    from convthread.channels import sms

    db = tmp_path_factory.mktemp("cli") / "five.db"
    t0 = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
    with ct.Conversations(SQLiteStore(db)) as convs:
        for i in range(5):
            form = {"MessageSid": f"SM{i}", "From": f"+1415555010{i}", "Body": f"hello {i}"}
            (inbound,) = sms.parse(form, received_at=t0 + timedelta(minutes=i))
            convs.ingest(inbound)  # type: ignore[arg-type]
    return str(db)


def subcommands() -> dict[str, Any]:
    import argparse

    from convthread.cli import build_parser

    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_command_follows_the_conventions() -> None:
    commands = subcommands()
    assert set(commands) >= {"demo", "show", "threads", "customer", "schema", "import",
                             "migrate", "completion"}  # fmt: skip
    for name, parser in commands.items():
        options = {o for a in parser._actions for o in a.option_strings}
        assert "example:\n  " in (parser.epilog or ""), name
        assert f"convthread {name}" in (parser.epilog or ""), name
        if name != "completion":
            assert "--json" in options, name
        if name not in ("schema", "completion"):
            assert "--store" in options, name
        if name in ("show", "threads", "customer", "import"):
            assert "--tenant" in options, name


@pytest.mark.parametrize("name", ["demo", "show", "threads", "customer", "schema", "import",
                                  "migrate", "completion"])  # fmt: skip
def test_help_shows_an_example_and_exits_0(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([name, "--help"]) == 0
    text = capsys.readouterr().out
    assert "example:\n  " in text and f"convthread {name}" in text.split("example:", 1)[1]


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["nope"]) == 2
    assert main(["threads", "--limit", "0", "--store", "memory://"]) == 2
    assert main(["threads", "--active-since", "last tuesday", "--store", "memory://"]) == 2
    assert "neither an ISO 8601 time nor a duration" in capsys.readouterr().err
    assert main(["--version"]) == 0


def test_no_store_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CONVTHREAD_STORE", raising=False)
    assert main(["threads"]) == 2
    assert "pass --store URL or set CONVTHREAD_STORE" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [["threads"], ["customer", "cu_0001"], ["show", "thread", "th_0001"]],
)
def test_only_the_default_tenant_is_accepted(
    demo_db: str, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_status(*command, "--store", demo_db, "--tenant", "default")[0] == 0
    assert main([*command, "--store", demo_db, "--tenant", "acme"]) == 2
    assert "default tenant only" in capsys.readouterr().err


def test_the_library_refusing_exits_4(demo_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["threads", "--store", demo_db, "--cursor", "garbage"]) == 4
    assert "ValidationError" in capsys.readouterr().err


# --------------------------------------------------------------------------- threads


def test_threads_table_and_json(demo_db: str) -> None:
    text = run_cli("threads", "--store", demo_db)
    header, row = text.splitlines()
    assert header.split() == ["THREAD", "CUSTOMER", "STATUS", "CHANNELS", "LAST", "ACTIVITY",
                              "MSGS", "CONTROLLER"]  # fmt: skip
    assert row.split()[:3] == ["th_0001", "cu_0001", "open"] and row.endswith("agent:lee")
    doc = json.loads(run_cli("threads", "--store", demo_db, "--json"))
    assert doc["next_cursor"] is None
    (thread,) = doc["threads"]
    assert set(thread) == {"id", "customer_id", "status", "channels", "last_channel", "topic",
                           "created_at", "last_activity", "message_count", "controller",
                           "snoozed_until"}  # fmt: skip
    assert thread["channels"] == ["twitter", "twitter.dm", "whatsapp", "email", "voice"]
    assert (thread["last_activity"], thread["controller"]) == ("2026-03-02T11:56:00Z", "agent:lee")


@pytest.mark.parametrize(
    ("filters", "found"),
    [
        (["--status", "open"], 1),
        (["--status", "closed"], 0),
        (["--channel", "voice"], 1),
        (["--channel", "sms"], 0),
        (["--customer", "cu_0001"], 1),
        (["--customer", "cu_9999"], 0),
        (["--controller", "agent:lee"], 1),
        (["--controller", "agent:sam"], 0),
        (["--active-since", "2026-03-02T11:00"], 1),
        (["--active-until", "2026-03-02T10:00:00Z"], 0),
        (["--active-since", "1h"], 0),  # the demo's journey is long past
        (["--active-since", "5200w"], 1),
    ],
)
def test_threads_filters(demo_db: str, filters: list[str], found: int) -> None:
    doc = json.loads(run_cli("threads", "--store", demo_db, "--json", *filters))
    assert len(doc["threads"]) == found
    if not found:
        assert run_cli("threads", "--store", demo_db, *filters) == "no threads match\n"


def test_threads_pages_with_a_cursor(five_threads: str) -> None:
    first = json.loads(run_cli("threads", "--store", five_threads, "--limit", "2", "--json"))
    assert len(first["threads"]) == 2 and first["next_cursor"]
    second = json.loads(
        run_cli(
            "threads",
            "--store",
            five_threads,
            "--limit",
            "2",
            "--json",
            "--cursor",
            first["next_cursor"],
        )
    )
    every = json.loads(run_cli("threads", "--store", five_threads, "--all", "--json"))
    assert every["next_cursor"] is None
    ids = [t["id"] for t in every["threads"]]
    assert len(ids) == 5 and [t["id"] for t in first["threads"] + second["threads"]] == ids[:4]
    text = run_cli("threads", "--store", five_threads, "--limit", "2")
    assert text.splitlines()[-1] == f"more: --cursor {first['next_cursor']}"


def test_tables_are_drawn_by_rich_on_a_terminal(demo_db: str) -> None:
    pytest.importorskip("rich")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    assert main(["threads", "--store", demo_db], out=out) == 0
    assert "th_0001" in out.getvalue() and "agent:lee" in out.getvalue()
    assert "━" in out.getvalue() or "─" in out.getvalue()  # rich's rule under the header


def test_store_from_environment_for_threads(demo_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVTHREAD_STORE", demo_db)
    assert "th_0001" in run_cli("threads")


# --------------------------------------------------------------------------- customer


def test_customer_by_id_and_by_identifier(demo_db: str) -> None:
    by_id = run_cli("customer", "cu_0001", "--store", demo_db)
    by_identifier = run_cli("customer", "--identifier", "phone:+44 7911 123456", "--store", demo_db)
    assert by_id == by_identifier
    assert by_id.startswith("Customer cu_0001")
    line = next(x for x in by_id.splitlines() if x.startswith("phone:+447911123456"))
    assert line.split()[1:6] == ["asserted", "token", "on", "whatsapp", "by"]
    assert "continuation token for thread th_0001" in line
    assert "email:dana.k@example.com" in by_id and "typed by the customer on WhatsApp" in by_id
    assert "th_0001" in by_id.split("THREAD", 1)[1]
    scoped = run_cli("customer", "-i", "handle[twitter]:dana_k", "--store", demo_db)
    assert scoped == by_id


def test_customer_json_shape(demo_db: str) -> None:
    doc = json.loads(run_cli("customer", "cu_0001", "--store", demo_db, "--json"))
    assert set(doc) == {"id", "created_at", "merged_into", "erased", "identifiers", "threads"}
    assert (doc["id"], doc["merged_into"], doc["erased"]) == ("cu_0001", None, False)
    phone = next(i for i in doc["identifiers"] if i["kind"] == "phone")
    assert set(phone) == {"identifier", "kind", "scope", "value", "trust", "evidence", "history"}
    assert phone["identifier"] == "phone:+447911123456" and phone["trust"] == "asserted"
    assert phone["evidence"]["method"] == "token" and phone["evidence"]["channel"] == "whatsapp"
    (step,) = phone["history"]
    assert step["type"] == "identifier_linked" and step["customer_id"] == "cu_0001"
    assert step["description"].startswith("linked phone:+447911123456 as asserted")
    assert [t["id"] for t in doc["threads"]] == ["th_0001"]


def test_customer_errors(demo_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["customer", "cu_9999", "--store", demo_db]) == 1
    assert "no customer 'cu_9999'" in capsys.readouterr().err
    assert main(["customer", "-i", "email:nobody@example.com", "--store", demo_db]) == 1
    assert "no customer has the identifier email:nobody@example.com" in capsys.readouterr().err
    assert main(["customer", "-i", "not an identifier", "--store", demo_db]) == 2
    assert "kind:value" in capsys.readouterr().err
    assert main(["customer", "-i", "phone:12", "--store", demo_db]) == 2
    assert main(["customer", "--store", demo_db]) == 2
    assert main(["customer", "cu_0001", "-i", "phone:+447911123456", "--store", demo_db]) == 2


# --------------------------------------------------------------------------- the rest


def test_demo_json_summary(tmp_path: Path) -> None:
    doc = json.loads(run_cli("demo", "--db", str(tmp_path / "d.db"), "--json"))
    assert doc == {
        "store": f"sqlite:///{tmp_path / 'd.db'}",
        "threads": ["th_0001"],
        "customer_id": "cu_0001",
        "deliveries": 7,
        "duplicates": 7,
        "events": 16,
    }


def test_migrate_takes_the_store_from_the_shared_options(demo_db: str) -> None:
    doc = json.loads(run_cli("migrate", "--store", demo_db, "--json", "--dry-run"))
    assert doc["applied"] is False and doc["from_version"] == doc["target_version"]


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts(shell: str) -> None:
    pytest.importorskip("shtab")
    script = run_cli("completion", shell)
    for command in ("threads", "customer", "migrate", "--store", "--json"):
        assert command in script, command
    if shell == "bash":
        import shutil

        if shutil.which("bash"):
            check = subprocess.run(
                ["bash", "-c", 'source /dev/stdin && complete -p convthread'],
                input=script, capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            assert check.returncode == 0, check.stderr
            assert "convthread" in check.stdout


def test_completion_without_shtab_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "shtab", None)
    assert main(["completion", "bash"]) == 4
    assert "pip install 'convthread[cli]'" in capsys.readouterr().err


def test_threads_and_customer_over_every_durable_store(store_url: str) -> None:
    from datetime import datetime, timedelta, timezone

    from convthread.channels import sms

    t0 = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
    with ct.Conversations(store_url) as convs:
        for i in range(6):
            form = {"MessageSid": f"SM{i}", "From": f"+1415555010{i % 3}", "Body": f"hi {i}"}
            (inbound,) = sms.parse(form, received_at=t0 + timedelta(minutes=i))
            convs.ingest(inbound)  # type: ignore[arg-type]
        first = convs.find_customer(ct.phone("+14155550100"))
        (thread,) = convs.customer_threads(first or "")
        convs.resolve(thread.id, reason="answered")
    doc = json.loads(run_cli("threads", "--store", store_url, "--json", "--all"))
    assert len(doc["threads"]) == 3
    assert [t["message_count"] for t in doc["threads"]] == [2, 2, 2]
    open_only = json.loads(run_cli("threads", "--store", store_url, "--json", "--status", "open"))
    assert thread.id not in {t["id"] for t in open_only["threads"]}
    assert len(open_only["threads"]) == 2
    late = json.loads(
        run_cli("threads", "--store", store_url, "--json", "--active-since", "2026-05-01T12:04")
    )
    assert len(late["threads"]) == 2  # the second and third customers wrote last at :04, :05
    who = json.loads(run_cli("customer", "-i", "phone:+14155550100", "--store", store_url,
                             "--json"))  # fmt: skip
    assert who["id"] == first and [t["id"] for t in who["threads"]] == [thread.id]
    assert who["identifiers"][0]["evidence"]["channel"] == "sms"
