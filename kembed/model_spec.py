"""What a model directory says about how to embed with it, read the way sentence-transformers reads it.

The transformers `config.json`, then the sentence-transformers module chain in `modules.json`
(Transformer -> Pooling -> any Dense -> Normalize), each module's own config, the prompts in
`config_sentence_transformers.json` and the tokenizer's length and truncation settings. A directory
without `modules.json` is what sentence-transformers makes of a plain checkpoint: Transformer + mean
pooling. Anything kembed cannot compute exactly (a module type it does not run, code shipped with
the model) is a `ValueError` at startup that names it, never a silent skip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# sentence-transformers' legacy boolean keys, in the order its Pooling concatenates them.
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# Dense activations by the torch class sentence-transformers records (`fullname` of the module).
DENSE_ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.modules.activation.ReLU": "relu",
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.modules.activation.GELU": "gelu",
    "torch.nn.modules.activation.SiLU": "silu",
}
SENTENCE_EMBEDDING = "sentence_embedding"
ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert")


@dataclass(frozen=True)
class Pooling:
    """sentence-transformers' Pooling: one or more modes (their vectors concatenated in this order);
    ``include_prompt=False`` leaves a prompt's tokens out of the pooled vector."""

    modes: tuple[str, ...] = ("mean",)
    include_prompt: bool = True

    def __str__(self) -> str:
        return "+".join(self.modes) + ("" if self.include_prompt else " (prompt excluded)")


@dataclass(frozen=True)
class Dense:
    """A Dense module after pooling: ``activation(x @ W.T + b)`` (+ x, or x projected, with a residual).
    The weights stay on disk here; the predictor loads them (`predictor.postprocess`)."""

    path: Path
    in_features: int
    out_features: int
    bias: bool
    activation: str  # a value of DENSE_ACTIVATIONS
    residual: bool = False


@dataclass(frozen=True)
class Normalize:
    """A Normalize module that is not the chain's last (the last one is ``ModelSpec.normalize``)."""


Head = Dense | Normalize


@dataclass(frozen=True)
class ModelSpec:
    model_dir: Path
    hidden_size: int  # width of the token states
    dimension: int  # width of the model's embeddings, after the whole chain
    vocab_size: int
    max_seq_length: int
    pooling: Pooling
    normalize: bool  # the chain ends with Normalize (a request may still ask otherwise)
    head: tuple[Head, ...] = ()  # the modules between Pooling and the final Normalize, in order
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    truncation_side: str = "right"
    do_lower_case: bool = False
    model_type: str = ""


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def hidden_size(config: dict[str, Any], model_dir: Path) -> int:
    """The embedding width, under whichever name the architecture's config.json uses."""
    for name in ("hidden_size", "dim", "d_model"):  # BERT-likes, DistilBERT, T5/BART encoders
        if name in config:
            return int(config[name])
    raise ValueError(f"{model_dir}/config.json names no hidden size (hidden_size, dim or d_model)")


def position_offset(config: dict[str, Any]) -> int:
    """Row of the first position in the position table: 0 for BERT. RoBERTa numbers positions from
    pad_token_id + 1, so its table holds that many rows more than the usable length."""
    return int(config.get("pad_token_id", 1)) + 1 if config.get("model_type") in ROBERTA_LIKE else 0


def parse_pooling_mode(value: str) -> Pooling:
    """A pooling override as given on the command line: one mode, or several joined by '+'."""
    modes = tuple(value.split("+"))
    for mode in modes:
        if mode not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES} (or several joined by '+') or 'auto', "
                             f"got {value!r}")
    return Pooling(modes)


def pooling_from_config(config: dict[str, Any]) -> Pooling:
    """A Pooling module's config.json, in its current form (`pooling_mode`) or the legacy booleans."""
    mode = config.get("pooling_mode")
    if mode is None:
        modes = tuple(name for key, name in _LEGACY_POOLING_KEYS.items() if config.get(key))
        modes = modes or ("mean",)
    else:
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    for name in modes:
        if name not in POOLING_MODES:
            raise ValueError(f"pooling mode {name!r} is not one of {POOLING_MODES}")
    return Pooling(modes, bool(config.get("include_prompt", True)))


def _module_kind(module: dict[str, Any]) -> str:
    """`Transformer`, `Pooling`, ... from the module's class path, for sentence-transformers' own classes."""
    type_name = str(module.get("type", ""))
    if not type_name.startswith("sentence_transformers."):
        raise ValueError(
            f"modules.json module {module.get('idx')} is {type_name!r}: not a sentence-transformers module "
            "(it would need the model's own code, and kembed runs no code from a model directory)"
        )
    return type_name.rsplit(".", 1)[-1]


def _dense(model_dir: Path, module: dict[str, Any]) -> Dense:
    path = model_dir / module.get("path", "")
    config = _read_json(path / "config.json") or {}
    for key in ("module_input_name", "module_output_name"):
        if config.get(key, SENTENCE_EMBEDDING) != SENTENCE_EMBEDDING:
            raise ValueError(f"{path}: Dense with {key}={config[key]!r} is not a sentence-embedding layer "
                             "(kembed serves one vector per text)")
    activation = config.get("activation_function", "torch.nn.modules.activation.Tanh")
    if activation not in DENSE_ACTIVATIONS:
        raise ValueError(f"{path}: Dense activation {activation!r} is not one of {sorted(DENSE_ACTIVATIONS)}")
    return Dense(
        path=path,
        in_features=int(config["in_features"]),
        out_features=int(config["out_features"]),
        bias=bool(config.get("bias", True)),
        activation=DENSE_ACTIVATIONS[activation],
        residual=bool(config.get("use_residual", False)),
    )


def _chain(model_dir: Path, modules: list[dict[str, Any]]) -> tuple[Pooling, tuple[Head, ...], bool, Path]:
    """(pooling, modules after it, whether it ends with Normalize, the Transformer module's directory)."""
    if not modules:
        return Pooling(("mean",)), (), False, model_dir
    kinds = [_module_kind(module) for module in modules]
    if kinds[0] != "Transformer":
        raise ValueError(f"{model_dir}/modules.json starts with {kinds[0]}: kembed serves models whose first "
                         "module is a Transformer")
    if len(kinds) < 2 or kinds[1] != "Pooling":
        raise ValueError(f"{model_dir}/modules.json: the Transformer must be followed by Pooling, got "
                         f"{kinds[1:2] or 'nothing'} (kembed serves one vector per text)")
    pooling = pooling_from_config(_read_json(model_dir / modules[1].get("path", "") / "config.json") or {})
    head: list[Head] = []
    for module, kind in zip(modules[2:], kinds[2:], strict=True):
        if kind == "Dense":
            head.append(_dense(model_dir, module))
        elif kind == "Normalize":
            config = _read_json(model_dir / module.get("path", "") / "config.json") or {}
            if config.get("module_input_name", SENTENCE_EMBEDDING) != SENTENCE_EMBEDDING:
                raise ValueError(f"{model_dir}/{module.get('path')}: Normalize of {config['module_input_name']!r} "
                                 "is not a sentence-embedding module")
            head.append(Normalize())
        elif kind != "Dropout":  # identity at inference
            raise ValueError(f"{model_dir}/modules.json module {module.get('idx')} is a {kind} "
                             f"({module.get('type')}): kembed runs Transformer, Pooling, Dense and Normalize only")
    normalize = bool(head) and isinstance(head[-1], Normalize)
    if normalize:
        head.pop()
    return pooling, tuple(head), normalize, model_dir / modules[0].get("path", "")


def refuse_remote_code(model_dir: Path, config: dict[str, Any], st_config: dict[str, Any]) -> None:
    """Models whose architecture is code in the model directory need trust_remote_code; kembed refuses."""
    reasons = []
    if config.get("auto_map"):
        reasons.append(f"config.json auto_map {sorted(config['auto_map'])}")
    for key in ("model_args", "config_args", "tokenizer_args", "processor_kwargs", "model_kwargs"):
        if (st_config.get(key) or {}).get("trust_remote_code"):
            reasons.append(f"sentence_bert_config.json {key}.trust_remote_code")
    if reasons:
        raise ValueError(
            f"{model_dir} needs trust_remote_code ({', '.join(reasons)}): its architecture is code shipped with the "
            "model, and kembed runs no code from a model directory"
        )


def _text_modality(model_dir: Path, st_config: dict[str, Any]) -> None:
    modalities = st_config.get("modality_config")
    if modalities and set(modalities) != {"text"}:
        raise ValueError(f"{model_dir}/sentence_bert_config.json modality_config {sorted(modalities)}: kembed "
                         "embeds plain text only (no chat template or other modalities)")
    output = st_config.get("module_output_name", "token_embeddings")
    if output != "token_embeddings":
        raise ValueError(f"{model_dir}/sentence_bert_config.json module_output_name {output!r}: kembed pools "
                         "token embeddings")


def read_model_spec(
    model_dir: str | Path, pooling: str = "auto", max_seq_length: int = 0
) -> ModelSpec:
    """``pooling="auto"`` and ``max_seq_length=0`` defer to the directory's own metadata."""
    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json")
    if not isinstance(config, dict):
        raise FileNotFoundError(f"{model_dir} has no transformers config.json")
    modules = _read_json(model_dir / "modules.json")
    modules = modules if isinstance(modules, list) else []
    chain_pooling, head, normalize, transformer_dir = _chain(model_dir, modules)
    st_config = _read_json(transformer_dir / "sentence_bert_config.json") or {}
    refuse_remote_code(model_dir, config, st_config)
    _text_modality(model_dir, st_config)
    tokenizer_config = _read_json(transformer_dir / "tokenizer_config.json") or {}
    prompt_config = _read_json(model_dir / "config_sentence_transformers.json") or {}

    pooling_spec = chain_pooling if pooling == "auto" else parse_pooling_mode(pooling)
    width = hidden_size(config, model_dir)
    dimension = width * len(pooling_spec.modes)
    for module in head:
        if isinstance(module, Dense):
            if module.in_features != dimension:
                raise ValueError(f"{module.path}: Dense takes {module.in_features} features, the chain gives "
                                 f"{dimension}")
            dimension = module.out_features

    # sentence-transformers: the module's max_seq_length, else the tokenizer's model_max_length, capped
    # by the position table (which is also kembed's own cap on an explicit setting).
    position_limit = int(config.get("max_position_embeddings", 512)) - position_offset(config)
    if max_seq_length <= 0:
        max_seq_length = int(st_config.get("max_seq_length") or 0)
        if max_seq_length <= 0:
            model_max = tokenizer_config.get("model_max_length")
            max_seq_length = int(model_max) if isinstance(model_max, int | float) and model_max < 1e9 else 0
    max_seq_length = min(max_seq_length, position_limit) if max_seq_length > 0 else position_limit

    prompts = {str(k): str(v) for k, v in (prompt_config.get("prompts") or {}).items() if v is not None}
    default_prompt_name = prompt_config.get("default_prompt_name")
    if default_prompt_name is not None and default_prompt_name not in prompts:
        raise ValueError(f"{model_dir}/config_sentence_transformers.json: default_prompt_name "
                         f"{default_prompt_name!r} is not one of its prompts {sorted(prompts)}")
    truncation_side = str(tokenizer_config.get("truncation_side", "right"))
    if truncation_side not in ("left", "right"):
        raise ValueError(f"{model_dir}/tokenizer_config.json truncation_side {truncation_side!r} is not left or right")

    return ModelSpec(
        model_dir=model_dir,
        hidden_size=width,
        dimension=dimension,
        vocab_size=int(config["vocab_size"]),
        max_seq_length=max_seq_length,
        pooling=pooling_spec,
        normalize=normalize,
        head=head,
        prompts=prompts,
        default_prompt_name=default_prompt_name,
        truncation_side=truncation_side,
        do_lower_case=bool(st_config.get("do_lower_case", False)),
        model_type=str(config.get("model_type", "")),
    )
