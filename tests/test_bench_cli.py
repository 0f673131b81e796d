"""The benches' --help says what they run: every flag and default in a docstring's example exists."""

from __future__ import annotations

import importlib
import re

import pytest

from bench import predictor_flags

BENCHES = ["bench.predictor", "bench.transformer", "bench.cold_start", "bench.overload", "bench.soak",
           "bench.schema_fuzz", "bench.big_texts"]


@pytest.mark.parametrize("name", BENCHES)
def test_the_example_in_the_docstring_is_the_parser(name):
    module = importlib.import_module(name)
    parser = module.build_parser()
    assert parser.prog == f"python -m {name}" and parser.description == module.__doc__
    example = module.__doc__.split("\n\n")[1]
    assert example.strip().startswith(f"python -m {name}"), example
    shown = dict(re.findall(r"\[(--\w+) ([^\]-][^\]]*)\]", example))
    actions = {action.option_strings[0]: action for action in parser._actions if action.option_strings}
    assert set(shown) == set(actions) - {"-h"}, "the example lists every flag"
    for flag, value in shown.items():
        default = actions[flag].default
        assert value.split() == [str(v) for v in (default if isinstance(default, list) else [default])] or (
            float(value) == default
        ), (flag, value, default)
    assert all(action.help for action in actions.values()), "every flag says what it does"


def test_the_predictor_bench_says_which_loads_it_runs():
    from bench import predictor

    loads = ", ".join(str(c) for c in predictor.CONCURRENCY[:-1]) + f" and {predictor.CONCURRENCY[-1]}"
    assert f"concurrency {loads}" in predictor.__doc__
    assert f"(1 text per request, then {predictor.PER_REQUEST[-1]} per request)" in predictor.__doc__


def test_flags_after_a_double_dash_go_to_the_predictor_and_typos_stop_the_run():
    assert predictor_flags([]) == []
    assert predictor_flags(["--", "--max_batch_size", "8"]) == ["--max_batch_size", "8"]
    for typo in (["--secnds", "3"], ["--secnds", "3", "--", "--x"]):
        with pytest.raises(SystemExit, match="predictor flags go after"):
            predictor_flags(typo)
