"""The manifests in inferenceservices/, rendered by a real kustomize and checked against the official schemas.

There is no cluster here, so correctness comes from three sources: kustomize v5.7.1 (inside kubectl 1.35,
installed by `make tools` / scripts/fetch-kubectl.sh), the projects' own CRD schemas in tests/crds/
(jsonschema, made strict like `kubectl apply`'s field validation), `kubernetes-validate` for core kinds,
and semantic checks of our own that the schemas cannot express.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.crd_schemas import CRD_FILES, schema_errors

ROOT = Path(__file__).resolve().parent.parent
KUBECTL = ROOT / ".tools" / "bin" / "kubectl"
PACKAGE = ROOT / "inferenceservices"
OVERLAYS = ["overlays/cpu", "overlays/gpu", "overlays/canary/v1", "overlays/canary", "overlays/raw-keda"]
EXAMPLES = ["examples/networkpolicy", "examples/monitoring-release"]
COMPONENTS = ("predictor", "transformer")


@functools.cache
def render(directory: str) -> list[dict[str, Any]]:
    """`kubectl kustomize` of one kustomization under inferenceservices/."""
    if not KUBECTL.is_file():
        pytest.fail(f"{KUBECTL} is missing: run `make tools` (bash scripts/fetch-kubectl.sh) first")
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(PACKAGE / directory)], capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, f"kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.load_all(result.stdout, Loader=yaml.CSafeLoader) if doc]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def policies(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "NetworkPolicy"}


def config_maps(objects: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {obj["metadata"]["name"]: obj.get("data", {}) for obj in objects if obj["kind"] == "ConfigMap"}


def container_env(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The env a container really gets: its envFrom ConfigMaps, then its env entries."""
    maps = config_maps(objects)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])
    env.update({item["name"]: item.get("value", "") for item in container.get("env", [])})
    return env


# --- schemas (one validator for every manifest test: tests/crd_schemas.py) ----------------------------


@pytest.mark.parametrize("directory", OVERLAYS + EXAMPLES)
def test_every_rendered_object_matches_its_schema(directory):
    objects = render(directory)
    kinds = {obj["kind"] for obj in objects}
    for obj in objects:
        assert obj["metadata"]["namespace"] == "kembed", obj["metadata"]
        assert schema_errors(obj) == [], f"{obj['kind']}/{obj['metadata']['name']}"
    assert kinds <= {kind for _, kind in CRD_FILES} | {"ConfigMap", "NetworkPolicy"}


def test_the_validators_reject_typos_and_wrong_types():
    """The checks above mean something: a misspelt field or a bad value fails each kind of validation."""
    isvc = copy.deepcopy(one(render("overlays/cpu"), "InferenceService"))
    isvc["spec"]["predictor"]["minReplica"] = 0
    assert any("minReplica" in error for error in schema_errors(isvc))
    isvc = copy.deepcopy(one(render("overlays/cpu"), "InferenceService"))
    isvc["spec"]["predictor"]["scaleMetric"] = "queue"
    assert any("scaleMetric" in error for error in schema_errors(isvc))
    isvc["spec"]["predictor"]["scaleMetric"] = None  # a null is dropped, as the API server does
    assert not any("scaleMetric" in error for error in schema_errors(isvc))
    policy = copy.deepcopy(policies(render("examples/networkpolicy"))["kembed-inferenceservice"])
    policy["spec"]["ingres"] = policy["spec"].pop("ingress")
    assert schema_errors(policy)
    rule = copy.deepcopy(one(render("overlays/cpu"), "PrometheusRule"))
    rule["spec"]["groups"][0]["partial_response_strategy"] = "bogus"
    assert schema_errors(rule)
    rule["spec"]["groups"][0]["partial_response_strategy"] = "WARN"
    assert schema_errors(rule) == []


def knative_service(isvc: dict[str, Any], component: str) -> dict[str, Any]:
    """The pod part of a component as KServe hands it to Knative (a serving.knative.dev/v1 Service)."""
    spec = isvc["spec"][component]
    pod_fields = {"containers", "volumes", "nodeSelector", "tolerations", "affinity", "serviceAccountName",
                  "containerConcurrency", "imagePullSecrets", "securityContext", "priorityClassName"}
    pod = {key: value for key, value in spec.items() if key in pod_fields}
    if "timeout" in spec:
        pod["timeoutSeconds"] = spec["timeout"]
    return {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": "x"},
            "spec": {"template": {"metadata": {"annotations": spec.get("annotations", {})}, "spec": pod}}}


@pytest.mark.parametrize("directory", ["overlays/cpu", "overlays/gpu", "overlays/canary"])
def test_knative_mode_components_fit_knatives_podspec(directory):
    """Knative allows only part of a PodSpec (one port, no pod-level lifecycle, ...): check against its schema."""
    isvc = one(render(directory), "InferenceService")
    for component in COMPONENTS:
        assert schema_errors(knative_service(isvc, component)) == [], component
        (container,) = isvc["spec"][component]["containers"]
        assert len(container["ports"]) == 1
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert container[probe]["httpGet"]["port"] == container["ports"][0]["containerPort"]


# --- semantics -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("directory", "mode"), [
    ("overlays/cpu", "Knative"), ("overlays/gpu", "Knative"), ("overlays/canary/v1", "Knative"),
    ("overlays/canary", "Knative"), ("overlays/raw-keda", "Standard"),
])
def test_deployment_mode_annotation(directory, mode):
    annotations = one(render(directory), "InferenceService")["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == mode
    if mode == "Standard":
        assert annotations["serving.kserve.io/autoscalerClass"] == "external"  # KEDA, not KServe's HPA


@pytest.mark.parametrize("directory", ["overlays/cpu", "overlays/gpu", "overlays/canary/v1", "overlays/canary"])
def test_knative_autoscaling_is_consistent(directory):
    isvc = one(render(directory), "InferenceService")
    for component in COMPONENTS:
        spec = isvc["spec"][component]
        annotations = spec["annotations"]
        assert spec["scaleMetric"] == "concurrency" == annotations["autoscaling.knative.dev/metric"]
        assert 0 < spec["scaleTarget"] <= spec["containerConcurrency"]
        assert annotations["autoscaling.knative.dev/target"] == str(spec["scaleTarget"])
        assert spec["minReplicas"] == 0 == int(annotations["autoscaling.knative.dev/min-scale"])
        assert spec["maxReplicas"] == int(annotations["autoscaling.knative.dev/max-scale"]) >= 1
        assert annotations["autoscaling.knative.dev/class"] == "kpa.autoscaling.knative.dev"  # KPA: scale to 0
        assert 0 < int(annotations["autoscaling.knative.dev/target-utilization-percentage"]) <= 100
        for key in ("scale-down-delay", "scale-to-zero-pod-retention-period", "window"):
            assert re.fullmatch(r"\d+[smh]", annotations[f"autoscaling.knative.dev/{key}"]), key


@pytest.mark.parametrize("directory", OVERLAYS)
def test_containers_are_locked_down_and_bounded(directory):
    objects = render(directory)
    isvc = one(objects, "InferenceService")
    for component in COMPONENTS:
        spec = isvc["spec"][component]
        (container,) = spec["containers"]
        assert container["image"].startswith("ghcr.io/kembed/kembed:0.1.0")
        resources = container["resources"]
        for key in ("cpu", "memory"):
            assert resources["requests"][key] and resources["limits"][key], (component, key)
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True and security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True and security["capabilities"]["drop"] == ["ALL"]
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        tmp = [mount for mount in container["volumeMounts"] if mount["mountPath"] == "/tmp"]
        assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]]
        env = container_env(objects, container)
        assert env["HOME"] == "/tmp" and env["HF_HOME"].startswith("/tmp/") and env["HF_HUB_OFFLINE"] == "1"
        assert not any("secret" in json.dumps(source).lower() for source in container.get("envFrom", []))
        assert not any("valueFrom" in item for item in container.get("env", []))


@pytest.mark.parametrize("directory", OVERLAYS)
def test_servers_are_wired_as_kserve_expects(directory):
    objects = render(directory)
    isvc = one(objects, "InferenceService")
    predictor = isvc["spec"]["predictor"]["containers"][0]
    transformer = isvc["spec"]["transformer"]["containers"][0]
    assert predictor["command"] == ["kembed-predictor"] and transformer["command"] == ["kembed-transformer"]

    def flag(args: list[str], name: str) -> str:
        return args[args.index(name) + 1]

    # The transformer calls /v2/models/{its name}/infer on the predictor, over V2.
    assert flag(transformer["args"], "--model_name") == flag(predictor["args"], "--model_name") == "minilm"
    assert flag(transformer["args"], "--predictor_protocol") == "v2"
    assert "--predictor_host" not in transformer["args"]  # KServe injects it
    assert predictor["readinessProbe"]["httpGet"]["path"] == "/v2/models/minilm/ready"
    assert predictor["name"] == transformer["name"] == "kserve-container"  # where KServe looks for STORAGE_URI
    env = container_env(objects, predictor)
    assert int(env["KEMBED_MAX_BATCH_TOKENS"]) >= int(env["KEMBED_MAX_BATCH_SIZE"])
    if "STORAGE_URI" in env:
        assert env["KEMBED_MODEL_DIR"] == "/mnt/models"
    # Timeouts agree: the predictor drops work its client (the transformer) gave up on, refuses long queues
    # well before that, and finishes within what Knative leaves after its ~30 s drain of the revision timeout.
    transformer_env = container_env(objects, transformer)
    timeout = isvc["spec"]["predictor"].get("timeout", 300)
    wait = float(env["KEMBED_MAX_WAIT_SECONDS"])
    assert wait == float(transformer_env["KEMBED_PREDICTOR_TIMEOUT_SECONDS"]) < timeout
    assert float(env["KEMBED_MAX_QUEUE_SECONDS"]) < wait
    for component in (env, transformer_env):
        assert int(component["KEMBED_GRACE_PERIOD_SECONDS"]) + 30 <= timeout


def test_cpu_and_gpu_overlays_differ_where_they_should():
    cpu, gpu = render("overlays/cpu"), render("overlays/gpu")
    cpu_isvc, gpu_isvc = one(cpu, "InferenceService"), one(gpu, "InferenceService")
    cpu_env = container_env(cpu, cpu_isvc["spec"]["predictor"]["containers"][0])
    gpu_env = container_env(gpu, gpu_isvc["spec"]["predictor"]["containers"][0])
    assert (cpu_env["KEMBED_DEVICE"], gpu_env["KEMBED_DEVICE"]) == ("cpu", "cuda")
    assert gpu_env["KEMBED_DTYPE"] == "float16"
    assert int(gpu_env["KEMBED_MAX_BATCH_SIZE"]) > int(cpu_env["KEMBED_MAX_BATCH_SIZE"])
    gpu_predictor = gpu_isvc["spec"]["predictor"]
    assert gpu_predictor["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in json.dumps(cpu_isvc)
    assert gpu_predictor["tolerations"][0]["key"] == "nvidia.com/gpu" and gpu_predictor["nodeSelector"]
    # the transformer is the same on both (no GPU, CPU image)
    assert gpu_isvc["spec"]["transformer"] == cpu_isvc["spec"]["transformer"]


def test_canary_overlay_is_v1_plus_v2_at_ten_percent():
    v1, v2 = one(render("overlays/canary/v1"), "InferenceService"), one(render("overlays/canary"), "InferenceService")
    for isvc in (v1, v2):
        assert isvc["metadata"]["annotations"]["serving.kserve.io/enable-tag-routing"] == "true"
    assert "canaryTrafficPercent" not in v1["spec"]["predictor"]
    percent = v2["spec"]["predictor"].pop("canaryTrafficPercent")
    assert isinstance(percent, int) and 0 <= percent <= 100 and percent == 10
    uris = [next(e["value"] for e in isvc["spec"]["predictor"]["containers"][0]["env"] if e["name"] == "STORAGE_URI")
            for isvc in (v1, v2)]
    assert uris[0].endswith("/v1") and uris[1].endswith("/v2")
    for isvc in (v1, v2):  # apart from the model location, the two revisions are the same
        for item in isvc["spec"]["predictor"]["containers"][0]["env"]:
            if item["name"] == "STORAGE_URI":
                item["value"] = "<model>"
    assert v1 == v2
    for directory in OVERLAYS:  # no other overlay starts a canary by accident
        if directory != "overlays/canary":
            for component in COMPONENTS:
                spec = one(render(directory), "InferenceService")["spec"][component]
                assert 0 <= spec.get("canaryTrafficPercent", 0) <= 100 and "canaryTrafficPercent" not in spec


def test_raw_keda_overlay_scales_the_standard_mode_deployments():
    objects = render("overlays/raw-keda")
    isvc = one(objects, "InferenceService")
    scaled = {obj["spec"]["scaleTargetRef"]["name"]: obj["spec"] for obj in objects if obj["kind"] == "ScaledObject"}
    assert set(scaled) == {f"kembed-{component}" for component in COMPONENTS}
    for component in COMPONENTS:
        spec, keda = isvc["spec"][component], scaled[f"kembed-{component}"]
        for knative_only in ("annotations", "scaleMetric", "scaleTarget", "containerConcurrency"):
            assert knative_only not in spec, (component, knative_only)
        # KEDA's CEL rule (min <= max) and agreement with the InferenceService
        assert 1 <= keda["minReplicaCount"] == spec["minReplicas"] <= keda["maxReplicaCount"] == spec["maxReplicas"]
        assert keda["scaleTargetRef"]["kind"] == "Deployment"
        window = keda.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior", {})
        for direction in window.values():  # bounds KEDA's release bundle adds to the CRD
            assert 0 <= direction.get("stabilizationWindowSeconds", 0) <= 3600
    (trigger,) = scaled["kembed-predictor"]["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    assert "kembed_queue_depth" in query and 'namespace="kembed"' in query and 'isvc="kembed"' in query
    env = container_env(objects, isvc["spec"]["predictor"]["containers"][0])
    assert float(trigger["metadata"]["threshold"]) == float(env["KEMBED_MAX_BATCH_SIZE"])


@pytest.mark.parametrize("directory", OVERLAYS)
def test_alert_thresholds_follow_the_rendered_settings(directory):
    objects = render(directory)
    isvc = one(objects, "InferenceService")
    rules = {rule["alert"]: rule for group in one(objects, "PrometheusRule")["spec"]["groups"]
             for rule in group["rules"]}
    assert {"KembedErrorRatioHigh", "KembedLatencyP99High", "KembedQueueSaturated", "KembedAtMaxReplicas",
            "KembedTokenizerCacheHitRatioLow", "KembedSlowColdStart"} <= set(rules)
    assert rules["KembedErrorRatioHigh"]["for"] == "5m" and "> 0.01" in rules["KembedErrorRatioHigh"]["expr"]
    assert "> 0.5" in rules["KembedLatencyP99High"]["expr"]  # 500 ms
    max_replicas = re.search(r">= (\d+)\s*$", rules["KembedAtMaxReplicas"]["expr"])
    assert max_replicas and int(max_replicas[1]) == isvc["spec"]["predictor"]["maxReplicas"]
    assert rules["KembedAtMaxReplicas"]["for"] == "10m"
    queue = re.search(r"> 0\.8 \* (\d+)\s*$", rules["KembedQueueSaturated"]["expr"])
    env = container_env(objects, isvc["spec"]["predictor"]["containers"][0])
    assert queue and int(queue[1]) == int(env["KEMBED_QUEUE_SIZE"])


def test_podmonitor_selects_our_pods_and_adds_the_labels_queries_use():
    objects = render("overlays/cpu")
    monitor = one(objects, "PodMonitor")
    isvc = one(objects, "InferenceService")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector == {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["portNumber"] == isvc["spec"]["predictor"]["containers"][0]["ports"][0]["containerPort"]
    assert {r["targetLabel"] for r in endpoint["relabelings"]} == {"isvc", "component", "revision"}


def test_dashboard_is_shipped_as_a_grafana_configmap():
    objects = render("overlays/cpu")
    (dashboard_map,) = [obj for obj in objects if obj["kind"] == "ConfigMap" and "dashboard" in obj["metadata"]["name"]]
    assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(dashboard_map["data"]["kembed-dashboard.json"])
    assert dashboard == json.loads((PACKAGE / "monitoring" / "kembed-dashboard.json").read_text())
    titles = " | ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("requests per second", "p50 / p99", "error ratio", "batch size", "queue depth",
                  "cache hit ratio", "replicas", "gpu memory"):
        assert topic in titles, topic
    assert all(target["expr"] for panel in dashboard["panels"] for target in panel["targets"])


def test_every_configmap_reference_resolves():
    for directory in OVERLAYS:
        objects = render(directory)
        names = set(config_maps(objects))
        isvc = one(objects, "InferenceService")
        for component in COMPONENTS:
            for source in isvc["spec"][component]["containers"][0]["envFrom"]:
                assert source["configMapRef"]["name"] in names, (directory, source)


# --- monitoring selection and network policies -----------------------------------------------------------


@pytest.mark.parametrize("directory", OVERLAYS)
def test_monitoring_objects_carry_kube_prometheus_stacks_release_label(directory):
    """kube-prometheus-stack selects PodMonitors and PrometheusRules by `release: <helm release>`."""
    objects = render(directory)
    for kind in ("PodMonitor", "PrometheusRule"):
        assert one(objects, kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack", kind
    assert "release" not in one(objects, "InferenceService")["metadata"].get("labels", {})


def test_the_release_label_is_one_documented_patch():
    objects = render("examples/monitoring-release")
    for kind in ("PodMonitor", "PrometheusRule"):
        assert one(objects, kind)["metadata"]["labels"]["release"] == "prometheus", kind
    docs = (ROOT / "docs" / "deploy.md").read_text()
    assert "labelSelector: release=kube-prometheus-stack" in docs and "targetPort: 8080" in docs


def render_overlay(tmp_path: Path, kustomization: dict[str, Any]) -> list[dict[str, Any]]:
    """An overlay written to tmp_path (paths in it relative to inferenceservices/), rendered."""
    package = Path(os.path.relpath(PACKAGE, tmp_path))
    kustomization = {**kustomization, "resources": [
        item if (tmp_path / item).exists() else str(package / item) for item in kustomization["resources"]]}
    if "components" in kustomization:
        kustomization["components"] = [str(package / item) for item in kustomization["components"]]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    result = subprocess.run([str(KUBECTL), "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_the_documented_patch_for_operators_before_0_79_gives_a_valid_podmonitor(tmp_path):
    docs = (ROOT / "docs" / "deploy.md").read_text()
    snippet = re.search(r"```yaml\n(patches:\n  - target: \{kind: PodMonitor\}.*?)```", docs, re.S)
    assert snippet, "the targetPort patch is not in docs/deploy.md"
    patches = yaml.safe_load(snippet[1])["patches"]
    monitor = one(render_overlay(tmp_path, {"resources": ["overlays/cpu"], "patches": patches}), "PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["targetPort"] == 8080 and "portNumber" not in endpoint
    assert schema_errors(monitor) == []


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def namespaces(rules: list[dict[str, Any]], side: str) -> set[str]:
    return {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            for rule in rules for peer in rule[side] if "matchLabels" in peer.get("namespaceSelector", {})}


def test_network_policies_cover_predictor_transformer_and_eventing():
    from tests.test_eventing_manifests import one as eventing_one

    objects = render("examples/networkpolicy")
    found = policies(objects)
    assert set(found) == {"kembed-inferenceservice", "kembed-eventing"}
    assert "kembed-networks" not in config_maps(objects)   # the variables are local-config, never applied
    assert "VARIABLE" not in json.dumps(list(found.values()))
    isvc = one(objects, "InferenceService")
    pods = {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"]}   # KServe labels both components' pods
    assert selects(found["kembed-inferenceservice"]["spec"]["podSelector"], pods)
    eventing = eventing_one("Service", "kembed-eventing")["metadata"]["name"]
    assert selects(found["kembed-eventing"]["spec"]["podSelector"], {"serving.knative.dev/service": eventing})
    for policy in found.values():
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        assert namespaces(spec["ingress"], "from") == {"knative-serving", "kourier-system", "monitoring"}
        ports = {port["port"] for rule in spec["ingress"] for port in rule.get("ports", [])}
        assert {8012, 8080} <= ports   # queue-proxy and the container port (/metrics, Standard mode)
        assert any(port["port"] == 53 for rule in spec["egress"] for port in rule.get("ports", []))
    assert "knative-eventing" in namespaces(found["kembed-eventing"]["spec"]["egress"], "to")


def test_network_policy_namespaces_are_kustomize_variables(tmp_path):
    """Another networks.yaml next to an overlay changes every namespace the policies open to."""
    variables = yaml.safe_load((PACKAGE / "examples" / "networkpolicy" / "networks.yaml").read_text())
    variables["data"].update(ingressNamespace="istio-system", monitoringNamespace="observability",
                             knativeServingNamespace="serving", knativeEventingNamespace="eventing",
                             modelStorageCIDR="10.20.0.0/16")
    (tmp_path / "networks.yaml").write_text(yaml.safe_dump(variables))
    objects = render_overlay(tmp_path, {"namespace": "kembed", "resources": ["overlays/gpu", "networks.yaml"],
                                        "components": ["networkpolicy"]})
    found = policies(objects)
    for policy in found.values():
        assert namespaces(policy["spec"]["ingress"], "from") == {"serving", "istio-system", "observability"}
        assert schema_errors(policy) == []
    assert namespaces(found["kembed-eventing"]["spec"]["egress"], "to") == {"istio-system", "eventing"}
    storage = [peer["ipBlock"]["cidr"] for rule in found["kembed-inferenceservice"]["spec"]["egress"]
               for peer in rule["to"] if "ipBlock" in peer]
    assert storage == ["10.20.0.0/16"]
