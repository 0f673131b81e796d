"""Benchmarks that print figures (`python -m bench.<name> --help` says what each runs)."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and each flag's default."""


def predictor_flags(extra: list[str]) -> list[str]:
    """What follows `--` on a bench's command line goes to the predictor it starts; anything else is a typo."""
    if "--" not in extra:
        if extra:
            raise SystemExit(f"unknown arguments {extra}: predictor flags go after `--`")
        return []
    cut = extra.index("--")
    if cut:
        raise SystemExit(f"unknown arguments {extra[:cut]}: predictor flags go after `--`")
    return extra[cut + 1 :]
