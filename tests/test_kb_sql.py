"""The knowledge-base agent's read-only SQL tool: parser-based checks, limits, timeouts, and the
allow-list built from dbt's manifest."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from engagement_dagster.core.kb.sql_tool import (
    RESULT_TABLES,
    CheckedQuery,
    SqlPolicy,
    SqlRefused,
    SqlResult,
    check_sql,
    duckdb_columns_of,
    duckdb_executor,
    policy_from_manifest,
    run_sql,
)

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "dbt_project" / "target" / "manifest.json"
CUSTOMERS = 300

PREDICTION_COLUMNS = frozenset(
    {"customer_id", "segment", "churn_probability", "predicted_lifetime_value_usd", "snapshot_week"}
)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> Path:
    """A small DuckDB file shaped like the marts, plus tables and columns outside the allow-list."""
    path = tmp_path_factory.mktemp("warehouse") / "warehouse.duckdb"
    con = duckdb.connect(str(path))
    con.execute(
        f"""
        create table predictions_final as
        select 'c' || lpad(cast(i as varchar), 4, '0') as customer_id,
               ['Casual', 'Spenders', 'Daters'][i % 3 + 1] as segment,
               (i % 100) / 100.0 as churn_probability,
               i * 1.5 as predicted_lifetime_value_usd,
               date '2024-01-01' + cast((i % 2) * 7 as integer) as snapshot_week,
               'do not show ' || i as secret_note
        from range({CUSTOMERS}) t(i)
        """
    )
    con.execute(
        """
        create table churn_by_segment as
        select segment, count(*) as customers, avg(churn_probability) as mean_churn_probability
        from predictions_final group by segment
        """
    )
    con.execute("create table raw_secrets as select 'alice@example.com' as email, 'hunter2' as password")
    con.close()
    return path


@pytest.fixture(scope="module")
def policy() -> SqlPolicy:
    return SqlPolicy(
        tables={
            "predictions_final": PREDICTION_COLUMNS,
            "churn_by_segment": frozenset({"segment", "customers", "mean_churn_probability"}),
        },
        max_rows=200,
        timeout_seconds=5.0,
    )


@pytest.fixture(scope="module")
def execute(warehouse):
    return duckdb_executor(warehouse, timeout_seconds=5.0)


def _never(sql: str):
    raise AssertionError(f"a refused query reached the executor: {sql}")


def _refused(sql: str, policy: SqlPolicy) -> SqlRefused:
    with pytest.raises(SqlRefused) as caught:
        run_sql(sql, policy, _never)  # refused before anything runs
    return caught.value


# ---------------------------------------------------------------------------------------------
# what runs


def test_allowed_aggregate_query_runs_and_returns_json(policy, execute):
    result = run_sql(
        "select segment, snapshot_week, count(*) as customers, round(avg(churn_probability), 4) as churn, "
        "sum(predicted_lifetime_value_usd) as ltv from predictions_final group by segment, snapshot_week "
        "order by segment, snapshot_week",
        policy,
        execute,
    )
    assert isinstance(result, SqlResult)
    assert result.columns == ["segment", "snapshot_week", "customers", "churn", "ltv"]
    assert result.row_count == len(result.rows) == 6
    assert sum(row[2] for row in result.rows) == CUSTOMERS
    first = result.rows[0]
    assert first[0] == "Casual" and first[1] == "2024-01-01"  # a DATE comes back as an ISO date
    assert all(type(v) in (str, int, float) for row in result.rows for v in row)  # plain Python, not NumPy
    assert result.seconds >= 0
    decoded = json.loads(result.to_json())
    assert decoded["rows"] == result.rows and decoded["columns"] == result.columns
    assert "LIMIT 201" in decoded["sql"]


def test_nan_and_null_become_none(policy, execute):
    result = run_sql(
        "select cast('nan' as double) as n, null as z, cast('inf' as double) as i, date '2024-02-03' as d "
        "from churn_by_segment limit 1",
        policy,
        execute,
    )
    assert result.rows == [[None, None, None, "2024-02-03"]]
    json.loads(result.to_json())  # strict JSON (no NaN/Infinity)


def test_ctes_and_aliases_work(policy, execute):
    sql = """
        with by_segment as (
            select segment as s, count(*) as n, avg(churn_probability) as churn
            from predictions_final p
            where p.churn_probability >= 0.5
            group by s
        ), ranked as (select s, n, churn, rank() over (order by n desc, s) as r from by_segment)
        select r.s as segment, r.n as customers, c.customers as all_customers
        from ranked r join churn_by_segment c on c.segment = r.s
        order by customers desc, segment
    """
    result = run_sql(sql, policy, execute)
    assert result.columns == ["segment", "customers", "all_customers"]
    assert len(result.rows) == 3
    assert sum(r[1] for r in result.rows) == CUSTOMERS // 2
    assert sum(r[2] for r in result.rows) == CUSTOMERS
    checked = check_sql(sql, policy)
    assert checked.tables == ("churn_by_segment", "predictions_final")
    assert "predictions_final.churn_probability" in checked.columns


def test_union_subquery_and_output_alias_references(policy, execute):
    result = run_sql(
        "select segment, count(*) as n from predictions_final group by segment having n > 1 "
        "union all select segment, customers from churn_by_segment order by n desc, segment",
        policy,
        execute,
    )
    assert len(result.rows) == 6
    result = run_sql(
        "select customer_id from predictions_final where churn_probability > "
        "(select avg(churn_probability) from predictions_final) order by customer_id limit 5",
        policy,
        execute,
    )
    assert result.row_count == 5


def test_star_expands_to_the_allowed_columns_only(policy, execute):
    result = run_sql("select * from predictions_final order by customer_id limit 3", policy, execute)
    assert set(result.columns) == PREDICTION_COLUMNS  # secret_note is not in the allow-list
    assert "secret_note" not in result.sql
    assert result.row_count == 3


def test_unnamed_expressions_keep_a_readable_name(policy):
    checked = check_sql("select count(*), avg(churn_probability) from predictions_final", policy)
    assert '"count(*)"' in checked.sql and '"avg(churn_probability)"' in checked.sql


# ---------------------------------------------------------------------------------------------
# what is refused, and why


@pytest.mark.parametrize(
    ("sql", "reason", "named"),
    [
        ("insert into predictions_final values ('x', 'y', 0.1, 1, date '2024-01-01', 'z')", "not_select", "INSERT"),
        ("update predictions_final set segment = 'x'", "not_select", "UPDATE"),
        ("delete from predictions_final", "not_select", "DELETE"),
        ("drop table predictions_final", "not_select", "DROP"),
        ("create table copy_of as select * from predictions_final", "not_select", "CREATE"),
        ("attach 'other.duckdb' as other", "not_select", "ATTACH"),
        ("copy predictions_final to 'out.csv'", "not_select", "COPY"),
        ("pragma database_list", "not_select", "PRAGMA"),
        ("install httpfs", "not_select", "INSTALL"),
        ("load httpfs", "not_select", "LOAD"),
        ("set threads = 1", "not_select", "SET"),
        ("export database 'dump'", "not_select", "EXPORT"),
        ("call duckdb_tables()", "not_select", "CALL"),
        ("describe predictions_final", "not_select", "DESCRIBE"),
        ("select customer_id into new_table from predictions_final", "not_select", "INTO"),
        ("select 1; drop table predictions_final", "multiple_statements", "DROP"),
        ("select 1 /* harmless */; delete from predictions_final", "multiple_statements", "DELETE"),
        ("select 1 -- harmless\n; drop table predictions_final", "multiple_statements", "DROP"),
        ("select * from read_csv('data.csv')", "file_function", "read_csv"),
        ("select * from read_csv_auto('data.csv')", "file_function", "read_csv_auto"),
        ("select * from read_parquet('lake/*.parquet')", "file_function", "read_parquet"),
        ("select * from glob('*')", "file_function", "glob"),
        ("select read_csv('data.csv') as x", "file_function", "read_csv"),
        ("select segment, read_parquet('x.parquet') from predictions_final", "file_function", "read_parquet"),
        ("select glob('*') as files", "file_function", "glob"),
        ("select * from 'data.csv'", "file_function", "data.csv"),
        ("select * from range(10)", "table_not_allowed", "generate_series"),
        ("select * from duckdb_settings()", "table_not_allowed", "duckdb_settings"),
        ("select * from raw_secrets", "table_not_allowed", "raw_secrets"),
        ("select p.segment from predictions_final p join raw_secrets r on true", "table_not_allowed", "raw_secrets"),
        ("with x as (select * from raw_secrets) select * from x", "table_not_allowed", "raw_secrets"),
        ("with predictions_final as (select 1 as a) select * from predictions_final", "table_not_allowed",
         "predictions_final"),
        ("select secret_note from predictions_final", "column_not_allowed", "secret_note"),
        ("select p.secret_note from predictions_final p", "column_not_allowed", "secret_note"),
        ("select segment from predictions_final where secret_note like 'x%'", "column_not_allowed", "secret_note"),
        ("select t from predictions_final t", "column_not_allowed", "t"),
        ("select #6 from predictions_final", "column_not_allowed", "#6"),
        ("select f from predictions_final t(a, b, c, d, e, f)", "column_not_allowed", "t(a, b, c, d, e, f)"),
        ("select * from other.predictions_final", "schema_not_allowed", "other"),
        ("select * from information_schema.tables", "schema_not_allowed", "information_schema"),
        ("select * from warehouse.main.predictions_final", "schema_not_allowed", "warehouse"),
        ("select getenv('HOME')", "function_not_allowed", "getenv"),
        ("select current_setting('threads')", "function_not_allowed", "current_setting"),
        ("select columns('.*') from predictions_final", "function_not_allowed", "columns"),
        ("select made_up_function(segment) from predictions_final", "function_not_allowed", "made_up_function"),
        ("selec segment from predictions_final", "parse_error", "parse"),
        ("select from where", "parse_error", "parse"),
        ("select (1", "parse_error", "parse"),
        ("", "parse_error", "SELECT"),
        ("-- only a comment", "parse_error", "SELECT"),
    ],
)
def test_refusals_name_the_reason_and_the_offender(policy, sql, reason, named):
    refused = _refused(sql, policy)
    assert refused.reason == reason, str(refused)
    assert named.lower() in str(refused).lower()
    assert isinstance(refused, ValueError)
    assert refused.to_dict() == {"refused": reason, "message": str(refused)}


def test_main_schema_is_allowed_for_duckdb(policy, execute):
    result = run_sql("select count(*) as n from main.predictions_final", policy, execute)
    assert result.rows == [[CUSTOMERS]]


def test_pii_columns_are_never_allowed():
    policy = SqlPolicy(tables={"predictions_final": frozenset({"customer_id", "email", "Phone"})})
    assert policy.tables["predictions_final"] == frozenset({"customer_id"})
    assert _refused("select email from predictions_final", policy).reason == "column_not_allowed"


# ---------------------------------------------------------------------------------------------
# limits


def test_limit_is_enforced(policy):
    assert check_sql("select segment from predictions_final", policy).sql.endswith("LIMIT 201")
    assert check_sql("select segment from predictions_final limit 5", policy).sql.endswith("LIMIT 5")
    assert check_sql("select segment from predictions_final limit 5000", policy).sql.endswith("LIMIT 201")
    assert check_sql("select segment from predictions_final limit 10 percent", policy).sql.endswith("LIMIT 201")
    union = check_sql("select segment from predictions_final union select segment from churn_by_segment", policy)
    assert union.sql.endswith("LIMIT 201")
    offset = check_sql("select segment from predictions_final order by 1 limit 3 offset 2", policy)
    assert offset.sql.endswith("LIMIT 3 OFFSET 2")
    assert isinstance(offset, CheckedQuery)


def test_oversized_results_are_refused(policy, execute):
    with pytest.raises(SqlRefused) as caught:
        run_sql("select customer_id from predictions_final", policy, execute)
    assert caught.value.reason == "too_many_rows"
    assert "more than 200 rows" in str(caught.value) and "GROUP BY" in str(caught.value)
    with pytest.raises(SqlRefused, match="more than 200 rows"):  # a larger LIMIT does not get around it
        run_sql("select customer_id from predictions_final limit 250", policy, execute)
    small = SqlPolicy(tables=policy.tables, max_rows=10)
    assert run_sql("select customer_id from predictions_final limit 10", small, execute).row_count == 10
    with pytest.raises(SqlRefused, match="more than 10 rows"):
        run_sql("select customer_id from predictions_final limit 11", small, execute)


def test_slow_query_is_interrupted(warehouse):
    execute = duckdb_executor(warehouse, timeout_seconds=0.5)
    started = time.perf_counter()
    with pytest.raises(SqlRefused) as caught:  # `range` is a table function: the executor is called directly
        execute("select sum(a.range * b.range) from range(200000) a, range(200000) b")
    elapsed = time.perf_counter() - started
    assert caught.value.reason == "timeout"
    assert "0.5 s" in str(caught.value)
    assert elapsed < 10, f"the query was not interrupted ({elapsed:.1f} s)"
    assert execute("select 42 as answer")["answer"].tolist() == [42]  # the next call works


def test_executor_is_read_only_and_offline(warehouse, tmp_path):
    execute = duckdb_executor(warehouse, timeout_seconds=5.0)
    # Even without check_sql, DuckDB's own parser refuses anything but one SELECT ...
    for sql in ("drop table raw_secrets", "select 1; select 2", "copy raw_secrets to 'leak.csv'"):
        with pytest.raises(SqlRefused) as caught:
            execute(sql)
        assert caught.value.reason == "not_select"
    # ... and external access (files, network) is disabled in the connection.
    data = tmp_path / "data.csv"
    data.write_text("a\n1\n")
    with pytest.raises(SqlRefused) as caught:
        execute(f"select * from read_csv('{data}')")
    assert caught.value.reason == "query_error"
    with pytest.raises(SqlRefused) as caught:
        execute("select cast('x' as integer)")
    assert caught.value.reason == "query_error" and "Conversion" in str(caught.value)
    con = duckdb.connect(str(warehouse), read_only=True)
    assert con.execute("select count(*) from raw_secrets").fetchone() == (1,)
    con.close()


# ---------------------------------------------------------------------------------------------
# Athena


def test_athena_renders_qualified_names_and_refuses_duckdb_casts():
    policy = SqlPolicy(tables={"predictions_final": PREDICTION_COLUMNS}, dialect="athena", schema="engagement")
    checked = check_sql("select segment, count(*) as n from predictions_final group by segment", policy)
    assert '"engagement"."predictions_final"' in checked.sql
    assert checked.sql.endswith("LIMIT 201")
    qualified = check_sql("select segment from engagement.predictions_final", policy)
    assert '"engagement"."predictions_final"' in qualified.sql
    refused = _refused("select cast(churn_probability as double), segment::varchar from predictions_final", policy)
    assert refused.reason == "dialect_syntax" and "CAST" in str(refused)
    assert _refused("select segment from main.predictions_final", policy).reason == "schema_not_allowed"
    assert _refused("select list_sum2(x) from predictions_final", policy).reason == "function_not_allowed"
    duck = SqlPolicy(tables={"predictions_final": PREDICTION_COLUMNS})
    assert "CAST(" in check_sql("select churn_probability::double as c from predictions_final", duck).sql


# ---------------------------------------------------------------------------------------------
# the allow-list from dbt's manifest


@pytest.mark.skipif(not MANIFEST.exists(), reason=f"{MANIFEST} is missing: build it with `make manifest`")
def test_policy_from_the_real_manifest(warehouse):
    policy = policy_from_manifest(MANIFEST, max_rows=50)
    assert set(policy.tables) == set(RESULT_TABLES)
    assert policy.max_rows == 50
    assert {"customer_id", "churn_probability", "segment"} <= policy.tables["predictions_final"]
    assert "segment" in policy.tables["churn_by_segment"]
    check_sql("select segment, avg(churn_probability) from predictions_final group by segment", policy)

    def columns_of(table: str) -> list[str]:
        return ["snapshot_week", "Email", "value_at_risk_usd"] if table == "predictions_final" else []

    widened = policy_from_manifest(MANIFEST, columns_of=columns_of, dialect="athena", schema="engagement")
    assert {"snapshot_week", "value_at_risk_usd"} <= widened.tables["predictions_final"]
    assert "email" not in widened.tables["predictions_final"]  # PII is never allowed
    assert widened.dialect == "athena" and widened.schema == "engagement"

    from_duckdb = policy_from_manifest(MANIFEST, ["predictions_final"], columns_of=duckdb_columns_of(warehouse))
    assert "secret_note" in from_duckdb.tables["predictions_final"]  # the catalog adds what the table holds
    with pytest.raises(ValueError, match="no_such_model"):
        policy_from_manifest(MANIFEST, ["predictions_final", "no_such_model"])


def test_missing_manifest_says_how_to_build_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="make manifest"):
        policy_from_manifest(tmp_path / "manifest.json")


def test_module_imports_no_dagster():
    code = (
        "import sys, engagement_dagster.core.kb.sql_tool; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'dagster', 'dagster_dbt', 'dbt'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
