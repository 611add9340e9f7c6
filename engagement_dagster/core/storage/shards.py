"""Reading a table one shard at a time: the customers whose `customer_hash` modulo the shard count is
the shard. A week's scoring reads its model-ready table this way, so memory holds a shard, never the
week; the same rule on DuckDB, Athena and a frame, so a shard holds the same customers everywhere.
Each source is picklable (plain fields): scoring worker processes read their own shards."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


class ShardSource:
    """Where a scoring worker reads one shard of a table."""

    def count(self) -> int:
        raise NotImplementedError

    def read(self, shard: int, shards: int) -> pd.DataFrame:
        raise NotImplementedError


@dataclass(frozen=True)
class DuckDBShardSource(ShardSource):
    path: str
    table: str = "main.customer_model_input"

    def _connect(self):
        from engagement_dagster.core.storage.warehouse import connect

        return connect(self.path, read_only=True)

    def count(self) -> int:
        with self._connect() as con:
            return con.execute(f"select count(*) from {self.table}").fetchone()[0]

    def read(self, shard: int, shards: int) -> pd.DataFrame:
        with self._connect() as con:
            return con.execute(f"select * from {self.table} where customer_hash % ? = ?", [shards, shard]).fetch_df()


@dataclass(frozen=True)
class AthenaShardSource(ShardSource):
    """On AWS: one Athena query per shard (the engine reads only the table's files, in parallel)."""
    table: str  # "database"."table"
    workgroup: str
    output_location: str
    region_name: str | None = None
    endpoint_url: str | None = None

    def _query(self, sql: str) -> pd.DataFrame:
        from engagement_dagster.core.storage.warehouse import athena_query

        return athena_query(sql, self.workgroup, self.output_location, self.region_name, self.endpoint_url)

    def count(self) -> int:
        return int(self._query(f"select count(*) as n from {self.table}")["n"].iloc[0])

    def read(self, shard: int, shards: int) -> pd.DataFrame:
        return self._query(f"select * from {self.table} where customer_hash % {int(shards)} = {int(shard)}")


@dataclass(frozen=True)
class FrameShardSource(ShardSource):
    """A frame already in memory (tests, small weeks read once): shards by the same rule."""
    frame: pd.DataFrame

    def count(self) -> int:
        return len(self.frame)

    def read(self, shard: int, shards: int) -> pd.DataFrame:
        return self.frame[self.frame["customer_hash"] % shards == shard].reset_index(drop=True)
