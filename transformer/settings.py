"""The transformer's knobs (each a flag and a `KEMBED_*` variable, see `kembed.settings`).

`predictor_host`, `predictor_protocol` and `predictor_request_timeout_seconds` are kserve's own
flags (the KServe controller passes `--predictor_host`); declared here, they get kembed's defaults
(REST V2 and 30 s instead of kserve's v1 and 600 s) and their `KEMBED_*` variables.
"""

from __future__ import annotations

from dataclasses import dataclass

from kembed.cli import ServerSettings
from kembed.settings import knob

MIB = 1024 * 1024


@dataclass(frozen=True)
class TransformerSettings(ServerSettings):
    predictor_host: str = knob("", "host:port of the predictor (required)")
    predictor_protocol: str = knob("v2", "protocol of the predictor hop", choices=("v2", "grpc-v2"))
    predictor_request_timeout_seconds: int = knob(30, "timeout of one call to the predictor", unit="s",
                                                  env="KEMBED_PREDICTOR_TIMEOUT_SECONDS")
    predictor_binary: bool = knob(True, "REST hop: token ids as V2 binary tensor data (else JSON number arrays)")
    tokenizer_cache_size: int = knob(65536, "token-id cache entries; 0 = off")
    tokenizer_cache_bytes: int = knob(64 * MIB, "token-id cache bytes (texts + ids); 0 = off", unit="bytes")
    embedding_cache_size: int = knob(0, "embedding cache entries; 0 = off (the default)")
    embedding_cache_bytes: int = knob(128 * MIB, "embedding cache bytes (texts + vectors)", unit="bytes")
