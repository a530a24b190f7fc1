"""Protocol-neutral steps every statement classifier shares.

A dialect's classifier (``postgres/classify.py``, ``mysql/classify.py``) lexes and reads SQL
its own way; what it does with the per-statement answers is the same everywhere and lives
here: combining the statements of one string, applying a routing hint written in a comment,
marking a learned write, and the bookkeeping of the template cache and of learned-write
templates.  Nothing here knows a wire protocol or a SQL dialect.

The classifiers call these once per statement string, so the module is compiled with mypyc
along with them (``dbbalancer.COMPILED_MODULES``).
"""

from __future__ import annotations

import dataclasses
import re
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Final

from dbbalancer.core.statement import Classification, Reason, RouteHint, StatementKind

__all__ = [
    "EMPTY",
    "HINT_RE",
    "SENSITIVE",
    "apply_hint",
    "as_learned_write",
    "combine",
    "dedup",
    "hint_of",
    "learn_template",
    "store_in_cache",
]

_READ: Final = StatementKind.READ
_WRITE: Final = StatementKind.WRITE

# The answer for a string with no statement in it (only blanks and comments).
EMPTY: Final = Classification(_READ, Reason.EMPTY, True, statements=0)
# Cache marker: "this template's classification reads literal values; key by exact text".
SENSITIVE: Final = Classification(_WRITE, Reason.UNKNOWN, False)

# A routing hint written in a comment: ``dbbalancer: primary`` or ``dbbalancer: replica``.
HINT_RE: Final = re.compile(r"dbbalancer\s*:\s*(primary|replica)\b", re.IGNORECASE)


def hint_of(comments: list[str]) -> RouteHint | None:
    """The hint the comments carry: ``primary`` wins over ``replica`` wherever it stands."""
    hint: RouteHint | None = None
    for text in comments:
        for m in HINT_RE.finditer(text):
            if m.group(1).lower() == "primary":
                return RouteHint.PRIMARY
            hint = RouteHint.REPLICA
    return hint


def dedup(items: Iterable[Any]) -> tuple[Any, ...]:
    """``items`` without repeats, in first-seen order."""
    return tuple(dict.fromkeys(items))


def combine(parts: list[Classification]) -> Classification:
    """One classification for a multi-statement string: read only if every part is."""
    if not parts:
        return EMPTY
    if len(parts) == 1:
        return parts[0]
    all_read = all(p.kind is _READ and p.read_only for p in parts)
    tx_part = next((p for p in reversed(parts) if p.tx is not None), None)
    return Classification(
        kind=_READ if all_read else _WRITE,
        reason=parts[0].reason if all_read else Reason.MULTI_STATEMENT_WRITE,
        read_only=all_read,
        tx=tx_part.tx if tx_part else None,
        tx_read_only=tx_part.tx_read_only if tx_part else None,
        settings=tuple(s for p in parts for s in p.settings),
        pins=dedup(x for p in parts for x in p.pins),
        unpins=dedup(x for p in parts for x in p.unpins),
        functions=dedup(f for p in parts for f in p.functions),
        statements=len(parts),
        prepared_name=next((p.prepared_name for p in reversed(parts) if p.prepared_name), None),
        target=next((p.target for p in reversed(parts) if p.target), None),
        parts=tuple(parts),
        database=next((p.database for p in reversed(parts) if p.database), None),
        user_variables=tuple(v for p in parts for v in p.user_variables),
        autocommit=next((p.autocommit for p in reversed(parts) if p.autocommit is not None), None),
        implicit_commit=any(p.implicit_commit for p in parts),
        uses_last_result=any(p.uses_last_result for p in parts),
    )


def apply_hint(c: Classification, hint: RouteHint | None) -> Classification:
    """``c`` as routed by ``hint``: primary makes any statement a non-read-only one; replica
    only marks reads (a write stays a write)."""
    if hint is None:
        return c
    if hint is RouteHint.PRIMARY:
        reason = Reason.HINT_PRIMARY if c.kind is _READ else c.reason
        return dataclasses.replace(c, hint=hint, reason=reason, read_only=False)
    reason = Reason.HINT_REPLICA if c.kind is _READ and c.read_only else c.reason
    return dataclasses.replace(c, hint=hint, reason=reason)


def as_learned_write(result: Classification) -> Classification:
    """``result`` for a template a replica has refused: a write, unless it already is one."""
    if result.kind is _WRITE and not result.read_only:
        return result
    return dataclasses.replace(result, kind=_WRITE, reason=Reason.LEARNED_WRITE, read_only=False)


def store_in_cache(
    cache: OrderedDict[object, Classification],
    size: int,
    sql: str,
    key: object,
    result: Classification,
    sensitive: bool,
) -> None:
    """Cache ``result`` for ``sql`` (whose template key is ``key``), then trim to ``size``.

    ``key is sql`` means nothing was normalized: the text is its own key.  A ``sensitive``
    result read a literal's value, so it is kept by exact text and the template marked
    :data:`SENSITIVE`; any other result serves every text of the template.
    """
    if key is sql:
        cache[sql] = result
    elif sensitive:
        cache[key] = SENSITIVE
        cache[sql] = result
    else:
        cache[key] = result
    while len(cache) > size:
        cache.popitem(last=False)


def learn_template(learned: OrderedDict[object, None], key: object, size: int) -> None:
    """Add ``key`` to the learned-write templates, the most recent last, at most ``size``."""
    learned[key] = None
    learned.move_to_end(key)
    while len(learned) > max(size, 1):
        learned.popitem(last=False)
