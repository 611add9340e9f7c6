"""The agent's tools: read-only SQL on the results tables, one customer's details, and the
explanation of one customer's churn prediction (exact TreeSHAP, computed on demand).

Each tool returns a JSON-able dict, or raises `ToolRefused` with a sentence a user can act on; the
agent turns either into a tool result. The same three tools serve every backend: the offline
answerer calls them itself, a language model calls them by name (`SPECS`).

Plain Python, no Dagster: the lake is any object with ``read_bytes``/``exists``/``list_keys``, the
warehouse a `results.Results`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from engagement_dagster.core.kb import sql_tool
from engagement_dagster.core.kb.llm import ToolCall, ToolResult, ToolSpec
from engagement_dagster.core.ml.models.churn import ChurnModel
from engagement_dagster.core.ml.registry import ModelRegistry
from engagement_dagster.core.storage.warehouse import Results

# What identifies a customer in a question or a tool call: the seed export's UUIDs, or any other
# id of letters, digits, '-' and '_' (the contract's shape for customer_id).
CUSTOMER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
UUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
EXPLAIN_DRIVERS = 5
DETAIL_COLUMNS = (
    "customer_id", "snapshot_week", "segment", "predicted_engagement_score", "churn_probability",
    "predicted_lifetime_value_usd", "value_at_risk_usd", "is_anomaly", "anomaly_score",
    "recommended_category_1", "recommended_category_2", "recommended_category_3",
    "churn_driver_1", "churn_driver_1_contribution", "churn_driver_2", "churn_driver_2_contribution",
    "churn_driver_3", "churn_driver_3_contribution", "churn_drivers_method", "churn_model_version",
    "tenure_months", "platform", "location",
)
MART_OF_DETAILS = "predictions_final"  # keeps every snapshot week: read the agent's week
FEATURES_TABLE = "customer_model_input"  # a feature table: holds the week last materialized only


class ToolRefused(ValueError):
    """A tool call that cannot be answered, with the reason and what to do."""


SPECS = (
    ToolSpec(
        name="query_results",
        description=("Run one read-only SQL SELECT on the results tables (dbt marts: predictions_final, "
                     "at_risk_customers, high_engagement_customers, churn_by_segment, weekly_prediction_summary, "
                     "weekly_summary). Every mart keeps every scored week: filter on snapshot_week "
                     "(e.g. snapshot_week = DATE '2026-11-16') for one week, or group by it for a trend. "
                     "One statement, allowed tables and columns only, at most 200 rows: aggregate with GROUP BY."),
        parameters={"type": "object", "properties": {"sql": {"type": "string", "description": "One SELECT"}},
                    "required": ["sql"]},
    ),
    ToolSpec(
        name="customer_details",
        description="One customer's predictions this week (engagement, churn probability, lifetime value, segment, "
                    "anomaly flag, recommended content, top churn drivers) by customer id.",
        parameters={"type": "object", "properties": {"customer_id": {"type": "string"}},
                    "required": ["customer_id"]},
    ),
    ToolSpec(
        name="explain_prediction",
        description="Why one customer's churn probability is what it is: the features that raise or lower it most, "
                    "by exact TreeSHAP contributions of the churn model that scored the customer.",
        parameters={"type": "object", "properties": {"customer_id": {"type": "string"}},
                    "required": ["customer_id"]},
    ),
)


def _plain(value):
    """A JSON-able scalar: numpy → Python, NaN/NaT → None, timestamps → ISO dates."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, pd.Timestamp):
        return value.date().isoformat() if value == value.normalize() else value.isoformat()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _rounded(value):
    """As `_plain`, floats to 4 decimals: what a reader is shown is exactly what the result holds."""
    value = _plain(value)
    return round(value, 4) if isinstance(value, float) else value


def _customer_id(value: object) -> str:
    text = str(value or "").strip()
    if not CUSTOMER_ID.match(text):
        raise ToolRefused(f"{text!r} is not a customer id (letters, digits, '-' or '_', at most 64 characters)")
    return text


def glue_columns_of(database: str):
    """A table's columns as the Glue Data Catalog lists them (dbt's Athena tables live there)."""
    import boto3

    def columns_of(table: str) -> list[str]:
        described = boto3.client("glue").get_table(DatabaseName=database, Name=table)["Table"]
        return [c["Name"] for c in described["StorageDescriptor"]["Columns"] + described.get("PartitionKeys", [])]
    return columns_of


@dataclass
class Tools:
    lake: object
    results: Results
    week: str
    manifest_path: Path
    sql_timeout_seconds: float = 10.0
    max_rows: int = 200

    def __post_init__(self):
        self._policy: sql_tool.SqlPolicy | None = None

    # --- SQL

    def policy(self) -> sql_tool.SqlPolicy:
        if self._policy is None:
            # The manifest documents only some columns: the rest come from the warehouse's own catalog.
            columns_of = (sql_tool.duckdb_columns_of(self.results.where, self.results.schema)
                          if self.results.dialect == "duckdb" else glue_columns_of(self.results.schema))
            self._policy = sql_tool.policy_from_manifest(
                self.manifest_path, columns_of=columns_of, max_rows=self.max_rows,
                timeout_seconds=self.sql_timeout_seconds, dialect=self.results.dialect,
                schema=self.results.schema if self.results.dialect == "athena" else None)
        return self._policy

    def query_results(self, sql: str) -> dict:
        execute = (sql_tool.duckdb_executor(self.results.where, self.sql_timeout_seconds)
                   if self.results.dialect == "duckdb" else self.results.query)
        try:
            result = sql_tool.run_sql(str(sql), self.policy(), execute)
        except sql_tool.SqlRefused as refused:
            raise ToolRefused(str(refused)) from refused
        return {"sql": result.sql, "columns": result.columns, "rows": result.rows, "row_count": result.row_count,
                "source": f"warehouse:{', '.join(sql_tool.check_sql(str(sql), self.policy()).tables)}"}

    # --- one customer

    def _qualified(self, table: str) -> str:
        return f'"{self.results.schema}"."{table}"'

    def _week_row(self, table: str, customer_id: str, columns: str = "*") -> pd.DataFrame:
        """The customer's row of the agent's week in ``table``, a mart that keeps every week (as a one-row
        frame: the columns keep their types)."""
        # The id matched CUSTOMER_ID (no quotes possible) and the week is a date: both inline as literals.
        frame = self.results.query(f"select {columns} from {self._qualified(table)} "
                                   f"where customer_id = '{customer_id}' and snapshot_week = date '{self.week}'")
        if frame.empty:
            held = self._weeks(table)
            if self.week not in held:
                raise ToolRefused(f"the warehouse's {table} holds no rows for week {self.week} (it holds "
                                  f"{', '.join(held) or 'none'}): ask with --week and one of those")
            raise ToolRefused(f"customer {customer_id} is not in {table} for week {self.week}: check the id")
        return frame.head(1).reset_index(drop=True)

    def _weeks(self, table: str) -> list[str]:
        frame = self.results.query(f"select distinct snapshot_week as w from {self._qualified(table)}")
        return sorted(str(_plain(w))[:10] for w in frame["w"])

    def _feature_row(self, customer_id: str) -> pd.DataFrame:
        """The customer's model-input row. The feature table holds one week, the last materialized: a row
        of another week than the agent's is refused, naming the week it holds."""
        frame = self.results.query(f"select * from {self._qualified(FEATURES_TABLE)} "
                                   f"where customer_id = '{customer_id}'")
        if frame.empty:
            raise ToolRefused(f"customer {customer_id} is not in {FEATURES_TABLE} (the warehouse holds the features "
                              f"of week {', '.join(self._weeks(FEATURES_TABLE)) or 'none'}): check the id")
        week = str(_plain(frame["snapshot_week"].iloc[0]))[:10]
        if week != self.week:
            raise ToolRefused(f"the warehouse's {FEATURES_TABLE} holds week {week}, not {self.week}: explanations "
                              f"need the features of the week last materialized; ask with --week {week}")
        return frame.head(1).reset_index(drop=True)

    def customer_details(self, customer_id: str) -> dict:
        customer_id = _customer_id(customer_id)
        row = self._week_row(MART_OF_DETAILS, customer_id, ", ".join(DETAIL_COLUMNS)).iloc[0]
        return {"customer": {c: _rounded(row[c]) for c in DETAIL_COLUMNS}, "source": f"warehouse:{MART_OF_DETAILS}"}

    def explain_prediction(self, customer_id: str) -> dict:
        """Exact TreeSHAP of the churn model version that scored the customer, on the customer's
        model-input row: each feature's contribution to the churn log-odds (before calibration)."""
        customer_id = _customer_id(customer_id)
        started = time.perf_counter()
        scored = self._week_row(MART_OF_DETAILS, customer_id, "customer_id, snapshot_week, churn_probability, "
                                                               "churn_model_version")
        version = str(scored["churn_model_version"].iloc[0])
        if version == "baseline":
            raise ToolRefused("this week's churn probabilities come from the naive baseline (no churn model passed "
                              "the promotion gate), which gives every customer the base rate: there are no drivers")
        features = self._feature_row(customer_id)
        model = ModelRegistry(self.lake).load("churn_model", version)
        if not isinstance(model, ChurnModel):
            raise ToolRefused(f"churn_model {version} is not a tree model: it has no TreeSHAP explanation")
        contrib = model.contributions(features, approximate=False)[0]
        bias, values = float(contrib[-1]), contrib[:-1]
        order = np.argsort(-np.abs(values), kind="stable")[:EXPLAIN_DRIVERS]
        drivers = [{"feature": model.spec.columns[i], "value": _rounded(features[model.spec.columns[i]].iloc[0]),
                    "contribution_log_odds": round(float(values[i]), 4),
                    "direction": "raises the churn risk" if values[i] > 0 else "lowers the churn risk"}
                   for i in order]
        probability = float(model.predict(features)["churn_probability"].iloc[0])
        return {
            "customer_id": customer_id, "snapshot_week": self.week, "churn_model_version": version,
            "churn_probability": round(probability, 4),
            "churn_probability_in_mart": round(float(scored["churn_probability"].iloc[0]), 4),
            "base_log_odds": round(bias, 4), "log_odds": round(bias + float(values.sum()), 4),
            "drivers": drivers, "method": "exact TreeSHAP (xgboost pred_contribs), log-odds before calibration",
            "seconds": round(time.perf_counter() - started, 3),
            "source": f"lake:models/churn_model/{version} + warehouse:{FEATURES_TABLE}",
        }

    # --- dispatch

    def call(self, name: str, arguments: dict) -> dict:
        if name == "query_results":
            return self.query_results(arguments.get("sql", ""))
        if name == "customer_details":
            return self.customer_details(arguments.get("customer_id", ""))
        if name == "explain_prediction":
            return self.explain_prediction(arguments.get("customer_id", ""))
        raise ToolRefused(f"no tool named {name!r}: the tools are {', '.join(s.name for s in SPECS)}")

    def execute(self, call: ToolCall) -> ToolResult:
        import json

        try:
            return ToolResult(call.id, call.name, json.dumps(self.call(call.name, call.arguments), default=str))
        except ToolRefused as refused:
            return ToolResult(call.id, call.name, json.dumps({"refused": str(refused)}), is_error=True)


def explanation_in_words(result: dict) -> list[str]:
    """The explanation as sentences, every number taken from the tool's result."""
    lines = [(f"Customer {result['customer_id']} (week of {result['snapshot_week']}): churn probability "
              f"{result['churn_probability_in_mart']:.4f}, scored by churn_model {result['churn_model_version']}. "
              f"Its churn log-odds are {result['log_odds']:+.4f} against a base of {result['base_log_odds']:+.4f}; "
              "the features that moved them most (exact TreeSHAP):")]
    for d in result["drivers"]:
        lines.append(f"- {d['feature']} = {d['value']} {d['direction']} ({d['contribution_log_odds']:+.4f} log-odds)")
    return lines
