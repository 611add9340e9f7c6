"""The lake as a Dagster resource: one interface over a local directory (embedded default) and an
S3 bucket/prefix. A thin wrapper: the storage itself (atomic writes, listing, S3 calls) is the
plain `engagement_dagster.core.storage.lake`, which code without Dagster uses directly.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from engagement_dagster.core.storage.lake import LocalStore, S3Store, Store


class Lake(dg.ConfigurableResource):
    """Abstract lake; use LocalLake or S3Lake."""

    def store(self) -> Store:
        raise NotImplementedError

    def write_bytes(self, key: str, data: bytes) -> str:
        return self.store().write_bytes(key, data)

    def read_bytes(self, key: str) -> bytes:
        return self.store().read_bytes(key)

    def exists(self, key: str) -> bool:
        return self.store().exists(key)

    def list_keys(self, prefix: str) -> list[str]:
        return self.store().list_keys(prefix)

    def uri(self, key: str) -> str:
        return self.store().uri(key)

    def delete(self, key: str) -> None:
        self.store().delete(key)

    def write_file(self, key: str, path: Path) -> str:
        """Publish a finished local file under ``key`` in one atomic step (large files never pass
        through memory)."""
        return self.store().write_file(key, path)

    def write_parquet(self, key: str, frame: pd.DataFrame) -> str:
        return self.store().write_parquet(key, frame)

    def read_parquet(self, key: str) -> pd.DataFrame:
        return self.store().read_parquet(key)


class LocalLake(Lake):
    root: str = Field(description="Directory that holds the lake.")

    def store(self) -> Store:
        return LocalStore(self.root)


class S3Lake(Lake):
    bucket: str = Field(description="S3 bucket of the lake.")
    prefix: str = Field(default="", description="Key prefix inside the bucket.")
    endpoint_url: str | None = Field(default=None, description="Custom endpoint (e.g. a local moto server).")
    region_name: str | None = Field(default=None)

    def store(self) -> Store:
        return S3Store(self.bucket, self.prefix, self.endpoint_url, self.region_name)
