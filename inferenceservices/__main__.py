"""`kembed-rollout` / `python -m inferenceservices`: apply, canary (with --guard), promote, rollback, status, wait.

Every knob is a flag whose default comes from a KEMBED_* environment variable, like the servers' flags.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from inferenceservices import guard, rollout, status
from inferenceservices.cluster import RolloutError, apply_object, connect, get_isvc


def env(name: str, default: str | None) -> str | None:
    return os.environ.get(f"KEMBED_{name.upper()}", default)


def duration(text: str) -> float:
    """Seconds from `90`, `90s`, `10m` or `1h`."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 30s, 10m, 1h)")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kembed-rollout", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Roll out kembed InferenceServices: server-side apply, guarded canaries, promote, rollback.",
    )
    parser.add_argument("--kubeconfig", default=env("kubeconfig", None),
                        help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, else in-cluster)")
    parser.add_argument("--context", default=env("kube_context", None), help="kubeconfig context")
    parser.add_argument("-n", "--namespace", default=env("namespace", None),
                        help="namespace (default: the context's, else default)")
    commands = parser.add_subparsers(dest="command", required=True)

    apply = commands.add_parser("apply", help="server-side apply of rendered manifests (field manager kembed-rollout)")
    apply.add_argument("-f", "--filename", action="append", required=True,
                       help="YAML file with one or more objects; - reads stdin (repeatable)")
    apply.add_argument("--force-conflicts", action="store_true", help="take over fields owned by other managers")
    apply.add_argument("--dry-run", action="store_true", help="let the server validate without persisting")

    canary = commands.add_parser("canary", help="send a share of traffic to a new predictor revision")
    canary.add_argument("name")
    canary.add_argument("--percent", type=int, required=True, help="traffic share for the new revision, 0..100")
    canary.add_argument("--image", help="new predictor image")
    canary.add_argument("--storage-uri", help="new model location (STORAGE_URI, mounted at /mnt/models)")
    canary.add_argument("--guard", action="store_true", help="watch the canary in Prometheus; roll back on a breach")
    canary.add_argument("--prometheus-url", default=env("prometheus_url", "http://prometheus-operated.monitoring.svc:9090"))
    canary.add_argument("--window", type=duration, default=env("guard_window", "10m"), help="how long to watch")
    canary.add_argument("--interval", type=duration, default=env("guard_interval", "30s"), help="time between checks")
    canary.add_argument("--max-error-ratio", type=float, default=env("guard_max_error_ratio", "0.01"),
                        help="5xx share of the canary's requests that triggers a rollback")
    canary.add_argument("--max-p99-ms", type=float, default=env("guard_max_p99_ms", "500"),
                        help="canary p99 latency that triggers a rollback")
    canary.add_argument("--ready-timeout", type=duration, default=env("guard_ready_timeout", "10m"),
                        help="how long the canary may take to become ready before it is rolled back")
    canary.add_argument("--promote", action="store_true", help="promote after a healthy guard window")

    for verb, text in (("promote", "give the latest revision 100%%"), ("rollback", "give the previous revision 100%%"),
                       ("status", "revisions, traffic, readiness and URLs")):
        commands.add_parser(verb, help=text).add_argument("name")
    wait_parser = commands.add_parser("wait", help="wait until the InferenceService is Ready")
    wait_parser.add_argument("name")
    wait_parser.add_argument("--timeout", type=duration, default=env("wait_timeout", "5m"))
    wait_parser.add_argument("--interval", type=duration, default=env("wait_interval", "2s"))
    return parser


def read_objects(filenames: list[str]) -> Iterator[dict[str, Any]]:
    for filename in filenames:
        try:
            text = sys.stdin.read() if filename == "-" else Path(filename).read_text()
            documents = list(yaml.safe_load_all(text))
        except (OSError, yaml.YAMLError) as exc:
            raise RolloutError(f"cannot read {filename}: {exc}") from None
        for document in documents:
            if not document:
                continue
            if document.get("kind") == "List":
                yield from document.get("items") or []
            else:
                yield document


def run(args: argparse.Namespace) -> int:
    cluster = connect(args.kubeconfig, args.context, args.namespace)
    if args.command == "apply":
        objects = list(read_objects(args.filename))
        if not objects:
            raise RolloutError("nothing to apply")
        for obj in objects:
            applied = apply_object(cluster, obj, force=args.force_conflicts, dry_run=args.dry_run)
            meta = applied.get("metadata", {})
            print(f"{obj['kind']} {meta.get('namespace', '') + '/' if meta.get('namespace') else ''}"
                  f"{meta.get('name', obj['metadata']['name'])} applied{' (dry run)' if args.dry_run else ''}")
        return 0
    if args.command == "canary":
        rollout.canary(cluster, args.name, args.percent, args.image, args.storage_uri)
        print(f"canary: {args.percent}% of {cluster.namespace}/{args.name} goes to the new predictor revision")
        if args.guard:
            limits = guard.Limits(max_error_ratio=args.max_error_ratio, max_p99_s=args.max_p99_ms / 1000)
            guard.guard(cluster, args.name, args.prometheus_url, args.window, args.interval, limits,
                        ready_timeout_s=args.ready_timeout)
            if args.promote:
                rollout.promote(cluster, args.name)
                print(f"canary healthy for {args.window:g}s: promoted")
            else:
                print(f"canary healthy for {args.window:g}s: run `kembed-rollout promote {args.name}` to finish")
        return 0
    if args.command == "promote":
        rollout.promote(cluster, args.name)
        print(f"promoted: the latest revision of {cluster.namespace}/{args.name} takes 100%")
        return 0
    if args.command == "rollback":
        rollout.rollback(cluster, args.name)
        print(f"rolled back: the previous revision of {cluster.namespace}/{args.name} takes 100%")
        return 0
    if args.command == "status":
        print(status.render(get_isvc(cluster, args.name)))
        return 0
    rollout.wait(cluster, args.name, args.timeout, args.interval)
    print(f"InferenceService {cluster.namespace}/{args.name} is Ready")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except RolloutError as exc:
        print(f"kembed-rollout: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
