"""The knowledge-base agent's read-only SQL tool: one checked SELECT over the results tables.

A language model (or the offline answerer) sends a SQL string; `check_sql` parses it with a real
SQL parser (sqlglot, never string matching on the SQL text), refuses anything that is not one
plain query over the allow-listed tables and columns, and renders the query it will run; `run_sql`
runs that rendered query through an executor and returns a small JSON-able `SqlResult`. Every
refusal is a `SqlRefused` with a short machine-readable ``reason`` and a sentence the caller can
act on (it names the offending statement, table, column or function).

What `check_sql` enforces, in this order:

* exactly one statement (a comment cannot hide a second one: the parser sees it), that parses;
* the statement is a query: SELECT, optionally with WITH and UNION/INTERSECT/EXCEPT of SELECTs;
  INSERT, UPDATE, DELETE, MERGE, CREATE, DROP, ALTER, COPY, ATTACH, PRAGMA, SET, INSTALL, LOAD,
  EXPORT, CALL, DESCRIBE, SHOW, ... anywhere in the tree are refused (``not_select``);
* tables: every table reference that is not a CTE visible at that point (a CTE is visible in the
  query that defines it, in later CTEs of the same WITH, and in itself when RECURSIVE) must be in
  the allow-list; a CTE may not be named like an allowed table (no shadowing). A schema-qualified
  name is allowed only with the policy's schema (or ``main`` for DuckDB); catalog-qualified names
  are refused. Table functions (``read_csv``, ``read_parquet``, ``glob``, ``range``, ...) and
  file-path tables (``from 'x.csv'``) are refused, as are column lists on a table alias
  (``from t(a, b)`` renames columns by position, which would reach columns outside the allow-list);
* functions: known file/system functions are refused wherever they appear; a function sqlglot does
  not know (``exp.Anonymous``) must be in `ALLOWED_UNKNOWN_FUNCTIONS`; for Athena, DuckDB's ``::``
  cast is refused (sqlglot would accept it);
* columns: the query is qualified against the allow-list (sqlglot's ``qualify``), so ``*`` expands
  to the allowed columns only, and then every column must resolve to an allowed column of an
  allowed table or to a column the query itself defines (a CTE, a subquery, an alias). A bare
  table alias used as a value (DuckDB's whole-row struct) is refused. PIVOT/UNPIVOT and NATURAL
  joins (which depend on columns outside the allow-list) are refused;
* rows: the rendered query ends in ``LIMIT max_rows + 1`` (a smaller literal LIMIT the user wrote
  is kept), and `run_sql` refuses a result with more than ``max_rows`` rows (``too_many_rows``).

The rendered SQL (`CheckedQuery.sql`) is what runs: comments are dropped, identifiers are
qualified, real tables get the policy's schema, and it is parsed again to be sure it is still one
query. `duckdb_executor` adds the engine's own guards: a read-only connection with external
access (files, network, extensions) disabled, the engine's own statement check, and a timeout that
interrupts the query.

Plain Python, no Dagster.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import OptimizeError, SqlglotError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, traverse_scope
from sqlglot.tokens import TokenType

from engagement_dagster.core.data.contract import is_pii

if TYPE_CHECKING:
    import pandas as pd

# The dbt marts the agent may query: every one is PII-free by construction (identifiers are
# dropped at ingest, see engagement_dagster.core.data.contract). Each keeps every scored week (snapshot_week).
RESULT_TABLES = (
    "predictions_final",
    "at_risk_customers",
    "high_engagement_customers",
    "churn_by_segment",
    "weekly_prediction_summary",
    "weekly_summary",
)

MAX_SQL_CHARS = 20_000

# Functions that read files, reach the outside or expose the engine's state: refused by name
# wherever they appear (FROM or select list). Lower case; sqlglot's class names are covered too.
FILE_FUNCTIONS = frozenset(
    {
        "read_csv", "read_csv_auto", "readcsv", "read_parquet", "readparquet", "parquet_scan",
        "read_json", "read_json_auto", "read_json_objects", "read_json_objects_auto", "read_ndjson",
        "read_ndjson_auto", "read_ndjson_objects", "read_text", "read_blob", "read_xlsx", "glob",
        "sniff_csv", "parquet_metadata", "parquet_schema", "parquet_file_metadata", "parquet_kv_metadata",
        "iceberg_scan", "iceberg_metadata", "iceberg_snapshots", "delta_scan", "st_read", "sqlite_scan",
        "sqlite_attach", "postgres_scan", "postgres_attach", "mysql_scan", "to_file", "tofile",
    }
)
SYSTEM_FUNCTIONS = frozenset(
    {
        "getenv", "current_setting", "query", "query_table", "columns", "getvariable", "setseed",
        "nextval", "currval", "secret", "which_secret", "load_extension", "json_execute_serialized_sql",
        "sql_auto_complete", "system", "shell",
    }
)
SYSTEM_PREFIXES = ("duckdb_", "pragma_", "pg_")
# Functions sqlglot does not know (it leaves them as exp.Anonymous) that are harmless and useful
# on the marts. Anything else unknown is refused: on Athena, an unknown function is usually a
# DuckDB-only one that would fail there.
ALLOWED_UNKNOWN_FUNCTIONS = frozenset(
    {
        # dates
        "date_part", "datepart", "yearweek", "isoyear", "isodow", "dayname", "monthname", "weekofyear",
        "week", "quarter", "date_sub", "make_date", "now", "today", "strftime", "strptime", "date_format",
        "date_parse", "to_timestamp", "epoch_ms", "day_of_week", "day_of_year",
        # aggregates and statistics
        "histogram", "entropy", "product", "fsum", "kahan_sum", "sumkahan", "reservoir_quantile",
        "approx_percentile", "mode", "count_if", "arg_max", "arg_min", "bool_and", "bool_or",
        # lists and formatting
        "cardinality", "element_at", "list_sum", "bar", "format_bytes", "printf", "format",
    }
)

# Statement and clause kinds that never belong in a read-only query, wherever they appear.
_FORBIDDEN_NODE_NAMES = (
    "Insert", "Update", "Delete", "Merge", "Create", "Drop", "Alter", "Command", "Copy", "Set", "Pragma",
    "Attach", "Detach", "Install", "Use", "Transaction", "Commit", "Rollback", "Describe", "Show",
    "Summarize", "Into", "LoadData", "Kill", "Analyze", "Grant", "Revoke", "Refresh", "Cache", "Uncache",
    "TruncateTable", "Export", "Declare", "Execute", "Prepare",
)
_FORBIDDEN_NODES = tuple(getattr(exp, n) for n in _FORBIDDEN_NODE_NAMES if isinstance(getattr(exp, n, None), type))
_ANONYMOUS = tuple(getattr(exp, n) for n in ("Anonymous", "AnonymousAggFunc") if hasattr(exp, n))
# DuckDB's whole-row value of a table alias (`select t from tbl t`) and positional columns (`#2`):
# both reach columns outside the allow-list.
_WHOLE_ROW = tuple(getattr(exp, n) for n in ("TableColumn",) if hasattr(exp, n))
_POSITIONAL = tuple(getattr(exp, n) for n in ("PositionalColumn",) if hasattr(exp, n))
# First words of statements that are not queries, for a `not_select` refusal when sqlglot cannot parse one.
_STATEMENT_WORDS = frozenset(
    {
        "ALTER", "ANALYZE", "ATTACH", "BEGIN", "CALL", "CHECKPOINT", "COMMIT", "COPY", "CREATE", "DEALLOCATE",
        "DELETE", "DESCRIBE", "DETACH", "DROP", "EXECUTE", "EXPLAIN", "EXPORT", "FORCE", "GRANT", "IMPORT",
        "INSERT", "INSTALL", "LOAD", "MERGE", "MSCK", "PIVOT", "PRAGMA", "PREPARE", "REFRESH", "REPLACE",
        "RESET", "REVOKE", "ROLLBACK", "SET", "SHOW", "SUMMARIZE", "TRUNCATE", "UNLOAD", "UNPIVOT", "UPDATE",
        "UPSERT", "USE", "VACUUM",
    }
)


class SqlRefused(ValueError):
    """A query the tool will not run (or could not finish).

    ``reason`` is a short machine-readable code: ``parse_error``, ``multiple_statements``,
    ``not_select``, ``file_function``, ``table_not_allowed``, ``schema_not_allowed``,
    ``column_not_allowed``, ``function_not_allowed``, ``dialect_syntax``, ``too_many_rows``,
    ``timeout`` or ``query_error`` (the database rejected a checked query, e.g. a type error).
    ``str()`` is a sentence the sender can act on.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, str]:
        return {"refused": self.reason, "message": self.message}


@dataclass(frozen=True)
class SqlPolicy:
    """What the tool may run: allowed table -> allowed columns, and the limits.

    Names are compared in lower case. Columns that `engagement_dagster.core.data.contract.is_pii` flags are
    removed from every allow-list (only PII-free tables are ever offered). ``*`` expands to the
    allowed columns only (in alphabetical order: an allow-list has no column order), so a partial
    allow-list never leaks the rest of a table.
    """

    tables: Mapping[str, frozenset[str]]
    max_rows: int = 200
    timeout_seconds: float = 10.0
    dialect: str = "duckdb"  # "duckdb" locally, "athena" on AWS
    schema: str | None = None  # qualify table names with it when rendering (the Athena database)

    def __post_init__(self) -> None:
        cleaned = {
            str(t).lower(): frozenset(c.lower() for c in cols if not is_pii(c)) for t, cols in self.tables.items()
        }
        object.__setattr__(self, "tables", cleaned)
        if self.max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        if self.timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")

    @property
    def allowed_schemas(self) -> frozenset[str]:
        names = {self.schema.lower()} if self.schema else set()
        if self.dialect == "duckdb":
            names.add("main")
        return frozenset(names)

    def describe(self) -> str:
        """The allow-list in words, for a prompt or a refusal: one line per table."""
        lines = [f"{t}({', '.join(sorted(cols))})" for t, cols in sorted(self.tables.items())]
        return "\n".join(lines)


@dataclass(frozen=True)
class CheckedQuery:
    sql: str  # rendered in policy.dialect, tables qualified, LIMIT max_rows + 1 enforced
    tables: tuple[str, ...]  # the allowed tables it reads
    columns: tuple[str, ...]  # "table.column" for every allowed column it reads


@dataclass(frozen=True)
class SqlResult:
    sql: str
    columns: list[str]
    rows: list[list] = field(default_factory=list)  # JSON-able values
    row_count: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "sql": self.sql,
            "columns": self.columns,
            "rows": self.rows,
            "row_count": self.row_count,
            "seconds": self.seconds,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# check_sql


def check_sql(sql: str, policy: SqlPolicy) -> CheckedQuery:
    """Parse, check and render one read-only query; raise `SqlRefused` with the reason otherwise."""
    tree = _parse_one(sql, policy)
    try:
        tree = _unwrap_parentheses(tree)
        _refuse_forbidden_nodes(tree)
        if policy.dialect != "duckdb":
            _refuse_duckdb_casts(sql, policy)
        _check_tables(tree, policy)
        _check_functions(tree)
        _name_outer_expressions(tree, policy)
        qualified = _qualify(tree, policy)
        tables, columns = _check_columns(qualified, policy)
        _enforce_limit(qualified, policy.max_rows + 1)
        if policy.schema:
            for table in _real_tables(qualified):
                table.set("db", exp.to_identifier(policy.schema))
        rendered = qualified.sql(dialect=policy.dialect, comments=False, identify=policy.dialect != "duckdb")
    except SqlRefused:
        raise
    except (SqlglotError, RecursionError, KeyError, AttributeError, TypeError, ValueError, IndexError) as e:
        # Anything the analysis cannot follow is refused (fail closed), never run unchecked.
        raise SqlRefused(
            "parse_error", f"The query could not be analysed ({type(e).__name__}: {e}): write a simpler SELECT."
        ) from e
    _parse_one(rendered, policy)  # still exactly one query after rendering
    return CheckedQuery(sql=rendered, tables=tuple(sorted(tables)), columns=tuple(sorted(columns)))


def _parse_one(sql: str, policy: SqlPolicy) -> exp.Expression:
    if not isinstance(sql, str) or not sql.strip():
        raise SqlRefused("parse_error", "No SQL was given: send one SELECT statement.")
    if len(sql) > MAX_SQL_CHARS:
        raise SqlRefused("parse_error", f"The SQL is longer than {MAX_SQL_CHARS} characters: send a shorter query.")
    try:
        statements = [s for s in sqlglot.parse(sql, read=policy.dialect) if s is not None]
    except RecursionError:
        raise SqlRefused("parse_error", "The SQL is nested too deeply: write a simpler SELECT.") from None
    except SqlglotError as e:
        word = _first_word(sql, policy)
        if word in _STATEMENT_WORDS:
            raise SqlRefused("not_select", f"Only read-only SELECT queries are allowed, not {word}.") from None
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SqlRefused(
            "parse_error", f"The SQL could not be parsed ({first}): send one valid SELECT statement."
        ) from None
    if not statements:
        raise SqlRefused("parse_error", "No SQL statement was found (only comments?): send one SELECT statement.")
    if len(statements) > 1:
        kinds = ", ".join(_statement_kind(s) or "?" for s in statements)
        raise SqlRefused(
            "multiple_statements",
            f"Send exactly one SELECT statement; this SQL holds {len(statements)} statements ({kinds}).",
        )
    statement = statements[0]
    if not isinstance(statement, exp.Query):
        kind = _statement_kind(statement) or _first_word(sql, policy) or "this statement"
        raise SqlRefused("not_select", f"Only read-only SELECT queries are allowed, not {kind}.")
    return statement


def _first_word(sql: str, policy: SqlPolicy) -> str | None:
    """The statement's first word (for a refusal when sqlglot cannot parse, e.g. DuckDB's EXPORT)."""
    try:
        tokens = sqlglot.Dialect.get_or_raise(policy.dialect).tokenize(sql)
    except SqlglotError:
        return None
    return tokens[0].text.upper() if tokens else None


def _statement_kind(node: exp.Expression) -> str | None:
    if isinstance(node, exp.Command):
        return str(node.this).upper()
    if isinstance(node, exp.Query):
        return "SELECT"
    if isinstance(node, _FORBIDDEN_NODES) or isinstance(node, exp.Pivot):
        return re.sub(r"(?<!^)(?=[A-Z])", " ", type(node).__name__).upper()
    return None


def _unwrap_parentheses(tree: exp.Expression) -> exp.Expression:
    while isinstance(tree, exp.Subquery):
        if any(v for k, v in tree.args.items() if k != "this"):
            raise SqlRefused(
                "not_select", "Write the query without outer parentheses (e.g. SELECT ... ORDER BY ... LIMIT ...)."
            )
        tree = tree.this
    if not isinstance(tree, exp.Select | exp.SetOperation):
        raise SqlRefused("not_select", "Only read-only SELECT queries are allowed.")
    return tree


def _refuse_forbidden_nodes(tree: exp.Expression) -> None:
    for node in tree.walk():
        if isinstance(node, _FORBIDDEN_NODES):
            kind = _statement_kind(node) or "a command"
            raise SqlRefused("not_select", f"Only read-only SELECT queries are allowed; the query contains {kind}.")
        if isinstance(node, exp.Pivot):
            raise SqlRefused("not_select", "PIVOT/UNPIVOT are not supported: use GROUP BY (with FILTER or CASE).")
        if isinstance(node, exp.Join) and str(node.args.get("method") or "").upper() == "NATURAL":
            raise SqlRefused("not_select", "NATURAL JOIN is not supported: join with ON or USING and named columns.")


def _refuse_duckdb_casts(sql: str, policy: SqlPolicy) -> None:
    tokens = sqlglot.Dialect.get_or_raise(policy.dialect).tokenize(sql)
    if any(t.token_type == TokenType.DCOLON for t in tokens):
        raise SqlRefused(
            "dialect_syntax",
            f"`::` casts are DuckDB syntax and do not run on {policy.dialect}: write CAST(x AS type).",
        )


def _function_name(fn: exp.Func) -> str:
    if isinstance(fn, _ANONYMOUS):
        return str(fn.name).lower()
    return fn.sql_name().lower()


def _function_names(fn: exp.Func) -> set[str]:
    return {_function_name(fn), type(fn).__name__.lower(), str(type(fn).key).lower()}


def _is_system_function(names: set[str]) -> bool:
    return bool(names & SYSTEM_FUNCTIONS) or any(n.startswith(SYSTEM_PREFIXES) for n in names)


def _with_of(node: exp.Expression) -> exp.With | None:
    with_ = node.args.get("with_") or node.args.get("with")
    return with_ if isinstance(with_, exp.With) else None


def _cte_visible(table: exp.Table) -> bool:
    """Whether an unqualified table name refers to a CTE visible at its position (lexical scoping:
    the WITH of an enclosing query, earlier CTEs of the same WITH, the CTE itself when RECURSIVE)."""
    if table.args.get("db") or table.args.get("catalog"):
        return False
    name = table.name.lower()
    child: exp.Expression = table
    node = table.parent
    while node is not None:
        visible: list[exp.Expression] = []
        if isinstance(node, exp.With) and isinstance(child, exp.CTE):
            position = next(i for i, c in enumerate(node.expressions) if c is child)
            visible = list(node.expressions[:position]) + ([child] if node.args.get("recursive") else [])
        elif isinstance(node, exp.Query) and (with_ := _with_of(node)) is not None and child is not with_:
            visible = list(with_.expressions)
        if any(c.alias_or_name.lower() == name for c in visible):
            return True
        child, node = node, node.parent
    return False


def _real_tables(tree: exp.Expression) -> list[exp.Table]:
    return [t for t in tree.find_all(exp.Table) if isinstance(t.this, exp.Identifier) and not _cte_visible(t)]


def _check_tables(tree: exp.Expression, policy: SqlPolicy) -> None:
    allowed = ", ".join(sorted(policy.tables)) or "(none)"
    for cte in tree.find_all(exp.CTE):
        if cte.alias_or_name.lower() in policy.tables:
            raise SqlRefused(
                "table_not_allowed",
                f"The CTE name {cte.alias_or_name} is the name of a table: give the CTE another name.",
            )
    for table in tree.find_all(exp.Table):
        target = table.this
        if isinstance(target, exp.Func):
            names = _function_names(target)
            label = _function_name(target)
            if names & FILE_FUNCTIONS:
                raise SqlRefused(
                    "file_function", f"{label}() reads files, which is not allowed: query the tables {allowed}."
                )
            raise SqlRefused(
                "table_not_allowed", f"The table function {label}() is not allowed: query the tables {allowed}."
            )
        if isinstance(target, exp.Literal) or not isinstance(target, exp.Identifier):
            raise SqlRefused("file_function", f"Reading {table.sql()} is not allowed: query the tables {allowed}.")
        if _cte_visible(table):
            continue
        name = table.name.lower()
        if table.args.get("catalog"):
            raise SqlRefused(
                "schema_not_allowed",
                f"{table.sql(dialect=policy.dialect)}: catalog-qualified names are not allowed; write {name}.",
            )
        db = table.args.get("db")
        if db is not None and db.name.lower() not in policy.allowed_schemas:
            schemas = " or ".join(sorted(policy.allowed_schemas)) or "none"
            raise SqlRefused(
                "schema_not_allowed",
                f"The schema {db.name} is not allowed (allowed: {schemas}); write the table name alone, e.g. {name}.",
            )
        if name not in policy.tables:
            if re.search(r"[./\\*:]", name):
                raise SqlRefused(
                    "file_function", f"Reading the file {table.name!r} is not allowed: query the tables {allowed}."
                )
            raise SqlRefused(
                "table_not_allowed", f"The table {table.name} is not available: the tables you can query are {allowed}."
            )
        alias = table.args.get("alias")
        if isinstance(alias, exp.TableAlias) and alias.columns:
            raise SqlRefused(
                "column_not_allowed",
                f"Column lists on a table alias ({alias.sql()}) rename columns by position: alias the columns "
                "in the SELECT list instead.",
            )


def _check_functions(tree: exp.Expression) -> None:
    for fn in tree.find_all(exp.Func):
        names = _function_names(fn)
        label = _function_name(fn)
        if names & FILE_FUNCTIONS:
            raise SqlRefused("file_function", f"{label}() reads files, which is not allowed.")
        if _is_system_function(names):
            raise SqlRefused("function_not_allowed", f"The function {label}() is not allowed (system function).")
        if isinstance(fn, _ANONYMOUS) and label not in ALLOWED_UNKNOWN_FUNCTIONS:
            raise SqlRefused(
                "function_not_allowed",
                f"The function {label}() is not allowed: use standard SQL functions (COUNT, SUM, AVG, MIN, MAX, "
                "ROUND, CASE, CAST, DATE_TRUNC, ...).",
            )


def _name_outer_expressions(tree: exp.Expression, policy: SqlPolicy) -> None:
    """Give the outer SELECT's unnamed expressions their own text as name (not sqlglot's _col_N)."""
    select = tree
    while isinstance(select, exp.SetOperation):
        select = select.this
    while isinstance(select, exp.Subquery):
        select = select.this
    if not isinstance(select, exp.Select):
        return
    taken = {p.alias_or_name.lower() for p in select.expressions}
    for projection in list(select.expressions):
        if isinstance(projection, exp.Alias | exp.Column | exp.Star):
            continue
        text = projection.sql(dialect=policy.dialect, comments=False)[:60]
        if text.lower() in taken:
            continue
        taken.add(text.lower())
        projection.replace(exp.alias_(projection.copy(), exp.to_identifier(text, quoted=True)))


def _qualify(tree: exp.Expression, policy: SqlPolicy) -> exp.Expression:
    schema = {t: {c: "UNKNOWN" for c in sorted(cols)} for t, cols in policy.tables.items()}
    try:
        return qualify(
            tree.copy(),
            dialect=policy.dialect,
            schema=schema,
            validate_qualify_columns=True,
            quote_identifiers=False,
        )
    except OptimizeError as e:
        column = re.search(r"[Cc]olumn[: ]+'?([A-Za-z0-9_]+)'?", str(e))
        what = f"The column {column.group(1)}" if column else "A column"
        raise SqlRefused(
            "column_not_allowed",
            f"{what} is not one you can query ({str(e).splitlines()[0]}). Allowed columns:\n{policy.describe()}",
        ) from None
    except SqlglotError as e:
        raise SqlRefused("parse_error", f"The query could not be analysed ({str(e).splitlines()[0]}).") from None


def _resolve(scope: Scope, name: str) -> Any:
    current: Scope | None = scope
    while current is not None:
        if name in current.sources:
            return current.sources[name]
        current = current.parent
    return None


def _check_columns(tree: exp.Expression, policy: SqlPolicy) -> tuple[set[str], set[str]]:
    tables: set[str] = set()
    columns: set[str] = set()
    seen: set[int] = set()
    for scope in traverse_scope(tree):
        source_names = {n.lower() for n in scope.sources}
        for column in scope.columns:
            seen.add(id(column))
            if not column.table:
                if column.name.lower() in source_names:
                    raise SqlRefused(
                        "column_not_allowed",
                        f"{column.name} is a table, not a column: select its columns by name.",
                    )
                if _is_output_reference(column):
                    continue
                _refuse_unknown_column(column, policy)
            source = _resolve(scope, column.table)
            if source is None:
                raise SqlRefused(
                    "column_not_allowed", f"{column.sql()}: {column.table} is not a table or alias in the query."
                )
            if isinstance(source, exp.Table):
                table = source.name.lower()
                if table not in policy.tables:  # checked before; kept as a second guard
                    raise SqlRefused("table_not_allowed", f"The table {source.name} is not available.")
                if column.name.lower() not in policy.tables[table]:
                    _refuse_unknown_column(column, policy, table)
                tables.add(table)
                columns.add(f"{table}.{column.name.lower()}")
    for whole_row in tree.find_all(*_WHOLE_ROW):
        raise SqlRefused(
            "column_not_allowed", f"{whole_row.name} is a table, not a column: select the columns you need by name."
        )
    for positional in tree.find_all(*_POSITIONAL):
        raise SqlRefused(
            "column_not_allowed",
            f"{positional.sql(dialect=policy.dialect)}: refer to columns by name, not by position.",
        )
    for column in tree.find_all(exp.Column):
        if id(column) in seen:
            continue
        if isinstance(column.this, exp.Star):
            raise SqlRefused("column_not_allowed", f"{column.sql()} could not be expanded: name the columns.")
        if column.table or not _is_output_reference(column):
            _refuse_unknown_column(column, policy)
    for star in tree.find_all(exp.Star):
        if not isinstance(star.parent, exp.Count):
            raise SqlRefused("column_not_allowed", "This * could not be expanded to allowed columns: name the columns.")
    for table in _real_tables(tree):
        tables.add(table.name.lower())
    return tables, columns


def _is_output_reference(column: exp.Column) -> bool:
    """An unqualified name in ORDER BY / GROUP BY / HAVING / QUALIFY that names an output column."""
    child: exp.Expression = column
    node = column.parent
    while node is not None and not isinstance(node, exp.Select | exp.SetOperation):
        child, node = node, node.parent
    if node is None or child.arg_key not in ("order", "group", "having", "qualify"):
        return False
    sources = set()
    for scope in traverse_scope(node):
        if scope.expression is node:
            sources = {n.lower() for n in scope.sources}
    name = column.name.lower()
    return name not in sources and name in {n.lower() for n in node.named_selects}


def _refuse_unknown_column(column: exp.Column, policy: SqlPolicy, table: str | None = None) -> None:
    if table:
        allowed = ", ".join(sorted(policy.tables[table]))
        raise SqlRefused(
            "column_not_allowed",
            f"The column {column.name} of {table} is not one you can query; its allowed columns are: {allowed}.",
        )
    raise SqlRefused(
        "column_not_allowed",
        f"The column {column.sql()} could not be matched to an allowed column. Allowed columns:\n{policy.describe()}",
    )


def _enforce_limit(tree: exp.Expression, cap: int) -> None:
    limit = tree.args.get("limit")
    if isinstance(limit, exp.Limit):
        value = limit.expression
        options = limit.args.get("limit_options")
        plain = not (options and any(options.args.values()))
        if plain and isinstance(value, exp.Literal) and not value.is_string and str(value.this).isdigit():
            if int(value.this) <= cap:
                return
    elif limit is not None:  # FETCH or an unknown form: replace it
        tree.set("limit", None)
    tree.set("limit", exp.Limit(expression=exp.Literal.number(cap)))


# ---------------------------------------------------------------------------------------------
# run_sql and the DuckDB executor


def run_sql(sql: str, policy: SqlPolicy, execute: Callable[[str], pd.DataFrame]) -> SqlResult:
    """Check `sql`, run the rendered query with `execute`, and return at most ``max_rows`` rows.

    `execute` takes the rendered SQL and returns a DataFrame; it should raise `SqlRefused`
    ("timeout", "query_error") for its own failures, as `duckdb_executor` does.
    """
    checked = check_sql(sql, policy)
    started = time.perf_counter()
    frame = execute(checked.sql)
    seconds = round(time.perf_counter() - started, 4)
    if len(frame) > policy.max_rows:
        raise SqlRefused(
            "too_many_rows",
            f"The query returns more than {policy.max_rows} rows: aggregate (GROUP BY, COUNT) or add LIMIT.",
        )
    columns = [str(c) for c in frame.columns]
    rows = [[_jsonable(v) for v in row] for row in frame.itertuples(index=False, name=None)]
    return SqlResult(sql=checked.sql, columns=columns, rows=rows, row_count=len(rows), seconds=seconds)


def _jsonable(value: Any) -> Any:
    """One result value as JSON: dates as ISO strings, NaN/NaT/inf as None, NumPy as Python."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, dt.datetime | dt.date | dt.time):  # pandas Timestamp is a datetime
        try:
            if value != value:  # NaT
                return None
        except TypeError:
            pass
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    # NumPy and pandas scalars/arrays, without importing them here
    if hasattr(value, "tolist") and callable(value.tolist):
        return _jsonable(value.tolist())
    if hasattr(value, "item") and callable(value.item):
        return _jsonable(value.item())
    if type(value).__name__ in ("NaTType", "NAType"):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def duckdb_executor(path: str | Path, timeout_seconds: float) -> Callable[[str], pd.DataFrame]:
    """An executor over the DuckDB file at `path`: a fresh read-only connection per call, with
    external access (files, network, extension loading) disabled and the configuration locked;
    only one SELECT statement (DuckDB's own parser decides); the query is interrupted after
    `timeout_seconds` (``SqlRefused("timeout")``). Database errors become ``SqlRefused("query_error")``.
    DATE values come back as `datetime.date` (ISO dates in the result, not midnight timestamps).
    """
    import duckdb

    database = str(path)

    def execute(sql: str) -> pd.DataFrame:
        try:
            con = duckdb.connect(
                database,
                read_only=True,
                config={
                    "enable_external_access": False,
                    "autoinstall_known_extensions": False,
                    "autoload_known_extensions": False,
                    "lock_configuration": True,
                },
            )
        except duckdb.Error as e:
            first = str(e).splitlines()[0]
            raise SqlRefused("query_error", f"The warehouse {database} cannot be opened now: {first}") from None
        fired = threading.Event()

        def interrupt() -> None:
            fired.set()
            try:
                con.interrupt()
            except duckdb.Error:  # the query finished and the connection closed meanwhile
                pass

        timer = threading.Timer(timeout_seconds, interrupt)
        timer.daemon = True
        try:
            try:
                statements = con.extract_statements(sql)
            except duckdb.Error as e:
                raise SqlRefused("parse_error", f"DuckDB could not parse the query: {e}") from None
            if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
                raise SqlRefused("not_select", "DuckDB sees something other than one SELECT statement.")
            timer.start()
            try:
                return con.execute(sql).df(date_as_object=True)
            except duckdb.Error as e:
                if fired.is_set() or isinstance(e, duckdb.InterruptException):
                    raise SqlRefused(
                        "timeout",
                        f"The query ran longer than {timeout_seconds:g} s and was stopped: aggregate more, "
                        "filter, or avoid large joins.",
                    ) from None
                first = str(e).splitlines()[0]
                raise SqlRefused("query_error", f"The database rejected the query: {first}") from None
        finally:
            timer.cancel()
            con.close()

    return execute


def duckdb_columns_of(path: str | Path, schema: str = "main") -> Callable[[str], list[str]]:
    """A `columns_of` for `policy_from_manifest`: a table's columns as the DuckDB file holds them."""
    import duckdb

    def columns_of(table: str) -> list[str]:
        con = duckdb.connect(str(path), read_only=True, config={"enable_external_access": False})
        try:
            rows = con.execute(
                "select column_name from information_schema.columns where table_schema = ? and table_name = ? "
                "order by ordinal_position",
                [schema, table],
            ).fetchall()
        finally:
            con.close()
        return [r[0] for r in rows]

    return columns_of


# ---------------------------------------------------------------------------------------------
# the policy from dbt's manifest


def policy_from_manifest(
    manifest_path: str | Path,
    tables: Sequence[str] = RESULT_TABLES,
    *,
    columns_of: Callable[[str], Sequence[str]] | None = None,
    **kwargs: Any,
) -> SqlPolicy:
    """The allow-list for `tables` from dbt's manifest.json (``dbt_project/target/manifest.json``).

    Each table's allowed columns are the columns its dbt model documents, plus, when `columns_of`
    is given (e.g. `duckdb_columns_of(warehouse)`, or the Glue catalog on AWS), the columns the
    table really has: this project's models document only the columns they test, so without
    `columns_of` the allow-list is short (and a model with no documented column is an error).
    Columns that `engagement_dagster.core.data.contract.is_pii` flags are never allowed: only PII-free tables
    belong here. Other keyword arguments go to `SqlPolicy` (max_rows, timeout_seconds, dialect, schema).
    """
    path = Path(manifest_path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: build it with `make manifest`.")
    manifest = json.loads(path.read_text())
    models: dict[str, dict] = {}
    for node in manifest.get("nodes", {}).values():
        if node.get("resource_type") != "model":
            continue
        relation = str(node.get("alias") or node.get("name")).lower()
        models.setdefault(relation, node)
        models.setdefault(str(node.get("name")).lower(), node)
    missing = [t for t in tables if t.lower() not in models]
    if missing:
        raise ValueError(f"{path}: no dbt model for {', '.join(missing)}")
    allowed: dict[str, frozenset[str]] = {}
    for table in tables:
        node = models[table.lower()]
        relation = str(node.get("alias") or node.get("name")).lower()
        names = {str(c.get("name") or key).lower() for key, c in (node.get("columns") or {}).items()}
        if columns_of is not None:
            names |= {str(c).lower() for c in columns_of(relation)}
        names = {n for n in names if not is_pii(n)}
        if not names:
            raise ValueError(
                f"{path}: the model {table} documents no columns; pass columns_of= to read them from the catalog."
            )
        allowed[relation] = frozenset(names)
    return SqlPolicy(tables=allowed, **kwargs)
