"""The raw-customer data contract (DESIGN.md §4): validation, type coercion, PII handling.

A source must carry the 42 columns of the seed platform's file; extra columns are allowed. Any
violation raises ``ContractViolation`` naming the file, the column, how many rows break the rule,
a few example row numbers and the reason, before anything is written to the lake.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

INT, FLOAT, STR = "int", "float", "str"


@dataclass(frozen=True)
class Column:
    name: str
    kind: str
    min: float | None = None
    max: float | None = None
    allowed: tuple[str, ...] | None = None
    target: bool = False


def _count(name: str) -> Column:
    return Column(name, INT, 0, None)


# In the seed platform's column order.
CONTRACT: tuple[Column, ...] = (
    Column("customer_id", STR),
    Column("age", INT, 13, 120),
    Column("gender", STR, allowed=("M", "F", "O", "N")),
    Column("location", STR),
    Column("tenure_months", INT, 0, 600),
    _count("sessions_last_7_days"),
    Column("session_duration_avg_minutes", FLOAT, 0, 1440),
    Column("engagement_score", FLOAT, 0, 100, target=True),
    _count("swipes_right_last_30_days"),
    _count("matches_last_30_days"),
    Column("match_success_rate", FLOAT, 0, 1),
    _count("connections_sent"),
    _count("connections_received"),
    _count("total_connections"),
    _count("posts_last_30_days"),
    _count("stories_last_30_days"),
    _count("followers_count"),
    _count("following_count"),
    _count("profile_views_received"),
    Column("content_virality_score", FLOAT, 0, 1),
    _count("gig_applications_sent"),
    _count("gig_applications_received"),
    _count("active_gigs_count"),
    Column("transaction_revenue_last_90_days", FLOAT, 0, None),
    Column("avg_job_completion_rating", FLOAT, 0, 5),
    Column("influence_score", FLOAT, 0, 100),
    Column("risk_score", FLOAT, 0, 100),
    Column("avg_sentiment_score", FLOAT, -1, 1),
    Column("network_centrality", FLOAT, 0, 1),
    Column("content_diversity_score", FLOAT, 0, 1),
    Column("session_consistency_score", FLOAT, 0, 1),
    Column("last_7_day_engagement_trend", FLOAT, -1, 1),
    Column("trust_score", FLOAT, 0, 100),
    Column("response_time_avg_hours", FLOAT, 0, None),
    Column("peak_activity_hour", INT, 0, 23),
    _count("referral_count"),
    Column("time_since_first_transaction_days", INT, -1, None),  # -1: no transaction yet
    _count("premium_features_used_count"),
    Column("social_influence_tier", STR, allowed=("Nano", "Micro", "Mid", "Macro", "Mega")),
    Column("churn_30_day", INT, 0, 1, target=True),
    Column("lifetime_value_usd", FLOAT, 0, None, target=True),
    Column("content_category_primary", STR, target=True),
)
CONTRACT_COLUMNS = tuple(c.name for c in CONTRACT)
TARGETS = tuple(c.name for c in CONTRACT if c.target)
# Direct identifiers: dropped at ingest, they never reach the lake's raw zone or anything after it.
PII_COLUMNS = ("email", "full_name", "phone", "first_name", "last_name", "address", "ip_address")
# Optional extra columns the platform understands when present.
OPTIONAL: tuple[Column, ...] = (
    Column("platform", STR), Column("acquisition_channel", STR),
    Column("signup_date", "date"), Column("last_active_date", "date"),
)


@dataclass
class ContractViolation(ValueError):
    source: str
    column: str | None
    reason: str
    rows: int = 0
    examples: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        where = f"column '{self.column}'" if self.column else "file"
        rows = f"{self.rows} row(s), e.g. data rows {self.examples}: " if self.rows else ""
        return f"{self.source}: {where}: {rows}{self.reason}"


def _fail(source: str, column: str, mask: np.ndarray | pd.Series, reason: str) -> None:
    bad = np.flatnonzero(np.asarray(mask))
    if bad.size:
        # Row numbers are 1-based data rows (a CSV's header line not counted).
        raise ContractViolation(source, column, reason, int(bad.size), [int(i) + 1 for i in bad[:5]])


def _coerce(source: str, col: Column, values: pd.Series) -> pd.Series:
    if col.kind == STR:
        _fail(source, col.name, values.isna(), "missing value")
        out = values.astype(str).str.strip()
        _fail(source, col.name, out == "", "empty string")
        return out
    if col.kind == "date":
        out = pd.to_datetime(values, errors="coerce")
        _fail(source, col.name, out.isna() & values.notna(), "not a date (expected YYYY-MM-DD)")
        return out.dt.normalize()
    num = pd.to_numeric(values, errors="coerce")
    _fail(source, col.name, num.isna() & values.notna(), f"not a number (expected {col.kind})")
    _fail(source, col.name, num.isna(), "missing value")
    if col.kind == INT:
        _fail(source, col.name, num != np.floor(num), "not a whole number")
        return num.astype(np.int64)
    _fail(source, col.name, ~np.isfinite(num), "not a finite number")
    return num.astype(np.float64)


def validate(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check the contract and return a typed, PII-free copy with the contract's columns first."""
    if frame.empty:
        raise ContractViolation(source, None, "no data rows")
    missing = [c for c in CONTRACT_COLUMNS if c not in frame.columns]
    if missing:
        raise ContractViolation(source, missing[0], f"required column missing (all missing: {missing})")
    out: dict[str, pd.Series] = {}
    for col in CONTRACT + tuple(c for c in OPTIONAL if c.name in frame.columns):
        values = _coerce(source, col, frame[col.name].reset_index(drop=True))
        if col.min is not None:
            _fail(source, col.name, values < col.min, f"below the minimum {col.min:g}")
        if col.max is not None:
            _fail(source, col.name, values > col.max, f"above the maximum {col.max:g}")
        if col.allowed is not None:
            _fail(source, col.name, ~values.isin(col.allowed), f"not one of {list(col.allowed)}")
        out[col.name] = values
    ids = out["customer_id"]
    _fail(source, "customer_id", ids.duplicated(keep="first"), "duplicate customer_id")
    return pd.DataFrame(out)
