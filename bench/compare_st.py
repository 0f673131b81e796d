"""Does kembed embed this model exactly as sentence-transformers does? Per-text cosine, for any local model.

    python -m bench.compare_st MODEL_DIR [--prompt-name query | --prompt "query: "] [--texts FILE]
                               [--backend auto] [--device cpu] [--dtype float32] [--min-cosine 0.9999]

Runs the predictor's own path in this process (the model spec, its tokenizer with the prompt, the
encoder of the chosen backend with its pooling and Dense layers, the final normalization) and
`SentenceTransformer(MODEL_DIR).encode(texts, prompt_name=..., prompt=...)` on the same texts (a
built-in mix of short, long, multilingual and truncated ones, or one text per line of --texts).
Prints each text's cosine and whether both tokenized it alike, then the minimum; exits 1 when the
minimum is under --min-cosine or the dimensions differ. Needs `sentence-transformers` installed
(a test dependency of kembed, not of the image). A model kembed refuses is reported with the reason.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from bench import HelpFormatter

TEXTS = [
    "hello",
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "東京は日本の首都です。",
    "naïve café résumé — “quotes” and emoji 🙂",
    "def embed(texts):\n    return model.encode(texts)",
    " ".join(["a very long text that the model's max_seq_length truncates"] * 80),
]


def kembed_embeddings(
    model_dir: str | Path, texts: list[str], prompt_name: str | None = None, prompt: str | None = None,
    backend: str = "auto", device: str = "cpu", dtype: str = "float32",
) -> tuple[np.ndarray, list[np.ndarray]]:
    """What kembed's predictor answers for ``texts`` (with its default normalization), and its token ids."""
    from kembed.contract import EmbedOptions
    from kembed.model_spec import read_model_spec
    from kembed.tokenization import TextTokenizer
    from predictor.encoder import Encoder
    from predictor.postprocess import finish

    spec = read_model_spec(model_dir)
    tokenizer = TextTokenizer.for_model(spec)
    chosen = EmbedOptions(prompt_name=prompt_name, prompt=prompt).resolve_prompt(spec.prompts, spec.default_prompt_name)
    rows = tokenizer.encode(texts, prompt=chosen)
    encoder = Encoder(spec, device, dtype, tokenizer.pad_id, backend)
    pooled = encoder(rows, [tokenizer.prompt_length(chosen)] * len(rows))
    return finish(pooled, spec.normalize, None), rows


def sentence_transformers_embeddings(
    model_dir: str | Path, texts: list[str], prompt_name: str | None = None, prompt: str | None = None
) -> tuple[np.ndarray, list[list[int]]]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    embeddings = model.encode(texts, prompt_name=prompt_name, prompt=prompt, convert_to_numpy=True)
    name = prompt_name if prompt_name is not None else model.default_prompt_name
    chosen = prompt if prompt is not None else (model.prompts[name] if name is not None else "")
    features = model.preprocess([chosen + text for text in texts])
    ids = [row[mask.bool()].tolist() for row, mask in zip(features["input_ids"], features["attention_mask"],
                                                            strict=True)]
    return embeddings, ids


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--texts", type=Path, help="one text per line (default: a built-in mix)")
    parser.add_argument("--prompt-name", help="one of the model's prompts")
    parser.add_argument("--prompt", help="a raw prompt string ('' for none)")
    parser.add_argument("--backend", default="auto", choices=("auto", "native", "transformers"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--min-cosine", type=float, default=0.9999)
    args = parser.parse_args()
    texts = [line for line in args.texts.read_text().splitlines() if line.strip()] if args.texts else TEXTS
    try:
        ours, our_ids = kembed_embeddings(args.model_dir, texts, args.prompt_name, args.prompt, args.backend,
                                          args.device, args.dtype)
    except ValueError as exc:
        print(f"kembed refuses {args.model_dir}: {exc}")
        sys.exit(1)
    theirs, their_ids = sentence_transformers_embeddings(args.model_dir, texts, args.prompt_name, args.prompt)
    if ours.shape != theirs.shape:
        print(f"dimension differs: kembed {ours.shape[1]}, sentence-transformers {theirs.shape[1]}")
        sys.exit(1)
    similarity = cosines(ours, theirs)
    print(f"{'cosine':>10}  tokens  text")
    for text, value, mine, reference in zip(texts, similarity, our_ids, their_ids, strict=True):
        same = "same" if mine.tolist() == reference else f"DIFF {len(mine)}/{len(reference)}"
        shown = text.replace("\n", "\\n")
        print(f"{value:10.6f}  {same:>6}  {shown[:70]}{'...' if len(shown) > 70 else ''}")
    worst = float(similarity.min())
    verdict = "ok" if worst >= args.min_cosine else f"UNDER {args.min_cosine}"
    print(f"min cosine {worst:.6f} over {len(texts)} texts, dimension {ours.shape[1]}: {verdict}")
    sys.exit(0 if worst >= args.min_cosine else 1)


if __name__ == "__main__":
    main()
