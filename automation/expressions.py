"""Arithmetic on an entity's fields for ``set_field: {compute: …}``.

``amount - prepayment_amount``, ``(price + delivery) * 1.2``: numbers, field names, ``+ - *
/``, parentheses and unary minus. Parsed once when the configuration is loaded (errors name
the position); evaluated against the fields, refusing a field that is missing or not a
number.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d+)?)|([a-z0-9][a-z0-9_.-]{0,62})|(.))")
Number = int | float


class ExpressionError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Num:
    value: Number


@dataclass(frozen=True, slots=True)
class Name:
    field: str


@dataclass(frozen=True, slots=True)
class Neg:
    operand: Node


@dataclass(frozen=True, slots=True)
class BinOp:
    op: str
    left: Node
    right: Node


Node = Num | Name | Neg | BinOp


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            break
        start = m.start(m.lastindex or 0)
        if m.group(1) is not None:
            out.append(("num", m.group(1), start))
        elif m.group(2) is not None:
            out.append(("name", m.group(2), start))
        elif m.group(3) is not None:
            char = m.group(3)
            if char not in "+-*/()":
                raise ExpressionError(f"unexpected {char!r} at position {start + 1}")
            out.append(("op", char, start))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str, int]:
        tok = self.peek()
        if tok is None:
            raise ExpressionError("the expression ends too early")
        self.i += 1
        return tok

    def expr(self) -> Node:
        node = self.term()
        while (tok := self.peek()) is not None and tok[0] == "op" and tok[1] in "+-":
            self.i += 1
            node = BinOp(tok[1], node, self.term())
        return node

    def term(self) -> Node:
        node = self.unary()
        while (tok := self.peek()) is not None and tok[0] == "op" and tok[1] in "*/":
            self.i += 1
            node = BinOp(tok[1], node, self.unary())
        return node

    def unary(self) -> Node:
        kind, value, pos = self.take()
        if kind == "op" and value == "-":
            return Neg(self.unary())
        if kind == "op" and value == "(":
            node = self.expr()
            closing = self.take()
            if closing[1] != ")":
                raise ExpressionError(f"expected ')' at position {closing[2] + 1}")
            return node
        if kind == "num":
            return Num(float(value) if "." in value else int(value))
        if kind == "name":
            return Name(value)
        raise ExpressionError(f"unexpected {value!r} at position {pos + 1}")


def parse(text: str) -> Node:
    """Parse ``text``; :class:`ExpressionError` says what and where."""
    if not text.strip():
        raise ExpressionError("an empty expression")
    p = _Parser(text)
    node = p.expr()
    if (tok := p.peek()) is not None:
        raise ExpressionError(f"unexpected {tok[1]!r} at position {tok[2] + 1}")
    return node


def names(node: Node) -> set[str]:
    if isinstance(node, Name):
        return {node.field}
    if isinstance(node, Neg):
        return names(node.operand)
    if isinstance(node, BinOp):
        return names(node.left) | names(node.right)
    return set()


def _number(value: Any, field: str) -> Number:
    if isinstance(value, bool) or value is None:
        raise ExpressionError(f"field {field!r} has no number")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value) if "." in value else int(value)
        except ValueError:
            pass
    raise ExpressionError(f"field {field!r} is not a number: {value!r}")


def evaluate(node: Node, fields: Mapping[str, Any]) -> Number:
    if isinstance(node, Num):
        return node.value
    if isinstance(node, Name):
        return _number(fields.get(node.field), node.field)
    if isinstance(node, Neg):
        return -evaluate(node.operand, fields)
    left, right = evaluate(node.left, fields), evaluate(node.right, fields)
    if node.op == "+":
        return left + right
    if node.op == "-":
        return left - right
    if node.op == "*":
        return left * right
    if right == 0:
        raise ExpressionError("division by zero")
    result = left / right
    return int(result) if result.is_integer() and isinstance(left, int) else result


def compute(text: str, fields: Mapping[str, Any]) -> Number:
    """Evaluate ``text``; a fractional result is rounded to 6 decimal places (money)."""
    result = evaluate(parse(text), fields)
    return round(result, 6) if isinstance(result, float) else result
