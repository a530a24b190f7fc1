"""Read ``dbbalancer.toml`` (TOML 1.0 via :mod:`tomllib`) into a :class:`Config`, or fail with
every problem at once.

Like Odyssey's config reader, nothing stops at the first error: pydantic collects every field
error, the models add their cross-field problems, and :class:`ConfigError` reports them all, each
with its key path (``clusters[0].servers[1].role``), the bad value and a hint. pydantic's own
wording ("Input should be ...") is rewritten here into the file's vocabulary.
"""

from __future__ import annotations

import difflib
import enum
import os
import re
import tomllib
import types
import typing
from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from dbbalancer.config.model import (
    INVARIANTS_ERROR,
    UNITS_REQUIRED,
    VALUE_ERROR,
    ClusterConfig,
    Config,
    ConfigProblem,
    GeneralConfig,
    ListenConfig,
    ServerConfig,
    UserConfig,
    file_problems_from_raw,
)

__all__ = ["ConfigError", "load_config", "parse_config"]

_SECRET_KEYS = frozenset({"password", "server_password"})
_TABLES: dict[str, type[BaseModel]] = {
    "[general]": GeneralConfig,
    "[listen]": ListenConfig,
    "[[users]]": UserConfig,
    "[[clusters]]": ClusterConfig,
    "[[clusters.servers]]": ServerConfig,
}
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every error found, in file order where
    pydantic reports them and cross-field problems after. ``str()`` gives one line per problem,
    prefixed with the source: ``dbbalancer.toml: clusters[0].pool_size: ...``."""

    def __init__(self, problems: Sequence[ConfigProblem], source: str = "<string>") -> None:
        self.problems: list[ConfigProblem] = list(problems)
        self.source = source
        super().__init__(self.problems)

    def __str__(self) -> str:
        return "\n".join(f"{self.source}: {problem}" for problem in self.problems)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and parse the TOML file at ``path``; raise ConfigError naming the file on failure."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError(
            [
                ConfigProblem(
                    "", f"cannot read the file: {reason}", "check the path and permissions"
                )
            ],
            source,
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            [
                ConfigProblem(
                    "", f"is not UTF-8 (byte offset {error.start})", "save the file as UTF-8"
                )
            ],
            source,
        ) from None
    return parse_config(text, source)


def parse_config(text: str, source: str = "<string>") -> Config:
    """Parse TOML text into a Config; ``source`` names the text in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([_syntax_problem(error)], source) from None
    try:
        return Config.model_validate(data, context={UNITS_REQUIRED: True})
    except ValidationError as error:
        details = error.errors()
        problems = [problem for detail in details for problem in _translate(detail)]
        if not any(detail["type"] == INVARIANTS_ERROR and not detail["loc"] for detail in details):
            # Config's own whole-file checks did not run (a table failed first): apply them to
            # the raw data so those problems are not hidden until the next attempt.
            problems += file_problems_from_raw(data)
        raise ConfigError(problems, source) from None


def _syntax_problem(error: tomllib.TOMLDecodeError) -> ConfigProblem:
    # Python 3.11's TOMLDecodeError has no lineno/colno attributes; the position is in the text.
    message = str(error)
    match = _TOML_POSITION.search(message)
    if match is not None:
        line, column = match.groups()
        detail = message[: match.start()]
        message = f"TOML syntax error at line {line}, column {column}: {detail}"
    else:
        message = f"TOML syntax error: {message}"
    return ConfigProblem(
        "",
        message,
        "fix the TOML there: strings need double quotes, tables are [name], arrays of tables "
        "[[name]]",
    )


# --- pydantic errors -> problems ------------------------------------------------------------


def _format_path(loc: Sequence[int | str]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            key = part if _BARE_KEY.fullmatch(part) else f'"{part}"'
            path += f".{key}" if path else key
    return path


def _table_name(loc: Sequence[int | str]) -> str:
    """The TOML table header for ``loc``: ``clusters[0].servers`` -> ``clusters.servers``."""
    return ".".join(part for part in loc if isinstance(part, str))


def _join(prefix: str, relative: str) -> str:
    if not relative:
        return prefix
    if not prefix or relative.startswith("["):
        return prefix + relative
    return f"{prefix}.{relative}"


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for argument in typing.get_args(annotation):
        yield from _models_in(argument)


def _enum_in(annotation: Any) -> type[enum.Enum] | None:
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        for argument in typing.get_args(annotation):
            found = _enum_in(argument)
            if found is not None:
                return found
    return None


def _locate(loc: Sequence[int | str]) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """The model that owns the last key of ``loc``, and that key's field (None if unknown)."""
    model: type[BaseModel] | None = Config
    keys = [part for part in loc if isinstance(part, str)]
    for depth, key in enumerate(keys):
        if model is None:
            return None, None
        field = model.model_fields.get(key)
        if depth == len(keys) - 1:
            return model, field
        model = next(_models_in(field.annotation), None) if field is not None else None
    return model, None


def _show(value: object, key: str) -> str:
    """The bad value as the user wrote it, without ever echoing a secret."""
    if key in _SECRET_KEYS and isinstance(value, str):
        return "the value"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unknown_key(key: str, model: type[BaseModel] | None) -> tuple[str, str]:
    message = f"unknown key {key!r}"
    if model is None:
        return message, "remove it"
    known = list(model.model_fields)
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return message, f"did you mean {close[0]!r}?"
    homes = [
        table
        for table, other in _TABLES.items()
        if other is not model and key in other.model_fields
    ]
    if homes:
        return message, f"{key!r} belongs in {' or '.join(homes)}; move it there"
    return message, f"remove it; valid keys here are: {', '.join(known)}"


def _translate(detail: ErrorDetails) -> list[ConfigProblem]:
    """One pydantic error -> one or more problems in the file's own words."""
    loc = detail["loc"]
    path = _format_path(loc)
    kind = detail["type"]
    ctx = detail.get("ctx", {})
    value = detail["input"]
    key = next((part for part in reversed(loc) if isinstance(part, str)), "")
    model, field = _locate(loc)

    if kind == INVARIANTS_ERROR:
        return [
            ConfigProblem(_join(path, problem.path), problem.message, problem.hint)
            for problem in ctx["problems"]
        ]
    if kind == VALUE_ERROR:
        return [ConfigProblem(path, str(ctx["message"]), str(ctx["hint"]))]
    if kind == "extra_forbidden":
        message, hint = _unknown_key(key, model)
        return [ConfigProblem(path, message, hint)]

    shown = _show(value, key)
    message, hint = detail["msg"], "see docs/configuration.md"
    enum_type = _enum_in(field.annotation) if field is not None else None
    if kind == "missing":
        message, hint = "required key is missing", f"add {key} = ... to this table"
    elif kind == "enum" and enum_type is not None:
        choices = ", ".join(str(member.value) for member in enum_type)
        message, hint = f"{shown} is not valid", f"use one of: {choices}"
    elif kind in {"int_type", "int_parsing", "int_from_float"}:
        message, hint = f"{shown} is not a whole number", "write an integer without quotes, e.g. 20"
    elif kind in {"bool_type", "bool_parsing"}:
        message, hint = f"{shown} is not true or false", "write true or false without quotes"
    elif kind == "string_type":
        message, hint = f"{shown} is not a string", "put the value in double quotes"
    elif kind == "string_too_short":
        message, hint = "must not be empty", "give it a non-empty value"
    elif kind == "greater_than_equal":
        message, hint = f"{shown} is too small", f"use a value >= {ctx['ge']}"
    elif kind == "greater_than":
        message, hint = f"{shown} is too small", f"use a value > {ctx['gt']}"
    elif kind in {"model_type", "model_attributes_type", "dict_type"}:
        message = f"expected a table, got {shown}"
        if loc and isinstance(loc[-1], int):
            hint = f"write each entry as a [[{_table_name(loc)}]] table"
        else:
            hint = f"write it as a [{_table_name(loc)}] table with its keys below"
    elif kind in {"tuple_type", "list_type"}:
        message = f"expected an array of tables, got {shown}"
        hint = f"write each entry as a [[{_table_name(loc)}]] table"
    return [ConfigProblem(path, message, hint)]
