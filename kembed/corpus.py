"""A mixed-length corpus of real English, made from the standard library's own documentation."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import random
import re
import warnings

MODULES = [
    "argparse",
    "asyncio",
    "collections",
    "concurrent.futures",
    "contextlib",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "email",
    "enum",
    "fractions",
    "functools",
    "heapq",
    "http.client",
    "http.server",
    "inspect",
    "io",
    "itertools",
    "json",
    "logging",
    "mailbox",
    "multiprocessing",
    "numbers",
    "operator",
    "os",
    "pathlib",
    "pickle",
    "queue",
    "random",
    "re",
    "shutil",
    "socket",
    "sqlite3",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "typing",
    "unittest",
    "urllib.request",
    "uuid",
    "zipfile",
]


def _docstrings() -> list[str]:
    texts = []
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        with warnings.catch_warnings():  # typing.re and friends warn when touched
            warnings.simplefilter("ignore", DeprecationWarning)
            # Submodules are attributes only once something imported them: leaving them out keeps the
            # corpus the same whatever the process imported before.
            attributes = (getattr(module, attr) for attr in dir(module) if not attr.startswith("_"))
            objects = [module, *(obj for obj in attributes if not inspect.ismodule(obj))]
            docs = [getattr(obj, "__doc__", None) for obj in objects]
        for doc in docs:
            if isinstance(doc, str):
                texts.extend(re.split(r"\n\s*\n", doc))
    return texts


def english_corpus(size: int = 2000, seed: int = 0) -> list[str]:
    """`size` distinct paragraphs of 3 to ~300 words, in a fixed shuffled order."""
    seen: set[str] = set()
    paragraphs = []
    for text in _docstrings():
        text = " ".join(text.split())
        words = len(text.split())
        if 3 <= words <= 300 and re.search(r"[a-z]{3}", text) and text not in seen:
            seen.add(text)
            paragraphs.append(text)
    # Ordered by a hash of each text, not shuffled as a list: a paragraph that another import changed
    # (a library replacing a stdlib function, say) then moves no other paragraph.
    paragraphs.sort(key=lambda text: hashlib.blake2b(f"{seed}:{text}".encode(), digest_size=8).digest())
    rng = random.Random(seed)
    while len(paragraphs) < size:  # extend with sentence pairs if the docs run short
        a, b = rng.sample(paragraphs, 2)
        paragraphs.append(f"{a} {b}")
    return paragraphs[:size]
