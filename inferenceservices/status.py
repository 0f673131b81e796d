"""`kembed-rollout status`: revisions, traffic split, readiness and per-tag URLs of an InferenceService."""

from __future__ import annotations

from typing import Any

from inferenceservices.rollout import deployment_mode, problems, ready_condition

COLUMNS = ("COMPONENT", "REVISION", "TAG", "TRAFFIC", "READY", "URL")


def revision_rows(isvc: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per traffic target of each component, as the controller reports them in status."""
    rows = []
    components = isvc.get("status", {}).get("components") or {}
    for component in ("transformer", "predictor", "explainer"):
        state = components.get(component)
        if not state:
            continue
        latest_created, latest_ready = state.get("latestCreatedRevision"), state.get("latestReadyRevision")
        traffic = state.get("traffic") or [{"revisionName": latest_ready, "percent": None, "url": state.get("url")}]
        for target in traffic:
            revision = target.get("revisionName") or (latest_ready if target.get("latestRevision") else "")
            # Knative routes only to ready revisions; the one still being created is the exception.
            not_ready = revision == latest_created and latest_created != latest_ready
            percent = target.get("percent")
            rows.append((
                component, revision or "-", target.get("tag") or "-",
                "-" if percent is None else f"{percent}%", "False" if not_ready else "True",
                target.get("url") or "-",
            ))
        if latest_created and latest_created != latest_ready and all(r[1] != latest_created for r in rows):
            rows.append((component, latest_created, "-", "0%", "False", "-"))
    return rows


def render(isvc: dict[str, Any]) -> str:
    metadata, status = isvc.get("metadata", {}), isvc.get("status", {})
    ready = ready_condition(isvc)
    why = ": ".join(filter(None, (ready.get("reason"), ready.get("message"))))
    lines = [
        f"InferenceService {metadata.get('namespace')}/{metadata.get('name')}  mode: {deployment_mode(isvc) or '-'}",
        f"URL: {status.get('url') or '-'}",
        f"Ready: {ready.get('status')}{'  (' + why + ')' if why and ready.get('status') != 'True' else ''}",
    ]
    holding = [item for item in problems(isvc) if not item.startswith("Ready=")]
    if holding:  # per component, the way `wait` judges it (revisions, traffic, conditions)
        lines.append(f"Rolling out: {'; '.join(holding)}")
    canary = isvc.get("spec", {}).get("predictor", {}).get("canaryTrafficPercent")
    if canary is not None:
        lines.append(f"Canary: {canary}% to the latest predictor revision")
    rows = [COLUMNS, *revision_rows(isvc)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines.append("")
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)
