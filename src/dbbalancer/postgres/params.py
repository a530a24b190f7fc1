"""Session settings of a client, replayed on a pooled server connection.

A pooled server connection was opened with the proxy's own start-up packet and may have served
other clients, so the settings a client put in its StartupMessage (application_name, DateStyle,
TimeZone, search_path, the `-c` switches inside `options`, ...) and those it changed since with
SET, RESET or set_config(..., false) are brought over when it takes the connection.

Each value is the string PostgreSQL stores for the setting (what SHOW prints, what `-c` gives):
a list-valued setting is one string such as `app_schema, "My Schema"`. Such a string must reach
the server as a string, not as SQL: `SET search_path TO 'a, b'` names ONE schema "a, b", while
`set_config('search_path', 'a, b', false)` parses the string exactly as postgresql.conf, `-c`
and the original SET did. So values are replayed through `pg_catalog.set_config`.
"""

from __future__ import annotations

import re

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


def quote_literal(value: str) -> str:
    """A SQL string literal (standard_conforming_strings: only quotes are doubled)."""
    if "\\" in value:
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + value.replace("'", "''") + "'"


def quote_ident(name: str) -> str:
    """A quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


def set_statements(settings: dict[str, str]) -> str:
    """One SELECT that gives each setting of `settings` its stored value, left to right.

    Raises ValueError for a parameter name that is not a plain (optionally dotted) identifier.
    """
    calls = []
    for name, value in settings.items():
        quote_name(name)  # validates the name
        calls.append(f"pg_catalog.set_config({quote_literal(name)}, {quote_literal(value)}, false)")
    return "SELECT " + ", ".join(calls)


def parse_options(options: str) -> dict[str, str]:
    """Settings from the `options` start-up parameter (`-c name=value` and `--name=value`).

    Follows libpq/postmaster rules: words are separated by spaces, a backslash escapes the next
    character. Other switches are ignored, as they only make sense to a postmaster.
    """
    words: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in options:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch.isspace():
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(ch)
    if current:
        words.append("".join(current))
    out: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        setting: str | None = None
        if word == "-c" and i + 1 < len(words):
            setting = words[i + 1]
            i += 1
        elif (word.startswith("-c") and len(word) > 2) or word.startswith("--"):
            setting = word[2:]
        if setting and "=" in setting:
            name, value = setting.split("=", 1)
            out[name.replace("-", "_").lower()] = value
        i += 1
    return out


def sync_statement(have: dict[str, str], want: dict[str, str]) -> str | None:
    """The simple-query string that takes a connection from settings `have` to `want`.

    `have` is what the proxy set on the connection beyond its defaults; a setting in `have` but
    not in `want` is RESET. None when nothing needs to change.
    """
    if have == want:
        return None
    parts = [f"RESET {quote_name(name)}" for name in have if name not in want]
    changed = {name: value for name, value in want.items() if have.get(name) != value}
    if changed:
        parts.append(set_statements(changed))
    return "; ".join(parts)


def quote_name(name: str) -> str:
    """A possibly dotted setting name, each part quoted."""
    if not _NAME.match(name):
        raise ValueError(f"invalid parameter name {name!r}")
    return ".".join(quote_ident(part) for part in name.split("."))


# PostgreSQL's client encodings (pg_encoding_to_char names, upper-cased, without '_' and '-')
# and the Python codec of each. EUC_TW and MULE_INTERNAL have none: their text is read as
# Latin-1, which keeps every byte and every ASCII keyword as it is.
_CODECS = {
    "UTF8": "utf-8",
    "UNICODE": "utf-8",
    "SQLASCII": "latin-1",
    "LATIN1": "iso8859-1",
    "LATIN2": "iso8859-2",
    "LATIN3": "iso8859-3",
    "LATIN4": "iso8859-4",
    "LATIN5": "iso8859-9",
    "LATIN6": "iso8859-10",
    "LATIN7": "iso8859-13",
    "LATIN8": "iso8859-14",
    "LATIN9": "iso8859-15",
    "LATIN10": "iso8859-16",
    "ISO88595": "iso8859-5",
    "ISO88596": "iso8859-6",
    "ISO88597": "iso8859-7",
    "ISO88598": "iso8859-8",
    "WIN866": "cp866",
    "WIN874": "cp874",
    "WIN1250": "cp1250",
    "WIN1251": "cp1251",
    "WIN1252": "cp1252",
    "WIN1253": "cp1253",
    "WIN1254": "cp1254",
    "WIN1255": "cp1255",
    "WIN1256": "cp1256",
    "WIN1257": "cp1257",
    "WIN1258": "cp1258",
    "KOI8R": "koi8-r",
    "KOI8U": "koi8-u",
    "SJIS": "shift_jis",
    "SHIFTJIS2004": "shift_jis_2004",
    "EUCJP": "euc_jp",
    "EUCJIS2004": "euc_jis_2004",
    "EUCKR": "euc_kr",
    "EUCCN": "gb2312",
    "GBK": "gbk",
    "GB18030": "gb18030",
    "BIG5": "big5",
    "UHC": "cp949",
    "JOHAB": "johab",
}


def python_codec(settings: dict[str, str]) -> str:
    """The Python codec for the client_encoding in `settings` (UTF-8 when unset)."""
    value = "UTF8"
    for name, setting in settings.items():
        if name.lower() == "client_encoding":
            value = setting
    key = value.upper().replace("_", "").replace("-", "")
    return _CODECS.get(key, "latin-1")
