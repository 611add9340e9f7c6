"""Requests and responses of the prediction API, with the request models generated from the data contract.

`CustomerRecord` has one field per raw column of `core.data.contract` (every non-target CONTRACT column,
required, and the OPTIONAL columns, nullable, default null), built with `pydantic.create_model` from the
same `Column`s ingest validates with, so a rule changed there changes here: ranges become ge/le, allowed
values a Literal, shapes a regular expression; unknown fields are refused. Each field's description is
the contract's unit and scale in words, so the OpenAPI document explains it, and `contract_errors`
rewrites validation errors in ingest's own words ("below the minimum 13: the contract's scale is …").

Types, decided against what ingest accepts. Models are strict, so nothing is converted silently:
an integer column takes a JSON integer (12; not 12.5, not "12", not true, and not 12.0: JSON has
integers, and a client that sends 12.0 has a float in hand), a number column takes any JSON number
(integers too) but not a string or a boolean, and never NaN or ±Infinity (ingest refuses non-finite
values); a date is the text "YYYY-MM-DD" (or a `datetime.date` from Python), not a Unix time or a
datetime. FastAPI validates the parsed JSON (Python objects), so these rules hold there too. Text is
trimmed, as ingest trims it, and an optional text that is blank is null, as ingest reads a blank cell.
Integer columns with no upper limit of meaning are capped where the warehouse stops: 2,147,483,647
where the dbt staging model casts the column to a 32-bit INTEGER (a larger value would fail the weekly
dbt build; `features.INTEGER_CASTS`, read from the compiled SQL), else ingest's 2**62.

`PredictRequest` is a CustomerRecord plus an optional `snapshot_week` (the date the date features are
computed for: days since last active; today, UTC, when absent). `BatchRequest` holds 1..MAX_BATCH of them.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, create_model
from pydantic_core import PydanticCustomError

from engagement_dagster.api.features import INTEGER_CASTS
from engagement_dagster.core.data.contract import CONTRACT, DATE, FLOAT, INT, OPTIONAL, STR, TARGETS, Column

MAX_BATCH = 1000
INGEST_INTEGER_LIMIT = 2**62  # ingest refuses whole numbers beyond ±2**62 (contract._coerce)
SQL_INTEGER_LIMITS = {"INTEGER": 2**31 - 1, "BIGINT": 2**63 - 1}

RECORD_COLUMNS: tuple[Column, ...] = tuple(c for c in CONTRACT if not c.target) + OPTIONAL
COLUMNS: dict[str, Column] = {c.name: c for c in RECORD_COLUMNS}

# A customer of the synthetic snapshot (week 2026-11-16), valid for ingest and for the API alike.
EXAMPLE_CUSTOMER: dict[str, Any] = {
    "customer_id": "67b650ab-3bed-4bec-b0bb-ab3796a9777b", "age": 59, "gender": "M", "location": "US-WA",
    "tenure_months": 39, "sessions_last_7_days": 5, "session_duration_avg_minutes": 8.18,
    "swipes_right_last_30_days": 27, "matches_last_30_days": 4, "match_success_rate": 14.81,
    "connections_sent": 6, "connections_received": 11, "total_connections": 17, "posts_last_30_days": 4,
    "stories_last_30_days": 4, "followers_count": 1383, "following_count": 88, "profile_views_received": 42,
    "content_virality_score": 0.8332, "gig_applications_sent": 3, "gig_applications_received": 0,
    "active_gigs_count": 3, "transaction_revenue_last_90_days": 67.89, "avg_job_completion_rating": 2.96,
    "influence_score": 0.809, "risk_score": 0.5332, "avg_sentiment_score": -0.8844, "network_centrality": 0.4649,
    "content_diversity_score": 0.6543, "session_consistency_score": 0.4158, "last_7_day_engagement_trend": -0.3189,
    "trust_score": 0.3959, "response_time_avg_hours": 5.53, "peak_activity_hour": 19, "referral_count": 0,
    "time_since_first_transaction_days": 429, "premium_features_used_count": 4, "social_influence_tier": "Mid",
    "platform": "android", "acquisition_channel": "partnership", "signup_date": "2023-09-03",
    "last_active_date": "2026-11-10",
}
EXAMPLE_WEEK = "2026-11-16"

KIND_WORDS = {INT: "A whole number", FLOAT: "A number", STR: "Text", DATE: "A date (YYYY-MM-DD)"}


def integer_limit(column: Column) -> tuple[int, str | None]:
    """The largest value the API takes for an integer column, and why when it is not the contract's."""
    if column.max is not None:
        return int(column.max), None
    sql_type = INTEGER_CASTS.get(column.name)
    if sql_type and SQL_INTEGER_LIMITS[sql_type] < INGEST_INTEGER_LIMIT:
        return SQL_INTEGER_LIMITS[sql_type], f"the dbt staging model stores it as a 32-bit {sql_type}"
    return INGEST_INTEGER_LIMIT, "the largest whole number ingest takes"


def describe(column: Column) -> str:
    """A field's description for the OpenAPI document: the contract's rule in words."""
    words = KIND_WORDS[column.kind]
    if column.allowed:
        words = f"One of {', '.join(column.allowed)}"
    elif column.shape:
        words += f": {column.shape}"
    elif column.scale:
        words += f", {column.scale}"
    elif column.kind == FLOAT:
        words += " with no limit of meaning (only watched for drift)"
    if column.kind == INT:
        limit, why = integer_limit(column)
        if why:
            words += f"; at most {limit:,} ({why})"
    if column.nullable:
        words += ". Optional: null or absent when the source does not know it"
    return words + "."


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _iso_date(value: Any) -> Any:
    """A date, or the text YYYY-MM-DD of one: FastAPI validates the parsed JSON (Python objects), where a
    strict date would refuse every string and a lax one would take a Unix time or a midnight datetime."""
    if value is None or (isinstance(value, datetime.date) and not isinstance(value, datetime.datetime)):
        return value
    if isinstance(value, str) and ISO_DATE.fullmatch(value.strip()):
        return value.strip()
    raise PydanticCustomError("date_type", "Input should be a date as YYYY-MM-DD")


# A date field: lax, so that the text of a date converts, behind _iso_date, which lets only that text through.
IsoDate = Annotated[datetime.date, Field(strict=False), BeforeValidator(_iso_date)]


def _blank_to_null(value: str | None) -> str | None:
    return value or None


def _field(column: Column) -> tuple[Any, Any]:
    """(annotation, FieldInfo) of one contract column."""
    constraints: dict[str, Any] = {"description": describe(column)}
    if column.kind in (INT, FLOAT):
        if column.min is not None:
            constraints["ge"] = int(column.min) if column.kind == INT else column.min
        if column.kind == INT:
            constraints["le"] = integer_limit(column)[0]
        elif column.max is not None:
            constraints["le"] = column.max
    if column.pattern:
        constraints["pattern"] = column.pattern
    if column.allowed:
        # Literal matching does not trim: trim first, as ingest does.
        annotation: Any = Annotated[Literal[column.allowed], BeforeValidator(_strip)]
    else:
        annotation = {INT: int, FLOAT: float, STR: str, DATE: IsoDate}[column.kind]
    if column.nullable:
        if column.kind == STR:
            annotation = Annotated[annotation | None, AfterValidator(_blank_to_null)]
        else:
            annotation = annotation | None
        return annotation, Field(None, **constraints)
    return annotation, Field(..., **constraints)


# Strict: no silent conversion (see the module docstring); trimmed text; no NaN or infinity.
RECORD_CONFIG = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True, allow_inf_nan=False,
                           json_schema_extra={"examples": [EXAMPLE_CUSTOMER]})

CustomerRecord = create_model(
    "CustomerRecord",
    __config__=RECORD_CONFIG,
    __doc__="One customer's raw columns, as the data contract defines them (targets excluded).",
    **{column.name: _field(column) for column in RECORD_COLUMNS},
)

WEEK_DESCRIPTION = ("The date the features are computed for (days since last active count to it), as the weekly "
                    "batch uses its snapshot week (a Monday). Default: today, UTC.")


class PredictRequest(CustomerRecord):
    """One customer to score: the contract's columns, and optionally the week."""

    model_config = ConfigDict(json_schema_extra={"examples": [{**EXAMPLE_CUSTOMER, "snapshot_week": EXAMPLE_WEEK}]})

    snapshot_week: IsoDate | None = Field(None, description=WEEK_DESCRIPTION)


class BatchRequest(BaseModel):
    """Up to MAX_BATCH customers to score, for one week."""

    model_config = ConfigDict(extra="forbid", strict=True,
                              json_schema_extra={"examples": [{"customers": [EXAMPLE_CUSTOMER],
                                                               "snapshot_week": EXAMPLE_WEEK}]})

    customers: list[CustomerRecord] = Field(min_length=1, max_length=MAX_BATCH,
                                            description=f"1 to {MAX_BATCH} customers.")
    snapshot_week: IsoDate | None = Field(None, description=WEEK_DESCRIPTION)


class ChurnDriver(BaseModel):
    feature: str = Field(description="A model input (a column of dbt's customer_model_input).")
    contribution: float = Field(description="Its exact TreeSHAP contribution to the churn log-odds.")
    direction: Literal["raises churn risk", "lowers churn risk", "no effect"] = Field(
        description="Which way it pushes the churn probability.")


class Prediction(BaseModel):
    customer_id: str
    engagement_score: float = Field(description="Predicted engagement score, a fraction 0–1.")
    churn_probability: float = Field(description="Calibrated probability of churning within 30 days, 0–1.")
    lifetime_value_usd: float = Field(description="Predicted lifetime value, USD.")
    segment_id: int = Field(description="The customer's behavioural segment (k-means cluster).")
    segment: str = Field(description="The segment's name, from its profile.")
    top_categories: list[str] = Field(description="The three content categories most likely to engage the customer, "
                                                  "best first.")
    anomaly_score: float = Field(description="Isolation-forest anomaly score: higher is more unusual.")
    is_anomaly: bool = Field(description="Whether the customer is flagged as anomalous.")
    churn_drivers: list[ChurnDriver] = Field(description="The three features that move the churn probability most "
                                                         "(empty while churn is served by its naive baseline).")
    model_versions: dict[str, str] = Field(description="Model name → registry version that produced this answer.")
    cached: bool = Field(description="Served from the prediction cache.")
    latency_ms: float = Field(description="Server-side time to answer, milliseconds.")


class BatchResponse(BaseModel):
    predictions: list[Prediction] = Field(description="One per customer, in the request's order.")
    cached: int = Field(description="How many predictions came from the cache.")
    latency_ms: float = Field(description="Server-side time to answer the batch, milliseconds.")


class Health(BaseModel):
    status: str = Field(description="'ok' when every model is loaded.")
    models_loaded: bool
    versions: dict[str, str] = Field(description="Model name → the registry version serving.")


# Pydantic error types → the rule in the words ingest uses (core.data.contract).
NOT_WHOLE = "not a whole number (a JSON integer, e.g. 12)"
TYPE_WORDS = {
    "int_type": NOT_WHOLE, "int_from_float": NOT_WHOLE, "int_parsing": NOT_WHOLE,
    "float_type": "not a number", "float_parsing": "not a number", "finite_number": "not a finite number",
    "string_type": "not text", "date_type": "not a date (expected YYYY-MM-DD)",
    "date_parsing": "not a date (expected YYYY-MM-DD)",
    "date_from_datetime_inexact": "not a date (expected YYYY-MM-DD)",
    "date_from_datetime_parsing": "not a date (expected YYYY-MM-DD)",
    "missing": "required column missing",
}


def _number(value: Any) -> str:
    """A limit as ingest prints it: 0, 13, 0.5, 2147483647 (not 0.0 or 2.14748e+09)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _rule(error: Mapping[str, Any], column: Column) -> str | None:
    kind, ctx = error.get("type"), error.get("ctx") or {}
    scale = f": the contract's scale is {column.scale}" if column.scale else ""
    if kind == "greater_than_equal":
        return f"below the minimum {_number(ctx.get('ge'))}{scale}"
    if kind == "less_than_equal":
        if column.max is None:
            return f"above the maximum {_number(ctx.get('le'))}: {integer_limit(column)[1]}"
        return f"above the maximum {_number(ctx.get('le'))}{scale}"
    if kind == "literal_error":
        return f"not one of {list(column.allowed or ())}"
    if kind == "string_pattern_mismatch":
        return f"not of the expected shape: {column.shape}"
    return TYPE_WORDS.get(kind)


def contract_errors(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validation errors (pydantic's / FastAPI's `exc.errors()`) with each message naming the field and
    the contract's rule, e.g. "age: below the minimum 13: the contract's scale is 13–120 (years; …)".
    Type, loc and input stay as they were."""
    out = []
    for given in errors:
        error = dict(given)
        loc = tuple(error.get("loc") or ())
        name = next((part for part in reversed(loc) if isinstance(part, str)), None)
        if error.get("type") == "extra_forbidden" and name in TARGETS:
            error["msg"] = f"{name}: a target the models predict, not an input"
        elif error.get("type") == "extra_forbidden":
            error["msg"] = f"{name}: not a column of the data contract (unknown fields are refused)"
        elif name in COLUMNS:
            rule = _rule(error, COLUMNS[name])
            error["msg"] = f"{name}: {rule or error.get('msg')}"
        elif name is not None:
            error["msg"] = f"{name}: {error.get('msg')}"
        out.append(error)
    return out
