"""Corpus helpers the classifier tests share (test_pg_classify.py, test_mysql_classify.py).

A corpus is a TOML file in tests/data with one ``[[statement]]`` table per SQL string: ``sql``
and ``kind``, and the fields of the expected classification that the entry pins down.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from dbbalancer.core.statement import Classification, RouteHint, StatementKind

DATA = Path(__file__).resolve().parents[1] / "data"


def load_corpus(name: str) -> list[dict[str, Any]]:
    """The statements of tests/data/``name``."""
    entries: list[dict[str, Any]] = tomllib.loads((DATA / name).read_text("utf-8"))["statement"]
    return entries


def corpus_id(entry: dict[str, Any]) -> str:
    """A readable pytest id for a corpus entry."""
    return entry["sql"][:60].replace("\n", "\\n") or "<empty>"


def check_common_fields(c: Classification, e: dict[str, Any]) -> None:
    """Check what every dialect's entries mean alike: kind, reason, read_only (implied by the
    kind when absent), statement count, transaction action, pins, unpins, hint and prepared
    name.  Settings and the dialect's own fields are left to the caller."""
    assert c.kind.value == e["kind"]
    if "reason" in e:
        assert c.reason.value == e["reason"]
    if "read_only" in e:
        assert c.read_only is e["read_only"]
    elif c.kind is StatementKind.READ and c.hint is not RouteHint.PRIMARY:
        assert c.read_only
    elif c.kind is StatementKind.WRITE:
        assert not c.read_only
    if "statements" in e:
        assert c.statements == e["statements"]
    if "tx" in e:
        assert c.tx is not None
        assert c.tx.value == e["tx"]
        assert c.tx_read_only == e.get("tx_read_only")
    if "pins" in e:
        assert [p.value for p in c.pins] == e["pins"]
    if "unpins" in e:
        assert [u.value for u in c.unpins] == e["unpins"]
    if "hint" in e:
        assert c.hint is not None
        assert c.hint.value == e["hint"]
    if "prepared_name" in e:
        assert c.prepared_name == e["prepared_name"]
