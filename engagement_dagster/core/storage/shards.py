"""Reading a table one shard at a time. Shard s of n holds the customers whose `customer_hash` (32 bits)
lies in [s·2³²/n, (s+1)·2³²/n): a range, so on a table stored in hash order (dbt writes the model-ready
table sorted by it) a shard's query reads only its own row groups, not the whole table filtered again
for every shard. A week's scoring reads its model-ready table this way, so memory holds a shard, never
the week; the same rule on DuckDB, Athena and a frame, so a shard holds the same customers everywhere.
Each source is picklable (plain fields): scoring worker processes read their own shards."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

HASH_RANGE = 1 << 32


def bounds(shard: int, shards: int) -> tuple[int, int]:
    """The hashes of shard `shard` of `shards`: [low, high). Every hash in [0, 2³²) is in exactly one."""
    return shard * HASH_RANGE // shards, (shard + 1) * HASH_RANGE // shards


def shard_of(hashes, shards: int):
    """The shard of each hash (a number or a numpy/pandas array), by the same ranges as `bounds`."""
    return hashes * shards // HASH_RANGE


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
            return con.execute(f"select * from {self.table} where customer_hash >= ? and customer_hash < ?",
                               list(bounds(shard, shards))).fetch_df()


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
        low, high = bounds(shard, shards)
        return self._query(f"select * from {self.table} where customer_hash >= {low} and customer_hash < {high}")


@dataclass(frozen=True)
class FrameShardSource(ShardSource):
    """A frame already in memory (tests, small weeks read once): shards by the same rule."""
    frame: pd.DataFrame

    def count(self) -> int:
        return len(self.frame)

    def read(self, shard: int, shards: int) -> pd.DataFrame:
        low, high = bounds(shard, shards)
        hashes = self.frame["customer_hash"]
        return self.frame[(hashes >= low) & (hashes < high)].reset_index(drop=True)
