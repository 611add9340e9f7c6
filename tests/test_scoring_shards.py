"""Scoring a week shard by shard (issue 14): bounded memory, every customer exactly once whatever the
number of worker processes, identical shards from the serial and the parallel path, and a capped
training sample that keeps the same customers week after week."""

from __future__ import annotations

import hashlib
import weakref

import duckdb
import pandas as pd
import pytest

from engagement_dagster.core.ml import scoring
from engagement_dagster.core.ml.registry import Commit, GateDecision, ModelRegistry, data_fingerprint
from engagement_dagster.core.ml.training import sample_sql
from engagement_dagster.core.storage.lake import LocalStore
from engagement_dagster.core.storage.shards import DuckDBShardSource, FrameShardSource, shard_of

SCORED_AT = pd.Timestamp("2026-11-16 06:00:00")


@pytest.fixture(scope="module")
def registry_models(trained, tmp_path_factory):
    """The six trained models registered and promoted in a lake: what worker processes load."""
    store = LocalStore(tmp_path_factory.mktemp("shard_registry"))
    registry, commit = ModelRegistry(store), Commit()
    versions = {}
    for name, model in trained.items():
        versions[name] = registry.stage(model, {}, "card", hashlib.sha256(name.encode()).hexdigest(), commit)
        commit.promote(name, versions[name], GateDecision(True, "test", "m", 1.0, 0.0, None, 0.02))
    registry.commit(commit)
    return scoring.ServingModels(store, versions)


@pytest.fixture(scope="module")
def warehouse_file(model_input, tmp_path_factory):
    """The 30,000-customer model-ready table in a DuckDB file, as dbt leaves it."""
    path = tmp_path_factory.mktemp("shard_warehouse") / "warehouse.duckdb"
    frame = model_input[0]
    with duckdb.connect(str(path)) as con:
        con.register("frame", frame)
        con.execute("create table main.customer_model_input as select * from frame")
    return str(path)


class RecordingSource(FrameShardSource):
    """Counts what scoring holds: the size of each shard read and how many earlier shards are still
    alive (referenced) when the next one is read."""

    def __init__(self, frame: pd.DataFrame):
        object.__setattr__(self, "frame", frame)
        object.__setattr__(self, "sizes", [])
        object.__setattr__(self, "alive_at_read", [])
        object.__setattr__(self, "alive", set())

    def read(self, shard: int, shards: int) -> pd.DataFrame:
        self.alive_at_read.append(len(self.alive))
        part = super().read(shard, shards)
        self.sizes.append(len(part))
        self.alive.add(shard)
        weakref.finalize(part, self.alive.discard, shard)
        return part


def test_a_week_many_shards_large_is_scored_one_shard_at_a_time(model_input, registry_models, tmp_path):
    frame = model_input[0]
    shards = scoring.shard_count(len(frame), 4_000)  # 8 shards: the week is 8 × what one read holds
    source = RecordingSource(frame)
    results = scoring.score_shards(source, registry_models, shards, tmp_path, workers=1, scored_at=SCORED_AT)
    assert len(source.sizes) == shards and sum(source.sizes) == len(frame)
    assert max(source.sizes) <= 1.2 * len(frame) / shards  # a shard, never the week
    assert max(source.alive_at_read) == 0  # each shard let go before the next is read
    assert sum(r.rows for r in results) == len(frame)
    assert all(o.passed for o in scoring.judge(sum((r.counts for r in results), scoring.CheckCounts())))


@pytest.mark.parametrize("workers", [1, 2])
def test_shards_hold_every_customer_once_whatever_the_worker_count(warehouse_file, model_input, registry_models,
                                                                   tmp_path, workers):
    frame = model_input[0]
    results = scoring.score_shards(DuckDBShardSource(warehouse_file), registry_models, 5, tmp_path,
                                   workers=workers, scored_at=SCORED_AT)
    ids = pd.concat([pd.read_parquet(r.path, columns=["customer_id"])["customer_id"] for r in results])
    assert ids.is_unique and set(ids) == set(frame["customer_id"])
    for result in results:  # each shard is its hash class
        hashes = frame.set_index("customer_id").loc[pd.read_parquet(result.path)["customer_id"], "customer_hash"]
        assert (shard_of(hashes, 5) == result.shard).all()


def test_the_parallel_path_writes_the_serial_paths_shards_byte_for_byte(warehouse_file, registry_models,
                                                                      tmp_path):
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    serial.mkdir(), parallel.mkdir()
    source = DuckDBShardSource(warehouse_file)
    one = scoring.score_shards(source, registry_models, 4, serial, workers=1, scored_at=SCORED_AT)
    two = scoring.score_shards(source, registry_models, 4, parallel, workers=2, scored_at=SCORED_AT)
    for a, b in zip(one, two, strict=True):
        assert (a.shard, a.rows) == (b.shard, b.rows)
        assert open(a.path, "rb").read() == open(b.path, "rb").read(), a.shard
    summary = scoring.summarize(f"{serial}/*.parquet")
    assert summary["rows"] == summary["customers"] == sum(r.rows for r in one)
    assert 0 < summary["at_risk_customers"] < summary["rows"]
    assert summary["exact_driver_rows"] == summary["at_risk_customers"]  # exact TreeSHAP on the at-risk rows only


def test_publishing_fewer_shards_removes_the_stale_ones(warehouse_file, registry_models, tmp_path):
    lake = LocalStore(tmp_path / "lake")
    for shards in (4, 2):
        spool = tmp_path / f"spool{shards}"
        spool.mkdir()
        results = scoring.score_shards(DuckDBShardSource(warehouse_file), registry_models, shards, spool)
        scoring.publish_shards(lake, "2026-11-09", results)
        assert lake.list_keys("predictions/snapshot_week=2026-11-09/") == [
            scoring.prediction_key("2026-11-09", s) for s in range(shards)]


def test_the_capped_training_sample_keeps_the_same_customers_across_weeks(model_input):
    frame, roles, _ = model_input
    # Next week: the same customers with other feature values, stored in another order.
    next_week = frame.sample(frac=1, random_state=7).reset_index(drop=True)
    next_week["tenure_months"] = next_week["tenure_months"] + 1
    con = duckdb.connect()
    sampled = []
    for week in (frame, next_week):
        con.register("week", week)
        rows = con.execute(sample_sql("week", roles, max_training_rows=2_000, max_test_rows=500)).fetch_df()
        sampled.append(rows)
        counts = rows[roles.split].value_counts()
        assert (counts["train"], counts["valid"], counts["test"]) == (2_000, 429, 500)
        train = rows[rows[roles.split] == "train"]
        everyone = week[week[roles.split] == "train"]
        assert train[roles.key].max() < everyone[roles.key].nsmallest(2_001).iloc[-1]  # the smallest hashes
    assert set(sampled[0]["customer_id"]) == set(sampled[1]["customer_id"])
    assert data_fingerprint(sampled[0][["customer_id"]].sort_values("customer_id", ignore_index=True)) == \
        data_fingerprint(sampled[1][["customer_id"]].sort_values("customer_id", ignore_index=True))
