"""`kembed-plan` (or `python -m inferenceservices.planner`): measure, recommend, simulate."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from inferenceservices.planner.curve import Curve, CurveError
from inferenceservices.planner.recommend import Goal, RecommendError, recommend

# recommend --json keys that set the simulation's Knative knobs
FROM_RECOMMENDATION = {
    "container_concurrency": "container_concurrency",
    "scale_target": "scale_target",
    "target_utilization_percentage": "target_utilization_percentage",
    "min_replicas": "min_replicas",
    "max_replicas": "max_replicas",
    "scale_to_zero_pod_retention_s": "scale_to_zero_pod_retention_s",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kembed-plan", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    m = commands.add_parser("measure", help="sweep a predictor's concurrency and write its curve",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m.add_argument("--out", type=Path, required=True, help="curve.json to write")
    m.add_argument("--url", help="a running predictor (http://host:port) instead of starting one here")
    m.add_argument("--model-name", default="minilm")
    m.add_argument("--backend", help="predictor --backend (native, transformers, openvino); default: its own")
    m.add_argument("--device", default="auto", help="predictor --device (cpu, cuda, auto)")
    m.add_argument("--texts-per-request", type=int, default=1)
    m.add_argument("--seconds", type=float, default=5.0, help="length of each concurrency step")
    m.add_argument("--max-concurrency", type=int, default=128)
    m.add_argument("--p99-ceiling-ms", type=float, default=2000.0, help="stop once p99 passes this")
    m.add_argument("--min-gain", type=float, default=0.05, help="a doubling that gains less counts as flat")
    m.add_argument("--patience", type=int, default=2, help="stop after this many flat doublings in a row")
    m.add_argument("--cold-start-runs", type=int, default=2, help="fresh starts timed after the sweep")
    m.add_argument("--cold-start-s", type=float, help="with --url: the cold start measured elsewhere")
    m.add_argument("--worst-case-texts", type=int, default=256,
                   help="one request of this many longest texts before peak memory is read (0: none)")
    m.add_argument("predictor_args", nargs="*", help="more predictor flags, after --")

    r = commands.add_parser("recommend", help="Knative scale settings from a curve and an SLO",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("--curve", type=Path, required=True)
    r.add_argument("--slo-p99-ms", type=float, required=True)
    r.add_argument("--peak-rps", type=float, required=True, help="peak requests/s the service must take")
    r.add_argument("--texts-per-request", type=int, help="texts per request at the peak (default: the curve's)")
    r.add_argument("--proxy-headroom-ms", type=float, default=Goal.proxy_headroom_ms,
                   help="taken off the SLO for the queue-proxy/activator hop")
    r.add_argument("--burst-factor", type=float, default=Goal.burst_factor,
                   help="load growth a pod at its target absorbs while a new pod starts")
    r.add_argument("--replica-margin", type=float, default=Goal.replica_margin, help="over the peak's pods")
    r.add_argument("--max-cold-start-share", type=float, default=Goal.max_cold_start_share,
                   help="most of a scale-from-zero cycle spent starting (0: never scale to zero)")
    r.add_argument("--timeout-s", type=float, default=Goal.timeout_s, help="the InferenceService's timeout")
    r.add_argument("--cold-start-s", type=float, help="override the curve's cold start (e.g. + image pull)")
    r.add_argument("--json", action="store_true", help="print JSON with the reasoning per number")
    r.add_argument("--write-overlay", type=Path, metavar="DIR", help="write a kustomize overlay (patches only)")
    r.add_argument("--base", type=Path, help="kustomization the overlay patches (default: inferenceservices/base)")

    # no ArgumentDefaultsHelpFormatter: the knobs' flags default to None (= overlay, recommendation, Knative)
    s = commands.add_parser("simulate", help="replay a trace through a model of Knative's KPA")
    s.add_argument("--curve", type=Path, required=True)
    s.add_argument("--trace", type=Path, required=True, help="CSV `second,rps` (rps holds until the next row)")
    s.add_argument("--overlay", type=Path, metavar="DIR",
                   help="a kustomization (e.g. inferenceservices/overlays/cpu): the knobs it deploys (kubectl)")
    s.add_argument("--recommendation", type=Path, help="recommend --json output: its numbers set the knobs")
    s.add_argument("--slo-p99-ms", type=float, help="default: the recommendation's, else 500")
    s.add_argument("--cold-start-s", type=float, help="override the curve's cold start")
    s.add_argument("--seed", type=int, default=0, help="random arrivals and request costs (default: 0)")
    s.add_argument("--uniform", action="store_true", help="evenly spaced arrivals instead of Poisson")
    s.add_argument("--png", default="simulation.png", help="picture to draw (default: simulation.png; '' for none)")
    s.add_argument("--json", action="store_true")
    from inferenceservices.planner.kpa import KpaSettings

    for knob in dataclasses.fields(KpaSettings):
        s.add_argument(f"--{knob.name.replace('_', '-')}", type=float, default=None,
                       help=f"default: the overlay's, the recommendation's, else {knob.default}")
    return parser


def read_trace(path: Path) -> list[tuple[float, float]]:
    rows = []
    with path.open(newline="") as handle:
        for number, row in enumerate(csv.reader(handle), 1):
            if not row or row[0].strip().startswith("#"):
                continue
            try:
                second, rps = float(row[0]), float(row[1])
            except (ValueError, IndexError):
                if not rows and row[0].strip().lower() == "second":
                    continue  # header
                raise ValueError(f"{path}:{number}: expected `second,rps`, got {row!r}") from None
            if second < 0 or rps < 0 or (rows and second <= rows[-1][0]):
                raise ValueError(f"{path}:{number}: seconds must increase and rps be >= 0")
            rows.append((second, rps))
    if not rows:
        raise ValueError(f"{path}: no `second,rps` rows")
    return rows


def settings_for(args: argparse.Namespace) -> tuple[Any, float]:
    from inferenceservices.planner.kpa import KpaSettings

    values: dict[str, Any] = {}
    slo = 500.0
    if args.overlay:
        from inferenceservices.planner.manifest import knobs_from_overlay

        values.update(knobs_from_overlay(args.overlay))
    if args.recommendation:
        rec = json.loads(args.recommendation.read_text())
        values.update({knob: rec[key] for key, knob in FROM_RECOMMENDATION.items() if key in rec})
        slo = rec.get("slo_p99_ms", slo)
    for knob in dataclasses.fields(KpaSettings):
        given = getattr(args, knob.name)
        if given is not None:
            values[knob.name] = given
    for name in ("container_concurrency", "min_replicas", "max_replicas", "initial_replicas"):
        if name in values:
            values[name] = int(values[name])
    return KpaSettings(**values), args.slo_p99_ms or slo


def run_measure(args: argparse.Namespace, argv: list[str]) -> int:
    from inferenceservices.planner.measure import measure

    extra = [*(["--backend", args.backend] if args.backend else []), *args.predictor_args]
    curve = measure(url=args.url, model_name=args.model_name, predictor_args=extra, device=args.device,
                    texts_per_request=args.texts_per_request, seconds=args.seconds,
                    max_concurrency=args.max_concurrency, p99_ceiling_ms=args.p99_ceiling_ms,
                    min_gain=args.min_gain, cold_start_runs=args.cold_start_runs, cold_start_s=args.cold_start_s,
                    patience=args.patience, worst_case_texts=args.worst_case_texts)
    curve["command"] = "kembed-plan " + shlex.join(argv)
    Curve.from_dict(curve)  # what we write, we can read
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(curve, indent=2) + "\n")
    print(f"wrote {args.out} ({len(curve['points'])} points, cold start {curve['cold_start_s']} s)",
          file=sys.stderr)
    return 0


def describe(curve: Curve) -> str:
    """Where a curve comes from, in one line: what a reader of the overlay needs to judge its numbers."""
    hw = curve.hardware
    parts = [str(hw.get("cpu_model", "unknown CPU")), f"{hw.get('cpus', '?')} CPUs"]
    if hw.get("gpus"):
        parts.append(", ".join(hw["gpus"]))
    if hw.get("load_average_1m") is not None:
        parts.append(f"load average {hw['load_average_1m']:.1f} while measured")
    if curve.measured_at:
        parts.append(curve.measured_at)
    return "; ".join(parts)


def run_recommend(args: argparse.Namespace, argv: list[str]) -> int:
    curve = Curve.load(args.curve)
    goal = Goal(slo_p99_ms=args.slo_p99_ms, peak_rps=args.peak_rps, texts_per_request=args.texts_per_request,
                proxy_headroom_ms=args.proxy_headroom_ms, burst_factor=args.burst_factor,
                replica_margin=args.replica_margin, max_cold_start_share=args.max_cold_start_share,
                timeout_s=args.timeout_s, cold_start_s=args.cold_start_s)
    rec = recommend(curve, goal)
    if args.write_overlay:
        from inferenceservices.planner.overlay import BASE, write_overlay

        command = "kembed-plan " + shlex.join(argv)
        if curve.command:
            command = f"{curve.command}\n#   {command}"
        for path in write_overlay(rec, args.write_overlay, args.base or BASE, command, describe(curve)):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(rec.to_json(), indent=2))
    else:
        for key, text in rec.reasoning.items():
            print(f"{key}: {text}")
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    from inferenceservices.planner.kpa import simulate

    curve = Curve.load(args.curve)
    settings, slo = settings_for(args)
    result = simulate(curve, settings, read_trace(args.trace), cold_start_s=args.cold_start_s, slo_ms=slo,
                      seed=args.seed, poisson=not args.uniform)
    summary = result.summary()
    summary["slo_p99_ms"] = slo
    summary["settings"] = dataclasses.asdict(settings)
    if args.png:
        from inferenceservices.planner.plot import draw

        title = f"{args.trace.name} on {args.curve.name}"
        summary["png"] = str(draw(result.timeline, slo, Path(args.png), title=title))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            if key != "settings":
                print(f"{key}: {value}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        if args.command == "measure":
            return run_measure(args, argv)
        if args.command == "recommend":
            return run_recommend(args, argv)
        return run_simulate(args)
    except (CurveError, RecommendError, ValueError, OSError) as exc:
        print(f"kembed-plan {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
