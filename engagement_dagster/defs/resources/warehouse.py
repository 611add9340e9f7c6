"""The warehouse the dbt models live in, as a Dagster resource: DuckDB locally, Athena on AWS. A thin
wrapper over the plain `engagement_dagster.core.storage.warehouse` (which code without Dagster uses directly)."""

from __future__ import annotations

import dagster as dg
import pandas as pd
from pydantic import Field

from engagement_dagster.core.storage.shards import AthenaShardSource, DuckDBShardSource, ShardSource
from engagement_dagster.core.storage.warehouse import athena_query, duckdb_query, typed_athena_csv

__all__ = ["AthenaWarehouse", "DuckDBWarehouse", "Warehouse", "typed_athena_csv"]


class Warehouse(dg.ConfigurableResource):
    """Abstract warehouse; use DuckDBWarehouse or AthenaWarehouse."""

    def read_table(self, name: str) -> pd.DataFrame:
        raise NotImplementedError

    def query(self, sql: str) -> pd.DataFrame:
        """A read-only query's result (e.g. a dbt test's stored failures)."""
        raise NotImplementedError

    def shard_source(self, name: str) -> ShardSource:
        """How scoring workers read the table `name` one shard at a time."""
        raise NotImplementedError

    def relation(self, name: str) -> str:
        """The table `name` as SQL names it."""
        raise NotImplementedError


class DuckDBWarehouse(Warehouse):
    path: str = Field(description="DuckDB database file that dbt's `local` target writes.")
    schema_name: str = Field(default="main")

    def read_table(self, name: str) -> pd.DataFrame:
        return self.query(f"select * from {self.relation(name)}")

    def relation(self, name: str) -> str:
        return f'"{self.schema_name}"."{name}"'

    def query(self, sql: str) -> pd.DataFrame:
        return duckdb_query(self.path, sql)

    def shard_source(self, name: str) -> ShardSource:
        return DuckDBShardSource(self.path, self.relation(name))


class AthenaWarehouse(Warehouse):
    database: str = Field(description="Glue database dbt's `prod` target writes to.")
    workgroup: str = Field(default="primary")
    output_location: str = Field(description="s3:// prefix for query results.")
    region_name: str | None = Field(default=None)
    endpoint_url: str | None = Field(default=None)
    poll_seconds: float = Field(default=1.0)

    def read_table(self, name: str) -> pd.DataFrame:
        return self.query(f"select * from {self.relation(name)}")

    def relation(self, name: str) -> str:
        return f'"{self.database}"."{name}"'

    def query(self, sql: str) -> pd.DataFrame:
        return athena_query(sql, self.workgroup, self.output_location, self.region_name, self.endpoint_url,
                            self.poll_seconds)

    def shard_source(self, name: str) -> ShardSource:
        return AthenaShardSource(self.relation(name), self.workgroup, self.output_location,
                                 self.region_name, self.endpoint_url)
