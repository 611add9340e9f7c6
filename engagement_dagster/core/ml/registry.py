"""A model registry in the lake (models/<name>/<version>/, champion.json; docs/architecture.md) and the promotion gate.

    models/<name>/<version>/{model files, features.json, metrics.json, card.md, version.json}
    models/<name>/champion.json
    models/<name>/baseline.json   the naive model of the latest training, served while there is no champion
    models/_commits/<batch>.json  what one training step registered and promoted, and the pointers before it
    models/_commits/<batch>.done  written once the step is applied: its commit point

A training step changes the registry all at once or not at all. It first stages each new version's
files (no version.json yet: nothing lists or loads a version without one). Then `commit` writes an
intent record (the pointers as they were before), applies the step (every version.json, the
baselines, the champion pointers) and writes the record's ``.done`` marker: the commit point. A
process killed before that marker is undone by the next training (`recover`): the pointers restored
from the record, the step's versions unlisted and its staged files removed. So a killed training
never lists an orphan version and never changes a champion; a finished one changes all of them.
One writer at a time (core/storage/lease.py). Scoring loads each model's champion, or its naive
baseline while it has none: one model that cannot learn this week never stops the others.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

from engagement_dagster.core import faults
from engagement_dagster.core.ml.models.base import ModelKind
from engagement_dagster.core.ml.training import MODEL_KINDS, NaiveBaseline

if TYPE_CHECKING:  # any lake works (the Dagster resource or a plain storage.Store): no Dagster import here
    from engagement_dagster.core.storage.lake import Store as Lake

COMMITS_PREFIX = "models/_commits/"
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
    noise_margin: float = 0.0  # how far the primary metric could move by chance (share metrics)


def _better(a: float, b: float, higher_is_better: bool) -> bool:
    return a > b if higher_is_better else a < b


def noise_margin(kind: type[ModelKind], baseline_value: float, test_rows: int | None) -> float:
    """How far a share-of-rows metric (e.g. top-3 accuracy) can move by chance on `test_rows` rows: two
    binomial standard errors of the baseline's share. A challenger must beat the baseline by more, or it
    has learned nothing we can tell from noise (a category that is pure noise still "beats" popularity
    by a point now and then). 0 for other metrics and when the row count is unknown."""
    if not getattr(kind, "primary_is_share", False) or not test_rows:
        return 0.0
    return 2 * math.sqrt(max(baseline_value * (1 - baseline_value), 0.0) / test_rows)


def promotion_decision(kind: type[ModelKind], challenger: dict, baseline: dict, champion: dict | None,
                       tolerance: float = DEFAULT_TOLERANCE, test_rows: int | None = None) -> GateDecision:
    """Promote when the challenger beats the naive baseline on the primary metric (by more than the
    noise margin of a share metric on `test_rows` rows) and, if there is a champion (evaluated on the
    same test rows), is not worse than it by more than `tolerance`."""
    metric, higher = kind.primary_metric, kind.higher_is_better
    value, base = challenger[metric], baseline[metric]
    champ = None if champion is None else champion[metric]
    margin = noise_margin(kind, base, test_rows)

    def decision(promote: bool, reason: str) -> GateDecision:
        return GateDecision(promote, reason, metric, value, base, champ, tolerance, margin)

    if kind.name == "anomaly_model":  # no "better" for a flag rate: it must stay near the target rate
        ok = 0.5 * base <= value <= 2 * base
        where = "within" if ok else "outside"
        return decision(ok, f"flagged share {value:.2%} {where} [{0.5 * base:.2%}, {2 * base:.2%}]")
    if not _better(value, base, higher):
        return decision(False, f"{metric} {value:.4g} does not beat the naive baseline {base:.4g}")
    if margin and abs(value - base) <= margin:
        return decision(False, f"{metric} {value:.4g} beats the naive baseline {base:.4g} by no more than chance "
                               f"on {test_rows:,} test rows (margin {margin:.2g}: two standard errors)")
    if champ is None:
        return decision(True, f"first version: {metric} {value:.4g} beats the naive baseline {base:.4g}")
    limit = champ * (1 - tolerance) if higher else champ * (1 + tolerance)
    if _better(limit, value, higher):
        return decision(False, f"{metric} {value:.4g} is worse than the champion's {champ:.4g} beyond {tolerance:.0%}")
    return decision(True, f"{metric} {value:.4g} vs champion {champ:.4g} (tolerance {tolerance:.0%}) "
                          f"and baseline {base:.4g}")


@dataclass
class Commit:
    """What one training step adds to the registry, applied at once by `ModelRegistry.commit`."""
    versions: dict[str, dict] = field(default_factory=dict)  # model name -> the version.json of a staged version
    champions: dict[str, dict] = field(default_factory=dict)  # model name -> its new champion pointer
    baselines: dict[str, str] = field(default_factory=dict)  # model name -> its naive baseline (JSON)

    def promote(self, name: str, version: str, decision: GateDecision) -> None:
        self.champions[name] = {"name": name, "version": version, "promoted_at": _now().isoformat(),
                                "decision": asdict(decision)}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ModelRegistry:
    def __init__(self, lake: Lake):
        self.lake = lake

    @staticmethod
    def _dir(name: str, version: str) -> str:
        return f"models/{name}/{version}"

    def stage(self, model: ModelKind, metrics: dict, card: str, fingerprint: str, commit: Commit) -> str:
        """Writes a new version's files, not yet listed: `commit(commit)` lists it with the others."""
        now = _now()
        version = f"{now:%Y%m%dT%H%M%S%f}Z-{fingerprint[:8]}"  # sorts by time
        files = {**model.to_files(), "metrics.json": json.dumps(metrics, indent=2, default=float).encode(),
                 "card.md": card.encode()}
        base = self._dir(model.name, version)
        for file_name, data in files.items():
            self.lake.write_bytes(f"{base}/{file_name}", data)
        commit.versions[model.name] = {"name": model.name, "version": version, "created_at": now.isoformat(),
                                       "files": sorted(files), "training_data_fingerprint": fingerprint}
        faults.checkpoint("training")
        return version

    def commit(self, commit: Commit) -> str:
        """Applies the step's versions, baselines and promotions together (see the module's docstring)."""
        batch = f"{_now():%Y%m%dT%H%M%S%f}Z-{uuid.uuid4().hex[:8]}"
        pointers = [f"models/{name}/baseline.json" for name in commit.baselines]
        pointers += [f"models/{name}/champion.json" for name in commit.champions]
        before = {key: self.lake.read_bytes(key).decode() if self.lake.exists(key) else None for key in pointers}
        record = {"batch": batch, "versions": commit.versions, "champions": commit.champions,
                  "baselines": commit.baselines, "before": before}
        self.lake.write_bytes(f"{COMMITS_PREFIX}{batch}.json", json.dumps(record, indent=1).encode())
        for name, meta in commit.versions.items():
            self.lake.write_bytes(f"{self._dir(name, meta['version'])}/version.json",
                                  json.dumps(meta, indent=2).encode())
        for name, baseline in commit.baselines.items():
            self.lake.write_bytes(f"models/{name}/baseline.json", baseline.encode())
        faults.checkpoint("promotion")
        for name, pointer in commit.champions.items():
            self.lake.write_bytes(f"models/{name}/champion.json", json.dumps(pointer, indent=2).encode())
        self.lake.write_bytes(f"{COMMITS_PREFIX}{batch}.done", _now().isoformat().encode())
        return batch

    def _unfinished(self) -> dict[str, dict]:
        """Commit records without their ``.done`` marker, by key: a training killed while applying."""
        keys = self.lake.list_keys(COMMITS_PREFIX)
        return {key: json.loads(self.lake.read_bytes(key)) for key in keys
                if key.endswith(".json") and key.removesuffix(".json") + ".done" not in keys}

    def _pointer(self, key: str) -> bytes | None:
        """A champion or baseline pointer as the last finished training left it: readers never see a
        killed training's pointers, even before `recover` has put them back."""
        for record in self._unfinished().values():
            if key in record["before"]:
                text = record["before"][key]
                return None if text is None else text.encode()
        return self.lake.read_bytes(key) if self.lake.exists(key) else None

    def recover(self) -> dict[str, int]:
        """Undoes what a killed training left: a commit without its ``.done`` marker (pointers put back,
        its versions unlisted) and staged files no version.json lists. Call holding the writer lease."""
        unfinished = self._unfinished()
        for key, record in unfinished.items():
            for pointer, text in record["before"].items():
                if text is None:
                    self.lake.delete(pointer)
                else:
                    self.lake.write_bytes(pointer, text.encode())
            for name, meta in record["versions"].items():
                self.lake.delete(f"{self._dir(name, meta['version'])}/version.json")
            self.lake.delete(key)
        undone = len(unfinished)
        staged: dict[tuple[str, str], list[str]] = {}
        for key in self.lake.list_keys("models/"):
            parts = key.split("/")
            if len(parts) == 4 and not parts[1].startswith("_"):
                staged.setdefault((parts[1], parts[2]), []).append(key)
        removed = 0
        for (name, version), files in staged.items():
            if f"{self._dir(name, version)}/version.json" not in files:
                for file_key in files:
                    self.lake.delete(file_key)
                removed += len(files)
        return {"commits_undone": undone, "staged_files_removed": removed}

    def register(self, model: ModelKind, metrics: dict, card: str, fingerprint: str) -> str:
        """Stages and commits one version (no promotion): a one-model training step."""
        commit = Commit()
        version = self.stage(model, metrics, card, fingerprint, commit)
        self.commit(commit)
        return version

    def versions(self, name: str) -> list[str]:
        """The listed versions: complete, and not from a training killed while committing."""
        keys = self.lake.list_keys(f"models/{name}/")
        killed = {record["versions"][name]["version"] for record in self._unfinished().values()
                  if name in record["versions"]}
        return sorted(v for v in (k.split("/")[2] for k in keys if k.endswith("/version.json")) if v not in killed)

    def champion(self, name: str) -> dict | None:
        pointer = self._pointer(f"models/{name}/champion.json")
        return None if pointer is None else json.loads(pointer)

    def promote(self, name: str, version: str, decision: GateDecision) -> None:
        if version not in self.versions(name):
            raise KeyError(f"{name} has no complete version {version}")
        commit = Commit()  # one pointer: a rollback by hand, recorded like a training's promotions
        commit.promote(name, version, decision)
        self.commit(commit)

    def metrics(self, name: str, version: str) -> dict:
        return json.loads(self.lake.read_bytes(f"{self._dir(name, version)}/metrics.json"))

    def load(self, name: str, version: str) -> ModelKind:
        base = self._dir(name, version)
        meta = json.loads(self.lake.read_bytes(f"{base}/version.json"))
        files = {f: self.lake.read_bytes(f"{base}/{f}") for f in meta["files"] if f not in ("metrics.json", "card.md")}
        return MODEL_KINDS[name].from_files(files)

    def load_serving(self, name: str, version: str) -> ModelKind | NaiveBaseline:
        """The model `serving(name)` returned as `version`: a registered version, or the naive baseline."""
        if version != NaiveBaseline.version:
            return self.load(name, version)
        baseline = self._pointer(f"models/{name}/baseline.json")
        if baseline is None:
            raise LookupError(f"{name} has no baseline: train the models first")
        return NaiveBaseline.from_json(baseline.decode())

    def load_champion(self, name: str) -> tuple[ModelKind, str]:
        pointer = self.champion(name)
        if pointer is None:
            raise LookupError(f"{name} has no champion yet: train it and pass the promotion gate first")
        return self.load(name, pointer["version"]), pointer["version"]

    def register_baseline(self, baseline: NaiveBaseline) -> None:
        self.commit(Commit(baselines={baseline.name: baseline.to_json()}))

    def serving(self, name: str) -> tuple[ModelKind | NaiveBaseline, str]:
        """What scores ``name`` now: its champion, else its naive baseline (version "baseline")."""
        if self.champion(name) is not None:
            return self.load_champion(name)
        baseline = self._pointer(f"models/{name}/baseline.json")
        if baseline is None:
            raise LookupError(f"{name} has neither a champion nor a baseline: train the models first")
        return NaiveBaseline.from_json(baseline.decode()), NaiveBaseline.version
