"""The measuring parts of `make bench` and the learning-curve tool: the process-tree RSS sampler on a
real process tree, the scaling table and its growth exponents, and which customers a learning-curve
sample holds. No timings are asserted."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import time

import duckdb
import numpy as np
import pandas as pd
import psutil
import pytest

from engagement_dagster import bench
from engagement_dagster import bench_learning_curve as lc
from engagement_dagster.core.ml.feature_roles import FeatureRoles

MIB = 2**20

# The parent allocates nothing; its child holds ALLOCATED bytes (touched, so resident) until stdin closes.
ALLOCATED = 200 * MIB
CHILD = f"import sys; b = b'\\x01' * {ALLOCATED}; print('ready', flush=True); sys.stdin.read()"
PARENT = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {CHILD!r}])"


def test_the_sampler_counts_memory_held_by_a_descendant():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        with bench.TreeRssSampler(parent.pid, interval=0.02) as sampler:
            assert parent.stdout.readline().strip() == "ready"  # the child's allocation is resident now
            root = psutil.Process(parent.pid)
            assert root.memory_info().rss < ALLOCATED  # so only counting the child can reach it
            assert bench.tree_rss_bytes(root) >= ALLOCATED
            seen = sampler.samples
            deadline = time.monotonic() + 60
            while sampler.samples < seen + 2 and time.monotonic() < deadline:  # two samples while it is held
                time.sleep(0.01)
            parent.stdin.close()
            assert parent.wait(timeout=60) == 0
        assert sampler.samples >= seen + 2
        assert sampler.peak_bytes >= ALLOCATED
        assert sampler.peak_descendants_bytes >= ALLOCATED and sampler.max_processes >= 2
    finally:
        parent.kill()


def test_the_sampler_stops_on_its_own_once_the_tree_has_exited():
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    sampler = bench.TreeRssSampler(done.pid, interval=0.01).start()
    done.wait()
    sampler.stop()
    assert bench.tree_rss_bytes(sampler.root) == 0
    assert sampler.samples >= 1


@pytest.mark.parametrize(("n1", "t1", "n2", "t2", "expected"), [
    (100_000, 10.0, 1_000_000, 100.0, 1.0),  # linear
    (100_000, 10.0, 1_000_000, 10.0, 0.0),  # constant
    (100, 1.0, 10_000, 10.0, 0.5),
    (1_000_000, 2.0, 10_000_000, 200.0, 2.0),
])
def test_growth_exponent(n1, t1, n2, t2, expected):
    assert bench.growth_exponent(n1, t1, n2, t2) == pytest.approx(expected)


@pytest.mark.parametrize(("n1", "t1", "n2", "t2"), [
    (100, 0.0, 1000, 1.0), (100, float("nan"), 1000, 1.0), (100, 1.0, 100, 2.0), (100, 1.0, 1000, -1.0)])
def test_growth_exponent_is_undefined_without_two_positive_times_at_two_sizes(n1, t1, n2, t2):
    assert bench.growth_exponent(n1, t1, n2, t2) is None


def _runs(customers: int, walls: list[float]) -> list[dict]:
    """Timings files as `engagement-dagster run --timings-json` writes them, every stage scaled with size."""
    scale = customers / 100_000
    runs = []
    for i, wall in enumerate(walls):
        steps = {step: scale * (k + 1) for k, step in enumerate(bench.STAGES)}
        steps["ingest__raw_customers"] = 1.0 * scale
        steps["dbt_features"] = 5.0  # start-up bound: does not grow
        steps.pop("knowledge_base__kb_index")  # a stage that did not run
        runs.append({"steps": steps, "job_seconds": wall - 5, "wall_seconds": wall,
                     "peak_rss_mib": 1000.0 + i, "tree_peak_rss_mib": 1500.0 * scale + i})
    return runs


def test_summarize_takes_median_times_and_largest_peaks():
    summary = bench.summarize(_runs(100_000, [30.0, 40.0, 35.0]))
    assert summary["wall_seconds"] == 35.0 and summary["job_seconds"] == 30.0
    assert summary["outside_job_seconds"] == 5.0
    assert summary["peak_rss_mib"] == 1002.0 and summary["tree_peak_rss_mib"] == 1502.0
    assert math.isnan(summary["steps"]["knowledge_base__kb_index"])


def test_the_100k_report_keeps_its_table_and_adds_the_tree_peak():
    text = bench.report(100_000, _runs(100_000, [30.0, 40.0, 35.0]))
    lines = text.splitlines()
    assert lines[0] == "## 100,000 customers — median of 3 run(s)"
    assert lines[2:4] == ["| stage | seconds |", "|---|---|"]
    assert "| ingest (generate + validate + write) | 1.0 |" in lines
    assert "| **total wall, cold start included** | **35.0** |" in lines
    assert "all runs (wall s): 30.0, 40.0, 35.0; peak RSS of the Python process: 1,002 MiB" in text
    assert "of the whole process tree" in lines[-1] and lines[-1].endswith("1,502 MiB")


def test_the_scaling_table_has_a_column_per_size_and_the_exponent_of_the_two_largest():
    summaries = {n: bench.summarize(_runs(n, [10.0 * n / 100_000])) for n in (1_000_000, 100_000, 3_000_000)}
    text = bench.scaling_table(summaries, repeat=1)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| stage"))
    assert header == "| stage | 100,000 | 1,000,000 | 3,000,000 | growth exponent 1,000,000 → 3,000,000 |"
    row = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ")}
    assert row["ingest (generate + validate + write)"].endswith(" | 1.0 | 10.0 | 30.0 | 1.00 |")
    assert row["dbt features (+ tests)"].endswith("| 5.0 | 5.0 | 5.0 | 0.00 |")
    assert row["knowledge-base index (chunks, BM25, embeddings)"].endswith("| – | – | – | – |")
    assert row["peak RSS, whole process tree (MiB)"].endswith("| 1,500 | 15,000 | 45,000 | 1.00 |")
    assert "peak RSS, CLI process alone (MiB)" in row
    exponents = bench.scaling_exponents(summaries)
    assert exponents["total wall, cold start included"] == pytest.approx(1.0)
    assert exponents["knowledge-base index (chunks, BM25, embeddings)"] is None


def test_a_tiny_negative_exponent_prints_as_zero():
    assert bench._fmt("{:.2f}", -0.00004) == "0.00"
    assert bench._fmt("{:.2f}", -0.5) == "-0.50"
    assert bench._fmt("{:,.0f}", float("nan")) == "–"


def test_one_size_gives_no_exponent_column():
    text = bench.scaling_table({100_000: bench.summarize(_runs(100_000, [30.0]))}, repeat=1)
    assert "growth exponent" not in text
    assert bench.scaling_exponents({100_000: bench.summarize(_runs(100_000, [30.0]))}) == {}


def test_the_scaling_plot_is_a_png(tmp_path):
    summaries = {n: bench.summarize(_runs(n, [10.0 * n / 100_000])) for n in (100_000, 1_000_000)}
    path = bench.plot_scaling(summaries, tmp_path / "img" / "scaling.png", "2 cores")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- learning curve -----------------------------------------------------------------------------

ROLES = FeatureRoles(id="customer_id", features=("f1", "f2"), categoricals=("cat",),
                     targets=("engagement_score", "churn_30_day"), protected=(), split="split")


def _customers(n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    ids = [f"c-{i:05d}" for i in range(n)]
    f1, f2 = rng.normal(size=n), rng.normal(size=n)
    split = np.select([np.arange(n) % 20 < 14, np.arange(n) % 20 < 17], ["train", "valid"], "test")
    return pd.DataFrame({"customer_id": ids, "f1": f1, "f2": f2, "cat": np.where(f2 > 0, "a", "b"),
                         "engagement_score": 2 * f1 + rng.normal(scale=0.3, size=n),
                         "churn_30_day": (f1 + rng.normal(scale=0.5, size=n) > 0).astype(int),
                         "protected_extra": "x", "split": split})


def _warehouse(path, frame: pd.DataFrame) -> str:
    con = duckdb.connect(str(path))
    con.register("frame", frame)
    con.execute("create table main.customer_model_input as select * from frame")
    con.close()
    return str(path)


def _md5_hash(customer_id: str) -> int:
    return int(hashlib.md5(customer_id.encode()).hexdigest()[:8], 16)


def _smallest(frame: pd.DataFrame, split: str, n: int) -> list[str]:
    ids = frame.loc[frame["split"] == split, "customer_id"]
    return sorted(ids, key=lambda c: (_md5_hash(c), c))[:n]


def _read(path, split, limit, test_rows=None):
    con = duckdb.connect(path, read_only=True)
    try:
        hash_sql = lc.hash_expression(con, ROLES)
        if split == "test":
            return lc.read_test(con, ROLES, test_rows, hash_sql)
        return lc.read_split(con, ROLES, split, limit, hash_sql)
    finally:
        con.close()


def test_samples_are_the_smallest_hashes_whatever_the_row_order(tmp_path):
    frame = _customers()
    in_order = _warehouse(tmp_path / "ordered.duckdb", frame)
    shuffled = _warehouse(tmp_path / "shuffled.duckdb", frame.sample(frac=1, random_state=11))
    for path in (in_order, shuffled):
        train = _read(path, "train", 50)
        assert list(train["customer_id"]) == _smallest(frame, "train", 50)
        assert list(train.columns) == lc.model_columns(ROLES)  # no column the models do not read
        assert list(train.index) == list(range(50))
        valid = _read(path, "valid", lc.valid_rows_for(50))
        assert list(valid["customer_id"]) == _smallest(frame, "valid", 11)
    # A smaller sample lies inside a larger one: the curve adds customers, it never swaps them.
    assert set(_read(shuffled, "train", 20)["customer_id"]) <= set(_read(shuffled, "train", 50)["customer_id"])


def test_the_test_set_is_fixed_and_says_which(tmp_path):
    frame = _customers()
    path = _warehouse(tmp_path / "w.duckdb", frame.sample(frac=1, random_state=5))
    everything, note = _read(path, "test", None)
    assert sorted(everything["customer_id"]) == sorted(frame.loc[frame["split"] == "test", "customer_id"])
    assert note == f"all {len(everything):,} test rows"
    capped, note = _read(path, "test", None, test_rows=7)
    assert list(capped["customer_id"]) == _smallest(frame, "test", 7)
    assert note == f"the 7 test rows with the smallest customer hash (of {len(everything):,})"


def test_a_customer_hash_column_is_used_when_the_table_has_one(tmp_path):
    frame = _customers()
    # Rank by id, reversed: an order md5 would not give, so the test sees which one was used.
    frame["customer_hash"] = np.arange(len(frame))[::-1]
    path = _warehouse(tmp_path / "w.duckdb", frame)
    train = _read(path, "train", 5)
    expected = frame[frame["split"] == "train"].sort_values("customer_hash")["customer_id"].head(5)
    assert list(train["customer_id"]) == list(expected)


def test_the_sql_hash_is_the_first_32_bits_of_md5(tmp_path):
    path = _warehouse(tmp_path / "w.duckdb", _customers(20))
    con = duckdb.connect(path, read_only=True)
    got = dict(con.execute(f"select customer_id, {lc.hash_expression(con, ROLES)} from customer_model_input"
                           ).fetchall())
    con.close()
    assert got == {c: _md5_hash(c) for c in got}


@pytest.mark.parametrize(("points", "expected"), [
    ([(1000, 0.80), (2000, 0.85), (4000, 0.899), (8000, 0.90)], 4000),
    ([(1000, 0.50), (2000, 0.70), (4000, 0.90)], None),  # still rising at the largest sample
    ([(1000, 0.90), (2000, 0.80), (4000, 0.90)], None),  # a lucky small sample is not a plateau
    ([(8000, 10.0), (1000, 10.04), (2000, 9.97), (4000, 10.0)], 1000),  # any order; lower-is-better metrics too
])
def test_flattening_point(points, expected):
    assert lc.flattening_point(points) == expected


def test_a_small_learning_curve_end_to_end(tmp_path, capsys):
    frame = _customers(600)
    path = _warehouse(tmp_path / "w.duckdb", frame)
    result = lc.learning_curve(path, [40, 100, 10_000], ROLES, ["engagement_model", "churn_model"], test_rows=50)
    available = int((frame["split"] == "train").sum())
    assert result["train_rows"] == [40, 100, available]  # past the table, the whole train split, once
    assert result["test_set"].startswith("the 50 test rows")
    for name, metric in (("engagement_model", "rmse"), ("churn_model", "auc")):
        curve = result["models"][name]
        assert curve["primary_metric"] == metric
        assert [p["train_rows"] for p in curve["points"]] == [40, 100, available]
        assert [p["valid_rows"] for p in curve["points"]] == [9, 21, int((frame["split"] == "valid").sum())]
        assert all(math.isfinite(p["metric"]) and p["fit_seconds"] >= 0 for p in curve["points"])
    json.dumps(result)  # what --json-out writes
    text = lc.report(result)
    assert "| model (primary metric) | 40 | 100 | 420 |" in text
    assert "churn_model (auc ↑)" in text and "engagement_model (rmse ↓)" in text
    png = lc.plot(result, tmp_path / "curve.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
