"""The dbt project compiles for Athena (against a real Glue/Athena API: moto's server) and the
compiled SQL is Trino, not DuckDB dialect that would only fail in production."""

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import sqlglot
from sqlglot import exp

from engagement_dagster.settings import PROJECT_ROOT

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
    split = next(p for p in compiled if p.name == "customer_model_input.sql").read_text()
    assert "from_base(substr(lower(to_hex(md5(to_utf8(" in split  # the Athena form of hash_bucket


def test_the_checker_catches_duckdb_only_sql():
    duck = "select customer_id::varchar, list_value(1, 2) from t"
    assert any(t.text == "::" for t in sqlglot.tokenize(duck, read="trino"))
    assert {f.name.lower() for f in sqlglot.parse_one("select list_value(1, 2)", read="trino").find_all(exp.Anonymous)}
