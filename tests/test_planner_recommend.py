"""kembed-plan recommend on synthetic curves: the SLO holds where it says, the numbers move the right way with
the SLO and the peak, and curves it cannot plan from fail with a message naming the problem."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferenceservices.planner.cli import main
from inferenceservices.planner.curve import Curve, CurveError
from inferenceservices.planner.recommend import Goal, RecommendError, recommend


def curve_data(points: list[tuple[int, float, float, float]], cold_start_s: float | None = 3.0, **extra) -> dict:
    return {"hardware": {"cpus": 2, "cpu_model": "synthetic"}, "model": "minilm", "cold_start_s": cold_start_s,
            "points": [{"concurrency": c, "throughput_rps": x, "p50_ms": p50, "p99_ms": p99}
                       for c, x, p50, p99 in points], **extra}


CPU_LIKE = curve_data([(1, 20, 50, 90), (2, 38, 52, 100), (4, 60, 66, 140), (8, 80, 100, 250),
                       (16, 88, 180, 420), (32, 90, 350, 800)], peak_rss_bytes=900 * 1024 * 1024)


@st.composite
def curves(draw: st.DrawFn) -> Curve:
    """Rising concurrency, saturating throughput, p99 growing with concurrency (as a real pod's does)."""
    size = draw(st.integers(1, 8))
    base_ms = draw(st.floats(5, 200))
    spread = draw(st.floats(1.0, 3.0))
    saturation = draw(st.floats(1, 64))
    points, p99 = [], base_ms * spread
    for i in range(size):
        c = 2**i
        x = 1000 / base_ms * c / (1 + c / saturation)
        p50 = c / x * 1000
        p99 = max(p99 * draw(st.floats(1.0, 2.0)), p50 * spread)
        points.append((c, x, p50, p99))
    return Curve.from_dict(curve_data(points, cold_start_s=draw(st.floats(0.5, 30))))


@settings(max_examples=60, deadline=None)
@given(curve=curves(), slo=st.floats(20, 5000), peak=st.floats(1, 5000))
def test_the_slo_is_met_at_the_chosen_concurrency(curve, slo, peak):
    goal = Goal(slo_p99_ms=slo, peak_rps=peak)
    try:
        rec = recommend(curve, goal)
    except RecommendError as exc:
        assert curve.points[0].p99_ms > slo - goal.proxy_headroom_ms, exc
        return
    by_c = {p.concurrency: p for p in curve.points}
    chosen = by_c[rec.container_concurrency]
    assert chosen.p99_ms <= slo - goal.proxy_headroom_ms
    assert all(p.p99_ms <= slo - goal.proxy_headroom_ms for p in curve.points if p.concurrency <= chosen.concurrency)
    bigger = [p for p in curve.points if p.concurrency > chosen.concurrency]
    assert not bigger or bigger[0].p99_ms > slo - goal.proxy_headroom_ms  # the largest that meets it
    assert 0 < rec.scale_target <= rec.container_concurrency
    assert 1 <= rec.target_utilization_percentage <= 100
    # the pods at the target carry the peak
    assert rec.max_replicas * rec.expected["per_pod_rps_at_target"] >= peak * 0.999
    assert set(rec.reasoning) >= {"container_concurrency", "scale_target", "target_utilization_percentage",
                                  "min_replicas", "max_replicas", "scale_to_zero_pod_retention_s", "cpu"}


@settings(max_examples=60, deadline=None)
@given(curve=curves(), slos=st.tuples(st.floats(20, 5000), st.floats(20, 5000)), peak=st.floats(1, 5000))
def test_a_looser_slo_never_lowers_container_concurrency(curve, slos, peak):
    tight, loose = sorted(slos)
    try:
        strict = recommend(curve, Goal(slo_p99_ms=tight, peak_rps=peak))
    except RecommendError:
        return
    relaxed = recommend(curve, Goal(slo_p99_ms=loose, peak_rps=peak))
    assert relaxed.container_concurrency >= strict.container_concurrency


@settings(max_examples=60, deadline=None)
@given(curve=curves(), peaks=st.tuples(st.floats(1, 5000), st.floats(1, 5000)))
def test_a_higher_peak_never_lowers_max_replicas(curve, peaks):
    low, high = sorted(peaks)
    try:
        small = recommend(curve, Goal(slo_p99_ms=5000, peak_rps=low))
    except RecommendError:
        return
    big = recommend(curve, Goal(slo_p99_ms=5000, peak_rps=high))
    assert big.max_replicas >= small.max_replicas
    assert (big.container_concurrency, big.scale_target) == (small.container_concurrency, small.scale_target)


def test_numbers_for_a_cpu_like_curve():
    rec = recommend(Curve.from_dict(CPU_LIKE), Goal(slo_p99_ms=500, peak_rps=300))
    # 16 (p99 420 ms) fits 500 - 10 ms; 32 (800 ms) does not
    assert (rec.container_concurrency, rec.scale_target) == (16, 16)
    # 88 req/s at 16 / 1.5 = 58.7 req/s, reached at 3.87 in flight -> 24 % of 16
    assert rec.target_utilization_percentage == 24
    assert rec.max_replicas == math.ceil(300 / rec.expected["per_pod_rps_at_target"] * 1.25) == 7
    assert rec.min_replicas == 0 and rec.scale_to_zero_pod_retention_s == math.ceil(3 * 0.99 / 0.01)
    assert (rec.cpu, rec.memory) == ("2", "1536Mi")  # 900 MiB x 1.5 -> 1350 -> 1536
    assert "800 ms" in rec.reasoning["container_concurrency"]


def test_max_replicas_is_at_least_two_so_the_at_max_alert_means_saturation():
    small = recommend(Curve.from_dict(CPU_LIKE), Goal(slo_p99_ms=500, peak_rps=5))
    assert small.max_replicas == 2 and "KembedAtMaxReplicas" in small.reasoning["max_replicas"]
    two = recommend(Curve.from_dict(CPU_LIKE), Goal(slo_p99_ms=500, peak_rps=50))  # ceil(50 / 58.7 x 1.25) = 2
    assert two.max_replicas == 2 and "At least" not in two.reasoning["max_replicas"]


def test_texts_per_request_scales_the_peak_in_texts():
    curve = Curve.from_dict(CPU_LIKE)
    one = recommend(curve, Goal(slo_p99_ms=500, peak_rps=100))
    four = recommend(curve, Goal(slo_p99_ms=500, peak_rps=25, texts_per_request=4))
    assert one.max_replicas == four.max_replicas
    assert "measure at your request size" in four.reasoning["max_replicas"]


def test_no_scale_to_zero_when_no_cold_start_is_allowed_or_it_passes_the_timeout():
    curve = Curve.from_dict(CPU_LIKE)
    never = recommend(curve, Goal(slo_p99_ms=500, peak_rps=100, max_cold_start_share=0))
    assert (never.min_replicas, never.scale_to_zero_pod_retention_s) == (1, 0)
    slow = recommend(curve, Goal(slo_p99_ms=500, peak_rps=100, cold_start_s=90, timeout_s=60))
    assert slow.min_replicas == 1 and "timeout" in slow.reasoning["min_replicas"]
    loose = recommend(curve, Goal(slo_p99_ms=500, peak_rps=100, max_cold_start_share=0.1))
    assert loose.scale_to_zero_pod_retention_s == 27  # 3 s is 10 % of 3 + 27


def test_a_curve_that_never_meets_the_slo_is_a_clear_error():
    with pytest.raises(RecommendError, match=r"never meets a p99 of 80 ms: at concurrency 1 its p99 is 90\.0 ms"):
        recommend(Curve.from_dict(CPU_LIKE), Goal(slo_p99_ms=80, peak_rps=10))
    with pytest.raises(RecommendError, match="cold_start_s"):
        recommend(Curve.from_dict({**CPU_LIKE, "cold_start_s": None}), Goal(slo_p99_ms=500, peak_rps=10))
    with pytest.raises(RecommendError, match="peak-rps"):
        recommend(Curve.from_dict(CPU_LIKE), Goal(slo_p99_ms=500, peak_rps=0))


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.pop("points"), "non-empty list"),
    (lambda d: d.update(points=[]), "non-empty list"),
    (lambda d: d["points"][1].pop("p99_ms"), r"points\[1\] lacks p99_ms"),
    (lambda d: d["points"][2].update(concurrency=2), "increasing concurrency: 2 follows 2"),
    (lambda d: d["points"][0].update(concurrency=0), r"points\[0\].concurrency must be an integer >= 1"),
    (lambda d: d["points"][0].update(concurrency=1.5), r"points\[0\].concurrency"),
    (lambda d: d["points"][3].update(throughput_rps=float("nan")), r"points\[3\].throughput_rps must be finite"),
    (lambda d: d["points"][3].update(p50_ms="fast"), r"points\[3\].p50_ms"),
    (lambda d: d["points"][4].update(p99_ms=10), r"points\[4\]: p99_ms \(10\) is below p50_ms"),
    (lambda d: d.update(cold_start_s=-1), "cold_start_s"),
    (lambda d: d.update(texts_per_request=0), "texts_per_request"),
])
def test_malformed_curves_name_the_problem(change, message):
    data = json.loads(json.dumps(CPU_LIKE))
    change(data)
    with pytest.raises(CurveError, match=message.replace("must be finite", "must be a finite number")):
        Curve.from_dict(data)


def test_the_command_line_prints_json_and_fails_clearly(tmp_path, capsys):
    path = tmp_path / "curve.json"
    path.write_text(json.dumps(CPU_LIKE))
    assert main(["recommend", "--curve", str(path), "--slo-p99-ms", "500", "--peak-rps", "300", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("container_concurrency", "scale_target", "min_replicas", "max_replicas"):
        assert isinstance(out[key], int) and key in out["reasoning"]
    assert main(["recommend", "--curve", str(path), "--slo-p99-ms", "50", "--peak-rps", "300"]) == 2
    assert "kembed-plan recommend: error: the curve never meets" in capsys.readouterr().err
    path.write_text("[1, 2]")
    assert main(["recommend", "--curve", str(path), "--slo-p99-ms", "500", "--peak-rps", "300"]) == 2
    assert "a curve is a JSON object, got list" in capsys.readouterr().err
