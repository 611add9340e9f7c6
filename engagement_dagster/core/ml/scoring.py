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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from engagement_dagster.core import faults
from engagement_dagster.core.ml.models.base import ModelKind
from engagement_dagster.core.ml.models.churn import ChurnModel
from engagement_dagster.core.ml.training import NaiveBaseline

if TYPE_CHECKING:  # any lake works (the Dagster resource or a plain storage.Store): no Dagster import here
    from engagement_dagster.core.storage.lake import Store as Lake

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
    for column in VERSION_COLUMNS:  # a fixed order, whatever the order of `champions`
        out[column] = champions[column.removesuffix("_version")][1]
    out["scored_at"] = pd.Timestamp(dt.datetime.now(dt.UTC)).tz_localize(None)
    return out


def shard_numbers(ids: pd.Series, shards: int) -> np.ndarray:
    """A customer's shard: crc32 of its id modulo the shard count (stable across runs and machines)."""
    return np.fromiter((zlib.crc32(str(i).encode()) % shards for i in ids), dtype=np.int64, count=len(ids))


def shard_count(rows: int, rows_per_shard: int = ROWS_PER_SHARD) -> int:
    return max(1, math.ceil(rows / rows_per_shard))


# The columns of the prediction shards, in order: (type, nullable, description). `snapshot_week` is not
# in the files: it is the partition (the shards' `snapshot_week=…/` directory, a Glue partition on AWS).
VERSION_COLUMNS = tuple(f"{name}_version" for name in ("engagement_model", "churn_model", "ltv_model",
                                                        "segment_model", "anomaly_model", "content_recommender"))
ORDINALS = ("largest", "2nd largest", "3rd largest")


def _prediction_columns() -> dict[str, tuple[str, bool, str]]:
    columns = {
        "customer_id": ("string", False, "The customer (one row each)."),
        "predicted_engagement_score": ("float", False, "Predicted engagement score, a fraction 0–1."),
        "churn_probability": ("float", False, "Calibrated probability of churning within 30 days, 0–1."),
        "predicted_lifetime_value_usd": ("float", False, "Predicted lifetime value in USD, ≥ 0."),
        "segment_id": ("int", False, "The k-means segment's number."),
        "segment": ("string", False, "The segment's name, from its centroid (see the segment model's card)."),
        "anomaly_score": ("float", False, "Isolation-forest score: higher is more unusual."),
        "is_anomaly": ("bool", False, "Among the most isolated 2% of the training data's score distribution."),
    }
    for i in range(1, 4):
        columns[f"recommended_category_{i}"] = ("string", False, f"Content category ranked {i} for the customer.")
    for i in range(1, TOP_DRIVERS + 1):
        columns[f"churn_driver_{i}"] = ("string", True, (
            f"Feature with the {ORDINALS[i - 1]} |contribution| to the churn log-odds (null while churn is "
            "served by its naive baseline)."))
        columns[f"churn_driver_{i}_contribution"] = ("float", True, (
            "Its contribution to the churn log-odds: positive raises churn risk, negative lowers it."))
    columns["churn_drivers_method"] = ("string", False, "exact_treeshap, saabas_approximate, or none (naive baseline).")
    for column in VERSION_COLUMNS:
        columns[column] = ("string", False, (
            f"Version of {column.removesuffix('_version')} that scored the row, or 'baseline' (its naive baseline)."))
    columns["scored_at"] = ("timestamp", False, "When the row was scored (UTC).")
    return columns


PREDICTION_COLUMNS = _prediction_columns()
PARTITION_COLUMN = ("snapshot_week", "date", "The snapshot week: the partition (directory), not a column of the files.")
PROBABILITY_COLUMNS = ("churn_probability", "predicted_engagement_score")  # both fractions 0–1


def column_kind(dtype) -> str:
    """A pandas dtype as the schema's type names."""
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_integer_dtype(dtype):
        return "int"
    if pd.api.types.is_float_dtype(dtype):
        return "float"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "timestamp"
    return "string"


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    description: str
    metadata: dict = field(default_factory=dict)


def _examples(values, limit: int = 5) -> str:
    values = list(values)
    return ", ".join(map(str, values[:limit])) + (f" (+{len(values) - limit:,} more)" if len(values) > limit else "")


def prediction_checks(predictions: pd.DataFrame, expected_ids: pd.Series,
                      id_column: str = "customer_id") -> list[CheckOutcome]:
    """The blocking checks of a week's predictions, each a reason the marts would be wrong:
    one row per customer of the snapshot (the model-ready table's customers, each once), every
    probability in [0, 1], no missing prediction."""
    ids, expected = predictions[id_column], pd.Series(expected_ids)
    repeated = ids[ids.duplicated()].unique()
    missing = sorted(set(expected) - set(ids))
    extra = sorted(set(ids) - set(expected))
    problems = []
    if len(repeated):
        problems.append(f"{len(repeated):,} customer(s) with more than one row, e.g. {_examples(repeated)}")
    if missing:
        problems.append(f"{len(missing):,} customer(s) of the snapshot without a row, e.g. {_examples(missing)}")
    if extra:
        problems.append(f"{len(extra):,} row(s) for customers not in the snapshot, e.g. {_examples(extra)}")
    one_row = CheckOutcome(
        "one_row_per_customer", not problems,
        "; ".join(problems) if problems else
        f"{len(ids):,} rows: each of the snapshot's {expected.nunique():,} customers once",
        {"rows": len(ids), "customers_in_snapshot": int(expected.nunique()),
         "customers_with_several_rows": len(repeated), "customers_without_a_row": len(missing),
         "rows_not_in_snapshot": len(extra)})

    outside, counts = [], {}
    for column in PROBABILITY_COLUMNS:
        values = pd.to_numeric(predictions[column], errors="coerce")
        bad = values[(values < 0) | (values > 1)]
        counts[f"{column}_outside_0_1"] = len(bad)
        if len(bad):
            outside.append(f"{column}: {len(bad):,} row(s) outside [0, 1] (observed {bad.min():.4g} … "
                           f"{bad.max():.4g}), e.g. customers {_examples(predictions.loc[bad.index, id_column])}")
    in_range = CheckOutcome("probabilities_in_range", not outside,
                            "; ".join(outside) or f"{', '.join(PROBABILITY_COLUMNS)}: every row within [0, 1]", counts)

    required = [c for c, (_, nullable, _) in PREDICTION_COLUMNS.items() if not nullable and c in predictions]
    nulls = {c: int(predictions[c].isna().sum()) for c in required}
    with_drivers = predictions["churn_drivers_method"] != "none" if "churn_drivers_method" in predictions else None
    if with_drivers is not None:  # a churn model that explains its predictions names every driver
        for i in range(1, TOP_DRIVERS + 1):
            for column in (f"churn_driver_{i}", f"churn_driver_{i}_contribution"):
                if column in predictions:
                    nulls[column] = int(predictions.loc[with_drivers, column].isna().sum())
    absent = [c for c in PREDICTION_COLUMNS if c not in predictions]
    found = {c: n for c, n in nulls.items() if n}
    problems = [f"{c}: {n:,} null row(s)" for c, n in found.items()] + [f"column {c} is missing" for c in absent]
    no_nulls = CheckOutcome("no_null_predictions", not problems,
                            "; ".join(problems) or f"no null in the {len(nulls)} prediction columns",
                            {"null_rows": sum(found.values()), "columns_with_nulls": ", ".join(found) or "none",
                             "missing_columns": ", ".join(absent) or "none"})
    return [one_row, in_range, no_nulls]


def driver_directions(predictions: pd.DataFrame, at_least: float = AT_RISK_CHURN_PROBABILITY) -> pd.DataFrame:
    """How the top churn driver of the customers at or above a churn probability pushes their risk:
    per driver, the customers it is the top driver for, how many of them it raises / lowers churn
    risk for, and the mean contribution (log-odds) each way. Most frequent first."""
    rows = predictions[(predictions["churn_probability"] >= at_least) & predictions["churn_driver_1"].notna()]
    contribution = rows["churn_driver_1_contribution"]
    frame = pd.DataFrame({"driver": rows["churn_driver_1"], "contribution": contribution,
                          "raises": contribution > 0, "lowers": contribution < 0})
    if frame.empty:
        return pd.DataFrame(columns=["driver", "customers", "raises", "lowers", "mean_raising", "mean_lowering"])
    grouped = frame.groupby("driver")
    out = pd.DataFrame({
        "customers": grouped.size().astype(int), "raises": grouped["raises"].sum().astype(int),
        "lowers": grouped["lowers"].sum().astype(int),
        "mean_raising": frame[frame["raises"]].groupby("driver")["contribution"].mean(),
        "mean_lowering": frame[frame["lowers"]].groupby("driver")["contribution"].mean(),
    }).reset_index()
    return out.sort_values(["customers", "driver"], ascending=[False, True], ignore_index=True)


def direction_words(contribution: float) -> str:
    """A churn driver's effect in words, with its contribution to the log-odds."""
    if contribution > 0:
        return f"raises churn risk ({contribution:+.3g} log-odds)"
    if contribution < 0:
        return f"lowers churn risk ({contribution:+.3g} log-odds)"
    return "no effect (0 log-odds)"


PREDICTIONS_TABLE, PREDICTIONS_PREFIX = "customer_predictions", "predictions"  # catalog table (dbt source), lake prefix


def prediction_key(week: str, shard: int) -> str:
    return f"{PREDICTIONS_PREFIX}/snapshot_week={week}/shard={shard:02d}.parquet"


def write_shards(lake: Lake, week: str, predictions: pd.DataFrame, shards: int) -> list[str]:
    """Write each shard atomically, then remove shards a previous run with more shards left."""
    numbers = shard_numbers(predictions["customer_id"], shards)
    uris = []
    for shard in range(shards):
        uris.append(lake.write_parquet(prediction_key(week, shard), predictions[numbers == shard]))
        faults.checkpoint("scoring")
    keep = {prediction_key(week, s) for s in range(shards)}
    for key in lake.list_keys(f"{PREDICTIONS_PREFIX}/snapshot_week={week}/"):
        if key not in keep:
            lake.delete(key)
    return uris
