"""kembed-plan measure against real predictors on 127.0.0.1, with sweeps bounded to a few seconds."""

from __future__ import annotations

import json
import subprocess
import sys

from inferenceservices.planner.curve import Curve
from inferenceservices.planner.measure import measure
from kembed.launch import ROOT
from tests.conftest import MODEL_NAME


def test_measure_a_running_predictor(predictor):
    curve = measure(url=predictor.url, model_name=MODEL_NAME, predictor_args=[], device="cpu", texts_per_request=2,
                    seconds=0.4, max_concurrency=4, p99_ceiling_ms=60_000, min_gain=-1.0, cold_start_runs=0,
                    cold_start_s=2.5, log=lambda _: None)
    parsed = Curve.from_dict(curve)  # the contract keys are there and sane
    assert [p.concurrency for p in parsed.points] == [1, 2, 4]
    for point in curve["points"]:
        assert point["statuses"] == {"200": point["requests"]} and point["requests"] >= 1
        assert point["texts_per_second"] == point["throughput_rps"] * 2 or point["throughput_rps"] > 0
    assert curve["cold_start_s"] == 2.5 and curve["peak_rss_bytes"] is None and curve["target"] == predictor.url
    assert curve["hardware"]["cpu_model"] and curve["hardware"]["cpus"] >= 1


def test_measure_starts_a_predictor_and_its_curve_feeds_recommend(tmp_path):
    out = tmp_path / "curve.json"
    command = [sys.executable, "-m", "inferenceservices.planner", "measure", "--out", str(out), "--seconds", "0.4",
               "--max-concurrency", "2", "--cold-start-runs", "1", "--min-gain", "-1",
               "--worst-case-texts", "16"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""  # progress goes to stderr
    assert "concurrency    1:" in run.stderr and "cold start 1/1: exec -> ready" in run.stderr
    assert "worst-case request (16 longest texts): HTTP 200" in run.stderr
    curve = json.loads(out.read_text())
    assert {"hardware", "model", "cold_start_s", "points"} <= set(curve)
    assert [p["concurrency"] for p in curve["points"]] == [1, 2]
    assert 0.2 < curve["cold_start_s"] < 120 and len(curve["cold_start_runs_s"]) == 1
    assert curve["peak_rss_bytes"] > 100 * 2**20  # torch + the model
    recommend = subprocess.run(
        [sys.executable, "-m", "inferenceservices.planner", "recommend", "--curve", str(out), "--slo-p99-ms",
         "60000", "--peak-rps", "50", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert recommend.returncode == 0, recommend.stderr
    rec = json.loads(recommend.stdout)
    assert rec["container_concurrency"] == 2 and rec["max_replicas"] >= 1 and rec["memory"]
