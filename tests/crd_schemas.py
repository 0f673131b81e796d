"""One validator for every manifest test: the official CRD schemas in tests/crds/, made as strict as the
API server with strict field validation (see tests/crds/README.md), and kubernetes-validate for built-in
kinds."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

CRDS = Path(__file__).resolve().parent / "crds"
KUBERNETES_VERSION = "1.35.0"  # the kubectl that renders the manifests
CRD_FILES = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "serving.kserve.io_inferenceservices.yaml",
    ("serving.knative.dev/v1", "Service"): "serving.knative.dev_services.yaml",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_podmonitors.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.yaml",
    ("eventing.knative.dev/v1", "Broker"): "eventing.knative.dev_brokers.yaml",
    ("eventing.knative.dev/v1", "Trigger"): "eventing.knative.dev_triggers.yaml",
}
# Knative Eventing's CRDs mark their specs x-kubernetes-preserve-unknown-fields and leave validation to
# its webhook, which refuses unknown fields: for these, listed properties are all there is.
WEBHOOK_VALIDATED = {("eventing.knative.dev/v1", "Broker"), ("eventing.knative.dev/v1", "Trigger")}


def strict(node: Any, webhook_validated: bool = False) -> Any:
    """A CRD schema that refuses what the cluster refuses: objects that list their properties take no
    others (a misspelt field fails here, not silently in the cluster); int-or-string is either."""
    if isinstance(node, list):
        return [strict(item, webhook_validated) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: strict(value, webhook_validated) for key, value in node.items()}
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        node.pop("type", None)
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("pattern") == "^(?i)(abort|warn)?$":  # Go regex; Python wants the flag first
        node["pattern"] = "(?i)^(abort|warn)?$"
    if "properties" in node and "additionalProperties" not in node and (
        webhook_validated or not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        node["additionalProperties"] = False
    return node


@functools.cache
def validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    crd = yaml.load((CRDS / CRD_FILES[(api_version, kind)]).read_text(), Loader=yaml.CSafeLoader)
    (version,) = crd["spec"]["versions"]
    assert f"{crd['spec']['group']}/{version['name']}" == api_version and crd["spec"]["names"]["kind"] == kind
    schema = strict(version["schema"]["openAPIV3Schema"], (api_version, kind) in WEBHOOK_VALIDATED)
    # The API server always allows these at the root; some CRDs leave them out.
    schema["properties"].update({"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                 "metadata": {"type": "object"}})
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def drop_nulls(node: Any) -> Any:
    """The API server drops null fields before validation; jsonschema would report them."""
    if isinstance(node, dict):
        return {key: drop_nulls(value) for key, value in node.items() if value is not None}
    if isinstance(node, list):
        return [drop_nulls(item) for item in node]
    return node


def schema_errors(obj: dict[str, Any]) -> list[str]:
    """Every way `obj` breaks its kind's schema (a CRD in tests/crds/, else Kubernetes' own)."""
    if (obj["apiVersion"], obj["kind"]) in CRD_FILES:
        errors = validator(obj["apiVersion"], obj["kind"]).iter_errors(drop_nulls(obj))
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [str(exc)]
    return []
