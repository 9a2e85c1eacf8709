"""Load and check the YAML configuration.

:func:`load_config` reads the six files of a configuration directory into one
:class:`~config.models.AppConfig`. Every problem found — YAML syntax, unknown keys, wrong
types, missing keys, broken references between files, literal secrets — is collected
into one :class:`ConfigError`, each :class:`ConfigProblem` pointing at the file, line,
column and key path of the offending key or value.

Line numbers come from the composed YAML node tree: pydantic's error locations are
mapped back onto the nodes that produced the data.
"""

from __future__ import annotations

import os
import re
import zoneinfo
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from automation import expressions, templates
from automation.rules import (
    ENTRY_KEYS,
    Action,
    AutomationFile,
    Condition,
    RoleRef,
    SendMessage,
    UserRef,
    conditions,
    rule_problems,
)
from config.models import (
    COMMENTS_MODES,
    AppConfig,
    CalendarFile,
    ChannelAccount,
    ChannelsFile,
    Pipeline,
    PipelineKind,
    PipelinesFile,
    SourceMode,
    SourcesFile,
    StageOutcome,
    TemplatesFile,
    UsersFile,
)
from config.settings import DEFAULT_CONFIG_DIR

__all__ = [
    "CONFIG_FILES",
    "ConfigError",
    "ConfigProblem",
    "check_config",
    "load_config",
    "missing_secrets",
    "resolve_secret",
]

CHANNELS = "channels.yaml"
PIPELINES = "pipelines.yaml"
SOURCES = "sources.yaml"
USERS = "users.yaml"
CALENDAR = "calendar.yaml"
AUTOMATION = "automation.yaml"

#: The files of a configuration directory, in reporting order.
CONFIG_FILES: tuple[str, ...] = (CHANNELS, PIPELINES, SOURCES, USERS, CALENDAR, AUTOMATION)
#: Files that may be absent (their defaults apply).
OPTIONAL_FILES = frozenset({CHANNELS, CALENDAR, AUTOMATION})

_IDENT_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
_ENV_PATTERN = r"^[A-Z_][A-Z0-9_]*$"
_ENV_NAME = re.compile(_ENV_PATTERN)
_SECRET_WORDS = ("password", "secret", "token")

Path_ = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


# --- problems ------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in one file: ``file:line:col: key: message``."""

    file: str  # file name inside the configuration directory, e.g. "sources.yaml"
    line: int | None  # 1-based; None when there is no position (file missing, empty)
    column: int | None  # 1-based
    key: str  # dotted key path, e.g. "pipelines[1].stages[3].required_fields[0]"
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        parts = [where, self.key, self.message] if self.key else [where, self.message]
        return ": ".join(parts)


class ConfigError(Exception):
    """The configuration is invalid; :attr:`problems` lists everything found."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems: list[ConfigProblem] = list(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        n = len(self.problems)
        head = f"{n} configuration problem{'s' if n != 1 else ''}"
        return "\n".join([head + ":", *(f"  {p}" for p in self.problems)])


def format_key(path: Path_) -> str:
    """``("pipelines", 1, "stages", 3, "id")`` → ``"pipelines[1].stages[3].id"``."""
    out = ""
    for elem in path:
        if isinstance(elem, int):
            out += f"[{elem}]"
        else:
            out += f".{elem}" if out else elem
    return out


# --- YAML ----------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core scalars.

    Only ``true``/``false`` are booleans (``on``, ``yes``, ``no`` stay strings), and
    ``18:00`` is a string, not the base-60 integer 1080; ``0993`` is a string, not octal.
    """


_REPLACED_TAGS = frozenset(
    {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
)
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _REPLACED_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?(?:0|[1-9][0-9]*)|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?[0-9]+[eE][-+]?[0-9]+"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


@dataclass
class _Doc:
    """One parsed file: the composed node tree (for positions) and its Python data."""

    file: str
    root: Node | None = None
    data: Any = None
    parsed: bool = False


def _position(node: Node | None) -> tuple[int | None, int | None]:
    if node is None:
        return None, None
    return node.start_mark.line + 1, node.start_mark.column + 1


def _lookup(mapping: MappingNode, name: str | int) -> tuple[Node, Node] | None:
    """The (key, value) nodes of ``name`` in a mapping (the last one, as YAML loads)."""
    found: tuple[Node, Node] | None = None
    for key, value in mapping.value:
        if isinstance(key, ScalarNode) and key.value == str(name):
            found = (key, value)
    return found


def _iter_pairs(node: Node | None, path: Path_ = ()) -> Iterator[tuple[Path_, Node, Node]]:
    """Every mapping entry below ``node``: (key path, key node, value node)."""
    if isinstance(node, MappingNode):
        for key, value in node.value:
            if isinstance(key, ScalarNode):
                sub = (*path, key.value)
                yield sub, key, value
                yield from _iter_pairs(value, sub)
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            yield from _iter_pairs(item, (*path, i))


def _duplicate_keys(doc: _Doc, node: Node | None, path: Path_ = ()) -> Iterator[ConfigProblem]:
    """Keys repeated in one mapping (plain YAML loading would keep the last silently)."""
    if isinstance(node, MappingNode):
        first: dict[str, ScalarNode] = {}
        for key, value in node.value:
            if isinstance(key, ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if key.value in first:
                    line, col = _position(key)
                    prev, _ = _position(first[key.value])
                    yield ConfigProblem(
                        doc.file,
                        line,
                        col,
                        format_key((*path, key.value)),
                        f"duplicate key '{key.value}' (first on line {prev})",
                    )
                else:
                    first[key.value] = key
                yield from _duplicate_keys(doc, value, (*path, key.value))
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(doc, item, (*path, i))


def _parse(config_dir: Path, file: str, problems: list[ConfigProblem]) -> _Doc:
    doc = _Doc(file)
    path = config_dir / file
    if not path.is_file():
        if file not in OPTIONAL_FILES:
            problems.append(ConfigProblem(file, None, None, "", f"file not found in {config_dir}"))
        else:
            doc.parsed = True  # absent optional file: defaults
        return doc
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(ConfigProblem(file, None, None, "", f"cannot read: {exc}"))
        return doc
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        problems.extend(_duplicate_keys(doc, root))
        # Construction flattens merge keys ("<<") in place; positions stay valid.
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        problems.append(_syntax_problem(file, exc))
        return doc
    except yaml.YAMLError as exc:
        problems.append(ConfigProblem(file, None, None, "", f"YAML error: {exc}"))
        return doc
    finally:
        loader.dispose()
    doc.root, doc.data, doc.parsed = root, data, True
    return doc


def _syntax_problem(file: str, exc: yaml.MarkedYAMLError) -> ConfigProblem:
    mark, context = exc.problem_mark, exc.context or ""
    # An unclosed flow collection or quoted scalar, or a key without its ':', is only
    # noticed later (often lines later): point at where it starts instead.
    if exc.context_mark is not None and (
        mark is None
        or context.startswith(
            ("while scanning a simple key", "while parsing a flow", "while scanning a quoted")
        )
    ):
        mark = exc.context_mark
    message = f"YAML syntax error: {exc.problem or context or 'invalid YAML'}"
    if context and exc.problem:
        other = exc.context_mark if mark is exc.problem_mark else exc.problem_mark
        if other is not None and mark is not None and other.line != mark.line:
            where = "started" if other is exc.context_mark else "noticed"
            message += f" ({context}, {where} on line {other.line + 1})"
        else:
            message += f" ({context})"
    line = mark.line + 1 if mark is not None else None
    column = mark.column + 1 if mark is not None else None
    return ConfigProblem(file, line, column, "", message)


# --- validation errors → positions ---------------------------------------------------


def _walk(
    root: Node | None, loc: Path_, *, missing: bool = False
) -> tuple[Node | None, Node | None, Path_]:
    """Follow ``loc`` down the node tree.

    Returns the deepest node reached, the key node of the last mapping step (None after a
    sequence step) and the part of ``loc`` that names data. Elements that match nothing
    (pydantic's union member tags such as ``"str"`` or ``"int"``) are skipped. With
    ``missing`` the last element is a key absent from the node reached before it.
    """
    cur, key_node, kept = root, None, []
    for i, elem in enumerate(loc):
        if missing and i == len(loc) - 1:
            kept.append(elem)
            break
        if isinstance(cur, MappingNode):
            pair = _lookup(cur, elem)
            if pair is not None:
                key_node, cur = pair
                kept.append(elem)
        elif isinstance(cur, SequenceNode) and isinstance(elem, int) and 0 <= elem < len(cur.value):
            cur, key_node = cur.value[elem], None
            kept.append(elem)
    return cur, key_node, tuple(kept)


def _show(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _error_message(err: ErrorDetails, path: Path_) -> str:
    kind = err["type"]
    name = path[-1] if path else ""
    value = err.get("input")
    if kind == "missing":
        return f"missing required key '{name}'"
    if kind == "extra_forbidden":
        return f"unknown key '{name}'"
    if kind == "value_error":  # our own validators say what they got
        return err["msg"].removeprefix("Value error, ")
    if kind == "string_pattern_mismatch":
        pattern = (err.get("ctx") or {}).get("pattern")
        if pattern == _ENV_PATTERN:
            # Never echo the value: it may be the secret itself.
            return (
                "must be the NAME of an environment variable (A-Z, 0-9, '_'), not the secret itself"
            )
        if pattern == _IDENT_PATTERN:
            return (
                "must be an identifier: lowercase letters, digits, '_', '.', '-', "
                f"starting with a letter or digit, got {_show(value)}"
            )
    message = err["msg"]
    if value is None or isinstance(value, (str, int, float, bool)):
        message += f", got {_show(value)}"
        if kind == "string_type" and isinstance(value, (int, float)):
            message += " (put it in quotes)"
    return message


def _validation_problems(doc: _Doc, exc: ValidationError) -> list[ConfigProblem]:
    grouped: dict[tuple[int | None, int | None, Path_], list[ErrorDetails]] = {}
    for err in exc.errors():
        kind = err["type"]
        node, key_node, path = _walk(doc.root, tuple(err["loc"]), missing=kind == "missing")
        at = key_node if kind == "extra_forbidden" and key_node is not None else node
        line, col = _position(at)
        grouped.setdefault((line, col, path), []).append(err)
    return [
        ConfigProblem(doc.file, line, col, format_key(path), _group_message(errors, path))
        for (line, col, path), errors in grouped.items()
    ]


def _group_message(errors: list[ErrorDetails], path: Path_) -> str:
    """One message for the errors at one position (a union gives one per member)."""
    prefix = "Input should be a valid "
    if len(errors) > 1 and all(e["msg"].startswith(prefix) for e in errors):
        kinds: list[str] = []
        for e in errors:
            kind = e["msg"][len(prefix) :].split(",")[0]
            if kind not in kinds:
                kinds.append(kind)
        message = prefix + (", ".join(kinds[:-1]) + " or " + kinds[-1])
        value = errors[0].get("input")
        if value is None or isinstance(value, (str, int, float, bool)):
            message += f", got {_show(value)}"
        return message
    messages: list[str] = []
    for e in errors:
        message = _error_message(e, path)
        if message not in messages:
            messages.append(message)
    return "; ".join(messages)


def _validate(doc: _Doc, model: type[M], problems: list[ConfigProblem]) -> M | None:
    if not doc.parsed:
        return None
    data = {} if doc.data is None else doc.data
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems.extend(_validation_problems(doc, exc))
        return None


# --- references between files --------------------------------------------------------


class _Checker:
    def __init__(self, docs: dict[str, _Doc], problems: list[ConfigProblem]) -> None:
        self.docs = docs
        self.problems = problems
        # channels.yaml when it is valid (automation's templates refer to its accounts).
        self.cf: ChannelsFile | None = None

    def where(self, file: str, path: Path_) -> tuple[int | None, int | None]:
        node, _, _ = _walk(self.docs[file].root, path)
        return _position(node)

    def report(self, file: str, path: Path_, message: str) -> None:
        line, col = self.where(file, path)
        self.problems.append(ConfigProblem(file, line, col, format_key(path), message))

    def unique(
        self, file: str, what: str, items: Sequence[tuple[object, Path_]], scope: str = ""
    ) -> None:
        """Report every repeat of a value; ``items`` pairs each value with its path."""
        seen: dict[object, Path_] = {}
        for value, path in items:
            if value in seen:
                first, _ = self.where(file, seen[value])
                where = f" {scope}" if scope else ""
                self.report(
                    file, path, f"duplicate {what} '{value}'{where} (first on line {first})"
                )
            else:
                seen[value] = path

    # pipelines.yaml

    def pipelines(self, pf: PipelinesFile) -> None:
        self.unique(
            PIPELINES,
            "pipeline id",
            [(p.id, ("pipelines", i, "id")) for i, p in enumerate(pf.pipelines)],
        )
        for i, p in enumerate(pf.pipelines):
            self.unique(
                PIPELINES,
                "stage id",
                [(s.id, ("pipelines", i, "stages", j, "id")) for j, s in enumerate(p.stages)],
                scope=f"in pipeline '{p.id}'",
            )
            if all(s.final for s in p.stages):
                self.report(
                    PIPELINES,
                    ("pipelines", i, "stages"),
                    f"pipeline '{p.id}' has no open stage (outcome: open) to start in",
                )
            if not any(s.final for s in p.stages):
                self.report(
                    PIPELINES,
                    ("pipelines", i, "stages"),
                    f"pipeline '{p.id}' has no final stage (outcome: won or failed)",
                )
            self.surveys(i, p)
            for j, stage in enumerate(p.stages):
                at: Path_ = ("pipelines", i, "stages", j)
                if stage.no_return and stage.final:
                    self.report(
                        PIPELINES,
                        (*at, "no_return"),
                        "no_return applies to open stages (a final stage is left only by "
                        "reopening)",
                    )
                for k, req in enumerate(stage.requires):
                    for key in sorted(set(req.if_.keys_used()) - ENTRY_KEYS):
                        self.report(
                            PIPELINES,
                            (*at, "requires", k, "if", key),
                            f"an entry condition tests the lead/deal itself; '{key}' is not "
                            f"allowed here (use {', '.join(sorted(ENTRY_KEYS))})",
                        )

    # users.yaml

    def users(self, uf: UsersFile) -> None:
        self.unique(USERS, "user id", [(u.id, ("users", i, "id")) for i, u in enumerate(uf.users)])
        self.unique(
            USERS,
            "department id",
            [(d.id, ("departments", i, "id")) for i, d in enumerate(uf.departments)],
        )
        dept_ids = {d.id for d in uf.departments}
        user_ids = {u.id for u in uf.users}
        for i, u in enumerate(uf.users):
            if u.department not in dept_ids:
                self.report(
                    USERS, ("users", i, "department"), f"unknown department '{u.department}'"
                )
        for i, d in enumerate(uf.departments):
            if d.parent is not None and d.parent not in dept_ids:
                self.report(USERS, ("departments", i, "parent"), f"unknown department '{d.parent}'")
            if d.head is not None and d.head not in user_ids:
                self.report(USERS, ("departments", i, "head"), f"unknown user '{d.head}'")
            if d.agent is not None and d.agent not in user_ids:
                self.report(USERS, ("departments", i, "agent"), f"unknown user '{d.agent}'")
        for i, ab in enumerate(uf.absences):
            for key, uid in (("user", ab.user), ("deputy", ab.deputy)):
                if uid is not None and uid not in user_ids:
                    self.report(USERS, ("absences", i, key), f"unknown user '{uid}'")
            if ab.deputy == ab.user:
                self.report(USERS, ("absences", i, "deputy"), "a user cannot deputise for themself")
        self.department_cycles(uf)

    def department_cycles(self, uf: UsersFile) -> None:
        index = {d.id: i for i, d in reversed(list(enumerate(uf.departments)))}
        parent = {d.id: d.parent for d in uf.departments if d.parent in index}
        reported: set[frozenset[str]] = set()
        for d in uf.departments:
            chain: list[str] = []
            cur: str | None = d.id
            while cur is not None and cur not in chain:
                chain.append(cur)
                cur = parent.get(cur)
            if cur is None:
                continue
            cycle = chain[chain.index(cur) :]
            members = frozenset(cycle)
            if members in reported:
                continue
            reported.add(members)
            start = min(cycle, key=index.__getitem__)
            k = cycle.index(start)
            ordered = [*cycle[k:], *cycle[:k], start]
            self.report(
                USERS,
                ("departments", index[start], "parent"),
                f"department parent cycle: {' -> '.join(ordered)}",
            )

    # sources.yaml

    def sources(self, sf: SourcesFile, pf: PipelinesFile | None, uf: UsersFile | None) -> None:
        self.unique(
            SOURCES, "source id", [(s.id, ("sources", i, "id")) for i, s in enumerate(sf.sources)]
        )
        pipelines = {p.id: p for p in pf.pipelines} if pf is not None else None
        users = {u.id: u for u in uf.users} if uf is not None else None
        for i, s in enumerate(sf.sources):
            at: Path_ = ("sources", i)
            if s.line is None and s.responsible is None:
                self.report(
                    SOURCES,
                    at,
                    f"source '{s.id}' needs a 'line' or a 'responsible' to assign new leads",
                )
            if pipelines is not None:
                p = pipelines.get(s.pipeline)
                if p is None:
                    self.report(SOURCES, (*at, "pipeline"), f"unknown pipeline '{s.pipeline}'")
                else:
                    need = PipelineKind.LEAD if s.mode is SourceMode.LEADS else PipelineKind.DEAL
                    if p.kind is not need:
                        self.report(
                            SOURCES,
                            (*at, "pipeline"),
                            f"mode {s.mode.value} needs a pipeline of kind {need.value}; "
                            f"pipeline '{p.id}' is of kind {p.kind.value}",
                        )
                    if s.stage is not None:
                        stage = p.stage(s.stage)
                        if stage is None:
                            self.report(
                                SOURCES,
                                (*at, "stage"),
                                f"pipeline '{p.id}' has no stage '{s.stage}'",
                            )
                        elif stage.final:
                            self.report(
                                SOURCES,
                                (*at, "stage"),
                                f"stage '{s.stage}' is final (outcome {stage.outcome.value}); "
                                "new leads/deals must start in an open stage",
                            )
            if users is not None:
                if s.responsible is not None:
                    user = users.get(s.responsible)
                    if user is None:
                        self.report(
                            SOURCES, (*at, "responsible"), f"unknown user '{s.responsible}'"
                        )
                    elif not user.active:
                        self.report(
                            SOURCES, (*at, "responsible"), f"user '{s.responsible}' is inactive"
                        )
                if s.line is not None and not any(
                    u.active and s.line in u.lines for u in users.values()
                ):
                    self.report(
                        SOURCES,
                        (*at, "line"),
                        f"no active user serves line '{s.line}' (users.yaml users[].lines)",
                    )

    # channels.yaml

    def channels(self, cf: ChannelsFile, sf: SourcesFile | None) -> None:
        self.unique(
            CHANNELS,
            "account",
            [
                (f"{a.channel}/{a.account}", ("accounts", i, "account"))
                for i, a in enumerate(cf.accounts)
            ],
        )
        self.channel_settings(cf)
        if sf is None:
            return
        source_ids = {s.id for s in sf.sources}
        for i, a in enumerate(cf.accounts):
            if a.source not in source_ids:
                self.report(CHANNELS, ("accounts", i, "source"), f"unknown source '{a.source}'")

    def channel_settings(self, cf: ChannelsFile) -> None:
        """Channels that model their ``settings`` (e-mail, webchat) check them here, key by
        key."""
        from channels.email import MailboxSettings  # channels/ imports config.models

        for i, a in enumerate(cf.accounts):
            if "comments" in a.settings and a.settings["comments"] not in COMMENTS_MODES:
                self.report(
                    CHANNELS,
                    ("accounts", i, "settings", "comments"),
                    f"must be 'lead' or 'attach', not {_show(a.settings['comments'])}",
                )
            self.whatsapp_templates(i, a)
            if a.channel == "webchat":
                self.webchat_settings(i, a)
                continue
            if a.channel == "sms":
                self.sms_settings(i, a)
                continue
            if a.channel in ("messenger", "instagram"):
                self.meta_settings(i, a)
                continue
            if a.channel != "email":
                continue
            try:
                MailboxSettings.model_validate(a.settings)
            except ValidationError as exc:
                self.settings_errors(i, exc)

    def whatsapp_templates(self, i: int, a: ChannelAccount) -> None:
        """An account's ``templates`` (WhatsApp only): each as the channel reads it
        (channels/whatsapp_templates.py), names unique per language."""
        from channels.whatsapp_templates import parse_templates

        if not a.templates:
            return
        at: Path_ = ("accounts", i, "templates")
        if a.channel != "whatsapp":
            self.report(CHANNELS, at, "templates are WhatsApp's: only a whatsapp account has them")
            return
        try:
            specs = parse_templates(a.templates)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):  # names and texts: nothing secret
                path: Path_ = (*at, *err["loc"])
                self.report(CHANNELS, path, _error_message(err, path))
            return
        self.unique(
            CHANNELS,
            "template",
            [(f"{t.name} ({t.language})", (*at, k, "name")) for k, t in enumerate(specs)],
        )

    def settings_errors(self, i: int, exc: ValidationError, *, show_input: bool = False) -> None:
        for err in exc.errors(include_url=False, include_input=show_input):
            loc = tuple(err["loc"])
            name = str(loc[0]) if loc else ""
            if err["type"] == "extra_forbidden" and any(w in name for w in _SECRET_WORDS):
                continue  # a literal secret: channel_secrets() reports it
            path: Path_ = ("accounts", i, "settings", *loc)
            self.report(CHANNELS, path, _error_message(err, path))

    def surveys(self, i: int, p: Pipeline) -> None:
        """A pipeline's surveys (docs/survey.md): ids and question keys unique, the
        thresholds' stages in the pipeline."""
        at: Path_ = ("pipelines", i, "surveys")
        self.unique(
            PIPELINES, "survey id", [(s.id, (*at, k, "id")) for k, s in enumerate(p.surveys)]
        )
        for k, survey in enumerate(p.surveys):
            self.unique(
                PIPELINES,
                "question key",
                [(q.key, (*at, k, "questions", n, "key")) for n, q in enumerate(survey.questions)],
                scope=f"in survey '{survey.id}'",
            )
            for name in ("all_top_stage", "otherwise_stage"):
                stage = getattr(survey.thresholds, name)
                if stage is not None and p.stage(stage) is None:
                    self.report(
                        PIPELINES,
                        (*at, k, "thresholds", name),
                        f"pipeline '{p.id}' has no stage '{stage}'",
                    )

    def meta_settings(self, i: int, a: ChannelAccount) -> None:
        """Messenger's and Instagram's keys (channels/meta_settings.py), each checked."""
        from channels.meta_settings import MetaSettings  # channels/ imports config.models

        try:
            MetaSettings.model_validate(a.settings)
        except ValidationError as exc:
            self.settings_errors(i, exc, show_input=True)

    def sms_settings(self, i: int, a: ChannelAccount) -> None:
        """The provider, its credentials' variable names, the sender name, the numbers
        (channels/sms.py ``settings_problems``)."""
        from channels.sms import settings_problems  # channels/ imports config.models

        for key, message in settings_problems(a.settings):
            path: Path_ = ("accounts", i, "settings", *((key,) if key else ()))
            self.report(CHANNELS, path, message)

    def webchat_settings(self, i: int, a: ChannelAccount) -> None:
        """As the service reads them (``WebchatSettings.of``): ``origins`` and ``prechat``
        are space-separated lists checked item by item, the other keys by the model (as
        text, the way the service passes them)."""
        from channels.webchat import WebchatSettings  # channels/ imports config.models

        raw = dict(a.settings)
        for key in ("origins", "prechat"):
            if key not in raw:
                continue
            try:
                WebchatSettings.of(a.model_copy(update={"settings": {key: raw[key]}}))
            except ValueError as exc:
                message = str(exc).removeprefix(f"webchat {a.account}: ")
                self.report(CHANNELS, ("accounts", i, "settings", key), message)
        if a.enabled and not str(raw.get("origins") or "").split():
            self.report(
                CHANNELS,
                ("accounts", i, "settings"),
                "no 'origins': the widget would be refused on every site; list the site's "
                "origins (scheme://host[:port], space-separated)",
            )
        rest = {k: str(v) for k, v in raw.items() if k not in ("origins", "prechat")}
        try:
            WebchatSettings.model_validate(rest)
        except ValidationError as exc:  # colours, texts, limits: nothing secret to echo
            self.settings_errors(i, exc, show_input=True)

    def channel_secrets(self) -> None:
        """Secrets live in the environment: flag literal ones in any ``settings``."""
        for path, key, value in _iter_pairs(self.docs[CHANNELS].root):
            if "settings" not in path[:-1]:
                continue
            name = str(path[-1]).lower()
            if name.endswith("_env"):
                if not (isinstance(value, ScalarNode) and _ENV_NAME.match(value.value)):
                    self.report(
                        CHANNELS,
                        path,
                        "a *_env key must hold the NAME of an environment variable "
                        "(A-Z, 0-9, '_'), not the secret itself",
                    )
            elif any(word in name for word in _SECRET_WORDS) and not (
                isinstance(value, ScalarNode) and value.tag == "tag:yaml.org,2002:null"
            ):
                line, col = _position(key)
                self.problems.append(
                    ConfigProblem(
                        CHANNELS,
                        line,
                        col,
                        format_key(path),
                        f"literal secret in '{path[-1]}': secrets never go into the "
                        f"configuration; put it in an environment variable and name that "
                        f"variable with '{path[-1]}_env'",
                    )
                )

    # calendar.yaml

    def calendar(self, cal: CalendarFile) -> None:
        try:
            zoneinfo.ZoneInfo(cal.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            self.report(
                CALENDAR,
                ("timezone",),
                f"unknown time zone '{cal.timezone}' (use an IANA name like Europe/Moscow)",
            )
        hours = cal.working_hours
        if hours.start >= hours.end:
            self.report(
                CALENDAR,
                ("working_hours", "end"),
                f"working day end {hours.end:%H:%M} must be after start {hours.start:%H:%M}",
            )

    # automation.yaml

    def automation(
        self,
        af: AutomationFile,
        pf: PipelinesFile | None,
        uf: UsersFile | None,
        cf: ChannelsFile | None,
    ) -> None:
        self.unique(
            AUTOMATION, "rule id", [(r.id, ("rules", i, "id")) for i, r in enumerate(af.rules)]
        )
        self.cf = cf
        refs = _Refs(
            {p.id: p.kind.value for p in pf.pipelines} if pf is not None else None,
            {p.id: {s.id: s.outcome for s in p.stages} for p in pf.pipelines}
            if pf is not None
            else None,
            {u.id: u.active for u in uf.users} if uf is not None else None,
            {(a.channel, a.account) for a in cf.accounts} if cf is not None else None,
            {r.id for r in af.rules if r.timed},
        )
        for i, rule in enumerate(af.rules):
            at: Path_ = ("rules", i)
            for path, message in rule_problems(rule):
                self.report(AUTOMATION, (*at, *path), message)
            for path, cond in conditions(rule):
                self.rule_condition(cond, (*at, *path), refs)
            scope = refs.scope(rule.if_)
            for j, action in enumerate(rule.do):
                self.rule_action(action, (*at, "do", j), refs, scope)

    def rule_condition(self, cond: Condition, at: Path_, refs: _Refs) -> None:
        if refs.pipelines is not None:
            for k, pid in enumerate(cond.pipeline or ()):
                if pid not in refs.pipelines:
                    self.report(AUTOMATION, (*at, "pipeline", k), f"unknown pipeline '{pid}'")
        scope = refs.scope(cond)
        for key in ("stage", "from_stage", "to_stage"):
            for k, sid in enumerate(getattr(cond, key) or ()):
                if scope and not any(sid in refs.stages_of(p) for p in scope):
                    self.report(
                        AUTOMATION,
                        (*at, key, k),
                        f"no stage '{sid}' in pipeline{'s' if len(scope) > 1 else ''} "
                        + ", ".join(f"'{p}'" for p in scope),
                    )
        for k, rid in enumerate(cond.timer or ()):
            if rid not in refs.timed:
                self.report(AUTOMATION, (*at, "timer", k), f"no rule '{rid}' with a delay")
        if refs.users is not None:
            for k, uid in enumerate(cond.responsible or ()):
                if uid not in refs.users:
                    self.report(AUTOMATION, (*at, "responsible", k), f"unknown user '{uid}'")

    def rule_who(self, who: object, at: Path_, refs: _Refs) -> None:  # Who | FieldWho
        if isinstance(who, UserRef) and refs.users is not None:
            if who.user not in refs.users:
                self.report(AUTOMATION, (*at, "user"), f"unknown user '{who.user}'")
            elif not refs.users[who.user]:
                self.report(AUTOMATION, (*at, "user"), f"user '{who.user}' is inactive")
        elif isinstance(who, RoleRef):
            pass  # the role names are checked by the model

    def rule_text(self, text: str, at: Path_) -> None:
        for message in templates.problems(text):
            self.report(AUTOMATION, at, message)

    def rule_template(self, sm: SendMessage, p: Path_) -> None:
        """``send_message.template``: its params are text templates; it is WhatsApp's, and
        each WhatsApp account it may go through has it with as many params."""
        from channels.whatsapp_templates import find

        assert sm.template is not None
        at = (*p, "template")
        for k, text in enumerate(sm.template.params):
            self.rule_text(text, (*at, "params", k))
        if sm.channel is not None and sm.channel != "whatsapp":
            self.report(AUTOMATION, at, "templates are WhatsApp's: use channel whatsapp")
            return
        for a in self.cf.accounts if self.cf is not None else []:
            if a.channel != "whatsapp" or (sm.account is not None and a.account != sm.account):
                continue
            spec = find(a, sm.template.name, sm.template.language)
            if spec is None:
                self.report(
                    AUTOMATION,
                    (*at, "name"),
                    f"template '{sm.template.name}' is not configured on whatsapp account "
                    f"'{a.account}'",
                )
            elif len(spec.params) != len(sm.template.params):
                self.report(
                    AUTOMATION,
                    (*at, "params"),
                    f"template '{spec.name}' takes {len(spec.params)} params, "
                    f"{len(sm.template.params)} given",
                )

    def rule_action(self, action: Action, at: Path_, refs: _Refs, scope: list[str]) -> None:
        if (a := action.create_task) is not None:
            p = (*at, "create_task")
            self.rule_text(a.title, (*p, "title"))
            if a.description:
                self.rule_text(a.description, (*p, "description"))
            self.rule_who(a.assignee, (*p, "assignee"), refs)
            for k, w in enumerate(a.watchers):
                self.rule_who(w, (*p, "watchers", k), refs)
        if (n := action.notify) is not None:
            self.rule_text(n.text, (*at, "notify", "text"))
            for k, w in enumerate(n.to):
                self.rule_who(w, (*at, "notify", "to", k), refs)
        if (sf := action.set_field) is not None and sf.compute is not None:
            try:
                expressions.parse(sf.compute)
            except expressions.ExpressionError as exc:
                self.report(AUTOMATION, (*at, "set_field", "compute"), f"bad expression: {exc}")
        mv = action.move_to_stage
        if mv is not None and mv.stage != "next" and scope and not refs.in_scope(mv.stage, scope):
            self.report(
                AUTOMATION,
                (*at, "move_to_stage", "stage"),
                f"no stage '{mv.stage}' in " + ", ".join(f"'{p}'" for p in scope),
            )
        cp = action.copy_to_pipeline or action.start_process
        if cp is not None and refs.pipelines is not None:
            p = (*at, "copy_to_pipeline" if action.copy_to_pipeline else "start_process")
            kind = refs.pipelines.get(cp.pipeline)
            if kind is None:
                self.report(AUTOMATION, (*p, "pipeline"), f"unknown pipeline '{cp.pipeline}'")
            elif kind != PipelineKind.DEAL.value:
                self.report(
                    AUTOMATION,
                    (*p, "pipeline"),
                    f"copies are deals: pipeline '{cp.pipeline}' is of kind {kind}",
                )
            elif cp.stage is not None:
                outcome = refs.stages_of(cp.pipeline).get(cp.stage)
                if outcome is None:
                    self.report(
                        AUTOMATION,
                        (*p, "stage"),
                        f"pipeline '{cp.pipeline}' has no stage '{cp.stage}'",
                    )
                elif outcome is not StageOutcome.OPEN:
                    self.report(AUTOMATION, (*p, "stage"), f"stage '{cp.stage}' is final")
        if (sm := action.send_message) is not None:
            p = (*at, "send_message")
            self.rule_text(sm.text, (*p, "text"))
            if sm.template is not None:
                self.rule_template(sm, p)
            if sm.account is not None and sm.channel is None:
                self.report(AUTOMATION, (*p, "account"), "an account needs its 'channel'")
            elif sm.channel is not None and refs.accounts is not None:
                known = {a for c, a in refs.accounts if c == sm.channel}
                if not known:
                    self.report(
                        AUTOMATION, (*p, "channel"), f"no account of channel '{sm.channel}'"
                    )
                elif sm.account is not None and sm.account not in known:
                    self.report(
                        AUTOMATION,
                        (*p, "account"),
                        f"no account '{sm.account}' of channel '{sm.channel}'",
                    )
        if (nn := action.next_number) is not None:
            try:
                nn.format.format(n=1)
            except (ValueError, KeyError, IndexError) as exc:
                self.report(
                    AUTOMATION,
                    (*at, "next_number", "format"),
                    f"bad format (use {{n}}, e.g. 'ORD-{{n:05d}}'): {exc}",
                )
        if (
            (cj := action.close_as_junk) is not None
            and scope
            and not any(refs.stages_of(p).get(cj.stage) is StageOutcome.FAILED for p in scope)
        ):
            self.report(
                AUTOMATION,
                (*at, "close_as_junk", "stage"),
                f"'{cj.stage}' is not a failed stage of " + ", ".join(f"'{p}'" for p in scope),
            )
        if (wh := action.webhook) is not None and not re.match(r"^https?://[^/\s]+", wh.url):
            self.report(AUTOMATION, (*at, "webhook", "url"), "must be an http(s) URL")


@dataclass
class _Refs:
    """What automation.yaml may refer to in the other files (None: that file is broken)."""

    pipelines: dict[str, str] | None  # id → kind
    stages: dict[str, dict[str, StageOutcome]] | None  # pipeline → stage → outcome
    users: dict[str, bool] | None  # id → active
    accounts: set[tuple[str, str]] | None
    timed: set[str]

    def stages_of(self, pipeline: str) -> dict[str, StageOutcome]:
        return (self.stages or {}).get(pipeline, {})

    def in_scope(self, stage: str, scope: list[str]) -> bool:
        return any(stage in self.stages_of(p) for p in scope)

    def scope(self, cond: Condition | None) -> list[str]:
        """The pipelines a condition limits a rule to (all, if it names none)."""
        if self.pipelines is None:
            return []
        named = [p for p in (cond.pipeline or ()) if p in self.pipelines] if cond else []
        return named or list(self.pipelines)


# --- the public API ------------------------------------------------------------------


TEMPLATES = "templates/templates.yaml"


def _templates(
    config_dir: Path,
    docs: dict[str, _Doc],
    problems: list[ConfigProblem],
    pipelines: PipelinesFile | None,
    automation: AutomationFile | None = None,
) -> TemplatesFile | None:
    """``templates/templates.yaml`` (optional; docs/documents.md): each type once, its
    DOCX file present, its number format usable; every ``requires_documents`` type of
    pipelines.yaml and every ``document`` action's template declared."""
    if not (config_dir / TEMPLATES).is_file():
        tf: TemplatesFile | None = TemplatesFile()
    else:
        docs[TEMPLATES] = _parse(config_dir, TEMPLATES, problems)
        tf = _validate(docs[TEMPLATES], TemplatesFile, problems)
    if tf is None:
        return None
    check = _Checker(docs, problems)
    check.unique(
        TEMPLATES,
        "document type",
        [(t.type, ("templates", i, "type")) for i, t in enumerate(tf.templates)],
    )
    for i, t in enumerate(tf.templates):
        if not (config_dir / "templates" / t.file).is_file():
            check.report(TEMPLATES, ("templates", i, "file"), f"no file templates/{t.file}")
        try:
            t.number_format.format(year=2026, n=1)
        except (KeyError, IndexError, ValueError) as exc:
            check.report(
                TEMPLATES,
                ("templates", i, "number_format"),
                f"not a number format of {{year}} and {{n}}: {exc}",
            )
    declared = {t.type for t in tf.templates}
    for i, p in enumerate(pipelines.pipelines if pipelines else []):
        for j, stage in enumerate(p.stages):
            for k, req in enumerate(stage.requires_documents):
                if req.type not in declared:
                    check.report(
                        PIPELINES,
                        ("pipelines", i, "stages", j, "requires_documents", k, "type"),
                        f"no document type '{req.type}' in {TEMPLATES}",
                    )
    # Without templates.yaml documents are not set up: a copied configuration may keep its
    # document rules, which then fail at run time (automation.failed unknown_type).
    configured = (config_dir / TEMPLATES).is_file()
    for i, rule in enumerate(automation.rules if automation and configured else []):
        for j, action in enumerate(rule.do):
            if action.document is not None and action.document.template not in declared:
                check.report(
                    AUTOMATION,
                    ("rules", i, "do", j, "document", "template"),
                    f"no document type '{action.document.template}' in {TEMPLATES}",
                )
    return tf.model_copy(update={"dir": str((config_dir / "templates").resolve())})


def _load(config_dir: Path) -> tuple[AppConfig | None, list[ConfigProblem]]:
    problems: list[ConfigProblem] = []
    if not config_dir.is_dir():
        return None, [ConfigProblem(str(config_dir), None, None, "", "not a directory")]
    docs = {file: _parse(config_dir, file, problems) for file in CONFIG_FILES}

    channels = _validate(docs[CHANNELS], ChannelsFile, problems)
    pipelines = _validate(docs[PIPELINES], PipelinesFile, problems)
    sources = _validate(docs[SOURCES], SourcesFile, problems)
    users = _validate(docs[USERS], UsersFile, problems)
    calendar = _validate(docs[CALENDAR], CalendarFile, problems)
    automation = _validate(docs[AUTOMATION], AutomationFile, problems)

    # References are checked wherever the files involved are valid on their own, so one
    # broken file does not hide the problems of the others.
    check = _Checker(docs, problems)
    check.channel_secrets()
    if pipelines is not None:
        check.pipelines(pipelines)
    if users is not None:
        check.users(users)
    if sources is not None:
        check.sources(sources, pipelines, users)
    if channels is not None:
        check.channels(channels, sources)
    if calendar is not None:
        check.calendar(calendar)
    if automation is not None:
        check.automation(automation, pipelines, users, channels)
    templates = _templates(config_dir, docs, problems, pipelines, automation)

    order = {file: i for i, file in enumerate(CONFIG_FILES)}
    problems.sort(key=lambda p: (order.get(p.file, -1), p.line or 0, p.column or 0))
    if (
        problems
        or channels is None
        or pipelines is None
        or sources is None
        or users is None
        or calendar is None
        or automation is None
        or templates is None
    ):
        return None, problems
    cfg = AppConfig(
        channels=channels,
        pipelines=pipelines,
        sources=sources,
        users=users,
        calendar=calendar,
        automation=automation,
        templates=templates,
    )
    return cfg, problems


def load_config(config_dir: Path | str = DEFAULT_CONFIG_DIR) -> AppConfig:
    """Read and check ``config_dir``; raise :class:`ConfigError` listing every problem."""
    cfg, problems = _load(Path(config_dir))
    if cfg is None:
        raise ConfigError(problems)
    return cfg


def check_config(config_dir: Path | str = DEFAULT_CONFIG_DIR) -> list[ConfigProblem]:
    """Every problem of ``config_dir`` (an empty list when it is valid)."""
    _, problems = _load(Path(config_dir))
    return problems


def resolve_secret(account: ChannelAccount) -> str | None:
    """The account's secret from the environment variable it names (None if unset)."""
    if account.secret_env is None:
        return None
    return os.environ.get(account.secret_env)


def _secret_env_names(account: ChannelAccount) -> Iterator[str]:
    if account.secret_env is not None:
        yield account.secret_env
    for key, value in account.settings.items():
        if key.lower().endswith("_env") and isinstance(value, str):
            yield value


def missing_secrets(cfg: AppConfig) -> list[str]:
    """Names of secret environment variables of enabled accounts that are not set.

    A warning, not an error: an account without its secret rejects its traffic.
    """
    names: list[str] = []
    for account in cfg.channels.accounts:
        if not account.enabled:
            continue
        for name in _secret_env_names(account):
            if not os.environ.get(name) and name not in names:
                names.append(name)
    return names
