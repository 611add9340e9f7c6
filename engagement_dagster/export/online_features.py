"""The dbt feature models as a Python function: the online features of the prediction API, generated.

dbt is the one definition of the features. This export compiles the models that `customer_model_input`
is built from (stg_customers → customer_features → customer_model_input, for the DuckDB target, macros
expanded) with `dbt compile`, parses the compiled SQL with sqlglot and translates every column the
models read (roles id, week, protected, feature, categorical in the model's YAML; not the targets or the
split) into one Python function over a raw customer row. The result is the committed module
`engagement_dagster/api/features_generated.py`; the API imports it and never imports dbt or sqlglot.

The translation is exact or it refuses. Each SQL construct it knows maps to Python with DuckDB's
semantics (types and implicit casts, integer range checks, IEEE division and logarithm, NaN ordering,
NULL propagation and three-valued logic; `engagement_dagster.api.sql_semantics`); anything else (a
function, an operator, a type, a clause such as GROUP BY, a join that is not the row with itself, a
WHERE other than the snapshot-week filter, a feature that reads a target) raises `UnsupportedSQL`
naming the model and column, so a dbt change the translator does not understand fails the export
instead of serving a different number. Columns no output needs (targets, the hash-based split) are
never translated.

    python -m engagement_dagster.export.online_features            # rewrite the module
    python -m engagement_dagster.export.online_features --check    # exit 1 when it is stale

tests/test_api_features.py fails while the committed module differs from a fresh export, and checks
the function against DuckDB running the same compiled SQL and against the warehouse the graph built.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlglot
from sqlglot import exp

from engagement_dagster.core.data.contract import DATE, FLOAT, INT, LAKE_COLUMNS, STR, TARGETS
from engagement_dagster.core.ml.feature_roles import MODEL_INPUT

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DBT_PROJECT = PROJECT_ROOT / "dbt_project"
GENERATED = PROJECT_ROOT / "engagement_dagster" / "api" / "features_generated.py"
DIALECT = "duckdb"
# The week the models are compiled for. The compiled staging model filters on it; the translation
# accepts exactly that filter and binds the week to the function's `snapshot_week` argument instead.
COMPILE_WEEK = "2026-11-16"
SOURCE = "source.engagement.lake.raw_customers"
OUTPUT_ROLES = ("id", "week", "protected", "feature", "categorical")
FUNCTION = "customer_model_input_row"

# SQL types (DuckDB's names) of values in the translation.
INTEGER, BIGINT, DOUBLE, DECIMAL, VARCHAR, DATE_T, TIMESTAMP, BOOLEAN, NULL = (
    "INTEGER", "BIGINT", "DOUBLE", "DECIMAL", "VARCHAR", "DATE", "TIMESTAMP", "BOOLEAN", "NULL")
INTEGERS = (INTEGER, BIGINT)
NUMBERS = (INTEGER, BIGINT, DOUBLE, DECIMAL)
INTEGER_RANGES = {INTEGER: (-(2**31), 2**31 - 1), BIGINT: (-(2**63), 2**63 - 1)}
# The raw zone's Parquet types (LAKE_SCHEMA): int64, float64, string, date32.
RAW_TYPES = {INT: BIGINT, FLOAT: DOUBLE, STR: VARCHAR, DATE: DATE_T}
CAST_TYPES = {
    exp.DataType.Type.INT: INTEGER, exp.DataType.Type.BIGINT: BIGINT, exp.DataType.Type.DOUBLE: DOUBLE,
    exp.DataType.Type.VARCHAR: VARCHAR, exp.DataType.Type.TEXT: VARCHAR, exp.DataType.Type.DATE: DATE_T,
    exp.DataType.Type.TIMESTAMP: TIMESTAMP, exp.DataType.Type.TIMESTAMPNTZ: TIMESTAMP,
    exp.DataType.Type.BOOLEAN: BOOLEAN,
}
COMPARISONS = {exp.EQ: ("==", "double_eq"), exp.NEQ: ("!=", "double_ne"), exp.LT: ("<", "double_lt"),
               exp.LTE: ("<=", "double_le"), exp.GT: (">", "double_gt"), exp.GTE: (">=", "double_ge")}
ARITHMETIC = {exp.Add: "+", exp.Sub: "-", exp.Mul: "*"}
# Names the generated module imports from engagement_dagster.api.sql_semantics.
HELPERS = ("and3", "check_integer", "day_diff", "div", "double_eq", "double_ge", "double_gt", "double_le",
           "double_lt", "double_ne", "greatest", "least", "ln", "not3", "or3", "out_of_range", "timestamp")


class UnsupportedSQL(ValueError):
    """A construct of the compiled SQL the translator does not know: the export refuses it."""


@dataclass(frozen=True)
class Value:
    """A translated SQL expression: Python code, its SQL type, whether it can be NULL, the raw columns
    it reads, and the Python value of a literal."""

    code: str
    type: str
    nullable: bool
    inputs: frozenset[str] = frozenset()
    literal: object = None
    is_literal: bool = False

    @property
    def is_name(self) -> bool:
        return self.code.isidentifier()


@dataclass
class CompiledModels:
    """What `dbt compile` gives the translation: each model's compiled SQL and relation, in build order."""

    sql: dict[str, str]  # model name → compiled SQL
    relations: dict[str, str]  # model name → relation name ("warehouse"."main"."stg_customers")
    source_relation: str  # the raw zone, as the staging model reads it
    roles: dict[str, str]  # customer_model_input column → meta.role


def compile_models(project_dir: Path = DBT_PROJECT) -> CompiledModels:
    """`dbt compile` of customer_model_input and every model upstream of it, in a scratch target and lake
    (nothing of the project's own target/ or lake is touched), for the local DuckDB target."""
    dbt = Path(sys.executable).parent / "dbt"
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "DBT_TARGET": "local", "ENGAGEMENT_LAKE_DIR": scratch,
               "ENGAGEMENT_SNAPSHOT_WEEK": COMPILE_WEEK, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
        command = [str(dbt) if dbt.exists() else "dbt", "compile", "--select", f"+{MODEL_INPUT}", "--quiet",
                   "--project-dir", str(project_dir), "--profiles-dir", str(project_dir),
                   "--target-path", f"{scratch}/target", "--log-path", f"{scratch}/logs"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"dbt compile failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        manifest_path = Path(scratch) / "target" / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
    nodes = manifest["nodes"]
    by_name = {n["name"]: key for key, n in nodes.items() if n["resource_type"] == "model"}
    order: list[str] = []

    def visit(key: str) -> None:
        for upstream in nodes[key]["depends_on"]["nodes"]:
            if upstream.startswith("model.") and nodes[upstream]["name"] not in order:
                visit(upstream)
            elif not upstream.startswith("model.") and upstream != SOURCE:
                raise UnsupportedSQL(f"{nodes[key]['name']} reads {upstream}: the online features read only {SOURCE}")
        order.append(nodes[key]["name"])

    visit(by_name[MODEL_INPUT])
    columns = nodes[by_name[MODEL_INPUT]]["columns"]
    roles = {name: (col.get("meta") or {}).get("role") or ((col.get("config") or {}).get("meta") or {}).get("role")
             for name, col in columns.items()}
    return CompiledModels(
        sql={name: nodes[by_name[name]]["compiled_code"] for name in order},
        relations={name: nodes[by_name[name]]["relation_name"] for name in order},
        source_relation=manifest["sources"][SOURCE]["relation_name"],
        roles=roles,
    )


def _relation_key(node: exp.Expression) -> str:
    """A FROM item, normalized (alias dropped) so that it compares with a relation name from the manifest."""
    node = node.copy()
    node.set("alias", None)
    return node.sql(DIALECT)


def _parse_relation(relation: str) -> str:
    return _relation_key(sqlglot.parse_one(f"select * from {relation}", read=DIALECT).args["from_"].this)


class Relation:
    """The columns of a SELECT (a model or a CTE), each translated on first use."""

    def __init__(self, translator: Translator, name: str, select: exp.Select, scope: dict[str, Relation],
                 week_filter: bool = False):
        self.translator, self.name = translator, name
        self.cache: dict[str, Value] = {}
        self.scope = self._from(select, scope)
        self._check_clauses(select, week_filter)
        self.columns: dict[str, exp.Expression] = {}
        for projection in select.expressions:
            if isinstance(projection, exp.Star):
                self._star(None)
            elif isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star):
                self._star(projection.table)
            elif isinstance(projection, exp.Alias | exp.Column):
                self._add(projection.alias_or_name,
                          projection.this if isinstance(projection, exp.Alias) else projection)
            else:
                raise UnsupportedSQL(f"{name}: a projection without a name: {projection.sql(DIALECT)}")

    def _add(self, column: str, node: exp.Expression) -> None:
        if column in self.columns:
            raise UnsupportedSQL(f"{self.name}: two columns named {column}")
        self.columns[column] = node

    def _star(self, table: str | None) -> None:
        aliases = [table] if table else list(self.scope)
        if not table and len(aliases) != 1:
            raise UnsupportedSQL(f"{self.name}: SELECT * over a join")
        if table not in self.scope and table:
            raise UnsupportedSQL(f"{self.name}: {table}.* names no relation in FROM")
        for column in self.scope[aliases[0]].names():
            self._add(column, exp.column(column, table=aliases[0]))

    def names(self) -> list[str]:
        return list(self.columns)

    def _from(self, select: exp.Select, known: dict[str, Relation]) -> dict[str, Relation]:
        scope = dict(known)  # CTEs of enclosing queries and the upstream relations
        with_ = select.args.get("with_")
        for cte in with_.expressions if with_ else []:
            if not isinstance(cte.this, exp.Select):
                raise UnsupportedSQL(f"{self.name}: CTE {cte.alias} is not a plain SELECT")
            scope[cte.alias] = Relation(self.translator, f"{self.name}__{cte.alias}", cte.this, scope)
        if select.args.get("from_") is None:
            raise UnsupportedSQL(f"{self.name}: a SELECT without FROM")
        items = [select.args["from_"].this] + [j.this for j in select.args.get("joins") or []]
        local: dict[str, Relation] = {}
        for item in items:
            if not isinstance(item, exp.Table):
                raise UnsupportedSQL(f"{self.name}: FROM {item.sql(DIALECT)} is not a table")
            key = _relation_key(item)
            relation = scope.get(key)
            if relation is None:
                raise UnsupportedSQL(f"{self.name}: reads {key}, which is not upstream of {MODEL_INPUT}")
            local[item.alias_or_name] = relation
        self._check_joins(select, local)
        return local

    def _check_joins(self, select: exp.Select, local: dict[str, Relation]) -> None:
        """A join is accepted only when it pairs a customer's row with itself: an inner join on columns
        that both sides compute from the same raw value (the customer's id, unique in every model)."""
        for join in select.args.get("joins") or []:
            on = join.args.get("on")
            if join.kind not in ("", "INNER") or join.side or not isinstance(on, exp.EQ) or join.args.get("using"):
                raise UnsupportedSQL(f"{self.name}: only an inner join ON a = b is supported: {join.sql(DIALECT)}")
            left, right = (self._resolve(side, local) for side in (on.this, on.expression))
            if left.code != right.code or left.nullable:
                raise UnsupportedSQL(f"{self.name}: the join {on.sql(DIALECT)} does not pair a row with itself")

    def _check_clauses(self, select: exp.Select, week_filter: bool) -> None:
        for clause in ("group", "having", "qualify", "order", "limit", "offset", "distinct", "windows", "laterals",
                       "pivots", "sample", "connect", "prewhere"):
            # A model's final ORDER BY orders its rows in storage (customer_model_input: hash order for
            # the scoring shards), never a value: one customer's features are the same either way.
            if clause == "order" and self.name == MODEL_INPUT and not select.args.get("limit"):
                continue
            if select.args.get(clause):
                raise UnsupportedSQL(f"{self.name}: {clause.upper()} is not supported online")
        where = select.args.get("where")
        if where is None:
            return
        expected = f"CAST(snapshot_week AS DATE) = CAST('{COMPILE_WEEK}' AS DATE)"
        if not week_filter or where.this.sql(DIALECT) != expected \
                or self._resolve(where.this.this.this, self.scope).code != "snapshot_week":
            raise UnsupportedSQL(f"{self.name}: WHERE {where.this.sql(DIALECT)}; the only filter supported online "
                                 f"is the week's, {expected} on the raw snapshot_week")

    def _resolve(self, column: exp.Column, scope: dict[str, Relation]) -> Value:
        if not isinstance(column, exp.Column):
            raise UnsupportedSQL(f"{self.name}: join key {column.sql(DIALECT)} is not a column")
        if column.table:
            if column.table not in scope:
                raise UnsupportedSQL(f"{self.name}: {column.sql(DIALECT)} names no relation in FROM")
            return scope[column.table].value(column.name)
        having = [r for r in scope.values() if column.name in r.names()]
        if len(having) != 1:
            raise UnsupportedSQL(f"{self.name}: column {column.name} is {'ambiguous' if having else 'unknown'}")
        return having[0].value(column.name)

    def value(self, column: str) -> Value:
        if column not in self.cache:
            if column not in self.columns:
                raise UnsupportedSQL(f"{self.name}: no column {column}")
            translated = self.translator.expression(self.columns[column], self, column)
            self.cache[column] = self.translator.bind(f"{self.name}__{column}", translated, self.columns[column])
        return self.cache[column]


class RawRelation(Relation):
    """The raw zone's columns: the function's `row` argument, plus the week it is bound to."""

    def __init__(self, translator: Translator, readable: dict[str, tuple[str, bool]], refused: dict[str, str]):
        self.translator, self.name = translator, "raw"
        self.readable, self.refused = readable, refused
        self.cache = {}

    def names(self) -> list[str]:
        return [*self.readable, *self.refused]

    def value(self, column: str) -> Value:
        if column in self.refused:
            raise UnsupportedSQL(f"a feature reads {column}: {self.refused[column]}")
        if column not in self.cache:
            sql_type, nullable = self.readable[column]
            if column == "snapshot_week":
                self.cache[column] = Value("snapshot_week", sql_type, False, frozenset([column]))
            else:
                read = f"row.get({column!r})" if nullable else f"row[{column!r}]"
                if sql_type == DOUBLE:  # a whole number given for a DOUBLE column is still a double
                    read = f"(None if (_raw := {read}) is None else float(_raw))" if nullable else f"float({read})"
                self.translator.statements.append((f"raw__{column}", read, None))
                self.cache[column] = Value(f"raw__{column}", sql_type, nullable, frozenset([column]))
        return self.cache[column]


@dataclass
class Translator:
    """SQL expressions → Python code with DuckDB's semantics; statements in dependency order."""

    statements: list[tuple[str, str, str | None]] = field(default_factory=list)  # (name, code, SQL comment)
    temporaries: int = 0
    integer_casts: dict[str, str] = field(default_factory=dict)  # raw column → narrowest integer type cast to

    def bind(self, name: str, value: Value, node: exp.Expression) -> Value:
        if value.is_name or value.is_literal:
            return value
        self.statements.append((name, value.code, node.sql(DIALECT)))
        return Value(name, value.type, value.nullable, value.inputs)

    def temporary(self) -> str:
        self.temporaries += 1
        return f"_t{self.temporaries}"

    def refuse(self, relation: Relation, column: str, node: exp.Expression, why: str = "") -> UnsupportedSQL:
        return UnsupportedSQL(f"{relation.name}.{column}: {why or 'not supported online'}: {node.sql(DIALECT)}")

    def null_safe(self, template: str, values: Sequence[Value], sql_type: str) -> Value:
        """`template` over the values, NULL when any of them is NULL (SQL's NULL propagation)."""
        inputs = frozenset().union(*(v.inputs for v in values))
        if not any(v.nullable for v in values):
            return Value(template.format(*(v.code for v in values)), sql_type, False, inputs)
        names, tests = [], []
        for v in values:
            if v.nullable and not v.is_name:
                name = self.temporary()
                tests.append(f"({name} := {v.code}) is None")
                names.append(name)
            else:
                if v.nullable:
                    tests.append(f"{v.code} is None")
                names.append(v.code)
        if any(v.type == NULL for v in values):
            return Value("None", sql_type, True, inputs)
        return Value(f"(None if {' or '.join(tests)} else {template.format(*names)})", sql_type, True, inputs)

    # -- expressions -----------------------------------------------------------------------------

    def expression(self, node: exp.Expression, relation: Relation, column: str) -> Value:
        def go(n: exp.Expression) -> Value:
            return self.expression(n, relation, column)

        if isinstance(node, exp.Paren):
            return go(node.this)
        if isinstance(node, exp.Column):
            if isinstance(node.this, exp.Star):
                raise self.refuse(relation, column, node)
            return relation._resolve(node, relation.scope)
        if isinstance(node, exp.Literal):
            return self.literal(node, relation, column)
        if isinstance(node, exp.Null):
            return Value("None", NULL, True, literal=None, is_literal=True)
        if isinstance(node, exp.Boolean):
            return Value(repr(node.this), BOOLEAN, False, literal=node.this, is_literal=True)
        if isinstance(node, exp.Neg):
            inner = go(node.this)
            if inner.is_literal and inner.type in NUMBERS:
                return self.number(-inner.literal, inner.type)
            if inner.type != DOUBLE:  # DuckDB widens -INTEGER where Python cannot tell: refuse rather than guess
                raise self.refuse(relation, column, node, "negation of a non-DOUBLE expression")
            return self.null_safe("(-{0})", [inner], DOUBLE)
        if isinstance(node, exp.Cast | exp.TryCast):
            if isinstance(node, exp.TryCast):
                raise self.refuse(relation, column, node)
            return self.cast(go(node.this), node.to, relation, column, node)
        if type(node) in ARITHMETIC or isinstance(node, exp.Div):
            return self.arithmetic(node, go(node.this), go(node.expression), relation, column)
        if type(node) in COMPARISONS:
            return self.compare(type(node), go(node.this), go(node.expression), relation, column, node)
        if isinstance(node, exp.And | exp.Or):
            left, right = go(node.this), go(node.expression)
            self.expect_boolean([left, right], relation, column, node)
            word = "and" if isinstance(node, exp.And) else "or"
            inputs = left.inputs | right.inputs
            if left.nullable or right.nullable:
                return Value(f"{word}3({left.code}, {right.code})", BOOLEAN, True, inputs)
            return Value(f"({left.code} {word} {right.code})", BOOLEAN, False, inputs)
        if isinstance(node, exp.Not):
            inner = go(node.this)
            self.expect_boolean([inner], relation, column, node)
            if inner.nullable:
                return Value(f"not3({inner.code})", BOOLEAN, True, inner.inputs)
            return Value(f"(not {inner.code})", BOOLEAN, False, inner.inputs)
        if isinstance(node, exp.Is):
            if not isinstance(node.expression, exp.Null):
                raise self.refuse(relation, column, node)
            inner = go(node.this)
            return Value(f"({inner.code} is None)", BOOLEAN, False, inner.inputs)
        if isinstance(node, exp.Case):
            return self.case(node, relation, column)
        if isinstance(node, exp.Coalesce):
            return self.coalesce([go(a) for a in [node.this, *node.expressions]], relation, column, node)
        if isinstance(node, exp.Ln):
            return self.null_safe("ln({0})", [self.to_double(go(node.this), relation, column, node)], DOUBLE)
        if isinstance(node, exp.Abs):
            inner = go(node.this)
            if inner.type == DOUBLE:
                return self.null_safe("abs({0})", [inner], DOUBLE)
            if inner.type in INTEGERS:
                return self.null_safe(f"check_integer(abs({{0}}), {inner.type!r}, {tuple(sorted(inner.inputs))!r})",
                                      [inner], inner.type)
            raise self.refuse(relation, column, node, f"abs of {inner.type}")
        if isinstance(node, exp.Greatest | exp.Least):
            return self.extreme(node, [go(a) for a in [node.this, *node.expressions]], relation, column)
        if isinstance(node, exp.DateDiff):
            return self.date_diff(node, go(node.expression), go(node.this), relation, column)
        raise self.refuse(relation, column, node, f"{type(node).__name__} is not supported online")

    def number(self, value, sql_type: str) -> Value:
        return Value(repr(value), sql_type, False, literal=value, is_literal=True)

    def literal(self, node: exp.Literal, relation: Relation, column: str) -> Value:
        if node.is_string:
            return Value(repr(node.this), VARCHAR, False, literal=node.this, is_literal=True)
        text = node.this
        if text.isdigit():
            value = int(text)
            if value <= INTEGER_RANGES[INTEGER][1]:
                return self.number(value, INTEGER)
            if value <= INTEGER_RANGES[BIGINT][1]:
                return self.number(value, BIGINT)
            raise self.refuse(relation, column, node, "an integer literal beyond BIGINT")
        digits = text.replace(".", "").lstrip("0")
        if "." in text and text.replace(".", "", 1).isdigit() and len(digits) <= 15:
            # DuckDB types 1.0 as DECIMAL; with at most 15 digits it converts to the nearest double,
            # which is what float() gives.
            return self.number(float(text), DECIMAL)
        raise self.refuse(relation, column, node, "a number literal of this form")

    def to_double(self, value: Value, relation: Relation, column: str, node: exp.Expression) -> Value:
        """DuckDB's implicit cast of a number to DOUBLE."""
        if value.type == DOUBLE:
            return value
        if value.type == DECIMAL and value.is_literal:
            return Value(repr(float(value.literal)), DOUBLE, False, literal=float(value.literal), is_literal=True)
        if value.type in INTEGERS:
            if value.is_literal:
                return Value(repr(float(value.literal)), DOUBLE, False, literal=float(value.literal), is_literal=True)
            return self.null_safe("float({0})", [value], DOUBLE)
        if value.type == NULL:
            return Value("None", DOUBLE, True)
        raise self.refuse(relation, column, node, f"{value.type} where a number is expected")

    def cast(self, value: Value, to: exp.DataType, relation: Relation, column: str, node: exp.Expression) -> Value:
        target = CAST_TYPES.get(to.this)
        if target is None or to.expressions:
            raise self.refuse(relation, column, node, f"a cast to {to.sql(DIALECT)}")
        source = value.type
        if source == NULL:
            return Value("None", target, True, value.inputs)
        if source == target:
            return Value(value.code, target, value.nullable, value.inputs, value.literal, value.is_literal)
        if target in INTEGERS and source in INTEGERS:
            low, high = INTEGER_RANGES[target]
            if source == INTEGER or (value.is_literal and low <= value.literal <= high):
                return Value(value.code, target, value.nullable, value.inputs, value.literal, value.is_literal)
            for raw in value.inputs if value.is_name and value.code.startswith("raw__") else ():
                if self.integer_casts.get(raw) != INTEGER:  # the narrowest cast wins
                    self.integer_casts[raw] = target
            columns = tuple(sorted(value.inputs))
            if value.is_name and not value.nullable:  # the common case, inline: no call per value
                return Value(f"({value.code} if {low} <= {value.code} <= {high} else "
                             f"out_of_range({value.code}, {target!r}, {columns!r}))", target, False, value.inputs)
            return self.null_safe(f"check_integer({{0}}, {target!r}, {columns!r})", [value], target)
        if target == DOUBLE and source in (*INTEGERS, DECIMAL):
            return self.to_double(value, relation, column, node)
        if target == TIMESTAMP and source == DATE_T:
            return self.null_safe("timestamp({0})", [value], TIMESTAMP)
        raise self.refuse(relation, column, node, f"a cast from {source} to {target}")

    def arithmetic(self, node: exp.Expression, left: Value, right: Value, relation: Relation, column: str) -> Value:
        for side in (left, right):
            if side.type not in NUMBERS:
                raise self.refuse(relation, column, node, f"arithmetic on {side.type}")
        if isinstance(node, exp.Div) or DOUBLE in (left.type, right.type):
            if DECIMAL in (left.type, right.type) and DOUBLE not in (left.type, right.type):
                raise self.refuse(relation, column, node, "DECIMAL arithmetic")
            if isinstance(node, exp.Div) and (node.args.get("typed") or node.args.get("safe")):
                raise self.refuse(relation, column, node, "typed or safe division")
            a, b = (self.to_double(v, relation, column, node) for v in (left, right))
            template = "div({0}, {1})" if isinstance(node, exp.Div) else f"({{0}} {ARITHMETIC[type(node)]} {{1}})"
            return self.null_safe(template, [a, b], DOUBLE)
        if DECIMAL in (left.type, right.type):
            raise self.refuse(relation, column, node, "DECIMAL arithmetic")
        result = BIGINT if BIGINT in (left.type, right.type) else INTEGER
        symbol = ARITHMETIC[type(node)]
        columns = tuple(sorted(left.inputs | right.inputs))
        # DuckDB raises "Overflow in addition of INT32" where Python ints would grow.
        return self.null_safe(f"check_integer({{0}} {symbol} {{1}}, {result!r}, {columns!r})", [left, right], result)

    def comparable(self, values: list[Value], relation: Relation, column: str, node: exp.Expression) -> list[Value]:
        """Operands of a comparison after DuckDB's implicit casts: numbers with a DOUBLE become DOUBLE."""
        types = {v.type for v in values} - {NULL}
        if types <= set(NUMBERS):
            if DOUBLE in types:
                return [self.to_double(v, relation, column, node) for v in values]
            if DECIMAL in types and not all(v.is_literal or v.type in INTEGERS for v in values):
                raise self.refuse(relation, column, node, "a DECIMAL comparison")
            return values
        if len(types) == 1 and types <= {VARCHAR, DATE_T, TIMESTAMP, BOOLEAN}:
            return values
        raise self.refuse(relation, column, node, f"a comparison of {sorted(types)}")

    def compare(self, kind: type, left: Value, right: Value, relation: Relation, column: str,
                node: exp.Expression) -> Value:
        left, right = self.comparable([left, right], relation, column, node)
        symbol, helper = COMPARISONS[kind]
        if DOUBLE in (left.type, right.type):  # DuckDB: NaN above every number, NaN = NaN
            return self.null_safe(f"{helper}({{0}}, {{1}})", [left, right], BOOLEAN)
        return self.null_safe(f"({{0}} {symbol} {{1}})", [left, right], BOOLEAN)

    def expect_boolean(self, values: list[Value], relation: Relation, column: str, node: exp.Expression) -> None:
        if any(v.type not in (BOOLEAN, NULL) for v in values):
            raise self.refuse(relation, column, node, "a condition that is not BOOLEAN")

    def unify(self, values: list[Value], relation: Relation, column: str, node: exp.Expression) -> list[Value]:
        """Branches of CASE / COALESCE / GREATEST as DuckDB types them: one common type."""
        types = {v.type for v in values} - {NULL}
        if not types:
            return values
        if types <= set(NUMBERS) and len(types) > 1:
            if DOUBLE in types:
                return [self.to_double(v, relation, column, node) for v in values]
            if types == {INTEGER, BIGINT}:
                return [Value(v.code, BIGINT if v.type == INTEGER else v.type, v.nullable, v.inputs, v.literal,
                              v.is_literal) for v in values]
            raise self.refuse(relation, column, node, f"branches of types {sorted(types)}")
        if len(types) > 1:
            raise self.refuse(relation, column, node, f"branches of types {sorted(types)}")
        return values

    def case(self, node: exp.Case, relation: Relation, column: str) -> Value:
        def go(n: exp.Expression) -> Value:
            return self.expression(n, relation, column)

        default = go(node.args["default"]) if node.args.get("default") else Value("None", NULL, True)
        results = self.unify([go(i.args["true"]) for i in node.args["ifs"]] + [default], relation, column, node)
        subject = go(node.this) if node.this else None
        prefix = ""
        if subject is not None and not subject.is_name:
            name = self.temporary()
            prefix, subject = f"({name} := {subject.code}) is not None and ", Value(name, subject.type, False,
                                                                                       subject.inputs)
        conditions = []
        for i, branch in enumerate(node.args["ifs"]):
            if subject is not None:  # CASE x WHEN v: x = v; a NULL x matches nothing
                condition = self.compare(exp.EQ, subject, go(branch.this), relation, column, node)
                code = prefix + condition.code if i == 0 else condition.code
            else:
                condition = go(branch.this)
                self.expect_boolean([condition], relation, column, node)
                code = condition.code  # Python's `if None` is false, as SQL's unknown condition is
            conditions.append(Value(code, BOOLEAN, condition.nullable, condition.inputs))
        code = results[-1].code
        for condition, result in reversed(list(zip(conditions, results[:-1], strict=True))):
            code = f"({result.code} if {condition.code} else {code})"
        sql_type = next((r.type for r in results if r.type != NULL), NULL)
        inputs = frozenset().union(*(v.inputs for v in [*results, *conditions]))
        return Value(code, sql_type, any(r.nullable for r in results), inputs)

    def coalesce(self, values: list[Value], relation: Relation, column: str, node: exp.Expression) -> Value:
        values = self.unify(values, relation, column, node)
        inputs = frozenset().union(*(v.inputs for v in values))
        sql_type = next((v.type for v in values if v.type != NULL), NULL)
        for i, v in enumerate(values):  # arguments after the first that is never NULL are never read
            if not v.nullable:
                values = values[: i + 1]
                break
        code = values[-1].code
        for v in reversed(values[:-1]):
            if v.is_name:
                code = f"({v.code} if {v.code} is not None else {code})"
            else:
                name = self.temporary()
                code = f"({name} if ({name} := {v.code}) is not None else {code})"
        return Value(code, sql_type, values[-1].nullable, inputs)

    def extreme(self, node: exp.Expression, values: list[Value], relation: Relation, column: str) -> Value:
        values = self.unify(values, relation, column, node)
        types = {v.type for v in values} - {NULL}
        if not types or not types <= {*NUMBERS, VARCHAR, DATE_T, TIMESTAMP} or types == {DECIMAL}:
            raise self.refuse(relation, column, node, f"{type(node).__name__.upper()} of {sorted(types)}")
        helper = "greatest" if isinstance(node, exp.Greatest) else "least"
        inputs = frozenset().union(*(v.inputs for v in values))
        return Value(f"{helper}({', '.join(v.code for v in values)})", types.pop(), all(v.nullable for v in values),
                     inputs)

    def date_diff(self, node: exp.DateDiff, start: Value, end: Value, relation: Relation, column: str) -> Value:
        unit = node.args.get("unit")
        if unit is None or unit.name.upper() != "DAY" or not node.args.get("date_part_boundary"):
            raise self.refuse(relation, column, node, "a date difference other than date_diff('day', …)")
        if {start.type, end.type} - {DATE_T, TIMESTAMP}:
            raise self.refuse(relation, column, node, "a date difference of non-dates")
        return self.null_safe("day_diff({0}, {1})", [start, end], BIGINT)


@dataclass
class Translation:
    """The generated function's parts: statements, outputs and what the schema needs to know."""

    statements: list[tuple[str, str, str | None]]
    outputs: dict[str, Value]
    roles: dict[str, str]
    inputs: tuple[str, ...]
    integer_casts: dict[str, str]


def translate(models: CompiledModels) -> Translation:
    """Translate the columns of customer_model_input with an output role, pulling in what they read."""
    translator = Translator()
    readable = {c.name: (RAW_TYPES[c.kind], c.nullable) for c in LAKE_COLUMNS if c.name not in TARGETS}
    readable["snapshot_week"] = (DATE_T, False)
    refused = {t: "a target, which online rows do not have (and no feature may read)" for t in TARGETS}
    raw = RawRelation(translator, readable, refused)
    known: dict[str, Relation] = {_parse_relation(models.source_relation): raw}
    model_input = None
    for name, sql in models.sql.items():
        select = sqlglot.parse_one(sql, read=DIALECT)
        if not isinstance(select, exp.Select):
            raise UnsupportedSQL(f"{name}: not a single SELECT (a UNION or another statement)")
        relation = Relation(translator, name, select, known, week_filter=True)
        known[_parse_relation(models.relations[name])] = relation
        model_input = relation
    outputs = {}
    for column in model_input.names():
        role = models.roles.get(column)
        if role is None:
            raise UnsupportedSQL(f"{MODEL_INPUT}.{column} has no meta.role in the YAML")
        if role in OUTPUT_ROLES:
            outputs[column] = model_input.value(column)
    inputs = tuple(c for c in readable if c in frozenset().union(*(v.inputs for v in outputs.values())))
    return Translation(translator.statements, outputs, {c: models.roles[c] for c in outputs}, inputs,
                       translator.integer_casts)


def _python_string(text: str) -> str:
    if '"""' not in text and "\\" not in text and not text.endswith('"'):
        return '"""' + text + '"""'
    return repr(text)


def _helpers_used(codes: list[str]) -> list[str]:
    return sorted(h for h in HELPERS if any(f"{h}(" in code for code in codes))


def _function_lines(name: str, signature: str, doc: str, statements: list[tuple[str, str, str | None]],
                    outputs: dict[str, Value]) -> list[str]:
    lines = [f"def {name}({signature}) -> dict[str, Any]:", f'    """{doc}"""']
    for local, code, sql in statements:
        if sql:
            lines.append(f"    # {local.replace('__', '.', 1)}: {' '.join(sql.split())}")
        lines.append(f"    {local} = {code}")
    lines.append("    return {")
    lines += [f"        {column!r}: {value.code}," for column, value in outputs.items()]
    lines.append("    }")
    return lines


def render(models: CompiledModels, translation: Translation) -> str:
    """The generated module's source."""
    used = _helpers_used([code for _, code, _ in translation.statements]
                         + [v.code for v in translation.outputs.values()])
    lines = [
        "# ruff: noqa: E501, UP034",
        '"""Online features: dbt\'s `customer_model_input` for one raw customer row, in Python.',
        "",
        "GENERATED by `python -m engagement_dagster.export.online_features` from the compiled SQL of the dbt",
        f"models {', '.join(models.sql)} (DuckDB target; COMPILED_SQL below).",
        "Do not edit: change the dbt models and export again (tests/test_api_features.py fails while this",
        "file is stale).",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "import datetime",
        "from collections.abc import Mapping",
        "from typing import Any",
        "",
        f"from engagement_dagster.api.sql_semantics import {', '.join(used)}",
        "",
        f"COMPILE_WEEK = {COMPILE_WEEK!r}",
        "# The raw columns the features read, and each output column's role in customer_model_input's YAML.",
        f"INPUT_COLUMNS = {translation.inputs!r}",
        f"OUTPUT_ROLES = {json.dumps(translation.roles, indent=4)}",
        "# Raw integer columns the SQL casts to a narrower integer type: larger values fail the dbt build.",
        f"INTEGER_CASTS = {json.dumps(dict(sorted(translation.integer_casts.items())), indent=4)}",
        "COMPILED_SQL = {",
    ]
    for name, sql in models.sql.items():
        lines.append(f"    {name!r}: {_python_string(sql)},")
    lines += [
        "}",
        f"RELATIONS = {json.dumps(models.relations, indent=4)}",
        f"SOURCE_RELATION = {models.source_relation!r}",
        "",
        "",
    ]
    lines += _function_lines(
        FUNCTION, "row: Mapping[str, Any], snapshot_week: datetime.date",
        "One customer's output columns of customer_model_input, as dbt computes them for `snapshot_week`.",
        translation.statements, translation.outputs)
    return "\n".join([*lines, ""])


def translate_expression(sql: str, columns: Mapping[str, tuple[str, bool]]) -> str:
    """Python source of `evaluate(row) -> {"value": ...}` for one SQL expression over columns of the given
    (SQL type, nullable): the translation of a single expression, to test it against DuckDB. Its helpers
    are those of engagement_dagster.api.sql_semantics."""
    translator = Translator()
    raw = RawRelation(translator, dict(columns), {})
    select = sqlglot.parse_one(f"select {sql} as value from raw_rows", read=DIALECT)
    value = Relation(translator, "expression", select, {"raw_rows": raw}).value("value")
    return "\n".join(_function_lines("evaluate", "row: Mapping[str, Any]", sql, translator.statements,
                                      {"value": value}))


def export_source(project_dir: Path = DBT_PROJECT) -> str:
    models = compile_models(project_dir)
    return render(models, translate(models))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engagement_dagster.export.online_features",
                                     description="Generate the API's online features from the dbt feature models.")
    parser.add_argument("--out", type=Path, default=GENERATED, help=f"default: {GENERATED.relative_to(PROJECT_ROOT)}")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when the file differs")
    args = parser.parse_args(argv)
    text = export_source()
    if args.check:
        if not args.out.exists() or args.out.read_text() != text:
            print(f"stale: {args.out} (run `python -m engagement_dagster.export.online_features`)")
            return 1
        print(f"up to date: {args.out}")
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(text.encode())} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
