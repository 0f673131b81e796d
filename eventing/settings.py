"""Every knob of the eventing service: a CLI flag whose default comes from a `KEMBED_*` env var.

Knative sets `PORT`; a SinkBinding sets `K_SINK` (and `K_CE_OVERRIDES`). `--http_port` is an alias
of `--port` and `--grpc_port` is accepted and ignored, so the service starts like kserve servers.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from typing import Any

REQUEST_TYPE = "dev.kembed.embeddings.requested"
COMPLETED_TYPE = "dev.kembed.embeddings.completed"
SUMMARY_TYPE = "dev.kembed.embeddings.summary"


def env(name: str, default: object) -> object:
    """Default for a flag: the `KEMBED_<NAME>` environment variable, else ``default``."""
    return os.environ.get(f"KEMBED_{name.upper()}", default)


@dataclass(frozen=True)
class Settings:
    inference_url: str
    model_name: str = "minilm"
    request_type: str = REQUEST_TYPE
    event_source: str = "/kembed/eventing"
    max_items: int = 10_000
    chunk_size: int = 64
    parallelism: int = 4
    max_event_bytes: int = 1 << 20
    max_request_bytes: int = 32 << 20
    dedup_ttl_seconds: float = 600.0
    dedup_max_entries: int = 128
    request_timeout_seconds: float = 60.0
    retry_after_seconds: int = 5
    sink: str | None = None
    ce_overrides: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Refuses settings that could only fail later, per event."""
        if not self.inference_url.startswith(("http://", "https://")):
            raise ValueError(f"--inference_url must be an http(s) URL, got {self.inference_url!r}")
        positive = ("max_items", "chunk_size", "parallelism", "max_request_bytes", "retry_after_seconds")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.max_event_bytes < 4096:
            raise ValueError(f"--max_event_bytes must be at least 4096, got {self.max_event_bytes}")
        if self.dedup_ttl_seconds < 0 or self.dedup_max_entries < 0:
            raise ValueError("--dedup_ttl_seconds and --dedup_max_entries must not be negative")
        if self.sink is not None and not self.sink.startswith(("http://", "https://")):
            raise ValueError(f"--sink (K_SINK) must be an http(s) URL, got {self.sink!r}")


def parse_overrides(raw: str | None) -> dict[str, Any]:
    """`K_CE_OVERRIDES` from a SinkBinding: `{"extensions": {"name": "value"}}`."""
    if not raw:
        return {}
    value = json.loads(raw)
    extensions = value.get("extensions", {}) if isinstance(value, dict) else None
    if not isinstance(extensions, dict):
        raise ValueError(f"K_CE_OVERRIDES must look like {{\"extensions\": {{...}}}}, got {raw!r}")
    return extensions


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kembed-eventing",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="kembed eventing: CloudEvents in, embeddings out (Knative Trigger subscriber)",
    )
    add = parser.add_argument
    add("--inference_url", default=env("inference_url", None),
        help="base URL of the InferenceService (transformer or predictor) speaking V2")
    add("--model_name", default=env("model_name", "minilm"), help="V2 model name to call")
    add("--request_type", default=env("request_type", REQUEST_TYPE), help="CloudEvent type this service accepts")
    add("--event_source", default=env("event_source", "/kembed/eventing"), help="source of the events it sends")
    add("--max_items", type=int, default=env("max_items", 10_000), help="items per event before 400")
    add("--chunk_size", type=int, default=env("chunk_size", 64), help="items per V2 call")
    add("--parallelism", type=int, default=env("parallelism", 4), help="concurrent V2 calls per process")
    add("--max_event_bytes", type=int, default=env("max_event_bytes", 1 << 20),
        help="largest reply event (body + CloudEvents headers); larger results go to K_SINK in parts")
    add("--max_request_bytes", type=int, default=env("max_request_bytes", 32 << 20),
        help="largest incoming event body before 413")
    add("--dedup_ttl_seconds", type=float, default=env("dedup_ttl_seconds", 600.0),
        help="how long a reply is kept for redeliveries of the same (source, id)")
    add("--dedup_max_entries", type=int, default=env("dedup_max_entries", 128), help="replies kept for redeliveries")
    add("--request_timeout_seconds", type=float, default=env("request_timeout_seconds", 60.0),
        help="timeout of one V2 call or sink POST")
    add("--retry_after_seconds", type=int, default=env("retry_after_seconds", 5),
        help="Retry-After sent with 503 when the InferenceService gives none")
    add("--sink", default=os.environ.get("K_SINK"), help="where split results go (K_SINK from a SinkBinding)")
    add("--host", default=env("host", "0.0.0.0"), help="listen address")
    add("--port", "--http_port", dest="port", type=int, default=int(os.environ.get("PORT", "8080")),
        help="listen port (PORT, as Knative sets it)")
    add("--grpc_port", help=argparse.SUPPRESS)
    add("--log_level", default=env("log_level", "info"), help="debug | info | warning | error")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    if not args.inference_url:
        raise ValueError("set --inference_url or KEMBED_INFERENCE_URL to the InferenceService's base URL")
    settings = Settings(
        inference_url=args.inference_url.rstrip("/"),
        model_name=args.model_name,
        request_type=args.request_type,
        event_source=args.event_source,
        max_items=args.max_items,
        chunk_size=args.chunk_size,
        parallelism=args.parallelism,
        max_event_bytes=args.max_event_bytes,
        max_request_bytes=args.max_request_bytes,
        dedup_ttl_seconds=args.dedup_ttl_seconds,
        dedup_max_entries=args.dedup_max_entries,
        request_timeout_seconds=args.request_timeout_seconds,
        retry_after_seconds=args.retry_after_seconds,
        sink=args.sink or None,
        ce_overrides=parse_overrides(os.environ.get("K_CE_OVERRIDES")),
    )
    settings.check()
    return settings
