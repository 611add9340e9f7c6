"""Ingest logic: read a source, enforce the contract, compute the data-quality checks.

Knows nothing of Dagster; the `ingest` assets call it.
"""

from __future__ import annotations

import io
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlparse

import boto3
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from engagement_dagster.contract import CONTRACT, OPTIONAL, PII_COLUMNS, ContractViolation, validate

RAW_TABLE, RAW_PREFIX = "raw_customers", "raw/customers"  # catalog table (dbt source) and its lake prefix


def raw_key(snapshot_week: str) -> str:
    return f"{RAW_PREFIX}/snapshot_week={snapshot_week}/customers.parquet"


def oracle_key(snapshot_week: str) -> str:
    # Outside raw/: nothing that reads raw data (dbt, training) ever globs the truth.
    return f"oracle/customers/snapshot_week={snapshot_week}/truth.parquet"


def _read_uri_bytes(uri: str) -> bytes:
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        return boto3.client("s3").get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"].read()
    if parsed.scheme in ("http", "https"):
        with urllib.request.urlopen(uri, timeout=60) as response:
            return response.read()
    path = parsed.path if parsed.scheme == "file" else uri
    with open(path, "rb") as handle:
        return handle.read()


def read_source(uri: str) -> pd.DataFrame:
    """Read a CSV (optionally gzipped) or Parquet file from a path, file://, s3:// or http(s) URI."""
    name = urlparse(uri).path.lower()
    try:
        data = _read_uri_bytes(uri)
        if name.endswith(".parquet"):
            return pq.read_table(io.BytesIO(data)).to_pandas()
        if name.endswith((".csv", ".csv.gz")):
            if not data.strip():
                raise ContractViolation(uri, None, "empty file")
            compression = "gzip" if name.endswith(".gz") else None
            return pd.read_csv(io.BytesIO(data), compression=compression, dtype={"customer_id": str})
    except ContractViolation:
        raise
    except (OSError, ValueError) as exc:
        raise ContractViolation(uri, None, f"cannot read the file: {exc}") from exc
    raise ContractViolation(uri, None, "unsupported format: expected .csv, .csv.gz or .parquet")


def prepare_snapshot(frame: pd.DataFrame, source: str) -> tuple[pd.DataFrame, list[str]]:
    """Validate and pseudonymize: returns the lake-ready frame and the PII columns dropped.

    Direct identifiers are dropped; customer_id is the platform's surrogate key and stays. Every
    optional column is present (null where the source lacks it) so the raw schema is the same
    for every source and week. Unknown extra columns are not carried: the lake holds the contract.
    """
    typed = validate(frame, source)
    for col in OPTIONAL:
        if col.name not in typed.columns:
            typed[col.name] = pd.Series(pd.NaT if col.kind == "date" else None, index=typed.index,
                                        dtype="datetime64[ns]" if col.kind == "date" else "string")
    dropped = [c for c in frame.columns if c.lower() in PII_COLUMNS]
    return typed, dropped


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    description: str
    metadata: dict


def quality_checks(frame: pd.DataFrame, previous_rows: int | None, max_null_rate: float = 0.0,
                   max_row_change: float = 0.5) -> list[CheckOutcome]:
    """Data-quality checks on a written snapshot (re-checked on what landed, not on the input)."""
    expected = [c.name for c in CONTRACT]
    missing = [c for c in expected if c not in frame.columns]
    pii = [c for c in frame.columns if c.lower() in PII_COLUMNS]
    outcomes = [CheckOutcome("schema", not missing and not pii,
                             "all contract columns present, no direct identifiers",
                             {"missing": ", ".join(missing) or "none", "pii_present": ", ".join(pii) or "none"})]
    dupes = int(frame["customer_id"].duplicated().sum()) if "customer_id" in frame else -1
    outcomes.append(CheckOutcome("unique_customer_ids", dupes == 0, "customer_id is unique", {"duplicates": dupes}))
    rates = frame[[c for c in expected if c in frame]].isna().mean()
    worst = float(rates.max()) if len(rates) else 0.0
    outcomes.append(CheckOutcome("null_rates", worst <= max_null_rate,
                                 f"null rate of every contract column <= {max_null_rate}",
                                 {"worst_null_rate": worst, "worst_column": str(rates.idxmax()) if len(rates) else ""}))
    out_of_range = {}
    for col in CONTRACT:
        if col.name not in frame:
            continue
        values = frame[col.name]
        bad = np.zeros(len(frame), dtype=bool)
        if col.min is not None:
            bad |= (values < col.min).to_numpy()
        if col.max is not None:
            bad |= (values > col.max).to_numpy()
        if col.allowed is not None:
            bad |= (~values.isin(col.allowed)).to_numpy()
        if bad.any():
            out_of_range[col.name] = int(bad.sum())
    outcomes.append(CheckOutcome("value_ranges", not out_of_range,
                                 "every value inside the contract's range or allowed set",
                                 {"violations": str(out_of_range or "none")}))
    change = None if not previous_rows else abs(len(frame) - previous_rows) / previous_rows
    outcomes.append(CheckOutcome("row_count_change", change is None or change <= max_row_change,
                                 f"row count within ±{max_row_change:.0%} of the previous week",
                                 {"rows": len(frame), "previous_rows": previous_rows or 0,
                                  "relative_change": change if change is not None else 0.0}))
    return outcomes
