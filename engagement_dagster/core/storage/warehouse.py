"""Read-only queries on the results warehouse as plain Python: DuckDB locally, Athena on AWS.

No Dagster here: the knowledge-base agent, the API and notebooks query the marts through
`open_results`; the Dagster resources in `engagement_dagster.defs.resources.warehouse` are thin wrappers.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import boto3
import duckdb
import pandas as pd

from engagement_dagster.core import settings

Query = Callable[[str], pd.DataFrame]


def connect(path: str | Path, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """The local warehouse, opened so that its views find the lake's files.

    The views over the lake (dbt's staging model) name files relative to the lake, which is the
    warehouse's own folder: resolving them there, rather than against the process's working
    directory, keeps the warehouse queryable from anywhere and after the project folder moves."""
    con = duckdb.connect(str(path), read_only=read_only)
    con.execute("SET file_search_path = ?", [str(Path(path).resolve().parent)])
    return con


def duckdb_query(path: str | Path, sql: str) -> pd.DataFrame:
    """One read-only query on the DuckDB file (a connection per query: dbt may write between them)."""
    with connect(path) as con:
        return con.sql(sql).df()


def athena_query(sql: str, workgroup: str, output_location: str, region_name: str | None = None,
                 endpoint_url: str | None = None, poll_seconds: float = 1.0) -> pd.DataFrame:
    """Run one query on Athena and read its result, typed by Athena's own column types."""
    athena = boto3.client("athena", region_name=region_name, endpoint_url=endpoint_url)
    query_id = athena.start_query_execution(
        QueryString=sql, WorkGroup=workgroup,
        ResultConfiguration={"OutputLocation": output_location},
    )["QueryExecutionId"]
    while True:
        status = athena.get_query_execution(QueryExecutionId=query_id)["QueryExecution"]
        state = status["Status"]["State"]
        if state == "SUCCEEDED":
            break
        if state in ("FAILED", "CANCELLED"):
            raise RuntimeError(f"Athena query {sql!r} {state}: "
                               f"{status['Status'].get('StateChangeReason', '')}")
        time.sleep(poll_seconds)
    # The result's column types, from Athena itself (one page of one row is enough) ...
    metadata = athena.get_query_results(QueryExecutionId=query_id, MaxResults=1)["ResultSet"]
    columns = metadata.get("ResultSetMetadata", {}).get("ColumnInfo", [])
    # ... and its rows from the one CSV Athena writes, instead of paging the API.
    location = urlparse(status["ResultConfiguration"]["OutputLocation"])
    s3 = boto3.client("s3", region_name=region_name, endpoint_url=endpoint_url)
    body = s3.get_object(Bucket=location.netloc, Key=location.path.lstrip("/"))["Body"].read()
    return typed_athena_csv(body, columns)


@dataclass(frozen=True)
class Results:
    """The environment's results warehouse: a query function, the schema (DuckDB) or Glue database
    (Athena) the marts live in, and the SQL dialect."""

    query: Query
    schema: str
    dialect: str  # "duckdb" or "athena"
    where: str  # for messages: the file or the workgroup


def open_results() -> Results:
    """The warehouse of the environment switch (ENGAGEMENT_ENV)."""
    if settings.environment() == "aws":
        aws = settings.aws_settings()

        def query(sql: str) -> pd.DataFrame:
            return athena_query(sql, aws["ENGAGEMENT_ATHENA_WORKGROUP"], aws["ENGAGEMENT_ATHENA_STAGING"])

        return Results(query, aws["ENGAGEMENT_GLUE_DATABASE"], "athena",
                       f"Athena workgroup {aws['ENGAGEMENT_ATHENA_WORKGROUP']}")
    path = str(settings.warehouse_path())
    if not settings.warehouse_path().exists():
        raise FileNotFoundError(f"no warehouse at {path}: run `make run` (or `engagement-dagster run`) first")
    return Results(lambda sql: duckdb_query(path, sql), "main", "duckdb", path)


# Athena (Trino) result types → pandas dtypes. Everything else stays text.
_INTEGER = {"tinyint", "smallint", "integer", "int", "bigint"}
_FLOAT = {"real", "float", "double", "decimal"}


def typed_athena_csv(body: bytes, columns: list[dict]) -> pd.DataFrame:
    """Athena's CSV result typed by its ColumnInfo: ids that look like numbers stay text
    (`customer_id` '00042'), integers stay integers with nulls, dates and booleans are parsed."""
    if not body.strip():
        return pd.DataFrame({c["Name"]: pd.Series(dtype="string") for c in columns})
    frame = pd.read_csv(io.BytesIO(body), dtype=str, keep_default_na=False, na_values=[""])
    for column in columns:
        name, kind = column["Name"], column["Type"].lower().split("(")[0]
        values = frame[name]
        if kind in _INTEGER:
            frame[name] = pd.to_numeric(values).astype("Int64")
        elif kind in _FLOAT:
            frame[name] = pd.to_numeric(values).astype("float64")
        elif kind == "boolean":
            frame[name] = values.str.lower().map({"true": True, "false": False}).astype("boolean")
        elif kind == "date" or kind.startswith("timestamp"):
            frame[name] = pd.to_datetime(values)
        else:
            frame[name] = values.astype("string")
    return frame
