"""The ``omniroute`` command, run as a user runs it: a separate process, real exit codes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from config.loader import CONFIG_FILES
from config.settings import DEFAULT_CONFIG_DIR
from crm_store import conversations, outbox
from crm_store.conversion import convert
from crm_store.indexes import INDEXES
from ingest.cli import build_parser
from ingest.cli.config_cmds import MAKE_RUN_SECRETS
from tests.service import ROOT, api_body, in_process

TIMEOUT = 60


@dataclass
class Result:
    code: int
    out: str
    err: str


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIROUTE_")}
    env.update({"OMNIROUTE_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1", **extra})
    return env


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "ingest.cli", *args],
        cwd=ROOT,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


async def arun(*args: str, env: dict[str, str]) -> Result:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ingest.cli",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def subcommands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    """Every (nested) subcommand of the parser, e.g. ``("db", "indexes")``."""
    found: list[tuple[str, ...]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((*prefix, name))
                found.extend(subcommands(sub, (*prefix, name)))
    return found


COMMANDS = subcommands(build_parser())


# --- help ------------------------------------------------------------------------------


def help_in_process(command: tuple[str, ...]) -> Result:
    """``omniroute COMMAND --help`` through the program's own parser, in this process."""
    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            build_parser().parse_args([*command, "--help"])
        except SystemExit as exc:
            code = exc.code
    return Result(code if isinstance(code, int) else 1, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def helps() -> dict[tuple[str, ...], Result]:
    """``--help`` of the program as a fresh interpreter (the entry point imports and runs),
    and of every subcommand through the same parser in this process (a fresh interpreter
    each cost ~1.4 s of imports: 20 s of the suite for the same parser)."""
    found = {command: help_in_process(command) for command in COMMANDS}
    found[()] = run("--help")
    return found


def test_top_level_help(helps: dict[tuple[str, ...], Result]) -> None:
    r = helps[()]
    assert r.code == 0, r.err
    assert r.out.startswith("usage: omniroute")
    assert "MongoDB" in r.out
    for (name,) in (c for c in COMMANDS if len(c) == 1):
        assert name in r.out
    assert r.err == ""


def test_the_expected_commands_exist() -> None:
    assert {
        ("serve",),
        ("check-config",),
        ("db",),
        ("db", "indexes"),
        ("explain",),
        ("inspect",),
    } <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_every_subcommand_has_help(
    helps: dict[tuple[str, ...], Result], command: tuple[str, ...]
) -> None:
    r = helps[command]
    assert r.code == 0, r.err
    assert r.out.startswith(f"usage: omniroute {' '.join(command)}")
    assert "-h, --help" in r.out
    assert "Traceback" not in r.out + r.err


def test_no_command_is_a_usage_error() -> None:
    r = run()
    assert r.code == 2
    assert "usage: omniroute" in r.err
    assert "Traceback" not in r.err


def test_unknown_command_is_a_usage_error() -> None:
    r = run("frobnicate")
    assert r.code == 2
    assert "invalid choice" in r.err


# --- check-config ----------------------------------------------------------------------


def test_check_config_on_the_shipped_example() -> None:
    r = run("check-config", str(DEFAULT_CONFIG_DIR))
    assert r.code == 0, r.err
    assert "OK" in r.out
    assert "pipelines" in r.out
    # The environment is scrubbed of OMNIROUTE_*: the account secrets are reported missing,
    # except the one `make run` sets itself, which is only a note saying so.
    assert "warning: environment variable OMNIROUTE_SECRET_API_SHOP is not set" in r.err
    assert "warning: environment variable OMNIROUTE_SECRET_API_SITE" not in r.err
    assert (
        "note: environment variable OMNIROUTE_SECRET_API_SITE is not set here; "
        "`make run` sets a development value for it"
    ) in r.err
    # The notifications that lean on the fallback are named, none reaches nobody.
    assert "note: rule lead-untouched: notify [head] resolves to nobody" in r.err
    assert "warning: rule" not in r.err


def test_the_secrets_check_config_leaves_to_make_run_are_the_ones_it_sets() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    run_recipe = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert set(re.findall(r"(OMNIROUTE_SECRET_\w+)=", run_recipe)) == set(MAKE_RUN_SECRETS)


def test_check_config_defaults_to_the_configured_directory(tmp_path: Path) -> None:
    r = run("check-config", env=cli_env(OMNIROUTE_CONFIG_DIR=str(broken_copy(tmp_path))))
    assert r.code == 1


def broken_copy(tmp_path: Path) -> Path:
    """The example with one source pointing at a pipeline that does not exist."""
    target = tmp_path / "config"
    target.mkdir()
    for name in CONFIG_FILES:
        shutil.copy(DEFAULT_CONFIG_DIR / name, target / name)
    sources = target / "sources.yaml"
    text = sources.read_text(encoding="utf-8")
    old = "    mode: no_leads\n    pipeline: direct\n"
    assert text.count(old) == 1
    sources.write_text(text.replace(old, "    mode: no_leads\n    pipeline: nowhere\n"))
    return target


def test_check_config_on_a_broken_copy(tmp_path: Path) -> None:
    config_dir = broken_copy(tmp_path)
    lines = (config_dir / "sources.yaml").read_text(encoding="utf-8").splitlines()
    line = next(i for i, text in enumerate(lines, 1) if "pipeline: nowhere" in text)
    col = lines[line - 1].index("nowhere") + 1
    r = run("check-config", str(config_dir))
    assert r.code == 1
    assert r.out == ""
    problems = [p for p in r.err.splitlines() if re.match(r"^\S+\.yaml:\d+:\d+: ", p)]
    assert problems == [
        f"sources.yaml:{line}:{col}: sources[4].pipeline: unknown pipeline 'nowhere'"
    ]
    assert "1 problem(s)" in r.err
    assert "Traceback" not in r.err


def test_check_config_reports_every_problem(tmp_path: Path) -> None:
    config_dir = broken_copy(tmp_path)
    users = config_dir / "users.yaml"
    users.write_text(users.read_text(encoding="utf-8").replace("role: admin", "role: overlord"))
    r = run("check-config", str(config_dir))
    assert r.code == 1
    problems = [p for p in r.err.splitlines() if re.match(r"^\S+\.yaml:\d+:\d+: \S+: .+", p)]
    assert [p.split(":")[0] for p in problems] == ["sources.yaml", "users.yaml"]
    assert "2 problem(s)" in r.err


def test_check_config_on_a_missing_directory(tmp_path: Path) -> None:
    r = run("check-config", str(tmp_path / "nope"))
    assert r.code == 1
    assert "not a directory" in r.err


# --- explain, inspect, db indexes against a populated store ----------------------------


async def test_explain_and_inspect(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        # One after the other: the second continues the conversation the first opened.
        s1, b1 = await svc.client.post_api(
            api_body("cli-1", phone="8 (900) 765-43-21", name="Ivan")
        )
        await svc.routed()
        s2, b2 = await svc.client.post_api(api_body("cli-2", phone="+7 900 765 43 21"))
        await svc.routed()
        assert (s1, s2) == (200, 200)
        [first], [second] = b1["accepted"], b2["accepted"]
        lead = await svc.store.leads.find_one({})
        contact = await svc.store.contacts.find_one({})
        assert lead is not None
        assert contact is not None
    env = cli_env(OMNIROUTE_MONGODB_URI=mongo_uri, OMNIROUTE_DB_NAME=db_name)

    explain1, explain2, by_phone, by_other_spelling, by_contact = await asyncio.gather(
        arun("explain", first, env=env),
        arun("explain", second, env=env),
        arun("inspect", "--phone", "89007654321", env=env),
        arun("inspect", "--phone", "+7 (900) 765-43-21", env=env),
        arun("inspect", "--contact", contact["_id"], env=env),
    )

    assert explain1.code == 0, explain1.err
    assert re.search(r"^rule\s+new_lead\b", explain1.out, re.M), explain1.out
    assert re.search(rf"^target\s+lead {lead['_id']}$", explain1.out, re.M), explain1.out
    assert first in explain1.out
    assert "phone:+79007654321" in explain1.out
    assert re.search(r"^intake\s+status routed", explain1.out, re.M), explain1.out

    assert explain2.code == 0, explain2.err
    assert re.search(r"^rule\s+conversation\b", explain2.out, re.M), explain2.out
    assert lead["_id"] in explain2.out

    for r in (by_phone, by_other_spelling, by_contact):
        assert r.code == 0, r.err
        assert f"contact {contact['_id']}" in r.out
        assert "phone:+79007654321" in r.out
        assert "leads (1)" in r.out
        assert re.search(rf"^\s+{lead['_id']}\s+leads/new\s+open", r.out, re.M), r.out
        assert "new_lead" in r.out
        assert "conversation" in r.out
        assert "Hello, I would like a kitchen" not in r.out  # texts are not printed
    assert by_phone.out == by_other_spelling.out


async def test_explain_of_a_note_and_a_reply_and_inspect_of_a_deal(
    mongo_uri: str, db_name: str
) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        status, body = await svc.client.post_api(
            api_body("cli-n1", phone="+79007650001", name="Olga", text="A wardrobe, 2 m")
        )
        assert status == 200, body
        await svc.routed()
        [inbound] = body["accepted"]
        conv = await svc.store.conversations.find_one({})
        lead = await svc.store.leads.find_one({})
        assert conv is not None
        assert lead is not None
        # An operator's internal note and a reply in the conversation; the lead becomes a
        # deal with its responsible.
        note = await conversations.add_note(svc.store, conv, "call her after 6 pm", "anna.smirnova")
        reply = await outbox.queue(
            svc.store, conv, text="We will call you", author_id="anna.smirnova"
        )
        deal = await convert(
            svc.store,
            lead,
            svc.service.config.pipeline("orders"),
            "estimate",
            None,
            "anna.smirnova",
        )
        await svc.store.deals.update_one(
            {"_id": deal["_id"]}, {"$set": {"responsible_id": "dmitry.kozlov"}}
        )
    env = cli_env(OMNIROUTE_MONGODB_URI=mongo_uri, OMNIROUTE_DB_NAME=db_name)
    of_note, of_reply, report = await asyncio.gather(
        arun("explain", note["_id"], env=env),
        arun("explain", reply["_id"], env=env),
        arun("inspect", "--phone", "+79007650001", env=env),
    )
    for r in (of_note, of_reply, report):
        assert r.code == 0, r.err
        assert "Traceback" not in r.err

    assert re.search(rf"^note\s+{note['_id']}\s+api/site$", of_note.out, re.M), of_note.out
    assert re.search(r"^written\s+.*by anna\.smirnova$", of_note.out, re.M), of_note.out
    assert re.search(r"^routing\s+none: an internal note", of_note.out, re.M), of_note.out
    assert f"conversation {conv['_id']}" in of_note.out
    assert "call her after 6 pm" not in of_note.out  # texts are not printed

    assert re.search(rf"^reply\s+{reply['_id']}\s+api/site\s+by anna", of_reply.out, re.M)
    # The outbox takes it at once: the example site form has no reply_url, so it failed
    # with that reason (or is still queued if the outbox has not got to it yet).
    assert re.search(r"^state\s+(queued|failed)\b", of_reply.out, re.M), of_reply.out
    if re.search(r"^state\s+failed\b", of_reply.out, re.M):
        assert "has no settings.reply_url" in of_reply.out

    # Decisions are the inbound message's only: the note and the reply were never routed.
    decisions = report.out.split("decisions (", 1)[1]
    assert inbound in decisions
    assert note["_id"] not in decisions
    assert reply["_id"] not in decisions
    assert "decisions (last 1 inbound messages)" in report.out
    # The deal names its responsible.
    assert re.search(
        rf"^\s+{deal['_id']}\s+orders/estimate\s+open\s+responsible dmitry\.kozlov\s",
        report.out,
        re.M,
    ), report.out


async def test_explain_and_inspect_of_unknown_things(mongo_uri: str, db_name: str) -> None:
    env = cli_env(OMNIROUTE_MONGODB_URI=mongo_uri, OMNIROUTE_DB_NAME=db_name)
    explain, inspect, junk = await asyncio.gather(
        arun("explain", "000000000000000000000000", env=env),
        arun("inspect", "--email", "nobody@example.com", env=env),
        arun("inspect", "--phone", "call me", env=env),
    )
    assert explain.code == 1
    assert "no message" in explain.err
    assert inspect.code == 1
    assert "no such contact" in inspect.err
    assert junk.code == 2
    assert "not a phone number" in junk.err
    for r in (explain, inspect, junk):
        assert "Traceback" not in r.err


async def test_db_indexes(mongo_uri: str, db_name: str) -> None:
    env = cli_env(OMNIROUTE_MONGODB_URI=mongo_uri, OMNIROUTE_DB_NAME=db_name)
    first = await arun("db", "indexes", env=env)
    assert first.code == 0, first.err
    listed = dict(line.split(": ", 1) for line in first.out.splitlines())
    assert set(listed) == set(INDEXES)
    assert "identities" in listed["contacts"]
    assert "one_open_lead_per_contact" in listed["leads"]
    assert listed["counters"] == "(_id only)"
    again = await arun("db", "indexes", env=env)  # idempotent
    assert (again.code, again.out) == (0, first.out)
