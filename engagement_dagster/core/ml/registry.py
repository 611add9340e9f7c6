"""A model registry in the lake (models/<name>/<version>/, champion.json; docs/architecture.md) and the promotion gate.

    models/<name>/<version>/{model files, features.json, metrics.json, card.md, version.json}
    models/<name>/champion.json
    models/<name>/baseline.json   the naive model of the latest training, served while there is no champion

A version is complete once its `version.json` (the list of its files) exists: it is written last,
so a crash mid-way leaves an incomplete version that nothing lists or loads. The champion
pointer is one atomic write. Scoring loads each model's champion, or its naive baseline while
it has none: one model that cannot learn this week never stops the others.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import pandas as pd

from engagement_dagster.core.ml.models.base import ModelKind
from engagement_dagster.core.ml.training import MODEL_KINDS, NaiveBaseline

if TYPE_CHECKING:  # any lake works (the Dagster resource or a plain storage.Store): no Dagster import here
    from engagement_dagster.core.storage.lake import Store as Lake

DEFAULT_TOLERANCE = 0.02  # a challenger may be at most 2% worse than the champion (relative)


def data_fingerprint(frame: pd.DataFrame) -> str:
    """sha256 over the rows and column names of a frame: identifies the exact training data."""
    digest = hashlib.sha256(",".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    metric: str
    challenger: float
    baseline: float
    champion: float | None
    tolerance: float


def _better(a: float, b: float, higher_is_better: bool) -> bool:
    return a > b if higher_is_better else a < b


def promotion_decision(kind: type[ModelKind], challenger: dict, baseline: dict, champion: dict | None,
                       tolerance: float = DEFAULT_TOLERANCE) -> GateDecision:
    """Promote when the challenger beats the naive baseline on the primary metric and, if there is
    a champion (evaluated on the same test rows), is not worse than it by more than `tolerance`."""
    metric, higher = kind.primary_metric, kind.higher_is_better
    value, base = challenger[metric], baseline[metric]
    champ = None if champion is None else champion[metric]

    def decision(promote: bool, reason: str) -> GateDecision:
        return GateDecision(promote, reason, metric, value, base, champ, tolerance)

    if kind.name == "anomaly_model":  # no "better" for a flag rate: it must stay near the target rate
        ok = 0.5 * base <= value <= 2 * base
        where = "within" if ok else "outside"
        return decision(ok, f"flagged share {value:.2%} {where} [{0.5 * base:.2%}, {2 * base:.2%}]")
    if not _better(value, base, higher):
        return decision(False, f"{metric} {value:.4g} does not beat the naive baseline {base:.4g}")
    if champ is None:
        return decision(True, f"first version: {metric} {value:.4g} beats the naive baseline {base:.4g}")
    limit = champ * (1 - tolerance) if higher else champ * (1 + tolerance)
    if _better(limit, value, higher):
        return decision(False, f"{metric} {value:.4g} is worse than the champion's {champ:.4g} beyond {tolerance:.0%}")
    return decision(True, f"{metric} {value:.4g} vs champion {champ:.4g} (tolerance {tolerance:.0%}) "
                          f"and baseline {base:.4g}")


class ModelRegistry:
    def __init__(self, lake: Lake):
        self.lake = lake

    @staticmethod
    def _dir(name: str, version: str) -> str:
        return f"models/{name}/{version}"

    def register(self, model: ModelKind, metrics: dict, card: str, fingerprint: str) -> str:
        now = dt.datetime.now(dt.UTC)
        version = f"{now:%Y%m%dT%H%M%S%f}Z-{fingerprint[:8]}"  # sorts by time
        files = {**model.to_files(), "metrics.json": json.dumps(metrics, indent=2, default=float).encode(),
                 "card.md": card.encode()}
        base = self._dir(model.name, version)
        for file_name, data in files.items():
            self.lake.write_bytes(f"{base}/{file_name}", data)
        meta = {"name": model.name, "version": version, "created_at": now.isoformat(), "files": sorted(files),
                "training_data_fingerprint": fingerprint}
        self.lake.write_bytes(f"{base}/version.json", json.dumps(meta, indent=2).encode())
        return version

    def versions(self, name: str) -> list[str]:
        keys = self.lake.list_keys(f"models/{name}/")
        return sorted(k.split("/")[2] for k in keys if k.endswith("/version.json"))

    def champion(self, name: str) -> dict | None:
        key = f"models/{name}/champion.json"
        return json.loads(self.lake.read_bytes(key)) if self.lake.exists(key) else None

    def promote(self, name: str, version: str, decision: GateDecision) -> None:
        if version not in self.versions(name):
            raise KeyError(f"{name} has no complete version {version}")
        pointer = {"name": name, "version": version, "promoted_at": dt.datetime.now(dt.UTC).isoformat(),
                   "decision": asdict(decision)}
        self.lake.write_bytes(f"models/{name}/champion.json", json.dumps(pointer, indent=2).encode())

    def metrics(self, name: str, version: str) -> dict:
        return json.loads(self.lake.read_bytes(f"{self._dir(name, version)}/metrics.json"))

    def load(self, name: str, version: str) -> ModelKind:
        base = self._dir(name, version)
        meta = json.loads(self.lake.read_bytes(f"{base}/version.json"))
        files = {f: self.lake.read_bytes(f"{base}/{f}") for f in meta["files"] if f not in ("metrics.json", "card.md")}
        return MODEL_KINDS[name].from_files(files)

    def load_champion(self, name: str) -> tuple[ModelKind, str]:
        pointer = self.champion(name)
        if pointer is None:
            raise LookupError(f"{name} has no champion yet: train it and pass the promotion gate first")
        return self.load(name, pointer["version"]), pointer["version"]

    def register_baseline(self, baseline: NaiveBaseline) -> None:
        self.lake.write_bytes(f"models/{baseline.name}/baseline.json", baseline.to_json().encode())

    def serving(self, name: str) -> tuple[ModelKind | NaiveBaseline, str]:
        """What scores ``name`` now: its champion, else its naive baseline (version "baseline")."""
        if self.champion(name) is not None:
            return self.load_champion(name)
        key = f"models/{name}/baseline.json"
        if not self.lake.exists(key):
            raise LookupError(f"{name} has neither a champion nor a baseline: train the models first")
        return NaiveBaseline.from_json(self.lake.read_bytes(key).decode()), NaiveBaseline.version
