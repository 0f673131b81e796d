"""Every knob of every service: its environment variable reaches the service's real parser, its flag
wins over the variable, and docs/configuration.md is the generated table."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest

from kembed.settings import Knob, from_args, knobs
from scripts.configuration_doc import configuration_markdown

ROOT = Path(__file__).resolve().parent.parent


def _parsers() -> dict[str, tuple[Callable[[], argparse.ArgumentParser], type]]:
    from eventing.settings import Settings as EventingSettings
    from eventing.settings import build_parser as eventing_parser
    from predictor.__main__ import build_parser as predictor_parser
    from predictor.settings import PredictorSettings
    from transformer.__main__ import build_parser as transformer_parser
    from transformer.settings import TransformerSettings

    return {
        "predictor": (predictor_parser, PredictorSettings),
        "transformer": (transformer_parser, TransformerSettings),
        "eventing": (eventing_parser, EventingSettings),
    }


def _other_value(k: Knob) -> tuple[str, object]:
    """A valid value for the knob that is not its default, as text and as parsed."""
    if k.choices:
        value = next(c for c in k.choices if c != k.default)
        return value, value
    if k.kind is bool:
        return str(not k.default).lower(), not k.default
    if k.kind is int:
        return str(k.default + 3), k.default + 3
    if k.kind is float:
        return str(k.default + 1.5), k.default + 1.5
    return "http://other.example", "http://other.example"


CASES = [
    (service, k) for service, (_, cls) in _parsers().items() for k in knobs(cls)
]


@pytest.mark.parametrize(("service", "k"), CASES, ids=[f"{s}-{k.name}" for s, k in CASES])
def test_every_knob_reads_its_environment_variable_and_its_flag_wins(monkeypatch, service, k):
    build, cls = _parsers()[service]
    text, value = _other_value(k)
    monkeypatch.setenv(k.env, text)
    args, _ = build().parse_known_args([])
    assert getattr(args, k.name) == value
    assert getattr(from_args(cls, args), k.name) == value
    args, _ = build().parse_known_args([k.flag, k.default_text() if k.default not in (None, "") else "x"])
    assert getattr(args, k.name) != value


def test_a_bad_environment_value_names_the_variable(monkeypatch, capsys):
    from predictor.__main__ import build_parser

    monkeypatch.setenv("KEMBED_MAX_BATCH_SIZE", "many")
    with pytest.raises(SystemExit):
        build_parser()
    assert "KEMBED_MAX_BATCH_SIZE='many'" in capsys.readouterr().err


def test_kembed_knobs_come_before_kserve_flags_in_help():
    from predictor.__main__ import build_parser

    text = build_parser().format_help()
    usage, body = text.split("\n", 1)
    assert usage == "usage: kembed-predictor [--FLAG VALUE ...]"
    assert body.index("\nkembed:\n") < body.index("--max_batch_size") < body.index("\nkserve ModelServer flags:\n")
    assert body.index("\nkserve ModelServer flags:\n") < body.index("--http_port")
    assert "(default:" not in body.split("--http_port")[0]
    workers = body[body.index("--workers"):body.index("--max_threads")]
    assert "ignored: kembed serves one process per pod" in " ".join(workers.split())
    assert "model server. (default: 8080)" in " ".join(body.split())  # kserve's --http_port, with its default


def test_configuration_doc_is_generated_from_the_declarations():
    assert (ROOT / "docs" / "configuration.md").read_text() == configuration_markdown(), (
        "docs/configuration.md is stale: run `python -m scripts.configuration_doc > docs/configuration.md`"
    )
