"""The lake's storage as plain Python: a local directory (embedded default) or an S3 bucket/prefix.

Keys are '/'-separated paths relative to the lake root, laid out as in docs/architecture.md. Every
write is atomic: locally the bytes go to a temporary file beside the target and are renamed over
it; an S3 PUT is atomic by itself. A reader never sees a half-written object.

No Dagster here: the API, the knowledge-base agent and notebooks read the lake through these
classes (`open_store` picks one from the environment switch); the Dagster resources in
`engagement_dagster.defs.resources.lake` are thin wrappers over them.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import boto3
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from engagement_dagster.core import settings


class Store:
    """Abstract store; use LocalStore or S3Store."""

    def write_bytes(self, key: str, data: bytes) -> str:
        raise NotImplementedError

    def read_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def list_keys(self, prefix: str) -> list[str]:
        raise NotImplementedError

    def uri(self, key: str) -> str:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def write_file(self, key: str, path: Path) -> str:
        """Publish a finished local file under ``key`` in one atomic step (large files never pass
        through memory)."""
        raise NotImplementedError

    def write_parquet(self, key: str, frame: pd.DataFrame) -> str:
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer, compression="zstd")
        return self.write_bytes(key, buffer.getvalue())

    def read_parquet(self, key: str) -> pd.DataFrame:
        return pq.read_table(io.BytesIO(self.read_bytes(key))).to_pandas()


class LocalStore(Store):
    """A directory."""

    def __init__(self, root: str | Path):
        self.root = str(root)

    def _path(self, key: str) -> Path:
        return Path(self.root) / key

    def write_bytes(self, key: str, data: bytes) -> str:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)  # atomic on POSIX: readers see the old file or the new one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return str(target)

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_keys(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.exists():
            return []
        root = Path(self.root)
        return sorted(str(p.relative_to(root)) for p in base.rglob("*")
                      if p.is_file() and not p.name.startswith("."))

    def uri(self, key: str) -> str:
        return str(self._path(key))

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        root = Path(self.root)
        for folder in path.parents:  # folders left empty go too, as on S3 where they do not exist
            if folder == root or root not in folder.parents:
                break
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone): stop here
                break

    def remove_temporary_files(self) -> int:
        """Deletes the temporary files of writes a killed process never renamed into place (never
        read: listings skip dot-names). Only safe for the holder of the writer lease (`lease`)."""
        removed = 0
        for path in Path(self.root).rglob(".*.tmp"):
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def write_file(self, key: str, path: Path) -> str:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)  # beside the target first: the rename below is then atomic
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return str(target)


class S3Store(Store):
    """A bucket and a key prefix (``endpoint_url``: a custom endpoint, e.g. a local moto server)."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 region_name: str | None = None):
        self.bucket, self.prefix, self.endpoint_url, self.region_name = bucket, prefix, endpoint_url, region_name

    def _client(self):
        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region_name)

    def _key(self, key: str) -> str:
        return f"{self.prefix.strip('/')}/{key}" if self.prefix.strip("/") else key

    def write_bytes(self, key: str, data: bytes) -> str:
        self._client().put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        return self.uri(key)

    def read_bytes(self, key: str) -> bytes:
        return self._client().get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def exists(self, key: str) -> bool:
        response = self._client().list_objects_v2(Bucket=self.bucket, Prefix=self._key(key), MaxKeys=1)
        return any(obj["Key"] == self._key(key) for obj in response.get("Contents", []))

    def list_keys(self, prefix: str) -> list[str]:
        paginator = self._client().get_paginator("list_objects_v2")
        strip = len(self._key(""))
        return sorted(obj["Key"][strip:] for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix))
                      for obj in page.get("Contents", []))

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def delete(self, key: str) -> None:
        self._client().delete_object(Bucket=self.bucket, Key=self._key(key))

    def write_file(self, key: str, path: Path) -> str:
        # Multipart for large files; the object appears only when the upload completes.
        self._client().upload_file(str(path), self.bucket, self._key(key))
        return self.uri(key)


def open_store() -> Store:
    """The lake of the environment: the local directory, or the S3 bucket/prefix of AWS mode."""
    if settings.environment() == "aws":
        aws = settings.aws_settings()
        return S3Store(bucket=aws["ENGAGEMENT_LAKE_BUCKET"], prefix=aws["ENGAGEMENT_LAKE_PREFIX"],
                       endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or None)
    return LocalStore(settings.lake_dir())
