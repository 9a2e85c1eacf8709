"""Mutated variants of a real provider payload, for parser robustness tests.

Give :func:`mutations` one real example payload (a JSON object as the provider sends it)
and it yields :class:`Variant` objects, each one odd change away from the example:

==================  ===============================================================
kind                what changed
==================  ===============================================================
``drop``            one field removed (every field, recursively)
``unknown_field``   unknown fields added to one object
``unknown_kind``    an event-kind value replaced (``kind_paths``) or an event key
                    renamed (``kind_keys``) to a kind nobody knows
``id``              an integer replaced by 2^53+1, 2^63+1, 2^64+1, -1, -2^63
                    (an id-like string by the same numbers as strings)
``date``            a date replaced by 0, -1, year 9999, milliseconds (10^12 scale),
                    10^19, an ISO string and a word
``str_for_num``     a number (or boolean) written as a string, and as a word
``num_for_str``     a string replaced by a number
``array_for_object``an object replaced by ``[object]`` and by ``[]``
``object_for_array``an array replaced by ``{}`` and by its first element
``null``            one value (or every scalar at once) replaced by null
``huge``            a string made 100 000 characters longer
``unicode``         unusual but valid unicode appended to a string (RTL marks, NUL,
                    BOM, combining marks, emoji sequences, astral letters)
``non_utf8``        raw body: invalid UTF-8 bytes inside a string
``surrogate``       raw body: a lone UTF-16 surrogate escape inside a string
==================  ===============================================================

Paths are dotted, list indexes are numbers: ``message.photo.0.file_id``. ``skip`` keeps
paths (and everything under them) unmutated — e.g. a secret that authenticates the body.

:func:`readable` says whether a variant still carries who / where / what (each a
:class:`Need`: alternative paths and what a usable value looks like); the test then
asserts that the parser produced a message for it. :func:`sample` picks a stable subset
(e.g. the ~10 % sent over real HTTP).

Everything here is provider-agnostic and pure. :meth:`Variant.encode` gives a JSON body;
a provider that posts forms encodes ``variant.payload`` its own way (the ``non_utf8`` and
``surrogate`` variants are JSON bodies — skip them there, or re-encode their payload).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

Key = str | int
Path = tuple[Key, ...]

ID_VALUES: tuple[int, ...] = (2**53 + 1, 2**63 + 1, 2**64 + 1, -1, -(2**63))
DATE_VALUES: tuple[object, ...] = (
    0,
    -1,
    253_402_300_799,  # 9999-12-31T23:59:59Z
    1_700_000_000_000,  # milliseconds
    10**19,
    "2024-05-01T10:00:00Z",
    "yesterday",
)
UNICODE_TAIL = (
    " \u200f\u202eRTL\u202c \x00 \ufeff e\u0301"  # RTL marks, NUL, BOM, combining accent
    " \U0001f469\U0001f3fd\u200d\U0001f4bb \u2028 \U0001d518\U0001d52b"  # ZWJ emoji, LS, astral
)
HUGE = 100_000
UNKNOWN_KIND = "x_future_kind"
_PLACEHOLDER = "\u0001MUTATION-PLACEHOLDER\u0001"
NON_UTF8 = b"\xff\xfe\xc0\x80 abc \xed\xa0\x80"
SURROGATE = b"\\ud800 abc"

_DATE_KEY = re.compile(r"(^|_)(date|time|timestamp|ts)$|_at$|^(date|time|timestamp|ts)", re.I)
_ID_KEY = re.compile(r"(^|_)id$|[a-z]Id$", re.I)
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True, slots=True)
class Variant:
    """One mutated payload. ``body`` is set when the mutation cannot be expressed as a
    JSON value (invalid UTF-8, lone surrogates); ``payload`` is then the same document as
    a lenient reader would see it (the odd bytes as U+FFFD)."""

    kind: str
    path: str
    description: str
    payload: Any
    body: bytes | None = None

    def encode(self) -> bytes:
        """The request body (integers of any size kept exact)."""
        if self.body is not None:
            return self.body
        return dumps(self.payload)


def dumps(value: Any) -> bytes:
    """JSON bytes like a provider sends them (any integer size, UTF-8, no ASCII escaping)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def dotted(path: Path) -> str:
    return ".".join(str(k) for k in path)


def parse_path(path: str) -> Path:
    return tuple(int(p) if p.isdigit() else p for p in path.split(".")) if path else ()


_MISSING = object()


def get(doc: Any, path: str | Path, default: Any = None) -> Any:
    """The value at a dotted path, or ``default`` when any step is missing or of the
    wrong type."""
    node = doc
    for key in parse_path(path) if isinstance(path, str) else path:
        in_list = isinstance(key, int) and isinstance(node, list) and -len(node) <= key < len(node)
        if in_list or (isinstance(key, str) and isinstance(node, dict) and key in node):
            node = node[key]
        else:
            return default
    return node


def _replaced(doc: Any, path: Path, value: Any = _MISSING, *, rename: str | None = None) -> Any:
    """A deep copy of ``doc`` with the node at ``path`` replaced (``_MISSING``: removed;
    ``rename``: its key renamed)."""
    out = copy.deepcopy(doc)
    if not path:
        return value
    parent = get(out, path[:-1])
    key = path[-1]
    if rename is not None:
        parent[rename] = parent.pop(key)
    elif value is _MISSING:
        del parent[key]
    else:
        parent[key] = value
    return out


def _walk(doc: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Every node below the root, parents before children."""
    items: Iterable[tuple[Key, Any]]
    if isinstance(doc, dict):
        items = doc.items()
    elif isinstance(doc, list):
        items = enumerate(doc)
    else:
        return
    for key, value in items:
        yield (*path, key), value
        yield from _walk(value, (*path, key))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_date(path: Path, v: Any) -> bool:
    key = str(path[-1]) if path else ""
    if _is_int(v) and (10**9 <= v < 4 * 10**9 or 10**12 <= v < 4 * 10**12):
        return True
    if isinstance(v, str) and _ISO_DATE.match(v):
        return True
    return bool(_DATE_KEY.search(key)) and (_is_int(v) or isinstance(v, str | float))


def _raw(doc: Any, path: Path, original: str, odd: bytes) -> tuple[bytes, Any]:
    """(body with ``odd`` bytes inside the string at ``path``, the payload as read with
    replacement characters)."""
    marked = _replaced(doc, path, original + _PLACEHOLDER)
    body = dumps(marked).replace(_PLACEHOLDER.encode(), odd)
    seen = odd.decode("utf-8", "replace") if not odd.startswith(b"\\") else "\ufffd abc"
    return body, _replaced(doc, path, original + seen)


def mutations(
    example: dict[str, Any],
    *,
    kind_paths: Sequence[str] = (),
    kind_keys: Sequence[str] = (),
    skip: Sequence[str] = (),
) -> Iterator[Variant]:
    """Every variant of ``example`` (see the module docstring). ``kind_paths``: dotted
    paths whose value names the event kind; ``kind_keys``: paths whose KEY names it
    (Telegram's ``message``); ``skip``: paths left alone."""
    skipped = [parse_path(p) for p in skip]

    def kept(path: Path) -> bool:
        return not any(path[: len(s)] == s for s in skipped)

    def v(kind: str, path: Path, what: str, payload: Any, body: bytes | None = None) -> Variant:
        where = dotted(path) or "<root>"
        return Variant(kind, dotted(path), f"{kind} {where}: {what}", payload, body)

    nodes = [(p, val) for p, val in _walk(example) if kept(p)]
    objects = [((), example), *((p, val) for p, val in nodes if isinstance(val, dict))]

    for path, _ in nodes:
        yield v("drop", path, "removed", _replaced(example, path))

    for path, obj in objects:
        extra = {
            "x_unknown_field": {"nested": [1, "a", None], "flag": True},
            "x_unknown_scalar": 7,
        }
        yield v(
            "unknown_field", path, "unknown fields added", _replaced(example, path, obj | extra)
        )
    for kp in kind_paths:
        yield v(
            "unknown_kind",
            parse_path(kp),
            UNKNOWN_KIND,
            _replaced(example, parse_path(kp), UNKNOWN_KIND),
        )
    for kk in kind_keys:
        p = parse_path(kk)
        if get(example, p, _MISSING) is not _MISSING:
            yield v(
                "unknown_kind",
                p,
                f"key renamed to {UNKNOWN_KIND}",
                _replaced(example, p, rename=UNKNOWN_KIND),
            )

    for path, val in nodes:
        key = str(path[-1])
        if _is_date(path, val):
            for d in DATE_VALUES:
                yield v("date", path, repr(d), _replaced(example, path, d))
        elif _is_int(val):
            for i in ID_VALUES:
                yield v("id", path, str(i), _replaced(example, path, i))
        elif isinstance(val, str) and _ID_KEY.search(key):
            for i in ID_VALUES:
                yield v("id", path, f"'{i}'", _replaced(example, path, str(i)))

        if _is_int(val) or isinstance(val, float | bool):
            text = json.dumps(val)
            yield v("str_for_num", path, f"'{text}'", _replaced(example, path, text))
            yield v("str_for_num", path, "'abc'", _replaced(example, path, "abc"))
        if isinstance(val, str):
            yield v("num_for_str", path, "12345", _replaced(example, path, 12345))
        if isinstance(val, dict):
            yield v("array_for_object", path, "[object]", _replaced(example, path, [val]))
            yield v("array_for_object", path, "[]", _replaced(example, path, []))
        if isinstance(val, list):
            yield v("object_for_array", path, "{}", _replaced(example, path, {}))
            if val:
                yield v("object_for_array", path, "first element", _replaced(example, path, val[0]))
        yield v("null", path, "null", _replaced(example, path, None))
        if isinstance(val, str):
            yield v("huge", path, f"+{HUGE} chars", _replaced(example, path, val + "x" * HUGE))
            yield v(
                "unicode", path, "unusual unicode", _replaced(example, path, val + UNICODE_TAIL)
            )
            body, seen = _raw(example, path, val, NON_UTF8)
            yield v("non_utf8", path, "invalid UTF-8 bytes", seen, body)
            body, seen = _raw(example, path, val, SURROGATE)
            yield v("surrogate", path, "lone surrogate escape", seen, body)

    all_null = example
    for path, val in nodes:
        if not isinstance(val, dict | list):
            all_null = _replaced(all_null, path, None)
    yield Variant("null", "", "null <every scalar>: null", all_null)


# --- what a test may expect --------------------------------------------------------


def usable_id(value: Any) -> bool:
    """An id a lenient reader can keep as a string: an integer (any size, any sign) or a
    non-blank string."""
    return _is_int(value) or (isinstance(value, str) and value.strip() != "")


def usable_text(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def usable_object(value: Any) -> bool:
    """An attachment-like object: a non-empty object, or a non-empty list of them."""
    if isinstance(value, list):
        return any(usable_object(x) for x in value)
    return isinstance(value, dict) and bool(value)


def equals(expected: Any) -> Callable[[Any], bool]:
    """A Need check: the value is exactly ``expected`` (an event kind, a type field)."""

    def check(value: Any) -> bool:
        return bool(value == expected and type(value) is type(expected))

    return check


@dataclass(frozen=True, slots=True)
class Need:
    """One thing a message needs (who, where, what, or a condition such as the event
    kind): satisfied when ANY of ``paths`` holds a value ``check`` accepts."""

    role: str
    paths: tuple[str, ...]
    check: Callable[[Any], bool] = field(default=usable_id)

    def met(self, payload: Any) -> bool:
        return any(self.check(get(payload, p)) for p in self.paths)


def readable(variant: Variant | Any, needs: Iterable[Need]) -> bool:
    """Whether every need is met in the variant's payload (who/where/what readable)."""
    payload = variant.payload if isinstance(variant, Variant) else variant
    return all(n.met(payload) for n in needs)


def missing(variant: Variant | Any, needs: Iterable[Need]) -> list[str]:
    """The roles of the needs a variant does not meet (for assertion messages)."""
    payload = variant.payload if isinstance(variant, Variant) else variant
    return [n.role for n in needs if not n.met(payload)]


def sample(variants: Iterable[Variant], fraction: float = 0.1, salt: str = "") -> list[Variant]:
    """A stable subset of about ``fraction`` of the variants (by a hash of the
    description), always at least one of each kind."""
    out: list[Variant] = []
    kinds: set[str] = set()
    for var in variants:
        digest = hashlib.blake2b(f"{salt}|{var.description}".encode(), digest_size=4).digest()
        if int.from_bytes(digest) / 2**32 < fraction or var.kind not in kinds:
            out.append(var)
            kinds.add(var.kind)
    return out
