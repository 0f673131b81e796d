"""Every knob declared once: a settings dataclass field is its flag, its environment variable,
its default and its documented row.

    @dataclass(frozen=True)
    class PredictorSettings(ServerSettings):
        device: str = knob("auto", "auto | cpu | cuda | cuda:N")

becomes `--device`, read from `KEMBED_DEVICE` when the flag is absent, listed in `--help` under
kembed's own group and in `docs/configuration.md` (`python -m scripts.configuration_doc`). The type comes from
the annotation (`bool` flags take true/false, 1/0, yes/no). Fields declared with plain `field()` are
not knobs (they are computed or given by code).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from kserve.utils.utils import strtobool

T = TypeVar("T")
ENV_PREFIX = "KEMBED_"


def knob(
    default: Any,
    help: str,
    *,
    env: str | None = None,
    choices: tuple[str, ...] | None = None,
    unit: str = "",
    flags: tuple[str, ...] = (),
) -> Any:
    """A settings field that is also a flag and an environment variable.

    ``env`` overrides the variable's name (default ``KEMBED_<NAME>``); ``flags`` adds aliases.
    """
    return dataclasses.field(
        default=default,
        metadata={"knob": True, "help": help, "env": env, "choices": choices, "unit": unit, "flags": flags},
    )


@dataclass(frozen=True)
class Knob:
    name: str
    kind: type
    default: Any
    help: str
    env: str
    choices: tuple[str, ...] | None
    unit: str
    flags: tuple[str, ...]

    @property
    def flag(self) -> str:
        return f"--{self.name}"

    def parse(self, raw: str) -> Any:
        """A flag's or an environment variable's text as the knob's type."""
        if self.kind is bool:
            return bool(strtobool(raw))
        return self.kind(raw)

    def default_text(self) -> str:
        if self.default is None or self.default == "":
            return "unset"
        if isinstance(self.default, bool):
            return str(self.default).lower()
        return str(self.default)


def _base_type(hint: Any) -> type:
    """`int`, `str | None` -> str, `Path | None` -> Path."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def knobs(cls: type) -> Iterator[Knob]:
    """The knobs of a settings class, inherited ones first."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("knob"):
            continue
        meta = f.metadata
        yield Knob(
            name=f.name,
            kind=_base_type(hints[f.name]),
            default=f.default,
            help=meta["help"],
            env=meta["env"] or f"{ENV_PREFIX}{f.name.upper()}",
            choices=meta["choices"],
            unit=meta["unit"],
            flags=meta["flags"],
        )


def add_knobs(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    """One argument group of `cls`'s knobs; each default is its environment variable, when set."""
    group = parser.add_argument_group(title)
    for k in knobs(cls):
        raw = os.environ.get(k.env)
        default = k.default if raw is None else _checked(k, raw, parser)
        unit = f" ({k.unit})" if k.unit else ""
        group.add_argument(
            k.flag,
            *k.flags,
            dest=k.name,
            type=k.parse,
            default=default,
            choices=k.choices,
            metavar=k.name.upper() if k.choices is None else None,
            help=f"{k.help}{unit} [env {k.env}; default {k.default_text()}]",
        )


def _checked(k: Knob, raw: str, parser: argparse.ArgumentParser) -> Any:
    try:
        value = k.parse(raw)
    except ValueError:
        parser.error(f"{k.env}={raw!r} is not a valid {k.kind.__name__} for {k.flag}")
    if k.choices is not None and value not in k.choices:
        parser.error(f"{k.env}={raw!r}: choose from {', '.join(k.choices)}")
    return value


def from_args(cls: type[T], args: argparse.Namespace, **given: Any) -> T:
    """The settings object from parsed flags (plus fields that code gives)."""
    values = {k.name: getattr(args, k.name) for k in knobs(cls)}
    return cls(**values, **given)


def markdown(cls: type, heading: str) -> str:
    header = "| flag | environment variable | default | unit | what it does |"
    rows = [f"## {heading}", "", header, "|---|---|---|---|---|"]
    for k in knobs(cls):
        choices = f" One of: {', '.join(f'`{c}`' for c in k.choices)}." if k.choices else ""
        help_text = k.help.replace("|", "\\|")
        rows.append(f"| `{k.flag}` | `{k.env}` | `{k.default_text()}` | {k.unit} | {help_text}.{choices} |")
    return "\n".join(rows) + "\n"
