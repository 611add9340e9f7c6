"""Ingest logic: a source streamed through the contract into one Parquet file, its profile, and
the data-quality checks. Knows nothing of Dagster; the `ingest` assets call it.

Every source, a 10-million-row CSV or a frame in memory, takes the same road: Arrow batches are
typed and checked by the contract (contract.py), written as fixed-size row groups to a local
spool file, checked for duplicate ids across the whole file (DuckDB, which spills to disk), then
published to the lake in one atomic step. Memory stays at a few batches whatever the size, and
the same input gives the same bytes however it was chunked.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engagement_dagster.core.data.contract import (
    CONTRACT,
    FLOAT,
    INT,
    LAKE_SCHEMA,
    ContractViolation,
    is_pii,
    validate_batch,
)
from engagement_dagster.core.data.generator import generate_chunks
from engagement_dagster.core.data.sources import open_source

RAW_TABLE, RAW_PREFIX = "raw_customers", "raw/customers"  # catalog table (dbt source) and its lake prefix
ROW_GROUP_ROWS = 131_072  # every raw snapshot is written in row groups of this many rows
DUCKDB_MEMORY = "1GB"  # the duplicate check and the profile spill to disk beyond this


def raw_key(snapshot_week: str) -> str:
    return f"{RAW_PREFIX}/snapshot_week={snapshot_week}/customers.parquet"


def oracle_key(snapshot_week: str) -> str:
    # Outside raw/: nothing that reads raw data (dbt, training) ever globs the truth.
    return f"oracle/customers/snapshot_week={snapshot_week}/truth.parquet"


def read_oracle(lake, snapshot_week: str, customer_ids: Iterable[str]):
    """The generator's truth for `customer_ids` only (the test rows an oracle ceiling is scored on), or
    None for a week from a real source; a large week's file is filtered while read, never loaded whole."""
    key = oracle_key(snapshot_week)
    if not lake.exists(key):
        return None
    uri = lake.uri(key)
    source = pa.BufferReader(lake.read_bytes(key)) if uri.startswith("s3://") else uri
    wanted = pa.array(sorted(set(customer_ids)), pa.string())
    return pq.read_table(source, filters=pc.field("customer_id").isin(wanted)).to_pandas()


def profile_key(snapshot_week: str) -> str:
    # Outside raw/: Athena reads every object under a partition's prefix as Parquet.
    return f"profiles/raw_customers/snapshot_week={snapshot_week}.json"


class RowGroupWriter:
    """Parquet in row groups of exactly ``rows_per_group`` rows (the last one shorter), whatever
    the size of the tables handed to it: the file's bytes do not depend on how a source was chunked."""

    def __init__(self, path: Path, schema: pa.Schema, rows_per_group: int | None = None):
        self.writer = pq.ParquetWriter(path, schema, compression="zstd")
        self.rows_per_group = rows_per_group or ROW_GROUP_ROWS
        self.pending, self.pending_rows, self.rows = [], 0, 0

    def write(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.pending_rows += table.num_rows
        self.rows += table.num_rows
        if self.pending_rows >= self.rows_per_group:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        table = pa.concat_tables(self.pending) if self.pending else None
        self.pending, self.pending_rows = [], 0
        if table is None:
            return
        full = table.num_rows if final else table.num_rows - table.num_rows % self.rows_per_group
        for start in range(0, full, self.rows_per_group):
            self.writer.write_table(table.slice(start, min(self.rows_per_group, full - start)),
                                    row_group_size=self.rows_per_group)
        if full < table.num_rows:
            rest = table.slice(full)
            self.pending, self.pending_rows = [rest], rest.num_rows

    def close(self) -> int:
        self._flush(final=True)
        self.writer.close()
        return self.rows


def _connect(spool_dir: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"set memory_limit = '{DUCKDB_MEMORY}'")
    con.execute(f"set temp_directory = '{spool_dir / 'duckdb_tmp'}'")
    con.execute("set preserve_insertion_order = false")
    return con


def _parquet(path: Path, row_numbers: bool = False) -> str:
    quoted = str(path).replace("'", "''")
    return f"read_parquet('{quoted}'{', file_row_number = true' if row_numbers else ''})"


def check_unique_ids(path: Path, source: str) -> None:
    """Refuse a file whose customer_id repeats, naming the rows of the repeats (1-based)."""
    with _connect(path.parent) as con:
        repeated = con.execute(f"select count(*) from (select customer_id from {_parquet(path)} "
                               "group by customer_id having count(*) > 1)").fetchone()[0]
        if not repeated:
            return
        rows = con.execute(
            f"""select file_row_number + 1 as row_number from (
                    select file_row_number, row_number() over (partition by customer_id order by file_row_number) as k
                    from {_parquet(path, row_numbers=True)}
                    where customer_id in (select customer_id from {_parquet(path)}
                                          group by customer_id having count(*) > 1))
                where k > 1 order by 1""").fetchnumpy()["row_number"]
    raise ContractViolation(source, "customer_id", "duplicate customer_id", len(rows), [int(r) for r in rows[:5]],
                            hint="each customer must appear once per weekly snapshot")


@dataclass
class IngestResult:
    source: str
    rows: int
    pii_columns_dropped: list[str] = field(default_factory=list)


def write_snapshot(batches: Iterable[pa.Table | pa.RecordBatch], source: str, path: Path) -> int:
    """Validate every batch and write the raw snapshot to ``path``; raises ContractViolation
    (leaving ``path`` to be discarded) before the caller publishes anything."""
    writer = RowGroupWriter(path, LAKE_SCHEMA)
    first_row = 0
    try:
        for batch in batches:
            writer.write(validate_batch(batch, source, first_row))
            first_row += batch.num_rows
    finally:
        rows = writer.close()
    if rows == 0:
        raise ContractViolation(source, None, "no data rows")
    check_unique_ids(path, source)
    return rows


def ingest_source(uri: str, path: Path, chunked: bool = True) -> IngestResult:
    """A user's file (CSV, CSV.gz, Parquet; path or URI) through the contract into ``path``.
    ``chunked=False`` reads the whole file first: the same checks and the same bytes, more memory."""
    with open_source(uri) as stream:
        batches: Iterable = stream.batches() if chunked else [pa.Table.from_batches(list(stream.batches()))]
        rows = write_snapshot(batches, uri, path)
        return IngestResult(uri, rows, stream.pii_columns)


def ingest_synthetic(n_customers: int, week: str, seed: int, path: Path, oracle_path: Path) -> IngestResult:
    """The built-in generator, block by block, through the same contract; its truth beside it."""
    source = f"synthetic(n={n_customers}, seed={seed}, week={week})"
    pii: list[str] = []
    oracle_writer: pq.ParquetWriter | None = None

    def batches() -> Iterator[pa.Table]:
        nonlocal oracle_writer
        for chunk in generate_chunks(n_customers, week, seed=seed):
            truth = pa.Table.from_pandas(chunk.oracle, preserve_index=False)
            if oracle_writer is None:
                oracle_writer = pq.ParquetWriter(oracle_path, truth.schema, compression="zstd")
                pii.extend(c for c in chunk.customers.columns if is_pii(c))
            oracle_writer.write_table(truth)
            yield pa.Table.from_pandas(chunk.customers, preserve_index=False)

    try:
        rows = write_snapshot(batches(), source, path)
    finally:
        if oracle_writer is not None:
            oracle_writer.close()
    return IngestResult(source, rows, pii)


# --- The profile of a written snapshot, and the data-quality checks computed from it.

NUMERIC = [c for c in CONTRACT if c.kind in (INT, FLOAT)]


def profile(path: Path) -> dict:
    """Rows, distinct ids, and per contract column its nulls (and for numbers min, max, mean,
    standard deviation): two DuckDB scans of the written file, kept in the lake for next week."""
    parts = ["count(*)"]
    for col in CONTRACT:
        parts.append(f'count(*) - count("{col.name}")')
        if col in NUMERIC:
            parts += [f'min("{col.name}")', f'max("{col.name}")', f'avg("{col.name}")', f'stddev_pop("{col.name}")']
    with _connect(path.parent) as con:
        # Two scans: a DISTINCT beside plain aggregates makes DuckDB take a path ~10× slower.
        values = list(con.execute(f"select {', '.join(parts)} from {_parquet(path)}").fetchone())
        values.insert(1, con.execute(f"select count(distinct customer_id) from {_parquet(path)}").fetchone()[0])
    out = {"rows": int(values.pop(0)), "distinct_customer_ids": int(values.pop(0)),
           "columns_present": pq.read_schema(path).names,
           "columns": {}}
    for col in CONTRACT:
        stats = {"nulls": int(values.pop(0))}
        if col in NUMERIC:
            stats.update(zip(("min", "max", "mean", "std"), (None if v is None else float(v) for v in values[:4]),
                             strict=True))
            del values[:4]
        out["columns"][col.name] = stats
    return out


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    description: str
    metadata: dict
    blocking: bool = True  # False: a warning; the run goes on


DRIFT_SMD = 0.25  # |mean shift| in previous-week standard deviations that counts as drift
DRIFT_STD_RATIO = 1.5  # a spread this many times wider or narrower counts as drift


def drift(current: dict, previous: dict) -> dict[str, str]:
    """Numeric columns whose distribution moved since the previous week: mean shift (standardized
    mean difference) or change of spread. Column → what moved, in words."""
    moved = {}
    for col in NUMERIC:
        now, before = current["columns"][col.name], previous["columns"].get(col.name)
        if not before or before.get("std") is None or now.get("std") is None:
            continue
        std = before["std"] or 1e-12
        smd = (now["mean"] - before["mean"]) / std
        ratio = (now["std"] or 1e-12) / std
        if abs(smd) > DRIFT_SMD or not 1 / DRIFT_STD_RATIO <= ratio <= DRIFT_STD_RATIO:
            moved[col.name] = (f"mean {before['mean']:.4g} → {now['mean']:.4g} ({smd:+.2f} sd), "
                               f"sd {before['std']:.4g} → {now['std']:.4g}")
    return moved


def quality_checks(current: dict, previous: dict | None, max_null_rate: float = 0.0,
                   max_row_change: float = 0.5) -> list[CheckOutcome]:
    """Data-quality checks on a written snapshot's profile (re-checked on what landed, not on the input)."""
    expected = [c.name for c in CONTRACT]
    present = current["columns_present"]
    missing = [c for c in expected if c not in present]
    pii = [c for c in present if is_pii(c)]
    outcomes = [CheckOutcome("schema", not missing and not pii,
                             "all contract columns present, no direct identifiers",
                             {"missing": ", ".join(missing) or "none", "pii_present": ", ".join(pii) or "none"})]
    rows = current["rows"]
    dupes = rows - current["distinct_customer_ids"]
    outcomes.append(CheckOutcome("unique_customer_ids", dupes == 0, "customer_id is unique", {"duplicates": dupes}))
    rates = {name: stats["nulls"] / max(rows, 1) for name, stats in current["columns"].items()}
    worst = max(rates, key=rates.get)
    outcomes.append(CheckOutcome("null_rates", rates[worst] <= max_null_rate,
                                 f"null rate of every contract column <= {max_null_rate}",
                                 {"worst_null_rate": rates[worst], "worst_column": worst}))
    out_of_range = {}
    for col in NUMERIC:
        stats = current["columns"][col.name]
        if (col.min is not None and stats["min"] is not None and stats["min"] < col.min) or (
                col.max is not None and stats["max"] is not None and stats["max"] > col.max):
            out_of_range[col.name] = f"[{stats['min']:g}, {stats['max']:g}] outside [{col.min}, {col.max}]"
    outcomes.append(CheckOutcome("value_ranges", not out_of_range,
                                 "every value inside the contract's limits of meaning",
                                 {"violations": json.dumps(out_of_range) if out_of_range else "none"}))
    if previous is None:
        outcomes.append(CheckOutcome("row_count_change", True, "no previous week to compare with",
                                     {"rows": rows, "previous_rows": 0}))
        outcomes.append(CheckOutcome("distribution_drift", True, "no previous week to compare with", {},
                                     blocking=False))
        return outcomes
    change = abs(rows - previous["rows"]) / previous["rows"] if previous["rows"] else math.inf
    outcomes.append(CheckOutcome("row_count_change", change <= max_row_change,
                                 f"row count within ±{max_row_change:.0%} of the previous week",
                                 {"rows": rows, "previous_rows": previous["rows"], "relative_change": change}))
    moved = drift(current, previous)
    outcomes.append(CheckOutcome(
        "distribution_drift", not moved,
        (f"{len(moved)} column(s) moved since the previous week: {', '.join(moved)}" if moved else
         f"no numeric column moved more than {DRIFT_SMD} sd in mean or {DRIFT_STD_RATIO}× in spread"),
        {"drifted_columns": json.dumps(moved) if moved else "none"}, blocking=False))
    return outcomes
