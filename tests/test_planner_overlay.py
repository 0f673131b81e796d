"""`kembed-plan recommend --write-overlay`: the overlay is patches only, renders with the real kustomize and
validates against the CRD schemas like the shipped overlays (the helpers and checks of test_manifests)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import yaml

from inferenceservices.planner.cli import main
from tests import test_manifests as manifests
from tests.test_planner_recommend import CPU_LIKE

GPU_LIKE = {**CPU_LIKE, "hardware": {"cpus": 4, "device": "cuda", "gpus": ["NVIDIA L4, 23034 MiB"]}}


def write(tmp_path: Path, curve: dict, *extra: str) -> tuple[Path, dict]:
    path = tmp_path / "curve.json"
    path.write_text(json.dumps(curve))
    overlay = tmp_path / "overlays" / "planned"
    args = ["recommend", "--curve", str(path), "--slo-p99-ms", "500", "--peak-rps", "300", "--json",
            "--write-overlay", str(overlay), *extra]
    assert main(args) == 0
    return overlay, args


def test_the_written_overlay_renders_validates_and_carries_the_numbers(tmp_path, capsys):
    overlay, _ = write(tmp_path, CPU_LIKE)
    rec = json.loads(capsys.readouterr().out)
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    assert set(kustomization) == {"apiVersion", "kind", "resources", "patches"}  # patches only
    assert (overlay / kustomization["resources"][0]).resolve() == (manifests.PACKAGE / "base").resolve()
    directory = str(overlay)
    objects = manifests.render(directory)
    for obj in objects:
        assert manifests.schema_errors(obj) == [], f"{obj['kind']}/{obj['metadata']['name']}"
    manifests.test_knative_autoscaling_is_consistent(directory)
    manifests.test_knative_mode_components_fit_knatives_podspec(directory)
    manifests.test_alert_thresholds_follow_the_rendered_settings(directory)
    manifests.test_containers_are_locked_down_and_bounded(directory)
    predictor = manifests.one(objects, "InferenceService")["spec"]["predictor"]
    annotations = predictor["annotations"]
    assert predictor["containerConcurrency"] == rec["container_concurrency"] == 16
    assert predictor["scaleTarget"] == rec["scale_target"]
    assert predictor["maxReplicas"] == rec["max_replicas"] == int(annotations["autoscaling.knative.dev/max-scale"])
    assert annotations["autoscaling.knative.dev/target-utilization-percentage"] == str(
        rec["target_utilization_percentage"])
    assert annotations["autoscaling.knative.dev/scale-to-zero-pod-retention-period"] == (
        f"{rec['scale_to_zero_pod_retention_s']}s")
    resources = predictor["containers"][0]["resources"]
    assert resources["requests"] == resources["limits"] == {"cpu": "2", "memory": "1536Mi"}
    # everything else is the base's
    base = manifests.one(manifests.render("base"), "InferenceService")
    rendered = manifests.one(objects, "InferenceService")
    assert rendered["spec"]["transformer"] == base["spec"]["transformer"]
    assert rendered["metadata"] == base["metadata"]


def test_an_overlay_on_the_gpu_overlay_keeps_the_gpu(tmp_path, capsys):
    overlay, _ = write(tmp_path, GPU_LIKE, "--base", str(manifests.PACKAGE / "overlays" / "gpu"))
    capsys.readouterr()
    directory = str(overlay)
    objects = manifests.render(directory)
    for obj in objects:
        assert manifests.schema_errors(obj) == []
    manifests.test_alert_thresholds_follow_the_rendered_settings(directory)
    predictor = manifests.one(objects, "InferenceService")["spec"]["predictor"]
    assert predictor["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert predictor["containers"][0]["resources"]["limits"]["cpu"] == "4"
    assert predictor["tolerations"] and predictor["containers"][0]["image"].endswith("-cu128")


def test_the_cpu_overlay_is_what_recommend_writes_from_the_committed_curve(tmp_path, monkeypatch, capsys):
    """overlays/cpu's numbers come from inferenceservices/planner/curves/cpu.json by the command in its header;
    rerunning that command reproduces the overlay (so a new curve means rerunning it, not editing by hand)."""
    cpu = manifests.PACKAGE / "overlays" / "cpu"
    header = (cpu / "kustomization.yaml").read_text()
    (line,) = [line for line in header.splitlines() if line.startswith("#   kembed-plan recommend ")]
    args = shlex.split(line.removeprefix("#   kembed-plan "))
    args[args.index("--write-overlay") + 1] = str(tmp_path / "cpu")
    monkeypatch.chdir(manifests.ROOT)
    assert main(args) == 0
    capsys.readouterr()
    for name in ("predictor-scale.yaml", "rules-scale.yaml"):
        assert (tmp_path / "cpu" / name).read_text() == (cpu / name).read_text(), (
            f"{name} is stale (did the base or its alert change?): rerun the command in overlays/cpu's header")
    assert manifests.render(str(tmp_path / "cpu")) == manifests.render("overlays/cpu")
    curve = json.loads((manifests.PACKAGE / "planner" / "curves" / "cpu.json").read_text())
    assert curve["command"] in header and curve["hardware"]["cpus"] == 2


def test_simulate_reads_the_knobs_an_overlay_deploys(tmp_path, capsys):
    from inferenceservices.planner.manifest import knobs_from_overlay, seconds

    assert [seconds(text) for text in ("60s", "5m", "1h30m", "1544s")] == [60, 300, 5400, 1544]
    knobs = knobs_from_overlay(manifests.PACKAGE / "overlays" / "cpu")
    isvc = manifests.one(manifests.render("overlays/cpu"), "InferenceService")["spec"]["predictor"]
    assert knobs["container_concurrency"] == isvc["containerConcurrency"]
    assert knobs["scale_target"] == isvc["scaleTarget"] and knobs["max_replicas"] == isvc["maxReplicas"]
    assert knobs["scale_down_delay_s"] == 300 and knobs["stable_window_s"] == 60  # the base's, not recommend's
    assert knobs["timeout_s"] == isvc["timeout"]
    trace = tmp_path / "trace.csv"
    trace.write_text("second,rps\n0,5\n30,0\n")
    curve = manifests.PACKAGE / "planner" / "curves" / "cpu.json"
    assert main(["simulate", "--curve", str(curve), "--trace", str(trace), "--overlay",
                 str(manifests.PACKAGE / "overlays" / "cpu"), "--png", "", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "png" not in out  # --png '' draws nothing
    assert out["settings"]["container_concurrency"] == isvc["containerConcurrency"]
    assert out["settings"]["scale_to_zero_pod_retention_s"] == seconds(
        isvc["annotations"]["autoscaling.knative.dev/scale-to-zero-pod-retention-period"])
