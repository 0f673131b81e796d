"""`kembed-export MODEL_DIR`: the OpenVINO IR the predictor's openvino backend serves.

    kembed-export MODEL_DIR [--output DIR]                        fp32 IR: DIR/openvino/openvino_model.xml
    kembed-export MODEL_DIR --int8 --calibration TEXTS.txt        + NNCF int8: openvino_model_qint8_quantized.xml

The layout is sentence-transformers' (`SentenceTransformer(dir, backend="openvino")` loads it too).
Without --output the IR is written into MODEL_DIR; with it, MODEL_DIR's files are copied to DIR first
(for a read-only or installed model such as the bundled one). Every IR is checked against the torch
fp32 model before it is written: the fp32 IR must keep min cosine >= 0.99999 on the gate texts, the
int8 one `--min_cosine` (default 0.99) on a held-out set (every 5th calibration line, or --held_out),
and the min/mean cosine is printed; the int8 IR is also checked with each held-out row padded to every
length the server pads to by default (length_check.py): failing lengths are recorded (the server avoids
them), a failing longest length refuses. The gate texts' fp32 states are stored beside the IR
(`kembed_gate.json`), so the server's precision gate needs no second compilation. For BERT-family
models (those `bert.py` builds) kembed's packed IR is written too (`kembed_packed.xml`, see
packed_layout.py), checked like the fp32 IR; the server prefers it.

Export imports torch, transformers and (int8) nncf: the `export` extra. Serving needs only openvino.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from kembed.model_spec import ModelSpec, Pooling, read_model_spec
from kembed.tokenization import TextTokenizer, pad_batch
from predictor.length_check import check_lengths, checked_lengths, spread_over_buckets
from predictor.openvino_runtime import GATE_FILES, HIDDEN_OUTPUT, IR_DIR, IR_FILES, MEAN, PACKED_FILE, cpu_computes_bf16
from predictor.packed_layout import packed_inputs, pool_grids
from predictor.pooling import pool_padded_numpy
from predictor.precision import GATE_TEXTS, min_cosine

logger = logging.getLogger("kembed.export")

FP32_MIN_COSINE = 0.99999
GATE_HELD_OUT = 64
SERVED_MULTIPLE = 16  # the predictor's default --pad_to_multiple_of: the lengths the export checks
BATCH = 16


class TorchReference:
    """transformers' AutoModel in fp32: what the IR is converted from and checked against."""

    def __init__(self, spec: ModelSpec, pad_id: int):
        import torch
        from transformers import AutoModel

        self.torch = torch
        self.model = AutoModel.from_pretrained(str(spec.model_dir), local_files_only=True, dtype=torch.float32).eval()
        self.pad_id = pad_id
        self.token_types = "token_type_ids" in self.model.forward.__code__.co_varnames

    def inputs(self, rows: Sequence[np.ndarray], length: int = 1) -> dict[str, np.ndarray]:
        """Padded to the longest row, or to exactly `length` where it is at least that long."""
        ids, mask = pad_batch(rows, self.pad_id, length)
        inputs = {"input_ids": ids, "attention_mask": mask}
        if self.token_types:
            inputs["token_type_ids"] = np.zeros_like(ids)
        return inputs

    def hidden(self, rows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        inputs = self.inputs(rows)
        with self.torch.inference_mode():
            out = self.model(**{k: self.torch.from_numpy(v) for k, v in inputs.items()}).last_hidden_state
        return out.float().numpy(), inputs["attention_mask"]

    def convert(self, example_rows: Sequence[np.ndarray]) -> object:
        """The model as an OpenVINO graph: dynamic [batch, length] inputs, one `last_hidden_state` output."""
        import openvino as ov

        torch = self.torch

        class LastHiddenState(torch.nn.Module):
            def __init__(self, model: torch.nn.Module):
                super().__init__()
                self.model = model

            def forward(
                self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
            ) -> torch.Tensor:
                types = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
                return self.model(input_ids=input_ids, attention_mask=attention_mask, **types).last_hidden_state

        example = {k: torch.from_numpy(v) for k, v in self.inputs(example_rows).items()}
        with torch.inference_mode():
            graph = ov.convert_model(LastHiddenState(self.model), example_input=example)
        for port, name in zip(graph.inputs, example, strict=True):
            port.get_tensor().set_names({name})
        graph.outputs[0].get_tensor().set_names({HIDDEN_OUTPUT})
        return graph


def pooled(hidden_and_mask: Callable, rows: Sequence[np.ndarray], pooling: Pooling) -> np.ndarray:
    """Pooled states of `rows`, in length-sorted batches of BATCH (little padding)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    parts = []
    for start in range(0, len(order), BATCH):
        chunk = order[start : start + BATCH]
        parts.append((chunk, pool_padded_numpy(*hidden_and_mask([rows[i] for i in chunk]), pooling)))
    out = np.zeros((len(rows), parts[0][1].shape[1]), dtype=np.float32)
    for chunk, vectors in parts:
        out[chunk] = vectors
    return out


def compiled_hidden(graph: object, hint: str, inputs_of: Callable) -> Callable:
    import openvino as ov

    request = ov.Core().compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": hint}).create_infer_request()

    def hidden(rows: Sequence[np.ndarray], length: int = 1) -> tuple[np.ndarray, np.ndarray]:
        inputs = inputs_of(rows, length)
        return request.infer(inputs)[HIDDEN_OUTPUT], inputs["attention_mask"]

    return hidden


def cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    dots = (reference * candidate).sum(axis=1)
    return dots / np.maximum(np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1), 1e-12)


def save(graph: object, directory: Path, name: str) -> Path:
    """Writes the .xml/.bin pair through a temporary directory beside it, so a failed export leaves
    no half-written IR."""
    import openvino as ov

    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        ov.save_model(graph, str(Path(scratch) / name), compress_to_fp16=False)
        for suffix in (".bin", ".xml"):
            (Path(scratch) / name).with_suffix(suffix).replace(target.with_suffix(suffix))
    return target


def copy_model(source: Path, output: Path) -> None:
    """MODEL_DIR's files to --output, leaving out an IR of its own and bytecode."""
    if output.resolve() == source.resolve():
        return
    shutil.copytree(source, output, dirs_exist_ok=True, ignore=shutil.ignore_patterns(IR_DIR, "__pycache__", "*.py"))


def read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def quantize(graph: object, rows: Sequence[np.ndarray], inputs_of: Callable) -> object:
    import nncf

    dataset = nncf.Dataset(list(rows), lambda row: inputs_of([row]))
    return nncf.quantize(graph, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(rows))


def export_packed(source: Path, ir_dir: Path, gate_rows: list[np.ndarray], expected: np.ndarray, pad_id: int) -> int:
    """The packed IR, where bert.py builds the model: checked in f32 against torch fp32 on the gate
    texts, in one mixed-length batch (the layout's point), like the fp32 IR."""
    from predictor.bert import unsupported_reason

    if (reason := unsupported_reason(source)) is not None:
        (ir_dir / PACKED_FILE).unlink(missing_ok=True)
        print(f"no packed IR ({reason}): the server pads")
        return 0
    import openvino as ov

    from predictor.packed_graph import convert_packed

    graph = convert_packed(source, gate_rows[:3], pad_id)
    request = ov.Core().compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
    inputs, grids = packed_inputs(gate_rows, pad_id, SERVED_MULTIPLE)
    cosine = min_cosine(expected, pool_grids(request.infer(inputs)[HIDDEN_OUTPUT], inputs, grids, MEAN))
    print(f"packed IR vs torch fp32 on {len(gate_rows)} gate texts in one batch: min cosine {cosine:.7f}")
    if cosine < FP32_MIN_COSINE:
        print(f"refusing to write the packed IR: below {FP32_MIN_COSINE}", file=sys.stderr)
        return 1
    print(f"wrote {save(graph, ir_dir, PACKED_FILE)}")
    return 0


def export(args: argparse.Namespace) -> int:
    source = Path(args.model_dir)
    output = Path(args.output) if args.output else source
    spec = read_model_spec(source)
    tokenizer = TextTokenizer.for_model(spec)
    reference = TorchReference(spec, tokenizer.pad_id)
    gate_rows = tokenizer.encode(GATE_TEXTS)
    graph = reference.convert(gate_rows[:2])
    fp32_hidden = compiled_hidden(graph, "f32", reference.inputs)
    expected = pooled(reference.hidden, gate_rows, MEAN)
    cosine = min_cosine(expected, pooled(fp32_hidden, gate_rows, MEAN))
    print(f"fp32 IR vs torch fp32 on {len(gate_rows)} gate texts: min cosine {cosine:.7f}")
    if cosine < FP32_MIN_COSINE:
        print(f"refusing to write: below {FP32_MIN_COSINE}", file=sys.stderr)
        return 1
    copy_model(source, output)
    ir_dir = output / IR_DIR
    print(f"wrote {save(graph, ir_dir, IR_FILES['float32'])}")
    gate = {"rows": [row.tolist() for row in gate_rows], "mean_pooled": expected.tolist(),
            "source": "transformers AutoModel, torch float32, mean of last_hidden_state"}
    (ir_dir / GATE_FILES["float32"]).write_text(json.dumps(gate))
    if export_packed(source, ir_dir, gate_rows, expected, tokenizer.pad_id) != 0:
        return 1
    if not args.int8:
        return 0
    texts = read_lines(Path(args.calibration))
    held_out = read_lines(Path(args.held_out)) if args.held_out else texts[::5]
    calibration = texts if args.held_out else [t for i, t in enumerate(texts) if i % 5]
    print(f"int8: calibrating on {len(calibration)} texts, checking on {len(held_out)} held-out texts")
    quantized = quantize(graph, tokenizer.encode(calibration), reference.inputs)
    import openvino as ov

    hint = "bf16" if cpu_computes_bf16(ov.Core()) else "f32"  # as the server will run it
    held_rows = tokenizer.encode(held_out)
    int8_hidden = compiled_hidden(quantized, hint, reference.inputs)
    got = cosines(pooled(reference.hidden, held_rows, spec.pooling), pooled(int8_hidden, held_rows, spec.pooling))
    print(f"int8 IR ({hint} hint) vs torch fp32 ({spec.pooling} pooling): min cosine {got.min():.5f}, "
          f"mean {got.mean():.5f}")
    if got.min() < args.min_cosine:
        print(f"refusing to write the int8 IR: min cosine below --min_cosine {args.min_cosine}", file=sys.stderr)
        return 1
    # The same check the server runs at load: every length it pads to (by default), each held-out row
    # padded to it; failing lengths are recorded (the server avoids them), a failing longest one refuses.
    held_reference = pooled(reference.hidden, held_rows, MEAN)
    lengths = checked_lengths(SERVED_MULTIPLE, spec.max_seq_length, [len(row) for row in held_rows])
    check = check_lengths(lambda rows, length: pool_padded_numpy(*int8_hidden(rows, length), MEAN), held_rows,
                          held_reference, lengths, args.min_cosine)
    print(f"int8 IR at every padded length (multiples of {SERVED_MULTIPLE}): {check.summary()}")
    try:
        check.require_servable("kembed-export --int8")
    except RuntimeError as refused:
        print(f"refusing to write the int8 IR: {refused}", file=sys.stderr)
        return 1
    print(f"wrote {save(quantized, ir_dir, IR_FILES['int8'])}")
    # The server repeats the length check on up to GATE_HELD_OUT of these texts (spread over 16-token
    # length buckets, so that each length has rows of its own), at the same bar.
    kept = spread_over_buckets([len(row) for row in held_rows], GATE_HELD_OUT)
    gate = {"rows": [held_rows[i].tolist() for i in kept], "mean_pooled": held_reference[kept].tolist(),
            "min_cosine": args.min_cosine, "avoided_lengths": check.avoided,
            "source": "held-out texts of kembed-export --int8, torch float32"}
    (ir_dir / GATE_FILES["int8"]).write_text(json.dumps(gate))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="a transformers / sentence-transformers model directory")
    parser.add_argument("--output", help="write a copy of the model with its IR here (default: into model_dir)")
    parser.add_argument("--int8", action="store_true", help="also write an NNCF int8 IR (needs --calibration)")
    parser.add_argument("--calibration", help="text file, one text per line, for int8 calibration")
    parser.add_argument("--held_out", help="text file for the int8 check (default: every 5th calibration line)")
    parser.add_argument("--min_cosine", type=float, default=0.99, help="refuse an int8 IR below this min cosine")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING)
    args = build_parser().parse_args(argv)
    if args.int8 and not args.calibration:
        build_parser().error("--int8 needs --calibration FILE")
    sys.exit(export(args))


if __name__ == "__main__":
    main()
