"""The settings framework: a frozen dataclass declares each setting once, with its default,
type, help and bounds; the flags, the ``TFLLMER_*`` environment mapping, validation and the
README's table are generated from those declarations (text-embeddings-inference makes every
flag an environment variable in the same way). ``server.config`` declares the server's.

Precedence: flag > environment variable > default. Unknown keys are errors, as in Feast's
configs: without that check, a misspelt ``TFLLMER_PROT`` would leave the port at its default
and nothing would say so.

Value formats, the same for flags, environment variables and strings in a dict:

* booleans: ``true``/``false``, ``1``/``0``, ``yes``/``no`` (any case); as flags,
  ``--allow-unauthenticated`` / ``--no-allow-unauthenticated``;
* lists: comma-separated, spaces around items ignored; an empty item is an error, so
  ``TFLLMER_ADMIN_TOKENS=","`` refuses to start instead of silently turning authentication off
  (``TFLLMER_ADMIN_TOKENS=tok1,tok2``);
* surrounding whitespace is stripped, and an environment variable set to the empty string
  counts as unset (compose files often pass ``TFLLMER_X=${X}`` with ``X`` unset).
"""

# No `from __future__ import annotations`: the parser and validation read the field types
# (Literal choices, tuple lists) at runtime.
import argparse
import contextlib
import difflib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import Field, field, fields
from typing import Any, Literal, NoReturn, TypeVar, get_args, get_origin

from protos import environment

ENV_PREFIX = environment.PREFIX
T = TypeVar("T")

# A field check returns what is wrong (the setting's name is prefixed by the caller) or None.
Check = Callable[[Any], str | None]

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


class ConfigError(ValueError):
    """A configuration the server refuses to start with. ``errors`` holds one line per
    problem, so an operator can fix them all in one pass."""

    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = list(errors)


def setting(
    default: Any,
    help: str,
    *,
    at_least: float | None = None,
    at_most: float | None = None,
    secret: bool = False,
    check: Check | None = None,
) -> Any:
    """Declare one setting; the flag, environment variable and checks come from it."""
    metadata = {
        "help": help,
        "at_least": at_least,
        "at_most": at_most,
        "secret": secret,
        "check": check,
    }
    return field(default=default, metadata=metadata)

def _kind(tp: Any) -> type:
    """The Python type a field holds: Literal choices are str, ``tuple[str, ...]`` is tuple."""
    if get_origin(tp) is Literal:
        return str
    return get_origin(tp) or tp


def _choices(tp: Any) -> tuple[str, ...]:
    return get_args(tp) if get_origin(tp) is Literal else ()


def _has_kind(kind: type, value: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is tuple:
        return isinstance(value, tuple) and all(isinstance(item, str) for item in value)
    return isinstance(value, kind)


_KIND_WORDS = {
    bool: "a boolean (true/false, 1/0, yes/no)",
    int: "an integer",
    float: "a number",
    str: "a string",
    tuple: "a comma-separated list",
}


def field_problem(f: Field, value: Any) -> str | None:
    """What is wrong with ``value`` for the setting ``f`` (type, choices, bounds, its
    check), or None."""
    kind = _kind(f.type)
    if not _has_kind(kind, value):
        return f"must be {_KIND_WORDS[kind]}, got {type(value).__name__}"
    choices = _choices(f.type)
    if choices and value not in choices:
        return f"must be one of {', '.join(choices)}, got {value!r}"
    if kind is float and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    low, high = f.metadata["at_least"], f.metadata["at_most"]
    if (low is not None and value < low) or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        return f"must be {bound}, got {value}"
    check = f.metadata["check"]
    return check(value) if check else None


def _parse_text(f: Field, text: str) -> Any:
    """A flag's or environment variable's text as the field's type; ValueError says why not."""
    text = text.strip()
    kind = _kind(f.type)
    if kind is tuple:
        items = tuple(item.strip() for item in text.split(","))
        if not all(items):  # "," or "a,,b": a token list that silently lost a token
            raise ValueError(
                "has an empty item (a stray comma, or a variable that expanded to nothing?)")
        return items
    if kind is str:
        return text.lower() if _choices(f.type) else text
    if kind is bool and text.lower() in _TRUE | _FALSE:
        return text.lower() in _TRUE
    if kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(text)
    raise ValueError(f"must be {_KIND_WORDS[kind]}, got {text!r}")


def coerce(f: Field, value: Any) -> Any:
    """Strings use the text formats; native values (a future config file) are converted
    only where that loses nothing, and checked by validation."""
    if isinstance(value, str):
        return _parse_text(f, value)
    if _kind(f.type) is tuple and isinstance(value, list):
        return tuple(value)
    if _kind(f.type) is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def label(name: str) -> str:
    return f"{flag_name(name)} / {env_name(name)}"


def unknown(what: str, key: str, known: Iterable[str], prefix: str = "") -> str:
    """Names a close match; the shared prefix is left out of the comparison, or every
    TFLLMER_* name would look alike."""
    stems = [name.removeprefix(prefix) for name in known]
    close = difflib.get_close_matches(key.removeprefix(prefix), stems, n=1)
    hint = f"did you mean {prefix}{close[0]}?" if close else "see python -m server --help"
    return f"unknown {what} {key}; {hint}"

def _default_text(f: Field) -> str:
    if isinstance(f.default, bool):
        return str(f.default).lower()
    if f.default in ("", ()):
        return "(none)"
    return str(f.default)


_METAVARS = {int: "N", float: "NUM", tuple: "ITEM,..."}


class _Parser(argparse.ArgumentParser):
    """Raises ConfigError instead of exiting, so callers report every problem the same way."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError([message])

def build_parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    """The CLI of the settings dataclass ``cls``. Flags absent from argv stay absent from the
    namespace (SUPPRESS), so the environment and defaults fill them in later."""
    parser = _Parser(
        prog=prog,
        description=description,
        epilog=(
            "Formats: booleans true/false, 1/0, yes/no; lists comma-separated; an empty "
            f"environment variable counts as unset. Unknown flags and unknown {ENV_PREFIX}* "
            "environment variables are errors."
        ),
        allow_abbrev=False,
        argument_default=argparse.SUPPRESS,
    )
    for f in fields(cls):
        help_text = f"{f.metadata['help']} [env {env_name(f.name)}; default: {_default_text(f)}]"
        options: dict[str, Any] = {"help": help_text.replace("%", "%%")}
        if _kind(f.type) is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            choices = _choices(f.type)
            metavar = _METAVARS.get(_kind(f.type), f.name.upper())
            options["metavar"] = "{" + ",".join(choices) + "}" if choices else metavar
        parser.add_argument(flag_name(f.name), **options)
    return parser


def _all_flags(cls: type) -> list[str]:
    flags = ["--help"]
    for f in fields(cls):
        flags.append(flag_name(f.name))
        if _kind(f.type) is bool:
            flags.append(f"--no-{flag_name(f.name)[2:]}")
    return flags


def argv_values(parser: argparse.ArgumentParser, cls: type, argv: Sequence[str]) -> dict[str, Any]:
    """The settings ``argv`` gives, by field name; unknown flags are errors."""
    namespace, extras = parser.parse_known_args(list(argv))
    unknown_flags = [arg.partition("=")[0] for arg in extras if arg.startswith("-")]
    problems = [unknown("flag", arg, _all_flags(cls), "--") for arg in unknown_flags]
    if extras and not problems:
        problems = [f"unexpected argument {extras[0]!r}; settings are given as --name value"]
    if problems:
        raise ConfigError(problems)
    return vars(namespace)


def env_values(
    cls: type, environ: Mapping[str, str], others: Iterable[str] = ()
) -> dict[str, str]:
    """The settings the environment gives, by field name. A ``TFLLMER_*`` variable that is
    neither a setting nor one of ``others`` (another tool's) is an error."""
    known = {env_name(f.name): f.name for f in fields(cls)}
    others = frozenset(others)
    problems = [
        unknown("setting", key, known, ENV_PREFIX)
        for key in sorted(environ)
        if key.startswith(ENV_PREFIX) and key not in known and key not in others
    ]
    if problems:
        raise ConfigError(problems)
    return {known[key]: value for key, value in environ.items() if key in known and value.strip()}

def from_dict(cls: type[T], values: Mapping[str, Any]) -> T:
    """Settings keyed by field name. Strings use the flag/environment formats; unknown keys
    are rejected like unknown variables."""
    by_name = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    problems = [unknown("setting", key, by_name) for key in values if key not in by_name]
    typed = {}
    for name, value in values.items():
        if name in by_name:
            try:
                typed[name] = coerce(by_name[name], value)
            except ValueError as error:
                problems.append(f"{label(name)} {error}")
    if problems:
        raise ConfigError(problems)
    return cls(**typed)

def markdown_table(cls: type) -> str:
    """Every setting as a Markdown table (flag, variable, default, description)."""
    rows = ["| Flag | Environment variable | Default | Description |", "| --- | --- | --- | --- |"]
    for f in fields(cls):
        flag = f"`{flag_name(f.name)}`"
        if _kind(f.type) is bool:
            flag += f", `--no-{flag_name(f.name)[2:]}`"
        choices = _choices(f.type)
        description = f.metadata["help"] + (f" One of: {', '.join(choices)}." if choices else "")
        default = _default_text(f)
        default = default if default == "(none)" else f"`{default}`"
        cells = (flag, f"`{env_name(f.name)}`", default, description.replace("|", "\\|"))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"
