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
        # Athena writes the full result as one CSV: read it from S3 instead of paging the API.
        location = urlparse(status["ResultConfiguration"]["OutputLocation"])
        s3 = boto3.client("s3", region_name=self.region_name, endpoint_url=self.endpoint_url)
        body = s3.get_object(Bucket=location.netloc, Key=location.path.lstrip("/"))["Body"].read()
        return pd.read_csv(io.BytesIO(body)) if body.strip() else pd.DataFrame()
