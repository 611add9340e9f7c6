"""The warehouse the dbt models live in, as a Dagster resource: DuckDB locally, Athena on AWS."""

from __future__ import annotations

import io
import time
from urllib.parse import urlparse

import boto3
import dagster as dg
import duckdb
import pandas as pd
from pydantic import Field


class Warehouse(dg.ConfigurableResource):
    """Abstract warehouse; use DuckDBWarehouse or AthenaWarehouse."""

    def read_table(self, name: str) -> pd.DataFrame:
        raise NotImplementedError

    def query(self, sql: str) -> pd.DataFrame:
        """A read-only query's result (e.g. a dbt test's stored failures)."""
        raise NotImplementedError


class DuckDBWarehouse(Warehouse):
    path: str = Field(description="DuckDB database file that dbt's `local` target writes.")
    schema_name: str = Field(default="main")

    def read_table(self, name: str) -> pd.DataFrame:
        return self.query(f'select * from "{self.schema_name}"."{name}"')

    def query(self, sql: str) -> pd.DataFrame:
        with duckdb.connect(self.path, read_only=True) as con:
            return con.sql(sql).df()


class AthenaWarehouse(Warehouse):
    database: str = Field(description="Glue database dbt's `prod` target writes to.")
    workgroup: str = Field(default="primary")
    output_location: str = Field(description="s3:// prefix for query results.")
    region_name: str | None = Field(default=None)
    endpoint_url: str | None = Field(default=None)
    poll_seconds: float = Field(default=1.0)

    def read_table(self, name: str) -> pd.DataFrame:
        return self.query(f'select * from "{self.database}"."{name}"')

    def query(self, sql: str) -> pd.DataFrame:
        athena = boto3.client("athena", region_name=self.region_name, endpoint_url=self.endpoint_url)
        query_id = athena.start_query_execution(
            QueryString=sql, WorkGroup=self.workgroup,
            ResultConfiguration={"OutputLocation": self.output_location},
        )["QueryExecutionId"]
        while True:
            status = athena.get_query_execution(QueryExecutionId=query_id)["QueryExecution"]
            state = status["Status"]["State"]
            if state == "SUCCEEDED":
                break
            if state in ("FAILED", "CANCELLED"):
                raise RuntimeError(f"Athena query {sql!r} {state}: "
                                   f"{status['Status'].get('StateChangeReason', '')}")
            time.sleep(self.poll_seconds)
        # The result's column types, from Athena itself (one page of one row is enough) ...
        metadata = athena.get_query_results(QueryExecutionId=query_id, MaxResults=1)["ResultSet"]
        columns = metadata.get("ResultSetMetadata", {}).get("ColumnInfo", [])
        # ... and its rows from the one CSV Athena writes, instead of paging the API.
        location = urlparse(status["ResultConfiguration"]["OutputLocation"])
        s3 = boto3.client("s3", region_name=self.region_name, endpoint_url=self.endpoint_url)
        body = s3.get_object(Bucket=location.netloc, Key=location.path.lstrip("/"))["Body"].read()
        return typed_athena_csv(body, columns)


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
