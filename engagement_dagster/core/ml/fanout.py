"""A week's scoring fanned out over machines: plan once, score groups of shards anywhere, publish once.

The Step Functions export runs the scoring stage as three steps (deploy/step_functions/, see
`engagement_dagster.export.step_functions`): a task running `plan`, a Distributed Map with one Fargate
task per group of shards running `score_group`, and a task running `publish`. The shard is the unit
(the customers in a range of `customer_hash`, `core.storage.shards`), and
a shard's bytes depend only on its customers, the models and `scored_at` (`scoring.score_shards`),
never on which machine, group or attempt scored it. So a failed group is retried alone, and a rerun
of the stage writes identical shards.

Lake layout (beside `predictions/`):

    scoring/plans/snapshot_week=W/plan.json        what every task scores with (below)
    scoring/plans/snapshot_week=W/items.json       the Map's items: [{"week", "group", "shards"}, …]
    scoring/plans/snapshot_week=W/published.json   the plan last published, and its check outcomes
    scoring/staging/snapshot_week=W/shard=NN.parquet      a scored shard, not yet published
    scoring/staging/snapshot_week=W/shard=NN.counts.json  its check counts, under the plan's id

`plan` pins the champion versions (each model's `ModelRegistry.serving` version, "baseline" while it
has none), the row count, the shard count, one `scored_at` for the whole stage and the groups of
shard ids. It writes items.json, then plan.json: plan.json is what the other steps read, so a plan
killed between the two writes is simply rerun. The plan's id is a hash of what a shard's bytes depend
on (week, versions, rows, shard count, scored_at), not of the grouping.

A rerun writes identical shards: `plan` for a week that already has a plan with the same champion
versions and the same row count keeps that plan's `scored_at` (and so its id), whatever the grouping
asked this time; any other change starts a new `scored_at` and clears the week's staging, whose shards
were scored for another plan. (The row count stands for the data: a week re-ingested with different
rows but as many customers keeps its `scored_at`; its shards change with its rows, as they must.)

`score_group` scores one group's shards with the plan's versions and `scored_at` (`score_shards(...,
only=...)`, in a temporary spool, one process per core), then uploads each shard's Parquet and, last,
its counts (`CheckCounts` as JSON, tagged with the plan's id): a shard counts as staged once its counts
are there. A retried group overwrites its own shards with the same bytes and touches no other.

`publish` reads every shard's counts from staging and refuses, publishing nothing, when a shard of the
plan is missing or was staged for another plan (naming the shards and their groups), or when the
summed counts fail a blocking check (`scoring.judge`, as the Dagster asset judges them, naming the
failing shards). Otherwise it holds the lake's writer lease while it copies the staged shards to
`predictions/snapshot_week=W/shard=NN.parquet` (each copy atomic, extra old shards removed),
registers the catalog partition, records published.json and deletes the staging prefix. A publish
retried after it finished (staging already gone, published.json naming the current plan) returns the
recorded outcomes and writes nothing.

The groups write only their own staging keys, so they run without the writer lease (a lease admits
one writer; the Map runs many); `plan` and `publish`, which write what readers read, hold it.

Plain Python, no Dagster. The `*_main` functions are the CLI subcommands `scoring-plan`,
`score-group` and `scoring-publish` (`engagement_dagster.cli`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from engagement_dagster.core.ml import scoring
from engagement_dagster.core.ml.scoring import CheckCounts, CheckOutcome, ShardResult
from engagement_dagster.core.storage.lake import LocalStore, S3Store, Store
from engagement_dagster.core.storage.lease import writer_lease
from engagement_dagster.core.storage.shards import ShardSource

PLANS_PREFIX = "scoring/plans"
STAGING_PREFIX = "scoring/staging"
SHARDS_PER_TASK = 8  # 8 × 50,000 customers per Fargate task: a few minutes on 4 vCPU

CatalogRegister = Callable[[str, str, pa.Schema, str], None]  # (table, table_uri, schema, week)


class FanOutRefused(RuntimeError):
    """A step of the fanned-out scoring refused to go on; the message says what, which shards, what to do."""


class ChecksFailed(FanOutRefused):
    """The week's predictions fail a blocking check: nothing was published."""

    def __init__(self, message: str, outcomes: list[CheckOutcome]):
        super().__init__(message)
        self.outcomes = outcomes


# ---------------------------------------------------------------------------------------------
# Keys


def plan_key(week: str) -> str:
    return f"{PLANS_PREFIX}/snapshot_week={week}/plan.json"


def items_key(week: str) -> str:
    """What the state machine's ItemReader reads (the export builds the same key)."""
    return f"{PLANS_PREFIX}/snapshot_week={week}/items.json"


def published_key(week: str) -> str:
    return f"{PLANS_PREFIX}/snapshot_week={week}/published.json"


def staging_prefix(week: str) -> str:
    return f"{STAGING_PREFIX}/snapshot_week={week}/"


def staged_shard_key(week: str, shard: int) -> str:
    return f"{staging_prefix(week)}shard={shard:02d}.parquet"


def staged_counts_key(week: str, shard: int) -> str:
    return f"{staging_prefix(week)}shard={shard:02d}.counts.json"


# ---------------------------------------------------------------------------------------------
# CheckCounts as JSON


def _plain(value):
    """JSON-able: numpy scalars as Python ones (customer ids may be numpy strings or integers)."""
    return value.item() if isinstance(value, np.generic) else value


def counts_to_dict(counts: CheckCounts) -> dict:
    """A `CheckCounts` as plain JSON; an empty probability range (no row outside, min inf, max -inf)
    is written as nulls, so the text is standard JSON."""
    return {
        "rows": counts.rows, "customers_in_snapshot": counts.customers_in_snapshot, "repeated": counts.repeated,
        "missing": counts.missing, "extra": counts.extra,
        "examples": {key: [_plain(v) for v in ids] for key, ids in counts.examples.items()},
        "outside": {column: [int(n), None if math.isinf(low) else float(low), None if math.isinf(high) else float(high)]
                    for column, (n, low, high) in counts.outside.items()},
        "nulls": {column: int(n) for column, n in counts.nulls.items()},
        "absent": list(counts.absent),
    }


def counts_from_dict(data: dict) -> CheckCounts:
    return CheckCounts(
        rows=data["rows"], customers_in_snapshot=data["customers_in_snapshot"], repeated=data["repeated"],
        missing=data["missing"], extra=data["extra"], examples={k: list(v) for k, v in data["examples"].items()},
        outside={column: [n, math.inf if low is None else low, -math.inf if high is None else high]
                 for column, (n, low, high) in data["outside"].items()},
        nulls=dict(data["nulls"]), absent=list(data["absent"]))


def _outcome_to_dict(outcome: CheckOutcome) -> dict:
    return {"name": outcome.name, "passed": outcome.passed, "description": outcome.description,
            "metadata": {k: _plain(v) for k, v in outcome.metadata.items()}}


def _json_bytes(document) -> bytes:
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


# ---------------------------------------------------------------------------------------------
# The plan


def champion_versions(store: Store) -> dict[str, str]:
    """The version that serves each model now: its champion's, or "baseline" (its naive baseline)."""
    from engagement_dagster.core.ml.registry import ModelRegistry
    from engagement_dagster.core.ml.training import MODEL_KINDS

    registry = ModelRegistry(store)
    return {name: registry.serving(name)[1] for name in MODEL_KINDS}


def _now() -> str:
    # As `score_shards` stamps a run of the Dagster asset: UTC, naive, microseconds.
    return pd.Timestamp(dt.datetime.now(dt.UTC)).tz_localize(None).isoformat()


def plan_id(plan: dict) -> str:
    """What a shard's bytes depend on, hashed: the week, the versions, the rows, the shard count and
    scored_at (not the grouping)."""
    identity = {key: plan[key] for key in ("week", "versions", "rows", "shards", "scored_at")}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def scored_at(plan: dict) -> pd.Timestamp:
    return pd.Timestamp(plan["scored_at"]).as_unit("us")


def read_plan(store: Store, week: str) -> dict:
    if not store.exists(plan_key(week)):
        raise FanOutRefused(f"no scoring plan for week {week} ({store.uri(plan_key(week))}): run "
                            f"`engagement-dagster scoring-plan --week {week}` first.")
    return json.loads(store.read_bytes(plan_key(week)))


def _previous_plan(store: Store, week: str) -> dict | None:
    return json.loads(store.read_bytes(plan_key(week))) if store.exists(plan_key(week)) else None


def plan(store: Store, source: ShardSource, week: str, rows_per_shard: int = scoring.ROWS_PER_SHARD,
         shards_per_task: int = SHARDS_PER_TASK) -> dict:
    """Pins what every task of the week's scoring scores with and writes it (items.json, then
    plan.json); returns the plan. See the module docstring for when `scored_at` is kept."""
    if rows_per_shard < 1 or shards_per_task < 1:
        raise ValueError("rows_per_shard and shards_per_task must be at least 1")
    versions = champion_versions(store)
    rows = int(source.count())
    shards = scoring.shard_count(rows, rows_per_shard)
    with writer_lease(store, f"scoring-plan for week {week}"):
        previous = _previous_plan(store, week)
        keep = previous is not None and previous["versions"] == versions and previous["rows"] == rows
        document = {
            "week": week, "versions": versions, "rows": rows, "rows_per_shard": rows_per_shard, "shards": shards,
            "shards_per_task": shards_per_task,
            "groups": [list(range(first, min(first + shards_per_task, shards)))
                       for first in range(0, shards, shards_per_task)],
            "scored_at": previous["scored_at"] if keep else _now(),
        }
        document["plan_id"] = plan_id(document)
        if previous is not None and previous.get("plan_id") != document["plan_id"]:
            for key in store.list_keys(staging_prefix(week)):  # scored for another plan: never publishable
                store.delete(key)
        items = [{"week": week, "group": index, "shards": group} for index, group in enumerate(document["groups"])]
        store.write_bytes(items_key(week), _json_bytes(items))
        store.write_bytes(plan_key(week), _json_bytes(document))  # last: the commit point
    return document


# ---------------------------------------------------------------------------------------------
# One group


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def score_group(store: Store, source: ShardSource, week: str, group: int,
                workers: int | None = None) -> list[ShardResult]:
    """Scores the plan's group `group` and stages its shards (Parquet, then counts); returns them
    with `path` the staged Parquet's URI. `workers`: processes, default one per core."""
    document = read_plan(store, week)
    groups = document["groups"]
    if not 0 <= group < len(groups):
        raise FanOutRefused(f"the scoring plan for week {week} has {_count(len(groups), 'group')} "
                            f"(0–{len(groups) - 1}), not group {group}: run the groups of "
                            f"{store.uri(items_key(week))}, or plan again.")
    shards = groups[group]
    models = scoring.ServingModels(store, document["versions"])
    staged = []
    with tempfile.TemporaryDirectory(prefix="engagement-score-group-") as spool:
        results = scoring.score_shards(source, models, document["shards"], Path(spool),
                                       workers=default_workers() if workers is None else workers,
                                       scored_at=scored_at(document), only=shards)
        for result in results:
            uri = store.write_file(staged_shard_key(week, result.shard), Path(result.path))
            store.write_bytes(staged_counts_key(week, result.shard), _json_bytes({
                "plan_id": document["plan_id"], "week": week, "group": group, "shard": result.shard,
                "rows": result.rows, "counts": counts_to_dict(result.counts)}))
            staged.append(ShardResult(result.shard, result.rows, result.counts, uri))
    return staged


# ---------------------------------------------------------------------------------------------
# Publishing


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _group_of(document: dict) -> dict[int, int]:
    return {shard: index for index, group in enumerate(document["groups"]) for shard in group}


def _shard_list(shards: Sequence[int], group_of: dict[int, int]) -> str:
    groups = sorted({group_of[s] for s in shards})
    return (f"shard{'s' if len(shards) > 1 else ''} {', '.join(str(s) for s in shards)} "
            f"(group{'s' if len(groups) > 1 else ''} {', '.join(str(g) for g in groups)})")


def _copy(store: Store, source_key: str, target_key: str) -> str:
    """An atomic copy inside the lake: server-side on S3, by file rename locally."""
    if isinstance(store, S3Store):
        client = store._client()
        client.copy({"Bucket": store.bucket, "Key": store._key(source_key)}, store.bucket, store._key(target_key))
        return store.uri(target_key)
    if isinstance(store, LocalStore):
        return store.write_file(target_key, Path(store.uri(source_key)))
    with tempfile.NamedTemporaryFile(suffix=".parquet") as handle:
        handle.write(store.read_bytes(source_key))
        handle.flush()
        return store.write_file(target_key, Path(handle.name))


def publish(store: Store, week: str, catalog_register: CatalogRegister | None = None) -> list[CheckOutcome]:
    """Judges the staged shards of the week's plan and publishes them, or refuses and publishes
    nothing (`FanOutRefused`, `ChecksFailed`). Returns the three blocking checks' outcomes."""
    document = read_plan(store, week)
    shards, group_of, current = document["shards"], _group_of(document), document["plan_id"]
    staged_keys = set(store.list_keys(staging_prefix(week)))
    if not staged_keys and store.exists(published_key(week)):
        record = json.loads(store.read_bytes(published_key(week)))
        if record["plan_id"] == current:  # a retried publish that had finished: nothing left to do
            return [CheckOutcome(**outcome) for outcome in record["outcomes"]]

    per_shard: dict[int, CheckCounts] = {}
    missing, stale = [], []
    for shard in range(shards):
        counts_key = staged_counts_key(week, shard)
        if counts_key not in staged_keys or staged_shard_key(week, shard) not in staged_keys:
            missing.append(shard)
            continue
        record = json.loads(store.read_bytes(counts_key))
        if record["plan_id"] != current:
            stale.append(shard)
            continue
        per_shard[shard] = counts_from_dict(record["counts"])
    if missing or stale:
        problems = ([f"{_shard_list(missing, group_of)} not staged"] if missing else []) + (
            [f"{_shard_list(stale, group_of)} staged for another plan"] if stale else [])
        groups = sorted({group_of[s] for s in missing + stale})
        raise FanOutRefused(
            f"predictions for week {week} not published: {'; '.join(problems)}. Run "
            + ", ".join(f"`engagement-dagster score-group --week {week} --group {g}`" for g in groups)
            + f", then `engagement-dagster scoring-publish --week {week}` again. Nothing was published.")

    counts = sum((per_shard[s] for s in range(shards)), CheckCounts())
    if counts.customers_in_snapshot < document["rows"]:  # rows no shard read (a customer without a hash)
        counts.missing += document["rows"] - counts.customers_in_snapshot
        counts.customers_in_snapshot = document["rows"]
    outcomes = scoring.judge(counts)
    failed = [o for o in outcomes if not o.passed]
    if failed:
        failing = [s for s in range(shards) if not all(o.passed for o in scoring.judge(per_shard[s]))]
        where = f" Failing: {_shard_list(failing, group_of)}." if failing else ""
        raise ChecksFailed(
            f"predictions for week {week} not published: " + "; ".join(f"{o.name}: {o.description}" for o in failed)
            + f".{where} Nothing was published (the week's previous predictions, if any, are unchanged); the "
            f"staged shards stay under {store.uri(staging_prefix(week))} for inspection. Fix the cause, then "
            f"rerun the scoring stage (scoring-plan, score-group for every group, scoring-publish).", outcomes)

    with writer_lease(store, f"scoring-publish for week {week}"):
        for shard in range(shards):
            _copy(store, staged_shard_key(week, shard), scoring.prediction_key(week, shard))
        keep = {scoring.prediction_key(week, s) for s in range(shards)}
        for key in store.list_keys(f"{scoring.PREDICTIONS_PREFIX}/snapshot_week={week}/"):
            if key not in keep:
                store.delete(key)
        if catalog_register is not None:
            schema = pq.read_schema(io.BytesIO(store.read_bytes(scoring.prediction_key(week, 0))))
            catalog_register(scoring.PREDICTIONS_TABLE, store.uri(scoring.PREDICTIONS_PREFIX), schema, week)
        store.write_bytes(published_key(week), _json_bytes({
            "plan_id": current, "week": week, "shards": shards,
            "outcomes": [_outcome_to_dict(o) for o in outcomes]}))
        for key in store.list_keys(staging_prefix(week)):
            store.delete(key)
    return outcomes


# ---------------------------------------------------------------------------------------------
# From the environment, and the command line


def source_from_environment() -> ShardSource:
    """The model-ready table, read a shard at a time: the local DuckDB warehouse, or Athena on AWS
    (the Glue database dbt builds in), as the Dagster warehouse resources read it."""
    from engagement_dagster.core import settings
    from engagement_dagster.core.ml.feature_roles import MODEL_INPUT
    from engagement_dagster.core.storage.shards import AthenaShardSource, DuckDBShardSource

    if settings.environment() == "aws":
        aws = settings.aws_settings()
        return AthenaShardSource(f'"{aws["ENGAGEMENT_GLUE_DATABASE"]}"."{MODEL_INPUT}"',
                                 aws["ENGAGEMENT_ATHENA_WORKGROUP"], aws["ENGAGEMENT_ATHENA_STAGING"])
    return DuckDBShardSource(str(settings.warehouse_path()), f'"main"."{MODEL_INPUT}"')


def catalog_from_environment() -> CatalogRegister | None:
    """On AWS, the Glue partition of the predictions table (what Athena and the marts read); locally
    nothing (dbt-duckdb reads the files by path)."""
    from engagement_dagster.core import settings

    if settings.environment() != "aws":
        return None
    from engagement_dagster.core.storage.catalog import GlueTables

    return GlueTables(settings.aws_settings()["ENGAGEMENT_GLUE_RAW_DATABASE"]).register_partition


def _week(text: str) -> str:
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _run(command: str, body: Callable[[], str]) -> int:
    from engagement_dagster.core.settings import MissingSettings
    from engagement_dagster.core.storage.lease import LakeBusy

    try:
        print(body())
    except (FanOutRefused, MissingSettings, LakeBusy) as error:
        print(f"{command} refused: {error}", file=sys.stderr)
        return 1
    return 0


def plan_main(argv: Sequence[str] | None = None) -> int:
    """`engagement-dagster scoring-plan --week W [--rows-per-shard N] [--shards-per-task K]`."""
    parser = argparse.ArgumentParser(prog="engagement-dagster scoring-plan",
                                     description="Pin the week's scoring (champion versions, shards, groups, "
                                                 "scored_at) and write the Map's items to the lake.")
    parser.add_argument("--week", required=True, type=_week, help="snapshot week, YYYY-MM-DD")
    parser.add_argument("--rows-per-shard", type=int, default=scoring.ROWS_PER_SHARD)
    parser.add_argument("--shards-per-task", type=int, default=SHARDS_PER_TASK)
    args = parser.parse_args(argv)

    def body() -> str:
        from engagement_dagster.core.storage.lake import open_store

        store = open_store()
        document = plan(store, source_from_environment(), args.week, args.rows_per_shard, args.shards_per_task)
        return (f"scoring plan {document['plan_id']} for week {args.week}: {_count(document['rows'], 'customer')} in "
                f"{_count(document['shards'], 'shard')}, {_count(len(document['groups']), 'group')}, scored_at "
                f"{document['scored_at']}; items at {store.uri(items_key(args.week))}")

    return _run("scoring-plan", body)


def score_group_main(argv: Sequence[str] | None = None) -> int:
    """`engagement-dagster score-group --week W --group I [--workers N]`."""
    parser = argparse.ArgumentParser(prog="engagement-dagster score-group",
                                     description="Score one group of the week's plan and stage its shards.")
    parser.add_argument("--week", required=True, type=_week, help="snapshot week, YYYY-MM-DD")
    parser.add_argument("--group", required=True, type=int, help="the group's index in the plan")
    parser.add_argument("--workers", type=int, default=0, help="scoring processes (default 0: one per core)")
    args = parser.parse_args(argv)

    def body() -> str:
        from engagement_dagster.core.storage.lake import open_store

        results = score_group(open_store(), source_from_environment(), args.week, args.group, args.workers or None)
        return (f"week {args.week}, group {args.group}: staged shards {', '.join(str(r.shard) for r in results)} "
                f"({sum(r.rows for r in results):,} rows)")

    return _run("score-group", body)


def publish_main(argv: Sequence[str] | None = None) -> int:
    """`engagement-dagster scoring-publish --week W`."""
    parser = argparse.ArgumentParser(prog="engagement-dagster scoring-publish",
                                     description="Check the staged shards of the week's plan and publish them.")
    parser.add_argument("--week", required=True, type=_week, help="snapshot week, YYYY-MM-DD")
    args = parser.parse_args(argv)

    def body() -> str:
        from engagement_dagster.core.storage.lake import open_store

        store = open_store()
        outcomes = publish(store, args.week, catalog_from_environment())
        return (f"published the predictions of week {args.week} at "
                f"{store.uri(f'{scoring.PREDICTIONS_PREFIX}/snapshot_week={args.week}/')}: "
                + "; ".join(f"{o.name}: {o.description}" for o in outcomes))

    return _run("scoring-publish", body)
