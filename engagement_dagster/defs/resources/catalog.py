"""The table catalog over the lake's Parquet, as a Dagster resource: what lets SQL engines find
`raw/customers/` and `predictions/` by table name.

Locally there is nothing to register: dbt-duckdb reads the files through each source's
`external_location`. On AWS, Athena only reads tables in the Glue Data Catalog: `GlueCatalog` is a
thin wrapper over the plain `engagement_dagster.core.storage.catalog`.
"""

from __future__ import annotations

import dagster as dg
import pyarrow as pa
from pydantic import Field

from engagement_dagster.core.storage.catalog import GlueTables, glue_columns, glue_type

__all__ = ["Catalog", "GlueCatalog", "LocalCatalog", "glue_columns", "glue_type"]


class Catalog(dg.ConfigurableResource):
    """Abstract catalog; use LocalCatalog or GlueCatalog."""

    def register_partition(self, table: str, table_uri: str, schema: pa.Schema, snapshot_week: str) -> None:
        """Make `table` (Parquet under `table_uri`, partitioned by snapshot_week) show the week."""
        raise NotImplementedError


class LocalCatalog(Catalog):
    """DuckDB reads the lake's Parquet by path (the dbt sources' external_location)."""

    def register_partition(self, table: str, table_uri: str, schema: pa.Schema, snapshot_week: str) -> None:
        return None


class GlueCatalog(Catalog):
    database: str = Field(description="Glue database of the raw and prediction tables (dbt source `lake`).")
    region_name: str | None = Field(default=None)
    endpoint_url: str | None = Field(default=None, description="Custom endpoint (e.g. a local moto server).")

    def register_partition(self, table: str, table_uri: str, schema: pa.Schema, snapshot_week: str) -> None:
        GlueTables(self.database, self.region_name, self.endpoint_url).register_partition(
            table, table_uri, schema, snapshot_week)
