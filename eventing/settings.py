"""Every knob of the eventing service, declared once (see `kembed.settings`).

Knative sets `PORT`; a SinkBinding sets `K_SINK` (and `K_CE_OVERRIDES`). `--http_port` is an alias
of `--port` and `--grpc_port` is accepted and ignored, so the service starts like kserve servers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from kembed.settings import add_knobs, from_args, knob

REQUEST_TYPE = "dev.kembed.embeddings.requested"
COMPLETED_TYPE = "dev.kembed.embeddings.completed"
SUMMARY_TYPE = "dev.kembed.embeddings.summary"


@dataclass(frozen=True)
class Settings:
    inference_url: str = knob("", "base URL of the InferenceService (transformer or predictor) speaking V2 (required)")
    model_name: str = knob("minilm", "V2 model name to call")
    request_type: str = knob(REQUEST_TYPE, "CloudEvent type this service accepts")
    event_source: str = knob("/kembed/eventing", "source of the events it sends")
    max_items: int = knob(10_000, "items per event before 400")
    chunk_size: int = knob(64, "items per V2 call")
    parallelism: int = knob(4, "concurrent V2 calls per process")
    max_event_bytes: int = knob(1 << 20, "largest reply event (body + CloudEvents headers); larger results go to "
                                "K_SINK in parts", unit="bytes")
    max_request_bytes: int = knob(32 << 20, "largest incoming event body before 413", unit="bytes")
    dedup_ttl_seconds: float = knob(600.0, "how long after its last attempt an event's reply (or its finished "
                                    "chunks and unsent parts) is kept for redeliveries of the same (source, id)",
                                    unit="s")
    dedup_max_entries: int = knob(20_000, "events kept for redeliveries; the oldest finished go first")
    dedup_max_bytes: int = knob(256 << 20, "bytes of replies, chunk results and unsent parts kept for redeliveries",
                                unit="bytes")
    request_timeout_seconds: float = knob(60.0, "timeout of one V2 call or sink POST", unit="s")
    call_attempts: int = knob(4, "tries of one V2 call (chunk) or part POST on 429/5xx/timeouts before the event "
                              "fails")
    call_backoff_seconds: float = knob(0.5, "wait before the second try of a call, doubled for each further try "
                                       "(with jitter)", unit="s")
    retry_after_seconds: int = knob(5, "Retry-After sent with 503 when the InferenceService gives none", unit="s")
    sink: str = knob("", "where split results go (set by a SinkBinding)", env="K_SINK")
    host: str = knob("0.0.0.0", "listen address")
    port: int = knob(8080, "listen port (Knative sets PORT)", env="PORT", flags=("--http_port",))
    log_level: str = knob("info", "log level", choices=("debug", "info", "warning", "error"))
    ce_overrides: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Refuses settings that could only fail later, per event."""
        if not self.inference_url.startswith(("http://", "https://")):
            raise ValueError(f"--inference_url must be an http(s) URL, got {self.inference_url!r}")
        positive = ("max_items", "chunk_size", "parallelism", "max_request_bytes", "retry_after_seconds",
                    "call_attempts")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.max_event_bytes < 4096:
            raise ValueError(f"--max_event_bytes must be at least 4096, got {self.max_event_bytes}")
        if min(self.dedup_ttl_seconds, self.dedup_max_entries, self.dedup_max_bytes, self.call_backoff_seconds) < 0:
            raise ValueError(
                "--dedup_ttl_seconds, --dedup_max_entries, --dedup_max_bytes and --call_backoff_seconds must not be "
                "negative"
            )
        if self.sink and not self.sink.startswith(("http://", "https://")):
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
        description="kembed eventing: CloudEvents in, embeddings out (Knative Trigger subscriber)",
    )
    add_knobs(parser, Settings, "kembed eventing")
    parser.add_argument("--grpc_port", help=argparse.SUPPRESS)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    if not args.inference_url:
        raise ValueError("set --inference_url or KEMBED_INFERENCE_URL to the InferenceService's base URL")
    settings = from_args(Settings, args, ce_overrides=parse_overrides(os.environ.get("K_CE_OVERRIDES")))
    settings = dataclasses.replace(settings, inference_url=settings.inference_url.rstrip("/"))
    settings.check()
    return settings
