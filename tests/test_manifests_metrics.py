"""Alert, dashboard and KEDA queries only use metric names that the running servers really export.

Scrapes /metrics of a real predictor (session fixture) and a real transformer in front of it, after one
embedding request, and compares with every metric name in the rendered PromQL.
"""

from __future__ import annotations

import importlib.util
import json
import re

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inferenceservices import guard
from tests.conftest import MODEL_NAME
from tests.test_manifests import OVERLAYS, one, render

# What a family of each type puts on the wire (prometheus_client's text exposition).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "untyped": ("",),
}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
            "offset", "inf", "nan"}
PODMONITOR_LABELS = {"namespace", "pod", "container", "isvc", "component", "revision", "le"}
# Exported by kube-state-metrics and Knative, not by kembed (absence alerts and the canary guard read them).
EXTERNAL = {
    "kube_deployment_status_replicas_available": {"namespace", "deployment"},
    "kube_pod_container_status_restarts_total": {"namespace", "pod"},
    "revision_request_count": {"namespace_name", "revision_name", "response_code_class"},
    "activator_request_count": {"namespace_name", "revision_name", "response_code_class"},
    "kn_serving_invocation_duration_seconds_count": {"namespace", "pod", "http_response_status_code"},
    "http_server_request_duration_seconds_count": {"k8s_namespace_name", "kn_revision_name",
                                                   "http_response_status_code"},
}


def exported_names(metrics_text: str) -> set[str]:
    """Every sample name the exposition declares (HELP/TYPE), with or without samples yet (e.g. GPU-only)."""
    names = set()
    for family in text_string_to_metric_families(metrics_text):
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


def metric_names(promql: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords or label lists."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", promql, re.S)
    if match:  # Grafana's template query: only the selector part holds a metric
        promql = match[1]
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', promql)         # string literals
    text = re.sub(r"\{[^}]*\}", "", text)                      # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)                     # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for found in re.finditer(r"(?<![\w.$])([a-zA-Z_:][\w:]*)\s*(\()?", text):
        if not found[2] and found[1] not in KEYWORDS:
            names.add(found[1])
    return names


def label_names(promql: str) -> set[str]:
    names = set()
    for matchers in re.findall(r"\{([^}]*)\}", promql):
        names.update(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", promql):
        names.update(name.strip() for name in group.split(",") if name.strip())
    return names


def all_queries() -> dict[str, str]:
    """Every PromQL expression the manifests carry, named by where it lives."""
    queries: dict[str, str] = {}
    for directory in OVERLAYS:
        objects = render(directory)
        for group in one(objects, "PrometheusRule")["spec"]["groups"]:
            for rule in group["rules"]:
                queries[f"{directory} alert {rule['alert']}"] = rule["expr"]
        for obj in objects:
            if obj["kind"] == "ScaledObject":
                for trigger in obj["spec"]["triggers"]:
                    if trigger["type"] == "prometheus":
                        queries[f"{directory} keda {obj['metadata']['name']}"] = trigger["metadata"]["query"]
            if obj["kind"] == "ConfigMap" and "kembed-dashboard.json" in obj.get("data", {}):
                dashboard = json.loads(obj["data"]["kembed-dashboard.json"])
                for panel in dashboard["panels"]:
                    for target in panel["targets"]:
                        queries[f"dashboard {panel['title']} {target['refId']}"] = target["expr"]
                for variable in dashboard["templating"]["list"]:
                    if variable["type"] == "query":
                        queries[f"dashboard variable {variable['name']}"] = variable["query"]["query"]
    revisions = {"predictor": "kembed-predictor-00002", "transformer": "kembed-transformer-00002"}
    for signal in guard.signals("kembed", "kembed", revisions, guard.Limits()):
        queries[f"guard {signal.name} {metric_names(signal.query)}"] = signal.query
    queries["guard restarts"] = guard.restarts("kembed", revisions, 600, 0).query
    queries["guard canary requests"] = guard.canary_requests("kembed", "kembed", revisions["predictor"], 600)
    return queries


def test_the_promql_parser_finds_names_and_skips_the_rest():
    expr = ('histogram_quantile(0.99, sum by (namespace, le) (rate(kembed_request_duration_seconds_bucket'
            '{component="predictor", status=~"5.."}[5m]))) > 0.8 * 2048 and on (pod) kembed_inflight')
    assert metric_names(expr) == {"kembed_request_duration_seconds_bucket", "kembed_inflight"}
    assert metric_names('label_values(kembed_requests_total{namespace="$namespace"}, isvc)') == {
        "kembed_requests_total"}
    assert label_names(expr) == {"namespace", "le", "component", "status"}


@pytest.fixture(scope="module")
def scraped(predictor, request) -> dict[str, set[str]]:
    """/metrics of the real predictor, and of the real transformer when that package is there."""
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["kembed metrics check"]}]}
    assert httpx.post(f"{predictor.url}/v2/models/{MODEL_NAME}/infer", json=body, timeout=60).status_code == 200
    names = {"predictor": exported_names(httpx.get(f"{predictor.url}/metrics", timeout=10).text)}
    if importlib.util.find_spec("transformer.__main__") is None:
        return names
    transformer = request.getfixturevalue("transformer")
    for _ in range(2):  # a miss, then a hit in the tokenization cache
        response = httpx.post(f"{transformer.url}/v2/models/{MODEL_NAME}/infer", json=body, timeout=60)
        assert response.status_code == 200, response.text
    names["transformer"] = exported_names(httpx.get(f"{transformer.url}/metrics", timeout=10).text)
    return names


def test_predictor_exports_what_the_predictor_queries_use(scraped):
    predictor_names = scraped["predictor"]
    assert {"kembed_requests_total", "kembed_request_duration_seconds_bucket", "kembed_queue_depth",
            "kembed_gpu_memory_bytes"} <= predictor_names  # a sanity check of the scrape itself
    for where, expr in all_queries().items():
        if 'component="transformer"' in expr or "tokeniz" in expr or "embedding_cache" in expr:
            continue
        unknown = metric_names(expr) - predictor_names - set(EXTERNAL)
        assert not unknown, f"{where}: {sorted(unknown)} not exported by the predictor"


def test_transformer_exports_what_the_transformer_queries_use(scraped):
    if "transformer" not in scraped:
        pytest.skip("the transformer package is not importable yet: its metric names are unchecked")
    known = scraped["predictor"] | scraped["transformer"]
    for where, expr in all_queries().items():
        unknown = metric_names(expr) - known - set(EXTERNAL)
        assert not unknown, f"{where}: {sorted(unknown)} not exported by the predictor or transformer"


def test_queries_only_use_labels_the_servers_or_the_podmonitor_provide(scraped):
    text_labels = {"model", "status"}  # the servers' own labels on kembed_* metrics
    for where, expr in all_queries().items():
        external = set().union(*(EXTERNAL[name] for name in metric_names(expr) & set(EXTERNAL)))
        unknown = label_names(expr) - text_labels - PODMONITOR_LABELS - external
        assert not unknown, f"{where}: labels {sorted(unknown)}"
    assert all_queries(), "no queries found"
