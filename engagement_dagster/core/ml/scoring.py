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
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from engagement_dagster.core import faults
from engagement_dagster.core.ml.models.base import ModelKind
from engagement_dagster.core.ml.models.churn import ChurnModel
from engagement_dagster.core.ml.training import NaiveBaseline
from engagement_dagster.core.storage.shards import ShardSource

if TYPE_CHECKING:  # any lake works (the Dagster resource or a plain storage.Store): no Dagster import here
    import duckdb

    from engagement_dagster.core.storage.lake import Store as Lake

AT_RISK_CHURN_PROBABILITY = 0.5  # keep equal to the dbt var `at_risk_churn_probability`
ROWS_PER_SHARD = 50_000
PARALLEL_FROM_ROWS = 500_000  # below it, scoring in the run's process beats starting worker processes
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


def _examples(values, total: int | None = None, limit: int = 5) -> str:
    values = list(values)
    total = len(values) if total is None else total
    return ", ".join(map(str, values[:limit])) + (f" (+{total - limit:,} more)" if total > limit else "")


EXAMPLES = 5  # ids kept per problem: enough to look one up, bounded whatever the week's size


@dataclass
class CheckCounts:
    """What the blocking checks count over some rows: one shard's, or several shards' added up (a
    customer is in exactly one shard, so sums are exact). `judge` turns them into the outcomes."""
    rows: int = 0
    customers_in_snapshot: int = 0
    repeated: int = 0
    missing: int = 0
    extra: int = 0
    examples: dict[str, list] = field(default_factory=dict)  # "repeated"/"missing"/"extra"/a column -> ids
    outside: dict[str, list] = field(default_factory=dict)  # probability column -> [rows, min, max]
    nulls: dict[str, int] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)

    def __add__(self, other: CheckCounts) -> CheckCounts:
        outside = {c: list(v) for c, v in self.outside.items()}
        for column, (n, low, high) in other.outside.items():
            mine = outside.setdefault(column, [0, low, high])
            outside[column] = [mine[0] + n, min(mine[1], low), max(mine[2], high)]
        examples = {k: list(v) for k, v in self.examples.items()}
        for key, ids in other.examples.items():
            examples[key] = (examples.get(key, []) + list(ids))[:EXAMPLES]
        nulls = dict(self.nulls)
        for column, n in other.nulls.items():
            nulls[column] = nulls.get(column, 0) + n
        return CheckCounts(self.rows + other.rows, self.customers_in_snapshot + other.customers_in_snapshot,
                           self.repeated + other.repeated, self.missing + other.missing, self.extra + other.extra,
                           examples, outside, nulls, sorted(set(self.absent) | set(other.absent)))


def count_checks(predictions: pd.DataFrame, expected_ids: pd.Series, id_column: str = "customer_id") -> CheckCounts:
    """The checks' counts for predictions of the customers `expected_ids` (a shard's, or the week's)."""
    ids, expected = predictions[id_column], pd.Series(expected_ids)
    repeated = ids[ids.duplicated()].unique()
    missing = sorted(set(expected) - set(ids))
    extra = sorted(set(ids) - set(expected))
    counts = CheckCounts(rows=len(ids), customers_in_snapshot=int(expected.nunique()), repeated=len(repeated),
                         missing=len(missing), extra=len(extra))
    for key, values in (("repeated", repeated), ("missing", missing), ("extra", extra)):
        if len(values):
            counts.examples[key] = list(values[:EXAMPLES])
    for column in PROBABILITY_COLUMNS:
        values = pd.to_numeric(predictions[column], errors="coerce")
        bad = values[(values < 0) | (values > 1)]
        counts.outside[column] = [len(bad), float(bad.min()) if len(bad) else math.inf,
                                  float(bad.max()) if len(bad) else -math.inf]
        if len(bad):
            counts.examples[column] = list(predictions.loc[bad.index[:EXAMPLES], id_column])
    required = [c for c, (_, nullable, _) in PREDICTION_COLUMNS.items() if not nullable and c in predictions]
    counts.nulls = {c: int(predictions[c].isna().sum()) for c in required}
    with_drivers = predictions["churn_drivers_method"] != "none" if "churn_drivers_method" in predictions else None
    if with_drivers is not None:  # a churn model that explains its predictions names every driver
        for i in range(1, TOP_DRIVERS + 1):
            for column in (f"churn_driver_{i}", f"churn_driver_{i}_contribution"):
                if column in predictions:
                    counts.nulls[column] = int(predictions.loc[with_drivers, column].isna().sum())
    counts.absent = [c for c in PREDICTION_COLUMNS if c not in predictions]
    return counts


def judge(counts: CheckCounts) -> list[CheckOutcome]:
    """The blocking checks of a week's predictions, each a reason the marts would be wrong: one row per
    customer of the snapshot (the model-ready table's customers, each once), every probability in
    [0, 1], no missing prediction."""
    problems = []
    if counts.repeated:
        problems.append(f"{counts.repeated:,} customer(s) with more than one row, e.g. "
                        f"{_examples(counts.examples['repeated'], counts.repeated)}")
    if counts.missing:
        problems.append(f"{counts.missing:,} customer(s) of the snapshot without a row, e.g. "
                        f"{_examples(counts.examples['missing'], counts.missing)}")
    if counts.extra:
        problems.append(f"{counts.extra:,} row(s) for customers not in the snapshot, e.g. "
                        f"{_examples(counts.examples['extra'], counts.extra)}")
    one_row = CheckOutcome(
        "one_row_per_customer", not problems,
        "; ".join(problems) if problems else
        f"{counts.rows:,} rows: each of the snapshot's {counts.customers_in_snapshot:,} customers once",
        {"rows": counts.rows, "customers_in_snapshot": counts.customers_in_snapshot,
         "customers_with_several_rows": counts.repeated, "customers_without_a_row": counts.missing,
         "rows_not_in_snapshot": counts.extra})

    outside, metadata = [], {}
    for column in PROBABILITY_COLUMNS:
        n, low, high = counts.outside.get(column, [0, math.inf, -math.inf])
        metadata[f"{column}_outside_0_1"] = n
        if n:
            outside.append(f"{column}: {n:,} row(s) outside [0, 1] (observed {low:.4g} … {high:.4g}), e.g. "
                           f"customers {_examples(counts.examples[column], n)}")
    in_range = CheckOutcome("probabilities_in_range", not outside,
                            "; ".join(outside) or f"{', '.join(PROBABILITY_COLUMNS)}: every row within [0, 1]",
                            metadata)

    found = {c: n for c, n in counts.nulls.items() if n}
    problems = [f"{c}: {n:,} null row(s)" for c, n in found.items()] + [f"column {c} is missing"
                                                                         for c in counts.absent]
    no_nulls = CheckOutcome("no_null_predictions", not problems,
                            "; ".join(problems) or f"no null in the {len(counts.nulls)} prediction columns",
                            {"null_rows": sum(found.values()), "columns_with_nulls": ", ".join(found) or "none",
                             "missing_columns": ", ".join(counts.absent) or "none"})
    return [one_row, in_range, no_nulls]


def prediction_checks(predictions: pd.DataFrame, expected_ids: pd.Series,
                      id_column: str = "customer_id") -> list[CheckOutcome]:
    """`judge(count_checks(...))`: the checks of predictions held in one frame."""
    return judge(count_checks(predictions, expected_ids, id_column))


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


def _relation(predictions: pd.DataFrame | str) -> tuple[duckdb.DuckDBPyConnection, str]:
    """A DuckDB connection and the relation to read predictions from: a frame, or a Parquet glob (the
    spooled shards of a week, however many customers: DuckDB streams them)."""
    import duckdb  # here, not at the top: the prediction API imports this module, and its image has no DuckDB

    con = duckdb.connect()
    if isinstance(predictions, pd.DataFrame):
        con.register("predictions_frame", predictions)
        return con, "predictions_frame"
    return con, f"read_parquet('{predictions}')"


def driver_directions(predictions: pd.DataFrame | str, at_least: float = AT_RISK_CHURN_PROBABILITY) -> pd.DataFrame:
    """How the top churn driver of the customers at or above a churn probability pushes their risk:
    per driver, the customers it is the top driver for, how many of them it raises / lowers churn
    risk for, and the mean contribution (log-odds) each way. Most frequent first."""
    con, relation = _relation(predictions)
    with con:
        return con.execute(f"""
            select churn_driver_1 as driver, count(*)::bigint as customers,
                   count(*) filter (where churn_driver_1_contribution > 0)::bigint as raises,
                   count(*) filter (where churn_driver_1_contribution < 0)::bigint as lowers,
                   avg(churn_driver_1_contribution) filter (where churn_driver_1_contribution > 0) as mean_raising,
                   avg(churn_driver_1_contribution) filter (where churn_driver_1_contribution < 0) as mean_lowering
            from {relation}
            where churn_probability >= ? and churn_driver_1 is not null
            group by all order by customers desc, driver""", [at_least]).fetch_df()


def summarize(predictions: pd.DataFrame | str) -> dict:
    """The week's headline numbers and segment counts, computed by DuckDB (bounded memory)."""
    con, relation = _relation(predictions)
    with con:
        row = con.execute(f"""
            select count(*), count(distinct customer_id), avg(churn_probability),
                   quantile_cont(churn_probability, 0.9), count(distinct churn_probability),
                   count(*) filter (where churn_probability >= ?), avg(predicted_engagement_score),
                   quantile_cont(predicted_engagement_score, 0.1), quantile_cont(predicted_engagement_score, 0.9),
                   sum(predicted_lifetime_value_usd), count(*) filter (where is_anomaly), avg(is_anomaly::double),
                   count(*) filter (where churn_drivers_method = 'exact_treeshap')
            from {relation}""", [AT_RISK_CHURN_PROBABILITY]).fetchone()
        segments = con.execute(f"select segment, count(*)::bigint as customers from {relation} "
                               "group by all order by customers desc, segment").fetch_df()
    names = ("rows", "customers", "mean_churn_probability", "churn_probability_p90", "distinct_churn_probabilities",
             "at_risk_customers", "mean_predicted_engagement", "predicted_engagement_p10",
             "predicted_engagement_p90", "total_predicted_ltv_usd", "anomalies", "anomaly_share", "exact_driver_rows")
    return {**dict(zip(names, row, strict=True)), "segments": segments}


# ---------------------------------------------------------------------------------------------
# A week, shard by shard: bounded memory, one process per core


@dataclass(frozen=True)
class ServingModels:
    """The models that score a run, by version (picklable: each worker loads the same ones)."""
    store: Lake
    versions: dict[str, str]

    def load(self) -> dict[str, tuple[ModelKind | NaiveBaseline, str]]:
        from engagement_dagster.core.ml.registry import ModelRegistry

        registry = ModelRegistry(self.store)
        return {name: (registry.load_serving(name, version), version) for name, version in self.versions.items()}


@dataclass
class ShardResult:
    shard: int
    rows: int
    counts: CheckCounts
    path: str


def shard_path(spool: Path, shard: int) -> Path:
    return Path(spool) / f"shard={shard:02d}.parquet"


def score_shard(source: ShardSource, champions: dict, shard: int, shards: int, spool: Path,
                scored_at: pd.Timestamp) -> ShardResult:
    """Reads, scores and spools one shard; counts its checks against the rows it read."""
    frame = source.read(shard, shards)
    predictions = score(frame, champions)
    predictions["scored_at"] = scored_at  # one time for the whole stage: a shard's bytes do not depend on when
    counts = count_checks(predictions, frame["customer_id"])
    path = shard_path(spool, shard)
    predictions.to_parquet(path, index=False)
    return ShardResult(shard, len(predictions), counts, str(path))


_WORKER: dict = {}


def _start_worker(source: ShardSource, models: ServingModels) -> None:
    _WORKER.update(source=source, champions=models.load())


def _score_in_worker(shard: int, shards: int, spool: str, scored_at: pd.Timestamp) -> ShardResult:
    return score_shard(_WORKER["source"], _WORKER["champions"], shard, shards, Path(spool), scored_at)


def score_shards(source: ShardSource, models: ServingModels, shards: int, spool: Path, workers: int = 1,
                 scored_at: pd.Timestamp | None = None, champions: dict | None = None,
                 only: Sequence[int] | None = None) -> list[ShardResult]:
    """Scores every shard (or the shards `only` names, of `shards`) into `spool`, one shard in memory per
    worker at a time. `workers` > 1: that many processes (spawned: a fresh interpreter each, one XGBoost
    thread each), each loading the models once. A shard's content depends on its customers, the models
    and `scored_at`, never on the worker count or on which other shards run beside it."""
    scored_at = scored_at if scored_at is not None else pd.Timestamp(dt.datetime.now(dt.UTC)).tz_localize(None)
    todo = list(range(shards)) if only is None else sorted(set(only))
    if any(not 0 <= shard < shards for shard in todo):
        raise ValueError(f"shards {todo} are not all among the {shards} shards")
    workers = max(1, min(workers, len(todo)))
    if workers == 1:
        champions = champions if champions is not None else models.load()
        return [score_shard(source, champions, shard, shards, spool, scored_at) for shard in todo]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # Set before the workers start (and read by the libraries as they load there): one thread each,
    # the processes share the cores.
    saved = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_start_worker, initargs=(source, models)) as pool:
            futures = [pool.submit(_score_in_worker, shard, shards, str(spool), scored_at) for shard in todo]
            return [future.result() for future in futures]
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def publish_shards(lake: Lake, week: str, results: list[ShardResult]) -> list[str]:
    """Publishes the spooled shards (each write atomic), then removes shards a previous run with more
    shards left."""
    uris = []
    for result in sorted(results, key=lambda r: r.shard):
        uris.append(lake.write_file(prediction_key(week, result.shard), Path(result.path)))
        faults.checkpoint("scoring")
    keep = {prediction_key(week, r.shard) for r in results}
    for key in lake.list_keys(f"{PREDICTIONS_PREFIX}/snapshot_week={week}/"):
        if key not in keep:
            lake.delete(key)
    return uris
