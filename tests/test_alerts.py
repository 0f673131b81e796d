"""Every alert runs through promtool's unit tests (`promtool test rules`, tests/promtool/*_test.yaml).

promtool is the real rule evaluator of Prometheus (Debian package `prometheus`, installed by `make tools`,
scripts/fetch-promtool.sh). The rules are the rendered ones: the cpu overlay's PrometheusRule and the eventing
one, written as plain Prometheus rule files next to copies of the test files.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_manifests import ROOT, one, render

TESTS = Path(__file__).resolve().parent / "promtool"
EVENTING_RULE = ROOT / "eventing" / "config" / "prometheusrule.yaml"
RULES = {
    "kembed_rules_test.yaml": ("kembed.rules.yaml", lambda: one(render("overlays/cpu"), "PrometheusRule")),
    "eventing_rules_test.yaml": ("eventing.rules.yaml", lambda: yaml.safe_load(EVENTING_RULE.read_text())),
}


def promtool() -> str:
    found = shutil.which("promtool") or next((str(p) for p in [ROOT / ".tools" / "bin" / "promtool"] if p.is_file()),
                                              None)
    if not found:
        pytest.skip("promtool is not installed and `make tools` could not install it "
                    "(it needs apt-get: Debian/Ubuntu package `prometheus`)")
    return found


def alerts(rule: dict[str, Any]) -> set[str]:
    return {item["alert"] for group in rule["spec"]["groups"] for item in group["rules"] if "alert" in item}


@pytest.mark.parametrize("test_file", sorted(RULES))
def test_promtool_unit_tests_pass(test_file, tmp_path):
    rules_name, rule = RULES[test_file]
    (tmp_path / rules_name).write_text(yaml.safe_dump(rule()["spec"]))
    shutil.copy(TESTS / test_file, tmp_path / test_file)
    tool = promtool()
    checked = subprocess.run([tool, "check", "rules", rules_name], cwd=tmp_path, capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([tool, "test", "rules", test_file], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert tested.returncode == 0, tested.stdout + tested.stderr


@pytest.mark.parametrize("test_file", sorted(RULES))
def test_every_alert_has_a_firing_and_a_quiet_case(test_file):
    cases = [case for test in yaml.safe_load((TESTS / test_file).read_text())["tests"]
             for case in test["alert_rule_test"]]
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    expected = alerts(RULES[test_file][1]())
    assert expected - firing == set(), "alerts never seen firing"
    assert expected - quiet == set(), "alerts never seen quiet"
