"""Online features equal dbt's: the generated module is a fresh export of the dbt models, it computes what
the warehouse holds for every customer of a week, what DuckDB computes from the same compiled SQL on
hand-made edge cases, and each SQL construct it translates behaves as DuckDB's; what the translator does
not know, it refuses."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import shutil

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engagement_dagster.api import features_generated as generated
from engagement_dagster.api import sql_semantics
from engagement_dagster.api.features import FEATURE_COLUMNS, OUTPUT_COLUMNS, FeatureError, online_features
from engagement_dagster.api.schema import EXAMPLE_CUSTOMER, CustomerRecord
from engagement_dagster.core.data.contract import LAKE_SCHEMA, TARGETS
from engagement_dagster.core.storage.warehouse import connect
from engagement_dagster.export import online_features as export
from tests.conftest import KB_WEEKS

WEEK = dt.date.fromisoformat(generated.COMPILE_WEEK)
TARGET_VALUES = {"engagement_score": 0.5, "churn_30_day": 0, "lifetime_value_usd": 10.0,
                 "content_category_primary": "music"}


def typed(record: dict) -> dict:
    """A raw row as the API hands it to online_features: validated by the schema, then dumped."""
    return CustomerRecord.model_validate_json(json.dumps(record, default=str)).model_dump()


def assert_same(online: dict, dbt: dict, context: str = "") -> None:
    """Floats within 1e-9 relative (NaN equal to NaN), everything else equal and of the same type."""
    assert set(online) == set(dbt), context
    for column, want in dbt.items():
        got = online[column]
        where = f"{context} {column}: online {got!r}, dbt {want!r}"
        assert type(got) is type(want), where
        if isinstance(want, float):
            assert (math.isnan(got) and math.isnan(want)) or math.isclose(got, want, rel_tol=1e-9, abs_tol=0), where
        else:
            assert got == want, where


def duckdb_model_input(rows: list[dict], lake) -> dict[str, dict]:
    """customer_model_input's output columns as DuckDB computes them from the committed compiled SQL, over
    the rows written where the staging model reads them (raw/customers/snapshot_week=…/*.parquet)."""
    table = pa.Table.from_pylist([{**TARGET_VALUES, **row} for row in rows], schema=LAKE_SCHEMA)
    folder = lake / "raw" / "customers" / f"snapshot_week={generated.COMPILE_WEEK}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "part-0.parquet")
    with duckdb.connect() as con:
        con.execute("ATTACH ':memory:' AS warehouse")
        con.execute("USE warehouse")
        con.execute("SET file_search_path = ?", [str(lake)])
        for name, sql in generated.COMPILED_SQL.items():  # the models' relations: "warehouse"."main"."<model>"
            con.execute(f"CREATE VIEW {name} AS {sql}")
        cursor = con.execute(f"SELECT {', '.join(OUTPUT_COLUMNS)} FROM customer_model_input")
        names = [d[0] for d in cursor.description]
        return {row[0]: dict(zip(names, row, strict=True)) for row in cursor.fetchall()}


# ---------------------------------------------------------------------------------------------
# the committed module is the dbt models' export
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fresh_export() -> str:
    return export.export_source()  # dbt compile in a scratch target and lake: ~7 s


def test_the_committed_module_is_a_fresh_export_of_the_dbt_models(fresh_export):
    assert export.GENERATED.read_text() == fresh_export, \
        f"{export.GENERATED} is stale: run `python -m engagement_dagster.export.online_features`"


def test_check_spots_a_missing_or_stale_module(tmp_path, monkeypatch, fresh_export, capsys):
    monkeypatch.setattr(export, "export_source", lambda project_dir=export.DBT_PROJECT: fresh_export)
    out = tmp_path / "features_generated.py"
    assert export.main(["--out", str(out), "--check"]) == 1
    assert export.main(["--out", str(out)]) == 0 and out.read_text() == fresh_export
    assert export.main(["--out", str(out), "--check"]) == 0
    out.write_text(fresh_export.replace("ln(", "math.log(", 1))
    assert export.main(["--out", str(out), "--check"]) == 1
    assert "stale" in capsys.readouterr().out


def test_a_changed_dbt_model_changes_the_export_and_what_it_computes(tmp_path):
    """Edit a feature in a copy of the dbt project: the export differs from the committed module (so CI
    fails until it is regenerated) and the new function computes the new definition."""
    project = tmp_path / "dbt_project"
    shutil.copytree(export.DBT_PROJECT, project, ignore=shutil.ignore_patterns("target*", "logs", "dbt_packages"))
    model = project / "models" / "features" / "customer_features.sql"
    old = "smoothed_ratio('matches_last_30_days + 1', 'swipes_right_last_30_days', 2.0)"
    assert old in model.read_text()
    model.write_text(model.read_text().replace(old, old.replace("2.0", "3.0")))
    source = export.export_source(project)
    assert source != export.GENERATED.read_text()
    namespace: dict = {}
    exec(compile(source, "features_generated_changed.py", "exec"), namespace)
    row = typed(EXAMPLE_CUSTOMER)
    features = namespace[export.FUNCTION](row, WEEK)
    matches, swipes = row["matches_last_30_days"], row["swipes_right_last_30_days"]
    assert features["match_rate_smoothed"] == (matches + 1) / (swipes + 3.0)


def committed_models(model: str | None = None, old: str = "", new: str = "") -> export.CompiledModels:
    """The compiled SQL the committed module was generated from, optionally with one edit."""
    sql = dict(generated.COMPILED_SQL)
    if model:
        assert old in sql[model], f"{old!r} is not in {model}"
        sql[model] = sql[model].replace(old, new)
    roles = {**generated.OUTPUT_ROLES, **dict.fromkeys(TARGETS, "target"), "split": "split", "customer_hash": "key"}
    return export.CompiledModels(sql, dict(generated.RELATIONS), generated.SOURCE_RELATION, roles)


def test_the_committed_sql_translates_to_the_committed_function():
    models = committed_models()
    assert export.render(models, export.translate(models)) == export.GENERATED.read_text()


LOG_RESPONSE = "ln(1.0 + cast(response_time_avg_hours as double))"


@pytest.mark.parametrize(("model", "old", "new", "message"), [
    ("customer_features", LOG_RESPONSE, "log(1.0 + cast(response_time_avg_hours as double))",
     "customer_features.log_response_time_hours: Log is not supported"),
    ("customer_features", "tenure_months <= 3", "tenure_months % 3 = 0", "Mod is not supported"),
    ("customer_features", "    sessions_last_7_days,\n",
     "    avg(sessions_last_7_days) over () as sessions_last_7_days,\n", "customer_features.sessions_last_7_days"),
    ("customer_features", LOG_RESPONSE, "ln(1.0 + cast(lifetime_value_usd as double))",
     "reads lifetime_value_usd: a target"),
    ("customer_features", "from customers", "from customers where tenure_months > 0", "WHERE"),
    ("customer_features", "from customers", "from customers group by customer_id", "GROUP"),
    ("customer_features", "    posts_last_30_days,\n", "    posts_last_30_days,\n    1 as brand_new,\n",
     "brand_new has no meta.role"),
    ("customer_model_input", "inner join", "left join", "only an inner join"),
    ("customer_model_input", "f.customer_id = c.customer_id", "f.customer_id = c.location", "does not pair a row"),
    ("stg_customers", "cast(snapshot_week as date) = cast(", "cast(snapshot_week as date) >= cast(",
     "the only filter supported online"),
    ("stg_customers", "cast(age as integer)", "cast(age as float)", "stg_customers.age: a cast to REAL"),
])
def test_a_construct_the_translator_does_not_know_is_refused_naming_the_column(model, old, new, message):
    with pytest.raises(export.UnsupportedSQL, match=message.replace("(", r"\(")):
        export.translate(committed_models(model, old, new))


# ---------------------------------------------------------------------------------------------
# equal to the warehouse the graph built, for every customer of a week
# ---------------------------------------------------------------------------------------------

def test_online_features_equal_the_warehouse_for_every_customer_of_the_week(kb_weeks):
    root, week = kb_weeks[0], KB_WEEKS[-1]
    with connect(root / "warehouse.duckdb") as con:
        cursor = con.execute("SELECT * FROM customer_model_input")
        names = [d[0] for d in cursor.description]
        warehouse = {row[0]: dict(zip(names, row, strict=True)) for row in cursor.fetchall()}
    files = sorted((root / "raw" / "customers" / f"snapshot_week={week}").glob("*.parquet"))
    raw = pa.concat_tables(pq.read_table(f) for f in files).drop_columns(list(TARGETS)).to_pylist()
    # Through the request schema as the API takes them; targets are not part of a request.
    rows = [CustomerRecord.model_validate(r).model_dump() for r in raw]
    online = online_features(rows, dt.date.fromisoformat(week))
    assert len(online) == len(warehouse) == len(raw) > 1000
    assert {r["snapshot_week"] for r in warehouse.values()} == {dt.date.fromisoformat(week)}
    assert set(OUTPUT_COLUMNS) == {c for c in names if c not in (*TARGETS, "split", "customer_hash")}
    for features in online:
        want = {c: warehouse[features["customer_id"]][c] for c in OUTPUT_COLUMNS}
        assert_same(features, want, features["customer_id"])


# ---------------------------------------------------------------------------------------------
# edge cases, against DuckDB running the same compiled SQL
# ---------------------------------------------------------------------------------------------

INT32_MAX = 2**31 - 1


def edge_rows() -> list[dict]:
    base = dict(EXAMPLE_CUSTOMER)
    zeros = {c: 0 for c in ("sessions_last_7_days", "swipes_right_last_30_days", "matches_last_30_days",
                           "connections_sent", "connections_received", "total_connections", "followers_count",
                           "following_count", "profile_views_received", "gig_applications_sent",
                           "gig_applications_received", "active_gigs_count", "tenure_months", "referral_count",
                           "time_since_first_transaction_days", "premium_features_used_count")}
    zero_floats = {c: 0.0 for c in ("session_duration_avg_minutes", "transaction_revenue_last_90_days",
                                    "response_time_avg_hours", "last_7_day_engagement_trend")}
    largest = {c: INT32_MAX for c in generated.INTEGER_CASTS if c not in ("age", "peak_activity_hour")
               and c != "matches_last_30_days"}  # matches + 1 overflows INTEGER: its own test
    cases = [
        {},
        zeros | zero_floats,
        {"platform": None, "acquisition_channel": None, "signup_date": None, "last_active_date": None},
        {"platform": "", "acquisition_channel": "   "},  # blank: null, as ingest reads a blank cell
        {"last_active_date": "2026-11-16"}, {"last_active_date": "2027-02-01"}, {"last_active_date": "1900-01-01"},
        {"age": 13, "tenure_months": 3, "time_since_first_transaction_days": -1, "social_influence_tier": "Nano"},
        {"age": 120, "tenure_months": 4, "social_influence_tier": "Mega", "peak_activity_hour": 23},
        *({"age": age} for age in (24, 25, 34, 35, 44, 45, 54, 55)),
        *({"social_influence_tier": tier} for tier in ("Micro", "Macro")),
        largest | {"followers_count": 2**62, "following_count": 2**62, "session_duration_avg_minutes": 1440.0},
        {"transaction_revenue_last_90_days": 1.7e308, "response_time_avg_hours": 1.7e308,
         "last_7_day_engagement_trend": -1.7e308, "avg_sentiment_score": -1.0, "avg_job_completion_rating": 5.0},
        {"sessions_last_7_days": INT32_MAX, "session_duration_avg_minutes": 1440.0, "followers_count": 2**53 + 1},
        {"last_7_day_engagement_trend": 5e-324, "trust_score": 1.0, "risk_score": 0.0},
    ]
    rows = []
    for i, case in enumerate(cases):
        row = typed({**base, **case, "customer_id": f"edge-{i}"})
        if i == 2:  # optional columns absent, not only null
            for optional in ("platform", "acquisition_channel", "signup_date", "last_active_date"):
                del row[optional]
        rows.append(row)
    return rows


def test_edge_cases_equal_duckdb_on_the_same_compiled_sql(tmp_path):
    rows = edge_rows()
    dbt = duckdb_model_input(rows, tmp_path)
    online = online_features(rows, WEEK)
    assert len(dbt) == len(online) == len(rows)
    for features in online:
        assert_same(features, dbt[features["customer_id"]], features["customer_id"])
    by_id = {f["customer_id"]: f for f in online}
    assert by_id["edge-1"]["match_rate_smoothed"] == 0.5 and by_id["edge-1"]["follower_following_ratio"] == 0.0
    assert by_id["edge-2"]["days_since_last_active"] == -1 and by_id["edge-2"]["platform"] == "unknown"
    assert by_id["edge-3"]["platform"] == by_id["edge-3"]["acquisition_channel"] == "unknown"
    assert by_id["edge-5"]["days_since_last_active"] < 0  # active after the week: negative, as in SQL


def test_a_value_the_sql_cannot_compute_fails_as_dbt_would_naming_the_column_and_row(tmp_path):
    good = typed(EXAMPLE_CUSTOMER)
    overflow = {**good, "customer_id": "overflow", "matches_last_30_days": INT32_MAX}  # valid: ≤ the INTEGER cap
    with pytest.raises(duckdb.OutOfRangeException, match="Overflow in addition of INT32"):
        duckdb_model_input([overflow], tmp_path)
    with pytest.raises(FeatureError) as raised:
        online_features([good, overflow], WEEK)
    assert raised.value.columns == ("matches_last_30_days",) and raised.value.row == 1
    assert raised.value.errors(("body", "customers", 1)) == [{
        "type": "value_error", "loc": ("body", "customers", 1, "matches_last_30_days"),
        "msg": f"matches_last_30_days: {raised.value.message}"}]
    assert "INTEGER" in raised.value.message
    too_big = {**good, "customer_id": "too-big", "tenure_months": INT32_MAX + 1}  # the schema refuses it first
    with pytest.raises(duckdb.ConversionException):
        duckdb_model_input([too_big], tmp_path)
    with pytest.raises(FeatureError, match="tenure_months"):
        online_features([too_big], WEEK)


def test_online_features_need_no_target_and_take_a_date_week():
    row = typed(EXAMPLE_CUSTOMER)
    assert not set(TARGETS) & set(row)
    (features,) = online_features([row], WEEK)
    assert tuple(features) == OUTPUT_COLUMNS and set(FEATURE_COLUMNS) < set(OUTPUT_COLUMNS)
    assert features["snapshot_week"] == WEEK and features["days_since_last_active"] == 6
    with pytest.raises(TypeError):
        online_features([row], dt.datetime(2026, 11, 16))
    with pytest.raises(TypeError):
        online_features([row], "2026-11-16")


# ---------------------------------------------------------------------------------------------
# each construct the translator knows, against DuckDB
# ---------------------------------------------------------------------------------------------

DOUBLES = [None, 0.0, -0.0, 1.5, -2.0, 1e308, math.inf, -math.inf, math.nan]
INTEGERS = [None, 0, 7, -3, INT32_MAX, -(2**31)]
BIGINTS = [None, 0, INT32_MAX, 2**31, -(2**31) - 1, 2**53 + 1, 2**62]
TEXTS = [None, "p", "q", "z", ""]
DATES = [None, dt.date(2026, 11, 16), dt.date(2026, 11, 10), dt.date(1970, 1, 1), dt.date(2026, 12, 31)]
VALUES = {"DOUBLE": DOUBLES, "INTEGER": INTEGERS, "BIGINT": BIGINTS, "VARCHAR": TEXTS, "DATE": DATES}
TWO_DOUBLES = {"a": "DOUBLE", "b": "DOUBLE"}
TWO_INTEGERS = {"i": "INTEGER", "j": "INTEGER"}

SEMANTICS = [
    *((sql, TWO_DOUBLES) for sql in (
        "a / b", "a + b", "a - b", "a * b", "-a", "abs(a)", "ln(a)", "ln(1.0 + a)", "greatest(a, b)", "least(a, b)",
        "a < b", "a <= b", "a = b", "a <> b", "a > b", "a >= b", "coalesce(a / b, ln(a), 0.5)",
        "case when a > b then 'x' when a is null then 'n' end", "(a > 0) and (b > 0)", "(a > 0) or (b > 0)",
        "not (a > b)", "a is not null", "case a when 1.5 then 'one and a half' else 'other' end")),
    *((sql, TWO_INTEGERS) for sql in (
        "i + j", "i - j", "i * j", "i / j", "abs(i)", "i < j", "greatest(i, j)", "coalesce(i, j, -1)",
        "cast(i as double) / (cast(j as double) + 1.0)", "case when i <= 3 then 1 else 0 end", "i < 2.5")),
    *((sql, {"i": "INTEGER", "a": "DOUBLE"}) for sql in (
        "i * a", "i < a", "greatest(i, a)", "case when i > 0 then a else i end", "coalesce(a, i)")),
    *((sql, {"n": "BIGINT"}) for sql in ("cast(n as integer)", "n + 1", "cast(n as double)", "n * 2")),
    *((sql, {"s": "VARCHAR"}) for sql in (
        "case s when 'p' then 1 when 'q' then 2 else 3 end", "coalesce(s, 'unknown')", "s < 'q'",
        "cast(s as varchar)", "s = 'p' or s is null")),
    *((sql, {"d": "DATE", "e": "DATE"}) for sql in (
        "date_diff('day', d::timestamp, e::timestamp)", "date_diff('day', d, e)",
        "coalesce((date_diff('day', d::timestamp, e::timestamp)), -1)", "d < e", "greatest(d, e)")),
]


def run_python(sql: str, columns: dict[str, str], rows: list[dict]) -> list:
    source = export.translate_expression(sql, {name: (sql_type, True) for name, sql_type in columns.items()})
    namespace = {"Any": object, "Mapping": dict, **{h: getattr(sql_semantics, h) for h in export.HELPERS}}
    exec(source, namespace)
    out = []
    for row in rows:
        try:
            out.append(namespace["evaluate"](row)["value"])
        except FeatureError as error:
            out.append(error)
    return out


def run_duckdb(sql: str, columns: dict[str, str], rows: list[dict]) -> list:
    parameters = ", ".join(f"${name}::{sql_type} AS {name}" for name, sql_type in columns.items())
    out = []
    with duckdb.connect() as con:
        for row in rows:
            try:
                out.append(con.execute(f"SELECT {sql} FROM (SELECT {parameters}) AS raw_rows", row).fetchone()[0])
            except duckdb.Error as error:
                out.append(error)
    return out


@pytest.mark.parametrize(("sql", "columns"), SEMANTICS, ids=[s for s, _ in SEMANTICS])
def test_each_translated_construct_behaves_as_duckdb(sql, columns):
    rows = [dict(zip(columns, values, strict=True))
            for values in itertools.product(*(VALUES[t] for t in columns.values()))]
    for row, got, want in zip(rows, run_python(sql, columns, rows), run_duckdb(sql, columns, rows), strict=True):
        where = f"{sql} with {row}: python {got!r}, duckdb {want!r}"
        if isinstance(want, Exception) or isinstance(got, Exception):
            assert isinstance(want, duckdb.Error) and isinstance(got, FeatureError), where
        elif isinstance(want, float):
            assert type(got) is float and ((math.isnan(got) and math.isnan(want)) or got == want), where
            assert math.isnan(want) or math.copysign(1, got) == math.copysign(1, want), where  # a zero's sign too
        else:
            assert type(got) is type(want) and got == want, where


@pytest.mark.parametrize("sql", [
    "log(a)", "a % 2", "md5(s)", "sum(a)", "a::float", "try_cast(a as integer)", "round(a)", "cast(s as date)",
    "cast(a as integer)", "-i", "1e3 + a", "i // 2", "a between 0 and 1", "s like 'p%'", "a in (1.5, 2.5)",
    "substr(s, 1, 1)", "1.5 + i", "s || 'x'", "nosuchcolumn + 1",
])
def test_what_the_translator_does_not_know_it_refuses(sql):
    columns = {"a": ("DOUBLE", True), "i": ("INTEGER", True), "s": ("VARCHAR", True)}
    with pytest.raises(export.UnsupportedSQL):
        export.translate_expression(sql, columns)
