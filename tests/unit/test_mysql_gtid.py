"""MySQL and MariaDB GTID positions (mysql.gtid) as the core's opaque Position."""

from __future__ import annotations

import pytest

from dbbalancer.core.position import Position
from dbbalancer.mysql.gtid import MariaDbGtidPos, MySqlGtidSet
from dbbalancer.postgres.lsn import Lsn

UUID_A = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
UUID_B = "3e11fa47-71ca-11e1-9e33-c80aa9429563"


def maria(text: str) -> MariaDbGtidPos:
    return MariaDbGtidPos.parse(text)


def mysql(text: str) -> MySqlGtidSet:
    return MySqlGtidSet.parse(text)


# -- MariaDB ------------------------------------------------------------------------------------


def test_mariadb_parse_and_format() -> None:
    pos = maria("1-2-7,0-1-42")
    assert pos.gtids == ((0, 1, 42), (1, 2, 7))
    assert str(pos) == "0-1-42,1-2-7"
    assert pos.sequence(1) == 7
    assert pos.sequence(5) is None
    assert maria(" 0-1-42 ,\n1-2-7 ") == pos


def test_mariadb_empty_position() -> None:
    assert maria("") == MariaDbGtidPos()
    assert maria("  \n") == MariaDbGtidPos()
    assert str(MariaDbGtidPos()) == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0-1", "not a MariaDB GTID"),
        ("0-1-2-3", "not a MariaDB GTID"),
        ("0-x-2", "server id 'x' is not a number"),
        ("-1-1-2", "not a MariaDB GTID"),
        ("0-1-2,", "empty element"),
        ("0-1-2,,1-1-1", "empty element"),
        ("0-1-2,0-2-5", "domain 0 appears twice"),
        ("4294967296-1-1", "domain 4294967296 is out of range"),
        ("0-1-18446744073709551616", "out of range"),
        ("0-1-+5", "is not a number"),
    ],
)
def test_mariadb_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        maria(text)


@pytest.mark.parametrize(
    ("have", "want", "covers"),
    [
        ("0-1-5", "0-1-5", True),
        ("0-1-6", "0-1-5", True),
        ("0-1-4", "0-1-5", False),
        ("0-2-9", "0-1-5", True),  # the server id takes no part
        ("0-1-5,1-1-1", "0-1-5", True),
        ("0-1-5", "0-1-5,1-1-1", False),  # a domain the replica never saw
        ("", "", True),
        ("0-1-1", "", True),
        ("", "0-1-1", False),
    ],
)
def test_mariadb_covers(have: str, want: str, covers: bool) -> None:
    assert maria(have).covers(maria(want)) is covers


def test_mariadb_has_no_byte_distance() -> None:
    assert maria("0-1-1").bytes_behind(maria("0-1-100")) is None


def test_constructor_refuses_what_parse_never_builds() -> None:
    with pytest.raises(ValueError, match="one GTID per domain"):
        MariaDbGtidPos(((1, 1, 1), (0, 1, 1)))
    with pytest.raises(ValueError, match="out of range"):
        MariaDbGtidPos(((0, -1, 1),))
    with pytest.raises(ValueError, match="not normalized"):
        MySqlGtidSet((((UUID_A, ""), ((1, 5), (6, 9))),))
    with pytest.raises(ValueError, match="unique and sorted"):
        MySqlGtidSet((((UUID_B, ""), ((1, 1),)), ((UUID_A, ""), ((1, 1),))))


# -- MySQL --------------------------------------------------------------------------------------


def test_mysql_parse_and_format() -> None:
    # @@gtid_executed puts a newline after each comma and prints UUIDs in lower case.
    text = f"{UUID_B.upper()}:3,\n{UUID_A}:7-9:1-5"
    gtids = mysql(text)
    assert gtids.intervals(UUID_A) == ((1, 5), (7, 9))
    assert gtids.intervals(UUID_B.upper()) == ((3, 3),)
    assert str(gtids) == f"{UUID_A}:1-5:7-9,{UUID_B}:3"
    assert mysql(str(gtids)) == gtids


def test_mysql_merges_like_the_server() -> None:
    assert str(mysql(f"{UUID_A}:1-5:6-9:3-4,{UUID_A}:11")) == f"{UUID_A}:1-9:11"
    assert mysql(UUID_A.replace("-", "") + ":1") == mysql(f"{UUID_A}:1")


def test_mysql_tags() -> None:
    gtids = mysql(f"{UUID_A}:1-3:Batch:5:Alpha:1")
    assert gtids.intervals(UUID_A) == ((1, 3),)
    assert gtids.intervals(UUID_A, "batch") == ((5, 5),)
    assert str(gtids) == f"{UUID_A}:1-3:alpha:1:batch:5"
    assert mysql(str(gtids)) == gtids
    assert not mysql(f"{UUID_A}:1-5").covers(mysql(f"{UUID_A}:batch:1"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nonsense:1", "not a server UUID"),
        (UUID_A, "no transaction ids"),
        (f"{UUID_A}:0", "start at 1"),
        (f"{UUID_A}:5-3", "ends before it starts"),
        (f"{UUID_A}:1-x", "not a number"),
        (f"{UUID_A}:9223372036854775808", "out of range"),
        (f"{UUID_A}:1,", "empty element"),
        (f"{UUID_A}:tag", "tag 'tag' has no transaction ids"),
        (f"{UUID_A}:a:b:1", "tag 'a' has no transaction ids"),
        (f"{UUID_A}:-tag:1", "neither an interval nor a tag"),
    ],
)
def test_mysql_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mysql(text)


@pytest.mark.parametrize(
    ("have", "want", "covers"),
    [
        (f"{UUID_A}:1-10", f"{UUID_A}:1-10", True),
        (f"{UUID_A}:1-10", f"{UUID_A}:3-4:6", True),
        (f"{UUID_A}:1-5:7-10", f"{UUID_A}:5-7", False),  # the hole at 6
        (f"{UUID_A}:1-5:7-10", f"{UUID_A}:1-5:7", True),
        (f"{UUID_A}:2-10", f"{UUID_A}:1", False),
        (f"{UUID_A}:1-10", f"{UUID_A}:1-10,{UUID_B}:1", False),
        (f"{UUID_A}:1-10,{UUID_B}:1", f"{UUID_B}:1", True),
        ("", "", True),
        ("", f"{UUID_A}:1", False),
        (f"{UUID_A}:1", "", True),
    ],
)
def test_mysql_covers_is_superset(have: str, want: str, covers: bool) -> None:
    assert mysql(have).covers(mysql(want)) is covers


def test_mysql_has_no_byte_distance() -> None:
    assert mysql(f"{UUID_A}:1").bytes_behind(mysql(f"{UUID_A}:1-9")) is None


def test_positions_of_different_kinds_never_cover_each_other() -> None:
    positions: list[Position] = [maria(""), mysql(""), Lsn(0)]
    for a in positions:
        for b in positions:
            if a is not b:
                assert not a.covers(b), (a, b)


def test_positions_are_hashable_values() -> None:
    assert hash(maria("0-1-5")) == hash(maria("0-1-5"))
    assert len({mysql(f"{UUID_A}:1-5"), mysql(f"{UUID_A}:1-3:4-5")}) == 1
