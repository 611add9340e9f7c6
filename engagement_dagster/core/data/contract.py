"""The raw-customer data contract: one definition that every ingest path validates against.

A source must carry the 42 columns of the seed platform's export
(`customer_engagement_dataset_extended.csv`), in its units: scores are fractions 0–1,
`match_success_rate` a percent 0–100, `avg_sentiment_score` −1…1. Extra columns are allowed;
direct identifiers among them are dropped.

Hard limits are limits of meaning (a percent ≤ 100, an hour 0–23, a count ≥ 0, a fraction 0–1);
a column with no such limit (`last_7_day_engagement_trend`, revenue, LTV) is only watched for
drift, a warning (see ingest.quality_checks). Text columns with a known shape (`location`,
`customer_id`) must match it, which also keeps spreadsheet formulas (a leading =, +, -, @, tab or
carriage return) out; free text is neutralized in the marts (dbt macro `spreadsheet_safe`).

Validation works on Arrow batches, so a 10-million-row file is checked chunk by chunk; any
violation raises ``ContractViolation`` naming the file, the column, how many rows break the rule,
a few example row numbers and the reason, before anything reaches the lake.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

INT, FLOAT, STR, DATE = "int", "float", "str", "date"
ARROW_TYPES = {INT: pa.int64(), FLOAT: pa.float64(), STR: pa.string(), DATE: pa.date32()}

FRACTION, PERCENT, HOUR = "0–1 (a fraction)", "0–100 (a percent)", "0–23 (an hour of the day)"
COUNT = "≥ 0 (a count)"


@dataclass(frozen=True)
class Column:
    name: str
    kind: str
    min: float | None = None
    max: float | None = None
    scale: str | None = None  # the unit in words, quoted when a value falls outside min/max
    allowed: tuple[str, ...] | None = None
    pattern: str | None = None  # a regular expression every value must match from start to end
    shape: str | None = None  # the pattern in words, for messages
    target: bool = False
    nullable: bool = False  # optional columns may be empty; contract columns never

    @property
    def arrow_type(self) -> pa.DataType:
        return ARROW_TYPES[self.kind]


def _count(name: str) -> Column:
    return Column(name, INT, 0, None, COUNT)


def _fraction(name: str, target: bool = False) -> Column:
    return Column(name, FLOAT, 0, 1, FRACTION, target=target)


# In the seed platform's column order.
CONTRACT: tuple[Column, ...] = (
    # UUIDs in the seed's export; any id of letters, digits and . _ : - that starts with a letter or digit.
    Column("customer_id", STR, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
           shape="letters, digits and . _ : - starting with a letter or digit (e.g. a UUID)"),
    Column("age", INT, 13, 120, "13–120 (years; the platform's minimum age is 13)"),
    Column("gender", STR, allowed=("M", "F", "O", "N")),
    Column("location", STR, pattern=r"^[A-Z]{2}(-[A-Z0-9]{1,3})?$",
           shape="a country code with an optional region, e.g. US-CA, UK-LON, DE-BER"),
    Column("tenure_months", INT, 0, None, "≥ 0 (months)"),
    _count("sessions_last_7_days"),
    Column("session_duration_avg_minutes", FLOAT, 0, 1440, "0–1440 (minutes in a day)"),
    _fraction("engagement_score", target=True),
    _count("swipes_right_last_30_days"),
    _count("matches_last_30_days"),
    Column("match_success_rate", FLOAT, 0, 100, PERCENT),
    _count("connections_sent"),
    _count("connections_received"),
    _count("total_connections"),
    _count("posts_last_30_days"),
    _count("stories_last_30_days"),
    _count("followers_count"),
    _count("following_count"),
    _count("profile_views_received"),
    _fraction("content_virality_score"),
    _count("gig_applications_sent"),
    _count("gig_applications_received"),
    _count("active_gigs_count"),
    Column("transaction_revenue_last_90_days", FLOAT, 0, None, "≥ 0 (USD)"),
    Column("avg_job_completion_rating", FLOAT, 1, 5, "1–5 (a rating)"),
    _fraction("influence_score"),
    _fraction("risk_score"),
    Column("avg_sentiment_score", FLOAT, -1, 1, "−1…1 (negative to positive)"),
    _fraction("network_centrality"),
    _fraction("content_diversity_score"),
    _fraction("session_consistency_score"),
    # A change around 0 with no limit of meaning (the seed's export reaches ±1.3): drift is a warning.
    Column("last_7_day_engagement_trend", FLOAT),
    _fraction("trust_score"),
    Column("response_time_avg_hours", FLOAT, 0, None, "≥ 0 (hours)"),
    Column("peak_activity_hour", INT, 0, 23, HOUR),
    _count("referral_count"),
    Column("time_since_first_transaction_days", INT, -1, None, "≥ 0 days, or −1 for no transaction yet"),
    _count("premium_features_used_count"),
    Column("social_influence_tier", STR, allowed=("Nano", "Micro", "Mid", "Macro", "Mega")),
    Column("churn_30_day", INT, 0, 1, "0 or 1", target=True),
    Column("lifetime_value_usd", FLOAT, 0, None, "≥ 0 (USD)", target=True),
    Column("content_category_primary", STR, target=True),  # free text: neutralized in the marts
)
CONTRACT_COLUMNS = tuple(c.name for c in CONTRACT)
TARGETS = tuple(c.name for c in CONTRACT if c.target)
# Direct identifiers: dropped at ingest, they never reach the lake's raw zone or anything after it.
PII_COLUMNS = ("email", "full_name", "phone", "first_name", "last_name", "address", "ip_address")


def is_pii(column: str) -> bool:
    return column.lower() in PII_COLUMNS
# Optional extra columns the platform understands when present (null when a source lacks them).
OPTIONAL: tuple[Column, ...] = (
    Column("platform", STR, nullable=True), Column("acquisition_channel", STR, nullable=True),
    Column("signup_date", DATE, nullable=True), Column("last_active_date", DATE, nullable=True),
)
LAKE_COLUMNS = CONTRACT + OPTIONAL
# The schema of every raw snapshot in the lake, whatever the source.
LAKE_SCHEMA = pa.schema([pa.field(c.name, c.arrow_type) for c in LAKE_COLUMNS])


@dataclass
class ContractViolation(ValueError):
    source: str
    column: str | None
    reason: str
    rows: int = 0
    examples: list[int] = field(default_factory=list)
    hint: str = ""  # what to do about it

    def __str__(self) -> str:
        where = f"column '{self.column}'" if self.column else "file"
        rows = f"{self.rows} row(s), e.g. data rows {self.examples}: " if self.rows else ""
        hint = f". What to do: {self.hint}" if self.hint else ""
        return f"{self.source}: {where}: {rows}{self.reason}{hint}"


FIX_ROWS = "correct those rows in the source and run again"


def _fail(source: str, column: str, mask: pa.Array | pa.ChunkedArray, reason: str, first_row: int,
          hint: str = FIX_ROWS) -> None:
    if not pc.any(mask).as_py():
        return
    bad = pc.indices_nonzero(mask)
    # Row numbers are 1-based data rows of the whole source (a CSV's header line not counted).
    raise ContractViolation(source, column, reason, len(bad),
                            [first_row + int(i) + 1 for i in bad.slice(0, 5).to_pylist()], hint)


def _blank_to_null(values: pa.Array) -> pa.Array:
    text = pc.utf8_trim_whitespace(values)
    return pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)


def _parse_numbers(source: str, col: Column, text: pa.Array, first_row: int) -> pa.Array:
    """Text to numbers. Arrow's cast is the fast path; when it refuses a value, pandas finds which
    rows are not numbers and which are not whole, for the message."""
    try:
        return pc.cast(text, col.arrow_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        parsed = pd.to_numeric(text.to_pandas(), errors="coerce")
        present = text.is_valid().to_numpy(zero_copy_only=False)
        _fail(source, col.name, pa.array(parsed.isna().to_numpy() & present),
              f"not a number (expected {'a whole number' if col.kind == INT else 'a number'})", first_row)
        return pa.array(parsed.to_numpy(dtype="float64"), from_pandas=True)


def _coerce(source: str, col: Column, values: pa.Array, first_row: int) -> pa.Array:
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if col.kind == STR:
        text = values if pa.types.is_string(values.type) else pc.cast(values, pa.string())
        text = _blank_to_null(text.cast(pa.string()))
        if not col.nullable:
            _fail(source, col.name, text.is_null(), "missing value", first_row)
        return text
    if col.kind == DATE:
        if pa.types.is_date32(values.type):
            return values
        if pa.types.is_timestamp(values.type) or pa.types.is_date64(values.type):
            return pc.cast(values, pa.date32(), safe=False)
        text = _blank_to_null(values.cast(pa.string()))
        parsed = pd.to_datetime(text.to_pandas(), errors="coerce", format="mixed")
        _fail(source, col.name, pa.array(parsed.isna().to_numpy() & text.is_valid().to_numpy(zero_copy_only=False)),
              "not a date (expected YYYY-MM-DD)", first_row)
        return pa.array(parsed.dt.date, type=pa.date32(), from_pandas=True)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        number = _parse_numbers(source, col, _blank_to_null(values.cast(pa.string())), first_row)
    elif pa.types.is_boolean(values.type) or pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        number = values
    else:
        raise ContractViolation(source, col.name, f"a {values.type} column where the contract expects {col.kind}")
    _fail(source, col.name, number.is_null(), "missing value", first_row)
    if pa.types.is_floating(number.type):
        _fail(source, col.name, pc.invert(pc.is_finite(number)), "not a finite number", first_row)
        if col.kind == INT:
            _fail(source, col.name, pc.not_equal(pc.floor(number), number), "not a whole number", first_row)
            _fail(source, col.name, pc.greater(pc.abs(number), 2.0**62), "too large for a whole number", first_row)
    return pc.cast(number, col.arrow_type)


def check_column(col: Column, values: pa.Array, source: str, first_row: int = 0) -> pa.Array:
    """One column of a batch typed and checked; ``first_row`` is the batch's offset in the source."""
    values = _coerce(source, col, values, first_row)
    scale = f": the contract's scale is {col.scale}" if col.scale else ""
    hint = f"{FIX_ROWS}; if the whole column is on another scale, convert it to {col.scale}"
    if col.min is not None:
        _fail(source, col.name, pc.less(values, col.min), f"below the minimum {col.min:g}{scale}", first_row, hint)
    if col.max is not None:
        _fail(source, col.name, pc.greater(values, col.max), f"above the maximum {col.max:g}{scale}", first_row, hint)
    if col.allowed is not None:
        _fail(source, col.name, pc.invert(pc.is_in(values, value_set=pa.array(col.allowed))),
              f"not one of {list(col.allowed)}", first_row)
    if col.pattern is not None:
        _fail(source, col.name, pc.invert(pc.match_substring_regex(values, col.pattern)),
              f"not of the expected shape: {col.shape}", first_row)
    return values


def missing_columns(names: list[str]) -> list[str]:
    return [c for c in CONTRACT_COLUMNS if c not in names]


def validate_batch(batch: pa.Table | pa.RecordBatch, source: str, first_row: int = 0) -> pa.Table:
    """A batch of a source typed to LAKE_SCHEMA, or ContractViolation. Optional columns the
    source lacks are null; extra columns are not carried."""
    names = batch.schema.names
    missing = missing_columns(names)
    if missing:
        raise ContractViolation(source, missing[0], f"required column missing (all missing: {missing})",
                                hint="the file must carry the seed platform's 42 columns, named as in its header")
    arrays = []
    for col in LAKE_COLUMNS:
        if col.name in names:
            values = batch.column(col.name)
            values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
            arrays.append(check_column(col, values, source, first_row))
        else:
            arrays.append(pa.nulls(batch.num_rows, col.arrow_type))
    return pa.Table.from_arrays(arrays, schema=LAKE_SCHEMA)
