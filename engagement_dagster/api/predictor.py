"""Online predictions with the registry's serving models: the weekly batch's numbers, per request.

`Predictor` loads every model's serving version (its champion, or its naive baseline while it has
none: `ModelRegistry.serving`) and scores feature rows, dicts keyed like dbt's
`customer_model_input`. Its outputs equal `core.ml.scoring.score` for the same rows (to float
rounding), except the churn drivers: exact TreeSHAP for every customer here (a person reads one
customer's drivers), where the weekly batch uses it only at or above the at-risk threshold.

Speed is the point of this module (issue 12: a request through all models in about a millisecond).
The models' own `predict` paths go through pandas and cost milliseconds per row, so each request is
encoded once into a float32 matrix (category levels as the codes the boosters were trained on,
unseen levels and missing values as NaN, as `FeatureSpec.matrix` does) and:
- the XGBoost boosters predict on it in place (one thread each: a request is a few rows);
- churn drivers come from `fast_trees.TreeShap`, exact TreeSHAP as lookup tables;
- the isolation forest and k-means run as numpy (`fast_trees.IsolationForestScorer`, nearest centroid).
tests/test_api_predictor.py proves every output equal to the batch path.

A new champion is picked up without a restart: `refresh_if_changed` looks at the champion
pointers at most every `check_seconds` and, when one changed, builds a whole new set of models and
swaps one reference, so a request sees either the old set or the new one, never a mix.

Imports no Dagster: the API's cold start matters.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xgboost as xgb

from engagement_dagster.core.ml.fast_trees import IsolationForestScorer, TreeShap, TreeShapTooLarge
from engagement_dagster.core.ml.models.anomaly import AnomalyModel
from engagement_dagster.core.ml.models.base import FeatureSpec, XGBoostModel
from engagement_dagster.core.ml.models.churn import ChurnModel
from engagement_dagster.core.ml.models.content import ContentRecommender
from engagement_dagster.core.ml.models.engagement import EngagementModel
from engagement_dagster.core.ml.models.ltv import LtvModel
from engagement_dagster.core.ml.models.segment import SegmentModel
from engagement_dagster.core.ml.registry import ModelRegistry
from engagement_dagster.core.ml.scoring import TOP_DRIVERS, direction_words
from engagement_dagster.core.ml.training import MODEL_KINDS, NaiveBaseline
from engagement_dagster.core.storage.lake import LocalStore, Store, open_store

log = logging.getLogger(__name__)

MODEL_NAMES = tuple(MODEL_KINDS)
DEFAULT_CHECK_SECONDS = 5.0
CHECK_SECONDS_ENV = "ENGAGEMENT_API_MODEL_CHECK_SECONDS"

# The batch's prediction columns (core.ml.scoring) and the keys a prediction carries them under.
OUTPUT_KEYS = {
    "predicted_engagement_score": "engagement_score",
    "churn_probability": "churn_probability",
    "predicted_lifetime_value_usd": "lifetime_value_usd",
    "segment_id": "segment_id",
    "segment": "segment",
    "anomaly_score": "anomaly_score",
    "is_anomaly": "is_anomaly",
}
CATEGORY_COLUMNS = tuple(f"recommended_category_{i}" for i in (1, 2, 3))
# A prediction's keys, in order (then model_versions).
PREDICTION_KEYS = ("customer_id", *OUTPUT_KEYS.values(), "top_categories", "churn_drivers")


class ModelsNotLoaded(RuntimeError):
    """No complete set of serving models yet (nothing trained, or the registry unreadable)."""


# How a churn driver pushes the risk, in the words of the weekly batch's documents ("raises churn
# risk"), without the number that direction_words adds: indexed by the contribution's sign + 1.
DIRECTIONS = np.array([direction_words(sign).split(" (", 1)[0] for sign in (-1.0, 0.0, 1.0)])


class FeatureEncoder:
    """Feature rows (dicts) → one float32 matrix with every column the models read.

    Numeric columns as float32; a categorical column as its level's code in the model's
    `FeatureSpec.categories` (what the boosters were trained on), NaN for a missing value or an
    unseen level, as `FeatureSpec.matrix` does. A categorical column whose levels differ between two
    models' specs gets one matrix column per list of levels."""

    def __init__(self, specs: Sequence[FeatureSpec]):
        self.numeric: list[str] = []
        self.categorical: list[tuple[str, tuple[str, ...]]] = []
        for spec in specs:
            self.numeric += [c for c in spec.numeric if c not in self.numeric]
            self.categorical += [(c, tuple(levels)) for c, levels in spec.categories.items()
                                 if (c, tuple(levels)) not in self.categorical]
        self.codes = [{level: float(code) for code, level in enumerate(levels)} for _, levels in self.categorical]
        self.required = frozenset(self.numeric) | {c for c, _ in self.categorical}

    def positions(self, spec: FeatureSpec) -> np.ndarray:
        """The matrix columns of a spec's `columns`, in its order."""
        numeric = [self.numeric.index(c) for c in spec.numeric]
        categorical = [len(self.numeric) + self.categorical.index((c, tuple(levels)))
                       for c, levels in spec.categories.items()]
        return np.array(numeric + categorical, dtype=np.intp)

    def encode(self, rows: Sequence[Mapping]) -> np.ndarray:
        for row in rows:
            if not self.required.issubset(row.keys()):
                raise KeyError(f"feature row lacks model columns {sorted(self.required.difference(row.keys()))}")
        # None becomes NaN in a float array, as a missing value does in the batch's frame.
        numeric = np.array([[row[c] for c in self.numeric] for row in rows], dtype=np.float64).reshape(
            len(rows), len(self.numeric))
        categorical = np.array([[codes.get(_level(row[c]), math.nan) for (c, _), codes in
                                 zip(self.categorical, self.codes, strict=True)] for row in rows],
                               dtype=np.float64).reshape(len(rows), len(self.categorical))
        return np.hstack([numeric, categorical]).astype(np.float32)


def _level(value) -> str | None:
    """A categorical value as FeatureSpec.matrix compares it with the levels (``astype(str)``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value if isinstance(value, str) else str(value)


class Booster:
    """One XGBoost model's booster on its columns of the request matrix, one thread per call (a
    copy: the loaded model keeps its own settings)."""

    def __init__(self, model: XGBoostModel, encoder: FeatureEncoder):
        self.booster = model.booster.copy()
        self.booster.set_param({"nthread": 1})
        self.columns = encoder.positions(model.spec)

    def predict(self, x: np.ndarray, predict_type: str = "value") -> np.ndarray:
        # inplace_predict is thread-safe; on a numpy matrix it reads categorical columns as codes.
        return self.booster.inplace_predict(np.take(x, self.columns, axis=1), predict_type=predict_type)


class EngagementScorer:
    def __init__(self, model: EngagementModel, encoder: FeatureEncoder):
        self.booster = Booster(model, encoder)

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {"predicted_engagement_score": np.clip(self.booster.predict(x), 0, 1)}  # as EngagementModel.predict


class LtvScorer:
    def __init__(self, model: LtvModel, encoder: FeatureEncoder):
        self.booster = Booster(model, encoder)

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {"predicted_lifetime_value_usd": self.booster.predict(x)}


class ChurnScorer:
    """Calibrated churn probability (as ChurnModel.probability) and exact TreeSHAP drivers."""

    def __init__(self, model: ChurnModel, encoder: FeatureEncoder):
        self.booster = Booster(model, encoder)
        self.calibration = model.calibration
        self.on_margin = model.calibration.get("score") == "margin"
        self.features = np.array(model.spec.columns)
        try:
            self.shap: TreeShap | None = TreeShap(model.booster, self.booster.columns, len(model.spec.columns))
        except TreeShapTooLarge as reason:  # very deep trees: XGBoost's own TreeSHAP, slower but exact
            log.warning("churn drivers by XGBoost's pred_contribs: %s", reason)
            self.shap = None
            # Only inplace_predict is safe alongside other calls on one booster: a copy, one call at a time.
            self.explainer, self.explaining = self.booster.booster.copy(), threading.Lock()

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """(rows, features): exact TreeSHAP contributions to the churn log-odds, without the bias."""
        if self.shap is not None:
            return self.shap.contributions(x)
        matrix = xgb.DMatrix(np.take(x, self.booster.columns, axis=1), feature_names=list(self.features),
                             feature_types=self.explainer.feature_types, enable_categorical=True, nthread=1)
        with self.explaining:
            return self.explainer.predict(matrix, pred_contribs=True)[:, :-1].astype(np.float64)

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        cal = self.calibration
        if self.on_margin:
            probability = np.interp(self.booster.predict(x, "margin").astype("float64"), cal["x"], cal["y"])
        else:  # a version calibrated before interpolation: plain steps on the booster's probability
            probability = np.interp(self.booster.predict(x), cal["x"], cal["y"])
        return {"churn_probability": probability}

    def drivers(self, x: np.ndarray, k: int = TOP_DRIVERS) -> tuple[np.ndarray, np.ndarray]:
        """The k features with the largest |contribution| per row and their contributions (log-odds),
        ordered as scoring.top_drivers orders them."""
        contributions = self.contributions(x)
        order = np.argsort(-np.abs(contributions), axis=1)[:, :k]
        return self.features[order], np.take_along_axis(contributions, order, axis=1)


class ContentScorer:
    def __init__(self, model: ContentRecommender, encoder: FeatureEncoder):
        self.booster = Booster(model, encoder)
        self.classes = np.array(model.classes)

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        proba = self.booster.predict(x).reshape(len(x), len(self.classes))
        top = np.argsort(-proba, axis=1)[:, :3]  # as ContentRecommender.predict
        names = self.classes[top]
        return {column: names[:, i] for i, column in enumerate(CATEGORY_COLUMNS)}


class SegmentScorer:
    """SegmentModel.predict: missing values as 0, the fitted scaler, the nearest k-means centroid."""

    def __init__(self, model: SegmentModel, encoder: FeatureEncoder):
        self.columns = encoder.positions(model.spec)
        self.mean = model.scaler.mean_ if model.scaler.with_mean else None
        self.scale = model.scaler.scale_ if model.scaler.with_std else None
        self.centers = model.kmeans.cluster_centers_.astype(np.float64)
        self.names = np.array(model.names)

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        z = np.nan_to_num(np.take(x, self.columns, axis=1), nan=0.0)
        # The scaler's own in-place arithmetic on the float32 matrix, so the rounding is the same.
        if self.mean is not None:
            z -= self.mean
        if self.scale is not None:
            z /= self.scale
        distances = ((z.astype(np.float64)[:, None, :] - self.centers[None, :, :]) ** 2).sum(axis=2)
        labels = distances.argmin(axis=1)
        return {"segment_id": labels.astype("int32"), "segment": self.names[labels]}


class AnomalyScorer:
    """AnomalyModel.predict: missing values as the training medians, the isolation forest's score."""

    def __init__(self, model: AnomalyModel, encoder: FeatureEncoder):
        self.columns = encoder.positions(model.spec)
        self.medians = np.array([model.medians[c] for c in model.spec.columns], dtype=np.float32)
        self.forest = IsolationForestScorer(model.forest)
        self.offset = model.forest.offset_

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        values = np.take(x, self.columns, axis=1)
        values = np.where(np.isnan(values), self.medians, values)
        raw = self.forest.score_samples(values)
        return {"anomaly_score": -raw, "is_anomaly": raw < self.offset}


class BaselineScorer:
    """A naive baseline: the same prediction for everyone, computed once by its own code."""

    def __init__(self, baseline: NaiveBaseline):
        one = baseline.predict(pd.DataFrame(index=[0]))
        self.values = {column: one[column].to_numpy()[0] for column in one.columns}

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {column: np.repeat(np.asarray([value]), len(x)) for column, value in self.values.items()}


SCORERS: dict[type, Callable] = {EngagementModel: EngagementScorer, ChurnModel: ChurnScorer, LtvModel: LtvScorer,
                                 ContentRecommender: ContentScorer, SegmentModel: SegmentScorer,
                                 AnomalyModel: AnomalyScorer}


@dataclass(frozen=True)
class ServingSet:
    """One consistent set of loaded models: what a request is scored by from start to end."""

    versions: dict[str, str]
    encoder: FeatureEncoder
    scorers: dict[str, Callable[[np.ndarray], dict[str, np.ndarray]]]
    churn: ChurnScorer | None  # None while churn is served by its naive baseline (no drivers)

    @classmethod
    def build(cls, models: Mapping[str, tuple[object, str]]) -> ServingSet:
        specs = [m.spec for m, _ in models.values() if not isinstance(m, NaiveBaseline)]
        encoder = FeatureEncoder(specs)
        scorers = {}
        for name, (model, _) in models.items():
            if isinstance(model, NaiveBaseline):
                scorers[name] = BaselineScorer(model)
            elif type(model) in SCORERS:
                scorers[name] = SCORERS[type(model)](model, encoder)
            else:
                raise TypeError(f"no fast scorer for {name}'s {type(model).__name__}")
        churn = scorers.get("churn_model")
        return cls({name: version for name, (_, version) in models.items()}, encoder, scorers,
                   churn if isinstance(churn, ChurnScorer) else None)

    def predict(self, rows: Sequence[Mapping]) -> list[dict]:
        x = self.encoder.encode(rows)
        columns: dict[str, np.ndarray] = {}
        for scorer in self.scorers.values():
            columns.update(scorer(x))
        categories = np.column_stack([columns[c] for c in CATEGORY_COLUMNS]).tolist()
        if self.churn is not None:
            names, contributions = self.churn.drivers(x)
            directions = DIRECTIONS[np.sign(contributions).astype(np.intp) + 1]
            drivers = [[{"feature": f, "contribution": c, "direction": d} for f, c, d in zip(*parts, strict=True)]
                       for parts in zip(names.tolist(), contributions.tolist(), directions.tolist(), strict=True)]
        else:
            drivers = [[] for _ in rows]
        # Python values (tolist), column by column, then zipped into one dict per row: the fast way.
        values = zip([row.get("customer_id") for row in rows], *(columns[c].tolist() for c in OUTPUT_KEYS),
                     categories, drivers, strict=True)
        return [dict(zip(PREDICTION_KEYS, v, strict=True), model_versions=dict(self.versions)) for v in values]


class Predictor:
    """The serving models of a registry, for real-time predictions; reloads when a champion changes."""

    def __init__(self, store: Store, check_seconds: float = DEFAULT_CHECK_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.registry = ModelRegistry(store)
        self.store, self.check_seconds, self.clock = store, check_seconds, clock
        self._serving: ServingSet | None = None
        self._pointers: tuple | None = None
        self._next_check = clock() + check_seconds
        self._refreshing = threading.Lock()
        self._load()

    @classmethod
    def from_store(cls, store: Store, check_seconds: float = DEFAULT_CHECK_SECONDS) -> Predictor:
        return cls(store, check_seconds)

    @classmethod
    def from_settings(cls) -> Predictor:
        """The registry of the environment's lake (`ENGAGEMENT_ENV`); champion pointers checked every
        `ENGAGEMENT_API_MODEL_CHECK_SECONDS` (default 5)."""
        return cls(open_store(), float(os.environ.get(CHECK_SECONDS_ENV, DEFAULT_CHECK_SECONDS)))

    def _read_pointers(self) -> tuple:
        """What decides each model's serving version: its champion.json, else its baseline.json."""
        pointers = []
        for name in MODEL_NAMES:
            for key in (f"models/{name}/champion.json", f"models/{name}/baseline.json"):
                if self.store.exists(key):
                    pointers.append((key, self.store.read_bytes(key)))
                    break
            else:
                pointers.append((name, None))
        return tuple(pointers)

    def _load(self) -> None:
        # The pointers are read before the models: a champion promoted in between is then loaded
        # now and, its pointer differing from the one kept, once more at the next check; never missed.
        pointers = self._read_pointers()
        try:
            serving = ServingSet.build({name: self.registry.serving(name) for name in MODEL_NAMES})
        except LookupError as error:  # a model with neither champion nor baseline: nothing trained yet
            log.warning("prediction models not loaded: %s", error)
            self._pointers = pointers  # tried again when a pointer appears
            return
        self._serving, self._pointers = serving, pointers  # one reference swap: requests see old or new

    def refresh_if_changed(self) -> bool:
        """Reload the models if a champion (or, for a model without one, its baseline) changed since
        they were loaded; looks at most every `check_seconds`. True when a new set was loaded. A set
        that fails to load is logged and the current one keeps serving."""
        if self.clock() < self._next_check or not self._refreshing.acquire(blocking=False):
            return False
        try:
            self._next_check = self.clock() + self.check_seconds
            if self._read_pointers() == self._pointers:
                return False
            serving = self._serving
            self._load()
            if self._serving is serving:
                return False
            log.info("prediction models reloaded: %s", self._serving.versions)
            return True
        except Exception:  # a registry mid-update or unreachable: keep serving, try again later
            log.exception("prediction models could not be reloaded; the loaded ones keep serving")
            return False
        finally:
            self._refreshing.release()

    def loaded(self) -> bool:
        return self._serving is not None

    def versions(self) -> dict[str, str]:
        """{model name: version} of the loaded models ('baseline' for a naive baseline)."""
        return dict(self._serving.versions) if self._serving is not None else {}

    def predict(self, feature_rows: Sequence[Mapping]) -> list[dict]:
        """One prediction per feature row (keys: dbt's customer_model_input columns), in order."""
        serving = self._serving  # one set for the whole request, whatever a reload does meanwhile
        if serving is None:
            raise ModelsNotLoaded("no serving models: train the models first (the registry has none)")
        if not feature_rows:
            return []
        return serving.predict(feature_rows)


def _percentiles(seconds: list[float]) -> str:
    ms = np.array(seconds) * 1000
    return f"p50 {np.percentile(ms, 50):.3f} ms, p99 {np.percentile(ms, 99):.3f} ms (n={len(ms)})"


def bench(lake_dir: str, single: int = 2000, batches: int = 30, batch_size: int = 1000,
          freeze_gc: bool = False) -> None:
    """Print p50/p99 of predict([one row]) and predict(batch_size rows), on the rows of the lake's
    warehouse (customer_model_input). A measurement, not a test: the machine's load shows in it, and
    so do the interpreter's full garbage collections (tens of ms here) unless `freeze_gc` moves what
    is loaded by then out of their reach (gc.freeze(), as a server would after start-up)."""
    from engagement_dagster.core.storage.warehouse import duckdb_query

    predictor = Predictor.from_store(LocalStore(lake_dir))
    frame = duckdb_query(os.path.join(lake_dir, "warehouse.duckdb"),
                         f"select * from customer_model_input limit {max(batch_size, 1000)}")
    rows = frame.to_dict("records")
    print(f"models: {json.dumps(predictor.versions())}")
    if freeze_gc:
        gc.collect()
        gc.freeze()
    predictor.predict(rows[:batch_size])  # warm-up
    timings = []
    for i in range(single):
        row = [rows[i % len(rows)]]
        started = time.perf_counter()
        predictor.predict(row)
        timings.append(time.perf_counter() - started)
    print(f"predict([one row]):      {_percentiles(timings)}")
    timings = []
    for _ in range(batches):
        started = time.perf_counter()
        predictor.predict(rows[:batch_size])
        timings.append(time.perf_counter() - started)
    print(f"predict({batch_size} rows):     {_percentiles(timings)}")
    if freeze_gc:
        gc.unfreeze()  # leave the exit's clean-up whole (duckdb warns of objects it never saw freed)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m engagement_dagster.api.predictor",
                                     description="Measure the predictor's latency on a local lake.")
    parser.add_argument("--bench", metavar="LAKE_DIR", required=True,
                        help="a local lake with trained models and its warehouse.duckdb")
    parser.add_argument("--single", type=int, default=2000, help="single-row predictions to time")
    parser.add_argument("--batches", type=int, default=30, help="batches to time")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--freeze-gc", action="store_true",
                        help="gc.freeze() after loading, so full collections skip the loaded objects")
    args = parser.parse_args(argv)
    bench(args.bench, args.single, args.batches, args.batch_size, args.freeze_gc)


if __name__ == "__main__":
    main()
