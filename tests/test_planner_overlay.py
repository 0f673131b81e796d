"""`kembed-plan recommend --write-overlay`: the overlay is patches only, renders with the real kustomize and
validates against the CRD schemas like the shipped overlays (the helpers and checks of test_manifests)."""

from __future__ import annotations

import json
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
