"""`kembed-rollout` / `python -m inferenceservices`: apply, canary (with --guard), promote, rollback, status, wait.

Every knob is a flag whose default comes from a KEMBED_* environment variable, like the servers' flags.
The cluster options (-n, --kubeconfig, --context) work before or after the subcommand, as with kubectl.
Every value is checked while parsing, so a bad one never reaches the cluster.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from inferenceservices import guard, rollout, status
from inferenceservices.cluster import RolloutError, apply_object, connect, get_isvc

NAME_HELP = "InferenceService name (metadata.name), e.g. kembed"


def env(name: str, default: str | None) -> str | None:
    return os.environ.get(f"KEMBED_{name.upper()}", default)


def described(text: str, name: str | None = None, default: str | None = None, unit: str | None = None) -> str:
    """`text [unit]; default: X, env KEMBED_NAME`: the one place help texts get their tail."""
    tail = [f"default: {default}"] if default is not None else []
    if name:
        tail.append(f"env KEMBED_{name.upper()}")
    return f"{text}{f' [{unit}]' if unit else ''}" + (f"; {', '.join(tail)}" if tail else "")


def duration(text: str) -> float:
    """Seconds (> 0) from `90`, `90s`, `10m` or `1h`."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 30s, 10m, 1h)")
    seconds = float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be longer than 0, got {text!r}")
    return seconds


def bounded(kind: Callable[[str], Any], low: float, high: float | None = None) -> Callable[[str], Any]:
    """An argparse type that also checks low <= value (<= high)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < low or (high is not None and value > high):
            span = f"within {low:g}..{high:g}" if high is not None else f"at least {low:g}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {text}")
        return value
    return parse


def add_cluster_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """The same three options on the top parser and every subcommand; a subcommand's value wins if given."""
    def default(name: str) -> Any:
        return env(name, None) if top else argparse.SUPPRESS
    group = parser.add_argument_group("cluster")
    group.add_argument("--kubeconfig", default=default("kubeconfig"), help=described(
        "kubeconfig file", "kubeconfig", "$KUBECONFIG, else ~/.kube/config, else the pod's service account"))
    group.add_argument("--context", default=default("kube_context"),
                       help=described("kubeconfig context", "kube_context", "the current context"))
    group.add_argument("-n", "--namespace", default=default("namespace"),
                       help=described("namespace", "namespace", "the context's namespace, else default"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kembed-rollout",
        description="Roll out kembed InferenceServices: server-side apply, guarded canaries, promote, rollback.",
    )
    add_cluster_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(verb: str, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(verb, help=text.replace("%", "%%"), description=text)
        add_cluster_options(sub, top=False)
        return sub

    apply = command("apply", "server-side apply of rendered manifests (field manager kembed-rollout)")
    apply.add_argument("-f", "--filename", action="append", required=True,
                       help="YAML file with one or more objects; - reads stdin (repeatable)")
    apply.add_argument("--force-conflicts", action="store_true", help="take over fields owned by other managers")
    apply.add_argument("--dry-run", action="store_true", help="let the server validate without persisting")

    canary = command("canary", "send a share of traffic to a new predictor revision (optionally guarded)")
    canary.add_argument("name", help=NAME_HELP)
    canary.add_argument("--percent", type=bounded(int, 0, 100), required=True,
                        help="traffic share for the new revision [percent, 0..100]; required")
    canary.add_argument("--image", help="new predictor image; default: keep the current one")
    canary.add_argument("--storage-uri", help="new model location (STORAGE_URI, mounted at /mnt/models); "
                        "default: keep the current one")
    canary.add_argument("--same-tokenizer", action="store_true",
                        help="confirm that --storage-uri's model has the tokenizer the transformer serves "
                        "(the transformer is shared by both revisions); default: refuse a new model dir")
    canary.add_argument("--guard", action="store_true", help="watch the canary in Prometheus; roll back on a breach")
    watch = canary.add_argument_group("guard (with --guard)")
    url = "http://prometheus-operated.monitoring.svc:9090"
    watch.add_argument("--prometheus-url", default=env("prometheus_url", url),
                       help=described("Prometheus base URL", "prometheus_url", url))
    watch.add_argument("--window", type=duration, default=env("guard_window", "10m"),
                       help=described("how long to watch", "guard_window", "10m", "duration: 30s, 10m, 1h"))
    watch.add_argument("--interval", type=duration, default=env("guard_interval", "30s"),
                       help=described("time between checks", "guard_interval", "30s", "duration"))
    watch.add_argument("--max-error-ratio", type=bounded(float, 0, 1),
                       default=env("guard_max_error_ratio", "0.01"),
                       help=described("5xx share (predictor, transformer, queue-proxy, activator) that rolls back",
                                      "guard_max_error_ratio", "0.01", "ratio, 0..1"))
    watch.add_argument("--max-p99-ms", type=bounded(float, 1), default=env("guard_max_p99_ms", "500"),
                       help=described("canary p99 latency that rolls back", "guard_max_p99_ms", "500", "ms"))
    watch.add_argument("--min-requests", type=bounded(int, 1), default=env("guard_min_requests", "100"),
                       help=described("canary requests needed in the window before it can be called healthy "
                                      "(fewer: roll back)", "guard_min_requests", "100", "requests"))
    watch.add_argument("--max-restarts", type=bounded(int, 0), default=env("guard_max_restarts", "0"),
                       help=described("container restarts of canary pods that roll back", "guard_max_restarts", "0",
                                      "restarts"))
    watch.add_argument("--ready-timeout", type=duration, default=env("guard_ready_timeout", "10m"),
                       help=described("how long the canary may take to become ready before it is rolled back",
                                      "guard_ready_timeout", "10m", "duration"))
    watch.add_argument("--promote", action="store_true", help="promote after a healthy guard window")

    for verb, text in (("promote", "give the latest predictor revision 100%"),
                       ("rollback", "give the previous predictor revision 100%"),
                       ("status", "revisions, traffic, readiness and URLs")):
        command(verb, text).add_argument("name", help=NAME_HELP)
    wait_parser = command("wait", "wait until every component serves its spec")
    wait_parser.add_argument("name", help=NAME_HELP)
    wait_parser.add_argument("--timeout", type=duration, default=env("wait_timeout", "5m"),
                             help=described("how long to wait", "wait_timeout", "5m", "duration"))
    wait_parser.add_argument("--interval", type=duration, default=env("wait_interval", "2s"),
                             help=described("time between polls", "wait_interval", "2s", "duration"))
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


def run_canary(cluster: Any, args: argparse.Namespace) -> int:
    if args.storage_uri and not args.same_tokenizer:
        raise RolloutError(
            "a predictor canary with --storage-uri changes the model, but the transformer (shared by both revisions) "
            "keeps tokenizing with its own tokenizer: a model with another tokenizer would answer wrong vectors "
            "with 200. Pass --same-tokenizer if both model dirs carry the same tokenizer files; otherwise deploy "
            "the new model as a second InferenceService (docs/deploy.md, 'A model with another tokenizer')"
        )
    started = rollout.canary(cluster, args.name, args.percent, args.image, args.storage_uri)
    print(f"canary: {args.percent}% of {cluster.namespace}/{args.name} goes to the new predictor revision")
    if not args.guard:
        return 0
    limits = guard.Limits(max_error_ratio=args.max_error_ratio, max_p99_s=args.max_p99_ms / 1000,
                          min_requests=args.min_requests, max_restarts=args.max_restarts)
    requests = guard.guard(cluster, started, args.prometheus_url, args.window, args.interval, limits,
                           ready_timeout_s=args.ready_timeout)
    if args.promote:
        rollout.promote(cluster, args.name)
        print(f"canary healthy for {args.window:g}s ({requests} requests): promoted")
    else:
        print(f"canary healthy for {args.window:g}s ({requests} requests): run `kembed-rollout promote "
              f"{args.name}` to finish")
    return 0


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
        return run_canary(cluster, args)
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
