"""The dbt project compiles for Athena (against a real Glue/Athena API: moto's server) and the
compiled SQL is Trino, not DuckDB dialect that would only fail in production; the scoring marts are
incremental by snapshot week on both targets, and on DuckDB a re-run replaces its own week only."""

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import sqlglot
from sqlglot import exp

from engagement_dagster.core.settings import PROJECT_ROOT

# Trino functions sqlglot does not model; anything else unknown is probably DuckDB-only.
TRINO_FUNCTIONS_UNKNOWN_TO_SQLGLOT = {"to_milliseconds"}


def test_every_model_and_test_compiles_to_trino_sql(aws_endpoint, tmp_path):
    s3 = boto3.client("s3")
    for bucket in ("engagement-athena-results", "engagement-lake"):
        s3.create_bucket(Bucket=bucket)
    glue = boto3.client("glue")
    for database in ("engagement", "engagement_raw"):
        if database not in {d["Name"] for d in glue.get_databases()["DatabaseList"]}:
            glue.create_database(DatabaseInput={"Name": database})

    dbt = os.path.join(os.path.dirname(sys.executable), "dbt")
    done = subprocess.run(
        [dbt, "compile", "--target", "prod", "--project-dir", "dbt_project", "--profiles-dir", "dbt_project",
         "--target-path", str(tmp_path / "target")],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, env=os.environ.copy(), check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    compiled = sorted(Path(tmp_path / "target" / "compiled").rglob("*.sql"))
    nodes = json.loads((tmp_path / "target" / "manifest.json").read_text())["nodes"].values()
    assert len(compiled) == sum(node["resource_type"] in ("model", "test") for node in nodes) > 40
    problems = []
    for path in compiled:
        sql = path.read_text()
        if any(token.text == "::" for token in sqlglot.tokenize(sql, read="trino")):
            problems.append(f"{path.name}: DuckDB '::' cast")
        tree = sqlglot.parse_one(sql, read="trino")
        unknown = {f.name.lower() for f in tree.find_all(exp.Anonymous)} - TRINO_FUNCTIONS_UNKNOWN_TO_SQLGLOT
        if unknown:
            problems.append(f"{path.name}: functions {sorted(unknown)}")
    assert not problems, problems
    # the scoring marts' data tests read the week built (the placeholder of their `where` is replaced)
    assert not [p.name for p in compiled if "__snapshot_week__" in p.read_text()]
    unique_ids = next(p for p in compiled if p.name.startswith("unique_predictions_final_customer_id")).read_text()
    assert "where snapshot_week = cast('2026-11-16' as date)" in unique_ids
    split = next(p for p in compiled if p.name == "customer_model_input.sql").read_text()
    assert "from_base(substr(lower(to_hex(md5(to_utf8(" in split  # the Athena form of hash_bucket

    # The marts keep every week on Athena: Hive tables partitioned by snapshot_week, each run overwriting its
    # week's partition (and clearing it first, for a week whose rows are gone). Athena's CTAS wants the
    # partition column last: each mart's outer SELECT ends with snapshot_week, or with the * of a CTE that
    # does (predictions_final's own columns end with it).
    marts = [n for n in nodes if n["resource_type"] == "model" and "scoring" in n["tags"]]
    assert {n["name"] for n in marts} == {"predictions_final", "qa_review_sample", "high_engagement_customers",
                                          "at_risk_customers", "churn_by_segment", "weekly_prediction_summary",
                                          "weekly_summary"}
    for node in marts:
        config = node["config"]
        assert (config["materialized"], config["incremental_strategy"], config["partitioned_by"],
                config["on_schema_change"]) == ("incremental", "insert_overwrite", ["snapshot_week"],
                                                "append_new_columns"), node["name"]
        assert [h["sql"] for h in config["pre-hook"]] == ["{{ engagement.clear_snapshot_week() }}"]
        select = sqlglot.parse_one(next(p for p in compiled if p.name == f"{node['name']}.sql").read_text(),
                                   read="trino")
        last = select.expressions[-1]
        assert last.alias_or_name == "snapshot_week" or last.is_star, (node["name"], last.sql())
        assert "= CAST('2026-11-16' AS DATE)" in select.sql(dialect="trino"), node["name"]  # reads its week only


def test_the_checker_catches_duckdb_only_sql():
    duck = "select customer_id::varchar, list_value(1, 2) from t"
    assert any(t.text == "::" for t in sqlglot.tokenize(duck, read="trino"))
    assert {f.name.lower() for f in sqlglot.parse_one("select list_value(1, 2)", read="trino").find_all(exp.Anonymous)}


# --- the same marts on DuckDB: every week kept, a re-run replacing its own week only

MART_WEEKS = ("2026-11-09", "2026-11-16")
MART_CUSTOMERS = 600
MARTS = ("predictions_final", "qa_review_sample", "high_engagement_customers", "at_risk_customers",
         "churn_by_segment", "weekly_prediction_summary", "weekly_summary")


def _write_week(lake: Path, week: str, churn: float | None) -> None:
    """A week's raw customers (the generator's) and predictions for them: churn probabilities spread over
    0–1 with exact drivers where they reach 0.5, or ``churn`` for everyone with approximate drivers."""
    import numpy as np
    import pandas as pd

    from engagement_dagster.core.data.generator import generate_snapshot

    customers = generate_snapshot(MART_CUSTOMERS, week).customers
    raw = lake / "raw" / "customers" / f"snapshot_week={week}"
    raw.mkdir(parents=True, exist_ok=True)
    customers.to_parquet(raw / "customers.parquet", index=False)
    rng = np.random.default_rng(7)
    n = len(customers)
    probability = rng.random(n) if churn is None else np.full(n, churn)
    predictions = pd.DataFrame({
        "customer_id": customers["customer_id"],
        "predicted_engagement_score": rng.random(n).astype("float32"),
        "churn_probability": probability,
        "predicted_lifetime_value_usd": (rng.random(n) * 500).astype("float32"),
        "segment_id": rng.integers(0, 3, n).astype("int32"),
        "anomaly_score": rng.random(n),
        "is_anomaly": rng.random(n) < 0.02,
    })
    predictions["segment"] = predictions["segment_id"].map({0: "Casual", 1: "Creators", 2: "Spenders"})
    for i in (1, 2, 3):
        predictions[f"recommended_category_{i}"] = ["music", "travel", "gaming"][i - 1]
        predictions[f"churn_driver_{i}"] = f"feature_{i}"
        predictions[f"churn_driver_{i}_contribution"] = rng.normal(0, 1, n)
    predictions["churn_drivers_method"] = np.where(probability >= 0.5, "exact_treeshap", "saabas_approximate")
    for model in ("engagement_model", "churn_model", "ltv_model", "segment_model", "anomaly_model",
                  "content_recommender"):
        predictions[f"{model}_version"] = f"v-{week}"
    predictions["scored_at"] = pd.Timestamp("2026-11-20 06:00")
    shards = lake / "predictions" / f"snapshot_week={week}"
    shards.mkdir(parents=True, exist_ok=True)
    predictions.to_parquet(shards / "shard=00.parquet", index=False)


def _build_week(lake: Path, target: Path, week: str) -> None:
    dbt = os.path.join(os.path.dirname(sys.executable), "dbt")
    env = {**os.environ, "ENGAGEMENT_LAKE_DIR": str(lake), "ENGAGEMENT_SNAPSHOT_WEEK": week, "DBT_TARGET": "local"}
    done = subprocess.run(
        [dbt, "build", "--select", "stg_customers", "tag:scoring", "--project-dir", "dbt_project",
         "--profiles-dir", "dbt_project", "--target-path", str(target)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, env=env, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _rows(lake: Path) -> dict[str, dict[str, list[tuple]]]:
    """Every mart's rows, by week, in a stable order."""
    import duckdb

    with duckdb.connect(str(lake / "warehouse.duckdb"), read_only=True) as con:
        out = {}
        for mart in MARTS:
            rows = con.sql(f"select * exclude (snapshot_week), cast(snapshot_week as varchar) from {mart}").fetchall()
            by_week: dict[str, list[tuple]] = {}
            for row in rows:
                by_week.setdefault(row[-1], []).append(row[:-1])
            out[mart] = {week: sorted(rows, key=repr) for week, rows in sorted(by_week.items())}
    return out


def test_duckdb_marts_keep_every_week_and_a_rerun_replaces_its_own_week_only(tmp_path):
    lake, target = tmp_path / "lake", tmp_path / "target"
    for week in MART_WEEKS:
        _write_week(lake, week, churn=None)
        _build_week(lake, target, week)
    both = _rows(lake)
    for mart in MARTS:
        assert list(both[mart]) == list(MART_WEEKS), mart
    assert len(both["predictions_final"][MART_WEEKS[0]]) == MART_CUSTOMERS
    assert len(both["qa_review_sample"][MART_WEEKS[1]]) == 400
    assert both["at_risk_customers"][MART_WEEKS[0]], "a spread of churn probabilities puts someone at risk"

    # The first week again, now with nobody at risk: its at-risk rows go, its other rows are replaced,
    # and the second week stays exactly as it was.
    _write_week(lake, MART_WEEKS[0], churn=0.1)
    _build_week(lake, target, MART_WEEKS[0])
    again = _rows(lake)
    assert list(again["at_risk_customers"]) == [MART_WEEKS[1]]
    for mart in MARTS:
        assert again[mart][MART_WEEKS[1]] == both[mart][MART_WEEKS[1]], mart
    import duckdb

    with duckdb.connect(str(lake / "warehouse.duckdb"), read_only=True) as con:
        first = con.sql(f"select count(*), min(churn_probability), max(churn_probability) from predictions_final "
                        f"where snapshot_week = date '{MART_WEEKS[0]}'").fetchall()
        summary = con.sql("select customers, round(mean_churn_probability, 9), at_risk_customers from weekly_summary "
                          f"where snapshot_week = date '{MART_WEEKS[0]}'").fetchall()
    assert first == [(MART_CUSTOMERS, 0.1, 0.1)] and summary == [(MART_CUSTOMERS, 0.1, 0)]
