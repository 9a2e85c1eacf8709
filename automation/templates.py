"""Texts of tasks, notifications and messages: ``{placeholders}`` filled from the entity.

``{entity.title}``, ``{entity.id}``, ``{entity.stage}``, ``{entity.pipeline}``,
``{fields.<name>}``, ``{contact.name}``, ``{contact.id}``, ``{responsible.name}``,
``{responsible.id}``, ``{rule.id}``, ``{rule.name}``, ``{timer.n}`` (which firing of a
repeating timer this is), ``{timer.times}``. ``{{`` and ``}}`` are literal braces. An
unknown placeholder is a configuration error; a value that is missing renders empty.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
ROOTS: dict[str, frozenset[str] | None] = {
    "entity": frozenset({"id", "title", "stage", "pipeline", "kind"}),
    "fields": None,  # any field name
    "contact": frozenset({"id", "name"}),
    "responsible": frozenset({"id", "name"}),
    "rule": frozenset({"id", "name"}),
    "timer": frozenset({"n", "times"}),
}


def placeholders(text: str) -> Iterator[str]:
    for m in _PLACEHOLDER.finditer(text):
        if m.group(1) is not None:
            yield m.group(1)


def problems(text: str) -> list[str]:
    out: list[str] = []
    for name in placeholders(text):
        root, dot, rest = name.partition(".")
        allowed = ROOTS.get(root, frozenset())
        if not dot or root not in ROOTS or (allowed is not None and rest not in allowed):
            out.append(
                f"unknown placeholder {{{name}}}; use entity.title, fields.<name>, "
                "contact.name, responsible.name … (docs/automation.md)"
            )
        elif not rest:
            out.append(f"placeholder {{{name}}} names no field")
    if re.search(r"(?<!\{)\{(?!\{)[^}]*$", text.replace("{{", "")):
        out.append("an unclosed '{' (write '{{' for a literal brace)")
    return out


def render(text: str, values: Mapping[str, object]) -> str:
    def fill(m: re.Match[str]) -> str:
        if m.group(0) == "{{":
            return "{"
        if m.group(0) == "}}":
            return "}"
        value = values.get(m.group(1) or "")
        return "" if value is None else str(value)

    return _PLACEHOLDER.sub(fill, text)
