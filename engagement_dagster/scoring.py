"""Batch scoring with champion models: every customer of the week, written in shards.

Churn drivers are per-customer SHAP-style contributions of the churn booster to its margin
(log-odds, before calibration): contributions + bias = margin. For the whole batch they are
Saabas contributions (``approx_contribs``, about 100× cheaper than exact TreeSHAP); for every
customer whose churn probability reaches AT_RISK_CHURN_PROBABILITY — the ones a person will read
on the at-risk list — they are exact TreeSHAP. The `churn_drivers_method` column says which
("none" while churn is served by its naive baseline, which has no drivers).
"""

from __future__ import annotations

import datetime as dt
import math
import zlib

import numpy as np
import pandas as pd

from engagement_dagster.lake import Lake
from engagement_dagster.training import ChurnModel, ModelKind, NaiveBaseline

AT_RISK_CHURN_PROBABILITY = 0.5  # keep equal to the dbt var `at_risk_churn_probability`
ROWS_PER_SHARD = 50_000
TOP_DRIVERS = 3


def top_drivers(model: ChurnModel, frame: pd.DataFrame, approximate: bool, k: int = TOP_DRIVERS) -> pd.DataFrame:
    """The k features with the largest |contribution| per row, with their signed contributions."""
    contrib = model.contributions(frame, approximate=approximate)[:, :-1]
    order = np.argsort(-np.abs(contrib), axis=1)[:, :k]
    names = np.array(model.spec.columns)[order]
    values = np.take_along_axis(contrib, order, axis=1)
    out = {}
    for i in range(k):
        out[f"churn_driver_{i + 1}"] = names[:, i]
        out[f"churn_driver_{i + 1}_contribution"] = values[:, i].astype("float64")
    return pd.DataFrame(out, index=frame.index)


def _no_drivers(frame: pd.DataFrame, k: int = TOP_DRIVERS) -> pd.DataFrame:
    out = {}
    for i in range(k):
        out[f"churn_driver_{i + 1}"] = pd.Series(None, index=frame.index, dtype="string")
        out[f"churn_driver_{i + 1}_contribution"] = np.full(len(frame), np.nan)
    return pd.DataFrame(out, index=frame.index)


def score(frame: pd.DataFrame, champions: dict[str, tuple[ModelKind | NaiveBaseline, str]],
          id_column: str = "customer_id") -> pd.DataFrame:
    """One row per customer: every model's output (its champion's, or its naive baseline's while it
    has no champion), churn drivers and the versions used."""
    out = frame[[id_column]].copy()
    for name in ("engagement_model", "churn_model", "ltv_model", "segment_model", "anomaly_model",
                 "content_recommender"):
        model, _ = champions[name]
        out = out.join(model.predict(frame))
    churn = champions["churn_model"][0]
    if isinstance(churn, ChurnModel):
        drivers = top_drivers(churn, frame, approximate=True)
        exact = out["churn_probability"].to_numpy() >= AT_RISK_CHURN_PROBABILITY
        if exact.any():
            drivers.loc[exact] = top_drivers(churn, frame.loc[exact], approximate=False)
        method = np.where(exact, "exact_treeshap", "saabas_approximate")
    else:
        drivers, method = _no_drivers(frame), "none"
    out = out.join(drivers)
    out["churn_drivers_method"] = method
    for name, (_, version) in champions.items():
        out[f"{name}_version"] = version
    out["scored_at"] = pd.Timestamp(dt.datetime.now(dt.UTC)).tz_localize(None)
    return out


def shard_numbers(ids: pd.Series, shards: int) -> np.ndarray:
    """A customer's shard: crc32 of its id modulo the shard count (stable across runs and machines)."""
    return np.fromiter((zlib.crc32(str(i).encode()) % shards for i in ids), dtype=np.int64, count=len(ids))


def shard_count(rows: int, rows_per_shard: int = ROWS_PER_SHARD) -> int:
    return max(1, math.ceil(rows / rows_per_shard))


PREDICTIONS_TABLE, PREDICTIONS_PREFIX = "customer_predictions", "predictions"  # catalog table (dbt source), lake prefix


def prediction_key(week: str, shard: int) -> str:
    return f"{PREDICTIONS_PREFIX}/snapshot_week={week}/shard={shard:02d}.parquet"


def write_shards(lake: Lake, week: str, predictions: pd.DataFrame, shards: int) -> list[str]:
    """Write each shard atomically, then remove shards a previous run with more shards left."""
    numbers = shard_numbers(predictions["customer_id"], shards)
    uris = [lake.write_parquet(prediction_key(week, s), predictions[numbers == s]) for s in range(shards)]
    keep = {prediction_key(week, s) for s in range(shards)}
    for key in lake.list_keys(f"{PREDICTIONS_PREFIX}/snapshot_week={week}/"):
        if key not in keep:
            lake.delete(key)
    return uris
