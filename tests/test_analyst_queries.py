"""docs/analysts.md, the analysts' page: each of its ten queries runs on a warehouse holding two weeks of
the whole graph (DuckDB), returns rows with the columns the page lists for it, and is Trino SQL as written
(what Athena runs): one statement, no DuckDB-only `::` cast, no function sqlglot does not know."""

import re
from dataclasses import dataclass

import duckdb
import pytest
import sqlglot
from sqlglot import exp

from engagement_dagster.core.settings import PROJECT_ROOT
from tests.conftest import KB_WEEKS

PAGE = PROJECT_ROOT / "docs" / "analysts.md"
SECTION = re.compile(r"^## (\d+)\. (.+?)$(.*?)(?=^## |\Z)", re.M | re.S)
COLUMNS = re.compile(r"^Columns: (.+)$", re.M)
SQL = re.compile(r"^```sql\n(.*?)^```", re.M | re.S)


@dataclass(frozen=True)
class Query:
    number: int
    title: str
    columns: list[str]
    sql: str


def analyst_queries(markdown: str) -> list[Query]:
    """Every numbered section of the page with its `Columns:` line and its one SQL block."""
    queries = []
    for number, title, body in SECTION.findall(markdown):
        columns, blocks = COLUMNS.findall(body), SQL.findall(body)
        assert len(columns) == 1 and len(blocks) == 1, f"section {number} needs one Columns: line and one sql block"
        queries.append(Query(int(number), title.strip(), re.findall(r"`([^`]+)`", columns[0]), blocks[0]))
    return queries


QUERIES = analyst_queries(PAGE.read_text())
IDS = [f"{q.number:02d}" for q in QUERIES]


def test_the_page_has_the_ten_queries_each_with_its_columns():
    assert [q.number for q in QUERIES] == list(range(1, 11))
    for query in QUERIES:
        assert query.columns and len(set(query.columns)) == len(query.columns), query.title


@pytest.mark.parametrize("query", QUERIES, ids=IDS)
def test_the_query_is_trino_sql(query):
    assert not any(token.text == "::" for token in sqlglot.tokenize(query.sql, read="trino")), "DuckDB '::' cast"
    statements = sqlglot.parse(query.sql, read="trino")
    assert len(statements) == 1 and isinstance(statements[0], exp.Query)
    unknown = {f.name.lower() for f in statements[0].find_all(exp.Anonymous)}
    assert not unknown, f"functions sqlglot does not know (probably not Trino's): {sorted(unknown)}"
    assert statements[0].sql(dialect="trino")  # and it renders back as Trino


@pytest.fixture(scope="module")
def warehouse(kb_weeks):
    """The DuckDB warehouse of the two-week lake (3,000 customers a week)."""
    root, *_ = kb_weeks
    path = str(root / "warehouse.duckdb")
    with duckdb.connect(path, read_only=True) as con:
        weeks = [str(w) for (w,) in con.sql("select snapshot_week from weekly_summary order by 1").fetchall()]
    assert weeks == list(KB_WEEKS)
    return path


def _run(warehouse: str, sql: str) -> tuple[list[str], list[tuple]]:
    with duckdb.connect(warehouse, read_only=True) as con:
        result = con.sql(sql)
        return list(result.columns), result.fetchall()


@pytest.mark.parametrize("query", QUERIES, ids=IDS)
def test_the_query_returns_rows_with_its_columns_on_two_weeks(warehouse, query):
    columns, rows = _run(warehouse, query.sql)
    assert columns == query.columns
    assert rows, f"{query.title}: no rows"


def test_the_trends_have_a_row_per_week_and_the_last_week_s_lists_are_this_week_s(warehouse):
    by_number = {q.number: q for q in QUERIES}
    for number in (1, 3, 8):  # churn over the weeks, change in value at risk, model versions
        _, rows = _run(warehouse, by_number[number].sql)
        assert [str(r[0]) for r in rows] == list(KB_WEEKS), by_number[number].title
    _, changes = _run(warehouse, by_number[3].sql)
    assert changes[0][2] is None and changes[1][2] == pytest.approx(changes[1][1] - changes[0][1], abs=0.011)

    this_week, last_week = f"date '{KB_WEEKS[1]}'", f"date '{KB_WEEKS[0]}'"
    _, by_segment = _run(warehouse, by_number[2].sql)
    [(at_risk,)] = _run(warehouse, f"select count(*) from at_risk_customers where snapshot_week = {this_week}")[1]
    assert sum(r[1] for r in by_segment) == at_risk
    _, deciles = _run(warehouse, by_number[9].sql)
    assert [r[0] for r in deciles] == list(range(1, 11))
    _, newly = _run(warehouse, by_number[10].sql)
    listed_before = {customer for (customer,) in _run(
        warehouse, f"select customer_id from at_risk_customers where snapshot_week = {last_week}")[1]}
    assert newly and not {r[0] for r in newly} & listed_before
