"""The scoring stage fanned out over machines (engagement_dagster/core/ml/fanout.py, issue 14): a plan,
groups of shards scored anywhere and retried alone, one publish that judges the blocking checks.

On a local lake and on S3 (moto): plan + every group + publish writes, byte for byte, what one machine
writes (`score_shards(..., workers=1)` + `publish_shards`) with the same scored_at; every customer is in
exactly one shard; a retried group leaves identical staged bytes; a rerun of the stage reuses the plan's
scored_at and writes identical shards; a missing (or stale) group, or a failing blocking check in one
group, makes publish refuse, name the shards and publish nothing. The CLI subcommands run without Dagster.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import textwrap
import uuid

import duckdb
import pandas as pd
import pytest

from engagement_dagster.core.ml import fanout, scoring
from engagement_dagster.core.ml.registry import Commit, GateDecision, ModelRegistry
from engagement_dagster.core.storage.lake import LocalStore, S3Store
from engagement_dagster.core.storage.shards import DuckDBShardSource, FrameShardSource, shard_of

WEEK = "2026-11-09"
ROWS = 1_500
ROWS_PER_SHARD = 300  # 5 shards
SHARDS_PER_TASK = 2  # groups [0, 1], [2, 3], [4]


@pytest.fixture(scope="module")
def frame(model_input):
    """1,500 customers of the 30,000-customer model-ready table: scoring them takes seconds."""
    return model_input[0].sort_values("customer_id").head(ROWS).reset_index(drop=True)


@pytest.fixture(scope="module")
def warehouse(frame, tmp_path_factory):
    """The model-ready table in a DuckDB file, as dbt leaves it."""
    path = tmp_path_factory.mktemp("fanout_warehouse") / "warehouse.duckdb"
    with duckdb.connect(str(path)) as con:
        con.register("frame", frame)
        con.execute("create table main.customer_model_input as select * from frame")
    return str(path)


def register(store, trained) -> dict[str, str]:
    """The six trained models registered and promoted in `store`'s registry; their versions."""
    registry, commit, versions = ModelRegistry(store), Commit(), {}
    for name, model in trained.items():
        versions[name] = registry.stage(model, {}, "card", hashlib.sha256(name.encode()).hexdigest(), commit)
        commit.promote(name, versions[name], GateDecision(True, "test", "m", 1.0, 0.0, None, 0.02))
    registry.commit(commit)
    return versions


def s3_store(prefix: str = "lake") -> S3Store:
    import boto3

    bucket = f"fanout-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return S3Store(bucket, prefix)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "lake")
    request.getfixturevalue("aws_endpoint")
    return s3_store()


def contents(store, prefix: str) -> dict[str, bytes]:
    return {key: store.read_bytes(key) for key in store.list_keys(prefix)}


def run_stage(store, source, week: str = WEEK) -> dict:
    document = fanout.plan(store, source, week, ROWS_PER_SHARD, SHARDS_PER_TASK)
    for group in range(len(document["groups"])):
        fanout.score_group(store, source, week, group, workers=1)
    return document


def test_check_counts_round_trip_through_standard_json():
    counts = scoring.CheckCounts(rows=3, customers_in_snapshot=3, repeated=1, examples={"repeated": ["c1"]},
                                 outside={"churn_probability": [0, math.inf, -math.inf],
                                          "predicted_engagement_score": [2, -0.5, 1.5]},
                                 nulls={"segment": 1}, absent=["scored_at"])
    text = json.dumps(fanout.counts_to_dict(counts), allow_nan=False)  # no Infinity: standard JSON
    assert fanout.counts_from_dict(json.loads(text)) == counts


def test_plan_groups_and_publish_write_what_one_machine_writes(store, warehouse, frame, trained, tmp_path):
    versions = register(store, trained)
    source = DuckDBShardSource(warehouse)
    document = fanout.plan(store, source, WEEK, ROWS_PER_SHARD, SHARDS_PER_TASK)
    assert document["versions"] == versions and document["rows"] == ROWS and document["shards"] == 5
    assert document["groups"] == [[0, 1], [2, 3], [4]]
    assert json.loads(store.read_bytes(fanout.items_key(WEEK))) == [
        {"week": WEEK, "group": 0, "shards": [0, 1]}, {"week": WEEK, "group": 1, "shards": [2, 3]},
        {"week": WEEK, "group": 2, "shards": [4]}]
    assert json.loads(store.read_bytes(fanout.plan_key(WEEK))) == document

    for group in range(3):
        staged = fanout.score_group(store, source, WEEK, group, workers=1)
        assert [r.shard for r in staged] == document["groups"][group]
    before = contents(store, fanout.staging_prefix(WEEK))
    assert len(before) == 10  # a Parquet file and its counts per shard
    # A retried group (Fargate lost the task, the Map runs it again) overwrites its own shards, same bytes.
    fanout.score_group(store, source, WEEK, 1, workers=1)
    assert contents(store, fanout.staging_prefix(WEEK)) == before

    registered = []
    outcomes = fanout.publish(store, WEEK, lambda *args: registered.append(args))
    assert [o.name for o in outcomes if o.passed] == ["one_row_per_customer", "probabilities_in_range",
                                                       "no_null_predictions"]
    assert f"each of the snapshot's {ROWS:,} customers once" in outcomes[0].description
    ((table, uri, schema, week),) = registered
    assert (table, uri, week) == (scoring.PREDICTIONS_TABLE, store.uri(scoring.PREDICTIONS_PREFIX), WEEK)
    assert schema.names == list(scoring.PREDICTION_COLUMNS)
    assert store.list_keys(fanout.staging_prefix(WEEK)) == []
    published = contents(store, f"predictions/snapshot_week={WEEK}/")
    assert sorted(published) == [scoring.prediction_key(WEEK, s) for s in range(5)]

    # One machine, same models and scored_at: the same files, byte for byte.
    reference, spool = LocalStore(tmp_path / "one_machine"), tmp_path / "spool"
    spool.mkdir()
    results = scoring.score_shards(source, scoring.ServingModels(store, versions), 5, spool, workers=1,
                                   scored_at=fanout.scored_at(document))
    scoring.publish_shards(reference, WEEK, results)
    assert contents(reference, "predictions/") == published

    # Every customer in exactly one shard, each shard its hash class.
    hashes = frame.set_index("customer_id")["customer_hash"]
    ids = []
    for shard in range(5):
        shard_ids = store.read_parquet(scoring.prediction_key(WEEK, shard))["customer_id"]
        assert (shard_of(hashes.loc[shard_ids], 5) == shard).all()
        ids += list(shard_ids)
    assert len(ids) == len(set(ids)) == ROWS and set(ids) == set(frame["customer_id"])

    # A publish retried after it finished (staging gone): the recorded outcomes, nothing written.
    again = fanout.publish(store, WEEK, lambda *args: registered.append(args))
    assert [(o.name, o.passed, o.description) for o in again] == [(o.name, o.passed, o.description) for o in outcomes]
    assert len(registered) == 1 and contents(store, f"predictions/snapshot_week={WEEK}/") == published


def test_a_rerun_of_the_stage_reuses_the_plan_and_writes_identical_shards(warehouse, frame, trained, tmp_path):
    store = LocalStore(tmp_path / "lake")
    register(store, trained)
    source = DuckDBShardSource(warehouse)
    first = run_stage(store, source)
    fanout.publish(store, WEEK)
    published = contents(store, "predictions/")

    # Same champions, same rows: the plan keeps its scored_at and id, whatever the grouping asked.
    regrouped = fanout.plan(store, source, WEEK, ROWS_PER_SHARD, shards_per_task=3)
    assert (regrouped["scored_at"], regrouped["plan_id"]) == (first["scored_at"], first["plan_id"])
    assert regrouped["groups"] == [[0, 1, 2], [3, 4]]
    for group in range(2):
        fanout.score_group(store, source, WEEK, group, workers=1)
    fanout.publish(store, WEEK)
    assert contents(store, "predictions/") == published

    # Other rows: a new plan (new scored_at), and staging scored for the old one is cleared.
    fanout.score_group(store, source, WEEK, 0, workers=1)
    assert store.list_keys(fanout.staging_prefix(WEEK))
    fewer = fanout.plan(store, FrameShardSource(frame.head(ROWS - 100)), WEEK, ROWS_PER_SHARD, SHARDS_PER_TASK)
    assert fewer["rows"] == ROWS - 100 and fewer["plan_id"] != first["plan_id"]
    assert pd.Timestamp(fewer["scored_at"]) > pd.Timestamp(first["scored_at"])
    assert store.list_keys(fanout.staging_prefix(WEEK)) == []


def test_publish_refuses_missing_or_stale_groups_naming_the_shards(warehouse, trained, tmp_path):
    store = LocalStore(tmp_path / "lake")
    register(store, trained)
    source = DuckDBShardSource(warehouse)
    fanout.plan(store, source, WEEK, ROWS_PER_SHARD, SHARDS_PER_TASK)
    with pytest.raises(fanout.FanOutRefused, match="no scoring plan for week 2026-11-16"):
        fanout.publish(store, "2026-11-16")
    with pytest.raises(fanout.FanOutRefused, match=r"has 3 groups \(0–2\), not group 3"):
        fanout.score_group(store, source, WEEK, 3, workers=1)
    fanout.score_group(store, source, WEEK, 0, workers=1)
    fanout.score_group(store, source, WEEK, 2, workers=1)
    with pytest.raises(fanout.FanOutRefused) as refused:
        fanout.publish(store, WEEK)
    message = str(refused.value)
    assert "shards 2, 3 (group 1) not staged" in message
    assert f"engagement-dagster score-group --week {WEEK} --group 1`" in message and "--group 0" not in message
    assert store.list_keys("predictions/") == []

    # A shard whose counts carry another plan's id is never published.
    fanout.score_group(store, source, WEEK, 1, workers=1)
    key = fanout.staged_counts_key(WEEK, 4)
    record = json.loads(store.read_bytes(key))
    store.write_bytes(key, json.dumps({**record, "plan_id": "0" * 16}).encode())
    with pytest.raises(fanout.FanOutRefused, match=r"shard 4 \(group 2\) staged for another plan.*--group 2`"):
        fanout.publish(store, WEEK)
    assert store.list_keys("predictions/") == []


def test_a_failing_check_in_one_group_makes_publish_refuse_and_publish_nothing(warehouse, trained, tmp_path,
                                                                              monkeypatch):
    store = LocalStore(tmp_path / "lake")
    register(store, trained)
    source = DuckDBShardSource(warehouse)
    run_stage(store, source)
    fanout.publish(store, WEEK)  # last good predictions of the week
    good = contents(store, "predictions/")

    fanout.plan(store, source, WEEK, ROWS_PER_SHARD, SHARDS_PER_TASK)
    fanout.score_group(store, source, WEEK, 0, workers=1)
    fanout.score_group(store, source, WEEK, 2, workers=1)
    real_score = scoring.score

    def broken(*args, **kwargs):
        out = real_score(*args, **kwargs)
        out.loc[out.index[:3], "churn_probability"] = 1.5
        return out

    with monkeypatch.context() as patch:
        patch.setattr(scoring, "score", broken)
        fanout.score_group(store, source, WEEK, 1, workers=1)
    registered = []
    with pytest.raises(fanout.ChecksFailed) as refused:
        fanout.publish(store, WEEK, lambda *args: registered.append(args))
    message = str(refused.value)
    assert "probabilities_in_range: churn_probability: 6 row(s) outside [0, 1] (observed 1.5 … 1.5)" in message
    assert "Failing: shards 2, 3 (group 1)." in message and "Nothing was published" in message
    assert [o.passed for o in refused.value.outcomes] == [True, False, True]
    assert contents(store, "predictions/") == good and registered == []
    assert len(store.list_keys(fanout.staging_prefix(WEEK))) == 10  # kept for inspection


CLI_SCRIPT = textwrap.dedent("""
    import json, sys
    from engagement_dagster.cli import main
    week = sys.argv[1]
    codes = [main(["scoring-plan", "--week", week, "--rows-per-shard", "300", "--shards-per-task", "2"])]
    codes += [main(["score-group", "--week", week, "--group", str(g), "--workers", "1"]) for g in range(3)]
    codes.append(main(["scoring-publish", "--week", week]))
    codes.append(main(["scoring-publish", "--week", "2026-11-16"]))
    loaded = sorted({m.split(".")[0] for m in sys.modules} & {"dagster", "dagster_dbt", "dagster_aws", "dbt"})
    print(json.dumps({"codes": codes, "loaded": loaded}))
""")


def test_the_cli_scores_a_local_week_without_dagster(warehouse, trained, tmp_path):
    lake = tmp_path / "lake"
    register(LocalStore(lake), trained)
    lake.joinpath("warehouse.duckdb").write_bytes(open(warehouse, "rb").read())
    env = {**os.environ, "ENGAGEMENT_ENV": "local", "ENGAGEMENT_LAKE_DIR": str(lake)}
    done = subprocess.run([sys.executable, "-c", CLI_SCRIPT, WEEK], capture_output=True, text=True, env=env,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert result == {"codes": [0, 0, 0, 0, 0, 1], "loaded": []}
    assert f"{ROWS:,} customers in 5 shards, 3 groups" in lines[0]
    assert lines[1].startswith(f"week {WEEK}, group 0: staged shards 0, 1")
    assert "published the predictions of week" in lines[4] and "probabilities_in_range" in lines[4]
    assert "scoring-publish refused: no scoring plan for week 2026-11-16" in done.stderr
    assert "engagement-dagster scoring-plan --week 2026-11-16" in done.stderr
    assert sorted(LocalStore(lake).list_keys("predictions/")) == [scoring.prediction_key(WEEK, s) for s in range(5)]


def test_on_aws_the_cli_reads_athena_and_publish_registers_the_glue_partition(aws_endpoint, frame, trained,
                                                                               monkeypatch):
    import boto3

    from engagement_dagster.core.storage.shards import AthenaShardSource

    store = s3_store(prefix="team/lake")
    settings = {"ENGAGEMENT_ENV": "aws", "ENGAGEMENT_LAKE_BUCKET": store.bucket, "ENGAGEMENT_LAKE_PREFIX": "team/lake",
                "ENGAGEMENT_GLUE_RAW_DATABASE": "engagement_lake", "ENGAGEMENT_GLUE_DATABASE": "engagement",
                "ENGAGEMENT_ATHENA_WORKGROUP": "engagement", "ENGAGEMENT_ATHENA_STAGING": "s3://results/athena/",
                "ENGAGEMENT_ATHENA_DATA": "s3://results/data/"}
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    assert fanout.source_from_environment() == AthenaShardSource(
        '"engagement"."customer_model_input"', "engagement", "s3://results/athena/")
    register(store, trained)
    run_stage(store, FrameShardSource(frame))  # Athena on moto runs no SQL: the same rows from a frame
    assert fanout.publish_main(["--week", WEEK]) == 0
    partition = boto3.client("glue").get_partition(DatabaseName="engagement_lake", TableName="customer_predictions",
                                                   PartitionValues=[WEEK])["Partition"]
    assert partition["StorageDescriptor"]["Location"] == (
        f"s3://{store.bucket}/team/lake/predictions/snapshot_week={WEEK}/")
    assert len(store.list_keys(f"predictions/snapshot_week={WEEK}/")) == 5
    assert pd.concat(store.read_parquet(k) for k in store.list_keys("predictions/"))["customer_id"].is_unique
