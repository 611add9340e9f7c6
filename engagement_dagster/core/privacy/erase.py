"""Erasure of one customer (the right to be forgotten): `erase` removes a customer id from every
place the platform keeps it, `find_traces` searches everything for it afterwards, `erase_main` is the
command line (`engagement-dagster erase CUSTOMER_ID [--dry-run] [--json]`).

What is erased, on the local lake (a directory) and on S3 alike:

- every Parquet file of the lake, whatever its prefix (raw snapshots, oracle files, prediction shards,
  and on AWS the dbt tables' data under the lake's ``warehouse/``, whose Athena files carry no
  ``.parquet`` suffix: Parquet is recognised by its magic bytes): the rows in which any text column
  equals the id are dropped. The file keeps its schema (metadata included), codec, row order and row
  groups; a file left with no rows stays a valid Parquet file with the same schema. Each rewrite is
  written to a local file first and then published by the store in one atomic step.
- the raw snapshot's profile (``profiles/raw_customers/…json``) holds no ids, but its minima and
  maxima may be the customer's own values: it is recomputed from the rewritten snapshot.
- the knowledge base: in a week's markdown documents, every line naming the id (a table row, a
  sentence) is removed, the week's manifest gets the documents' new sha256, and the week's index is
  rebuilt with `core.kb.index.build_index` and the chunk settings it was built with (what the
  ``kb_index`` asset does). Today's documents hold aggregates only, so this happens only when a
  document names a customer.
- the local warehouse (DuckDB): rows whose text columns equal the id are deleted from every table
  (marts, features, dbt's test-failure audit tables); views (dbt's staging model reads the raw files)
  follow the files. DuckDB keeps deleted strings in freed blocks, so the warehouse is rewritten into
  a new file (schema copied, rows inserted without the customer's) and renamed over the old one.
- the prediction cache on DynamoDB: items whose key ``pk`` begins with ``"<id>#"``. The memory cache
  lives in the API's process only: its entries expire after the cache TTL (1 hour by default);
  restart the API to drop them at once.
- S3 versioning: every older version (and delete marker) of each rewritten object is deleted, so only
  the new version is left; older versions of the other objects are read too and deleted when they
  still contain the id.
- ``extra_stores`` (on AWS: Athena's query-results location): every object containing the id is
  deleted with all its versions (query results are disposable copies).

What is not erased, and said in the report: aggregates computed over all customers (counts, means in
the marts, the documents, the model metrics) are not personal data and stay; models trained on data
that contained the customer are listed in the audit and retrained at the next weekly run, not now;
Athena keeps its query history (the SQL text, for 45 days) beyond any API's reach.

Every erasure appends an audit entry ``audit/erasure/<UTC time>-<hash prefix>.json``: when, which
stores, files, tables and items, how many rows each, the model versions, the verification's result,
and the customer as a salted HMAC-SHA256 only, never the id. The salt comes from
``ENGAGEMENT_ERASURE_SALT`` or, without it, from a random salt created once in the lake
(``audit/erasure_salt``); the entry says which. A dry run (``dry_run=True``) reports the same changes
and writes nothing, not even the audit entry or the salt.

Plain Python, no Dagster (a test asserts it for every module under core/).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import io
import json
import os
import re
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engagement_dagster.core import settings
from engagement_dagster.core.data import snapshot
from engagement_dagster.core.kb import documents as kb_documents
from engagement_dagster.core.kb import index as kb_index
from engagement_dagster.core.storage.lake import LocalStore, S3Store, Store, open_store
from engagement_dagster.core.storage.lease import LakeBusy, writer_lease

SALT_ENV = "ENGAGEMENT_ERASURE_SALT"
SALT_KEY = "audit/erasure_salt"  # outside audit/erasure/, which holds only the entries
AUDIT_PREFIX = "audit/erasure/"
WAREHOUSE_FILE = "warehouse.duckdb"  # settings.warehouse_path(): the local warehouse sits in the lake
CACHE_PARTITION_KEY = "pk"  # engagement_dagster.api.cache.PARTITION_KEY (core does not import the API)
CACHE_KEY_SEPARATOR = "#"
MAX_ID_LENGTH = 256
PARQUET_MAGIC = b"PAR1"
_DOCUMENT_KEY = re.compile(rf"^{kb_documents.KB_PREFIX}/snapshot_week=(\d{{4}}-\d{{2}}-\d{{2}})/([^/]+)\.md$")
_RAW_KEY = re.compile(rf"^{snapshot.RAW_PREFIX}/snapshot_week=(\d{{4}}-\d{{2}}-\d{{2}})/")
_CODECS = {"UNCOMPRESSED": "NONE", "LZ4_RAW": "LZ4"}  # Parquet metadata's codec names → pyarrow's


class ErasureRefused(ValueError):
    """A request erase will not carry out (said in one line, changing nothing)."""


@dataclass
class Change:
    store: str  # "lake", "warehouse", "cache" or an extra store's name
    target: str  # a key, a table, a cache table
    rows: int  # rows (Parquet, tables), lines (documents) or items (cache) removed
    detail: str = ""
    versions_deleted: int = 0  # S3 object versions deleted beside the rewrite


@dataclass
class ErasureReport:
    customer_hash: str | None  # HMAC-SHA256 of the id with the salt (None in a dry run before any salt exists)
    salt_source: str
    dry_run: bool
    started_at: str
    seconds: float = 0.0
    changes: list[Change] = field(default_factory=list)
    unhandled: list[str] = field(default_factory=list)  # files naming the id that erase cannot clean
    models: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    traces: list[str] | None = None  # the verification's findings (None: not run)
    audit_key: str | None = None

    @property
    def rows(self) -> int:
        return sum(c.rows for c in self.changes)

    def as_dict(self) -> dict:
        return {**asdict(self), "rows": self.rows}

    def summary(self) -> list[str]:
        verb = "would remove" if self.dry_run else "removed"
        who = f"{self.customer_hash[:16]}…" if self.customer_hash else "(no salt yet, so no hash)"
        lines = [(f"erasure{' (dry run)' if self.dry_run else ''} of customer {who}: {verb} {self.rows} "
                  f"rows/lines/items in {len(self.changes)} places ({self.seconds:.2f} s)")]
        lines += [f"  {c.store}: {c.target}: {c.rows}" + (f" ({c.detail})" if c.detail else "")
                  + (f", {c.versions_deleted} old versions deleted" if c.versions_deleted else "")
                  for c in self.changes]
        lines += [f"  NOT CLEANED: {key}" for key in self.unhandled]
        lines += [f"  note: {note}" for note in self.notes]
        if self.traces is not None:
            lines.append(f"verification: {len(self.traces)} traces" + "".join(f"\n  {t}" for t in self.traces[:20]))
        if self.audit_key:
            lines.append(f"audit entry: {self.audit_key}")
        return lines


# ---------------------------------------------------------------------------------------------
# The id, its matcher and its salted hash


def check_id(customer_id: str) -> str:
    value = (customer_id or "").strip()
    if not value or len(value) > MAX_ID_LENGTH or any(ch.isspace() or ord(ch) < 32 for ch in value):
        raise ErasureRefused(f"a customer id is 1 to {MAX_ID_LENGTH} characters without spaces, got {customer_id!r}")
    return value


def _pattern(customer_id: str) -> re.Pattern[bytes]:
    # Bounded by non-id characters: erasing "42" must not touch "1420" (UUIDs never collide either way).
    return re.compile(rb"(?<![\w-])" + re.escape(customer_id.encode()) + rb"(?![\w-])")


def _salt(store: Store, create: bool) -> tuple[bytes | None, str]:
    if os.environ.get(SALT_ENV):
        return os.environ[SALT_ENV].encode(), f"environment variable {SALT_ENV}"
    where = f"lake object {SALT_KEY} (random, created once per lake)"
    if store.exists(SALT_KEY):
        return store.read_bytes(SALT_KEY).strip(), where
    if not create:
        return None, where + ": not created yet"
    salt = secrets.token_hex(32).encode()
    store.write_bytes(SALT_KEY, salt + b"\n")
    return salt, where


def salted_hash(customer_id: str, salt: bytes) -> str:
    return hmac.new(salt, customer_id.encode(), hashlib.sha256).hexdigest()


def erased_hashes(store: Store) -> set[str]:
    """The salted hashes of every customer erased from this lake (from the audit entries)."""
    hashes = set()
    for key in store.list_keys(AUDIT_PREFIX):
        entry = json.loads(store.read_bytes(key))
        if entry.get("kind") == "customer_erasure" and not entry.get("dry_run"):
            hashes.add(entry["customer_hash"])
    return hashes


def erased(store: Store, customer_ids: Sequence[str]) -> list[bool]:
    """For each id, whether it was erased from this lake: what an ingest needs to keep an erased
    customer from coming back with the next snapshot of a source that still holds them."""
    hashes = erased_hashes(store)
    salt, _ = _salt(store, create=False)
    if not hashes or salt is None:
        return [False] * len(customer_ids)
    return [salted_hash(str(c), salt) in hashes for c in customer_ids]


def drop_erased(store: Store, path: Path, id_column: str = "customer_id") -> int:
    """Removes from a freshly ingested Parquet file (before it is published) the rows of customers erased
    from this lake, so a source that still holds them does not bring them back; returns how many.
    Costs nothing until a first erasure: then the ids are hashed with the lake's salt and compared."""
    hashes = erased_hashes(store)
    salt, _ = _salt(store, create=False)
    if not hashes or salt is None:
        return 0
    table = pq.read_table(path)
    keep = pa.array([salted_hash(str(c), salt) not in hashes for c in table.column(id_column).to_pylist()],
                    type=pa.bool_())
    dropped = len(table) - pc.sum(keep).as_py() if len(table) else 0
    if dropped:
        metadata = pq.ParquetFile(path).metadata
        row_group = metadata.row_group(0).num_rows if metadata.num_row_groups else None
        kept = path.with_name(path.name + ".kept")
        pq.write_table(table.filter(keep), kept, row_group_size=row_group)  # same schema, same row groups
        kept.replace(path)
    return dropped


# ---------------------------------------------------------------------------------------------
# S3 versions


def _s3(store: S3Store) -> tuple[Any, str, str]:
    base = f"{store.prefix.strip('/')}/" if store.prefix.strip("/") else ""
    return boto3.client("s3", endpoint_url=store.endpoint_url, region_name=store.region_name), store.bucket, base


def _object_versions(store: Store, prefix: str = "") -> Iterator[dict]:
    """Every version and delete marker under ``prefix`` (keys relative to the store); nothing for a
    local store. Each: key, version_id, latest, marker."""
    if not isinstance(store, S3Store):
        return
    client, bucket, base = _s3(store)
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=base + prefix):
        for entry, marker in [(v, False) for v in page.get("Versions", [])] + \
                             [(m, True) for m in page.get("DeleteMarkers", [])]:
            yield {"key": entry["Key"][len(base):], "version_id": entry["VersionId"], "latest": entry["IsLatest"],
                   "marker": marker}


def _read_version(store: S3Store, key: str, version_id: str) -> bytes:
    client, bucket, base = _s3(store)
    extra = {} if version_id == "null" else {"VersionId": version_id}
    return client.get_object(Bucket=bucket, Key=base + key, **extra)["Body"].read()


def _delete_versions(store: Store, versions: Sequence[dict]) -> int:
    if not versions or not isinstance(store, S3Store):
        return 0
    client, bucket, base = _s3(store)
    for v in versions:
        client.delete_object(Bucket=bucket, Key=base + v["key"], VersionId=v["version_id"])
    return len(versions)


# ---------------------------------------------------------------------------------------------
# Parquet


def _is_parquet(data: bytes) -> bool:
    return len(data) >= 12 and data[:4] == PARQUET_MAGIC and data[-4:] == PARQUET_MAGIC


def _is_text(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _rows_naming(table: pa.Table, customer_id: str) -> pa.ChunkedArray | None:
    """True for a row in which any text column equals the id (equality, not substring: a row is the
    customer's when it is keyed by the id, and a substring rule would erase others' rows for short ids)."""
    mask = None
    for column in table.columns:
        values = column.cast(pa.string()) if pa.types.is_dictionary(column.type) else column
        hit = pc.fill_null(pc.equal(values, customer_id), False)
        mask = hit if mask is None else pc.or_(mask, hit)
    return mask


def filter_parquet(data: bytes, customer_id: str, out_path: Path | None) -> tuple[int, int]:
    """(rows naming the id, rows left). With ``out_path`` and rows to remove, writes the file without
    them there: same schema and metadata, same codec, each row group filtered in place (row order kept)."""
    source = pq.ParquetFile(io.BytesIO(data))
    total = source.metadata.num_rows
    text = [f.name for f in source.schema_arrow if _is_text(f.type)]
    if not text or total == 0:
        return 0, total
    masks = []
    for group in range(source.num_row_groups):
        masks.append(_rows_naming(source.read_row_group(group, columns=text), customer_id))
    removed = sum(pc.sum(m).as_py() or 0 for m in masks)
    if removed and out_path is not None:
        codec = source.metadata.row_group(0).column(0).compression
        with pq.ParquetWriter(out_path, source.schema_arrow, compression=_CODECS.get(codec, codec)) as writer:
            for group, mask in enumerate(masks):
                kept = source.read_row_group(group).filter(pc.invert(mask))
                if kept.num_rows:
                    writer.write_table(kept, row_group_size=kept.num_rows)
    return removed, total - removed


# ---------------------------------------------------------------------------------------------
# The lake


def _remove_lines(text: str, customer_id: str) -> tuple[str, int]:
    pattern = re.compile(r"(?<![\w-])" + re.escape(customer_id) + r"(?![\w-])")
    lines = text.split("\n")
    kept = [line for line in lines if not pattern.search(line)]
    return "\n".join(kept), len(lines) - len(kept)


def _skipped(key: str) -> bool:
    """Keys the file pass leaves to another step: the audit trail (hashes only), the local warehouse
    (rewritten by `_erase_duckdb`) and the knowledge-base index (rebuilt from the documents)."""
    return (key.startswith("audit/") or key.startswith(WAREHOUSE_FILE)
            or key.startswith(kb_index.INDEX_PREFIX + "/"))


def _erase_files(store: Store, customer_id: str, dry_run: bool, report: ErasureReport, work: Path) -> set[str]:
    """The file pass; returns the keys rewritten (their older versions are purged by the caller)."""
    pattern = _pattern(customer_id)
    rewritten: set[str] = set()
    documents: dict[str, dict[str, bytes]] = {}  # week → doc id → new bytes
    raw_weeks: dict[str, Path] = {}
    for key in store.list_keys(""):
        if _skipped(key):
            continue
        data = store.read_bytes(key)
        if _is_parquet(data):
            out = work / f"{len(rewritten)}.parquet"
            removed, left = filter_parquet(data, customer_id, None if dry_run else out)
            if removed:
                if not dry_run:
                    store.write_file(key, out)
                    rewritten.add(key)
                report.changes.append(Change("lake", key, removed, f"{left} rows left"))
                if (week := _RAW_KEY.match(key)) and key == snapshot.raw_key(week.group(1)):
                    raw_weeks[week.group(1)] = out
            elif pattern.search(data):
                report.unhandled.append(f"{key} (Parquet: the id outside a text column equal to it)")
        elif (doc := _DOCUMENT_KEY.match(key)) and pattern.search(data):
            text, removed = _remove_lines(data.decode(), customer_id)
            documents.setdefault(doc.group(1), {})[doc.group(2)] = text.encode()
            report.changes.append(Change("lake", key, removed, "lines naming the customer"))
        elif pattern.search(data):
            report.unhandled.append(key)
    for week, path in sorted(raw_weeks.items()):
        key = snapshot.profile_key(week)
        if store.exists(key):
            report.changes.append(Change("lake", key, 0, "profile recomputed from the rewritten snapshot"))
            if not dry_run:
                store.write_bytes(key, json.dumps(snapshot.profile(path), indent=1).encode())  # as ingest writes it
                rewritten.add(key)
    for week, docs in sorted(documents.items()):
        rewritten |= _rewrite_kb_week(store, week, docs, dry_run, report)
    return rewritten


def _rewrite_kb_week(store: Store, week: str, docs: dict[str, bytes], dry_run: bool,
                     report: ErasureReport) -> set[str]:
    """Publish the week's cleaned documents, then its manifest (the commit point), then rebuild its
    index as the kb_index asset does, with the settings the index was built with."""
    previous = kb_index.read_index_manifest(store, week)
    chunking = (kb_index.ChunkSettings(previous["settings"]["chunk_tokens"], previous["settings"]["overlap"])
                if previous else kb_index.ChunkSettings())
    report.changes.append(Change("lake", kb_index.index_prefix(week), 0, "knowledge-base index rebuilt"))
    if dry_run:
        return set()
    manifest = kb_documents.read_manifest(store, week)
    for entry in manifest["documents"]:
        data = docs.get(entry["doc_id"])
        if data is not None:
            store.write_bytes(entry["key"], data)
            _, body = kb_documents.parse_document(data.decode())
            entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), words=len(body.split()))
    key = kb_documents.manifest_key(week)
    store.write_bytes(key, (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())
    if previous is not None:
        kb_index.build_index(store, week, chunking)
    if settings.environment() == "aws" and os.environ.get("ENGAGEMENT_KB_ID"):
        report.notes.append(f"the Bedrock knowledge base still holds week {week}'s old documents: materialize "
                            f"knowledge_base/kb_index for {week} to publish the cleaned ones, then delete the old "
                            "versions in the knowledge-base bucket")
    return {kb_documents.document_key(week, doc_id) for doc_id in docs} | {key} | {
        k for k in store.list_keys(kb_index.index_prefix(week))}


def _purge_versions(store: Store, customer_id: str, rewritten: set[str], dry_run: bool,
                    report: ErasureReport) -> None:
    """On S3: drop the older versions of rewritten objects (and the versions of index files the rebuild
    deleted), then any other older version still naming the customer."""
    if not isinstance(store, S3Store):
        return
    by_change = {c.target: c for c in report.changes}
    index_prefixes = {c.target for c in report.changes if c.target.startswith(kb_index.INDEX_PREFIX + "/")}
    pending: list[dict] = []
    for version in _object_versions(store):
        key = version["key"]
        current = version["latest"] and not version["marker"]
        if key in rewritten or any(key.startswith(p) for p in index_prefixes):
            if not current:
                pending.append(version)
        elif not current and not version["marker"] and not key.startswith("audit/"):
            if _traces_in_bytes(key, _read_version(store, key, version["version_id"]), customer_id):
                pending.append(version)
    counts: dict[str, int] = {}
    for version in pending:
        counts[version["key"]] = counts.get(version["key"], 0) + 1
    for key, n in sorted(counts.items()):
        change = by_change.get(key)
        if change is None:
            report.changes.append(Change("lake", key, 0, "older versions only", n))
        else:
            change.versions_deleted += n
    if not dry_run:
        _delete_versions(store, pending)


def _erase_extra_store(name: str, store: Store, customer_id: str, dry_run: bool, report: ErasureReport) -> None:
    """A store of disposable copies (Athena's query results): every object naming the id goes, all versions."""
    doomed: dict[str, list[dict]] = {}
    if isinstance(store, S3Store):
        for version in _object_versions(store):
            if version["marker"]:
                continue
            if _traces_in_bytes(version["key"], _read_version(store, version["key"], version["version_id"]),
                                customer_id):
                doomed.setdefault(version["key"], [])
        for version in _object_versions(store):  # then every version of those keys, markers included
            if version["key"] in doomed:
                doomed[version["key"]].append(version)
    else:
        doomed = {key: [] for key in store.list_keys("") if _traces_in_bytes(key, store.read_bytes(key), customer_id)}
    for key, versions in sorted(doomed.items()):
        report.changes.append(Change(name, key, 1, "object deleted", len(versions)))
        if not dry_run:
            if versions:
                _delete_versions(store, versions)
            else:
                store.delete(key)


# ---------------------------------------------------------------------------------------------
# The local warehouse


def _tables(con: duckdb.DuckDBPyConnection, catalog: str) -> list[tuple[str, str, str, list[str]]]:
    """(schema, name, 'BASE TABLE' | 'VIEW', its text columns) of every user table and view."""
    rows = con.execute(
        "select t.table_schema, t.table_name, t.table_type, "
        "list(c.column_name order by c.ordinal_position) filter (where c.data_type in ('VARCHAR', 'UUID')) "
        "from information_schema.tables t join information_schema.columns c "
        "on c.table_catalog = t.table_catalog and c.table_schema = t.table_schema and c.table_name = t.table_name "
        "where t.table_catalog = ? group by all order by 1, 2", [catalog]).fetchall()
    return [(schema, name, kind, [c for c in (columns or []) if c]) for schema, name, kind, columns in rows]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _condition(columns: Sequence[str], contains: bool = False) -> str:
    test = "contains(cast({} as varchar), $id)" if contains else "cast({} as varchar) = $id"
    return " or ".join(f"coalesce({test.format(_quote(c))}, false)" for c in columns)


def _open_warehouse(path: Path) -> duckdb.DuckDBPyConnection:
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.IOException as error:  # dbt (or another writer) holds the file
        raise ErasureRefused(f"the warehouse {path} is in use ({str(error).splitlines()[0]}): run erase when no "
                             "run is writing it") from None
    con.execute("SET file_search_path = ?", [str(path.resolve().parent)])  # as warehouse.connect: views find files
    return con


def _erase_duckdb(path: Path, customer_id: str, dry_run: bool, report: ErasureReport) -> None:
    with _open_warehouse(path) as con:
        catalog = con.execute("select current_database()").fetchone()[0]
        counts = {}
        for schema, name, kind, columns in _tables(con, catalog):
            if kind == "BASE TABLE" and columns:
                n = con.execute(f"select count(*) from {_quote(schema)}.{_quote(name)} where {_condition(columns)}",
                                {"id": customer_id}).fetchone()[0]
                if n:
                    counts[(schema, name)] = (n, columns)
    for (schema, name), (n, _) in counts.items():
        report.changes.append(Change("warehouse", f"{schema}.{name}", n, f"DuckDB {path.name}"))
    if not counts or dry_run:
        return
    # A new file: the schema (tables, views, macros, sequences) copied, then every table's rows without
    # the customer's. Deleting in place would leave the strings in DuckDB's freed blocks.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.erase-", suffix=".duckdb")
    os.close(fd)
    os.unlink(tmp)  # DuckDB creates the file itself
    try:
        with duckdb.connect(tmp) as new:
            new.execute("SET file_search_path = ?", [str(path.resolve().parent)])
            target = new.execute("select current_database()").fetchone()[0]
            new.execute(f"ATTACH {_literal(str(path))} AS erase_source (READ_ONLY)")
            new.execute(f"COPY FROM DATABASE erase_source TO {_quote(target)} (SCHEMA)")
            for schema, name, kind, columns in _tables(new, "erase_source"):
                if kind != "BASE TABLE":
                    continue
                where = f" where not ({_condition(columns)})" if (schema, name) in counts else ""
                new.execute(f"insert into {_quote(target)}.{_quote(schema)}.{_quote(name)} "
                            f"select * from erase_source.{_quote(schema)}.{_quote(name)}{where}",
                            {"id": customer_id} if where else None)
            new.execute("DETACH erase_source")
            new.execute("CHECKPOINT")
        os.replace(tmp, path)  # atomic: readers see the old warehouse or the new one
    finally:
        Path(tmp).unlink(missing_ok=True)
        Path(tmp + ".wal").unlink(missing_ok=True)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# ---------------------------------------------------------------------------------------------
# The prediction cache


def _erase_dynamodb(table: str, customer_id: str, dry_run: bool, report: ErasureReport, client: Any = None) -> None:
    """Items keyed ``<id>#<hash>`` (api/cache.py's key): a scan on the key's prefix (the hash key cannot be
    queried by prefix), then one delete per item."""
    client = client or boto3.client("dynamodb")
    keys = []
    for page in client.get_paginator("scan").paginate(
            TableName=table, ProjectionExpression="#pk", FilterExpression="begins_with(#pk, :prefix)",
            ExpressionAttributeNames={"#pk": CACHE_PARTITION_KEY},
            ExpressionAttributeValues={":prefix": {"S": customer_id + CACHE_KEY_SEPARATOR}}, ConsistentRead=True):
        keys += [item[CACHE_PARTITION_KEY] for item in page.get("Items", [])]
    report.changes.append(Change("cache", f"dynamodb:{table}", len(keys), "cached predictions"))
    if not dry_run:
        for key in keys:
            client.delete_item(TableName=table, Key={CACHE_PARTITION_KEY: key})


# ---------------------------------------------------------------------------------------------
# Models


def _models(store: Store) -> dict:
    """The registered versions and champions. The registry does not record which weeks trained a
    version, so every registered version counts as trained on data that may contain the customer."""
    versions: dict[str, list[str]] = {}
    champions: dict[str, str] = {}
    for key in store.list_keys("models/"):
        parts = key.split("/")
        if len(parts) == 4 and parts[3] == "version.json":
            versions.setdefault(parts[1], []).append(parts[2])
        elif len(parts) == 3 and parts[2] == "champion.json":
            champions[parts[1]] = json.loads(store.read_bytes(key)).get("version", "")
    return {"trained_on_data_that_may_contain_the_customer": {k: sorted(v) for k, v in sorted(versions.items())},
            "champions": dict(sorted(champions.items())),
            "retraining": "not retrained now: the next weekly run trains every model again on data without the "
                          "customer (the promotion gate then decides which versions serve)"}


# ---------------------------------------------------------------------------------------------
# Erasure


def erase(store: Store, customer_id: str, *, warehouse_path: str | Path | None = None,
          dynamodb_table: str | None = None, dynamodb_client: Any = None, extra_stores: Mapping[str, Store] = {},
          dry_run: bool = False, verify: bool = True, notes: Sequence[str] = ()) -> ErasureReport:
    """Erase ``customer_id`` from the lake ``store`` (and its older S3 versions), the DuckDB warehouse
    at ``warehouse_path`` (None: no local warehouse), the DynamoDB cache table ``dynamodb_table`` and
    the ``extra_stores``; then search them all (``verify``) and append the audit entry."""
    customer_id = check_id(customer_id)
    # One writer at a time: a weekly run writing meanwhile would bring the customer back or lose the
    # rewrite (a dry run only reads).
    with nullcontext() if dry_run else writer_lease(store, "engagement-dagster erase"):
        return _erase(store, customer_id, warehouse_path=warehouse_path, dynamodb_table=dynamodb_table,
                      dynamodb_client=dynamodb_client, extra_stores=extra_stores, dry_run=dry_run, verify=verify,
                      notes=notes)


def _erase(store: Store, customer_id: str, *, warehouse_path, dynamodb_table, dynamodb_client, extra_stores,
           dry_run: bool, verify: bool, notes: Sequence[str]) -> ErasureReport:
    started, now = time.perf_counter(), dt.datetime.now(dt.UTC)
    salt, salt_source = _salt(store, create=not dry_run)
    report = ErasureReport(salted_hash(customer_id, salt) if salt else None, salt_source, dry_run,
                           now.isoformat(timespec="seconds"), notes=list(notes))
    warehouse = Path(warehouse_path) if warehouse_path is not None else None
    if warehouse is not None and warehouse.exists():
        with _open_warehouse(warehouse):  # refuse before touching anything while a run writes the warehouse
            pass
    with tempfile.TemporaryDirectory(prefix="erase-") as work:
        rewritten = _erase_files(store, customer_id, dry_run, report, Path(work))
    _purge_versions(store, customer_id, rewritten, dry_run, report)
    for name, extra in extra_stores.items():
        _erase_extra_store(name, extra, customer_id, dry_run, report)
    if warehouse is not None and warehouse.exists():
        _erase_duckdb(warehouse, customer_id, dry_run, report)
    if dynamodb_table:
        _erase_dynamodb(dynamodb_table, customer_id, dry_run, report, dynamodb_client)
    report.models = _models(store)
    if verify and not dry_run:
        report.traces = find_traces(store, warehouse, customer_id, extra_stores=extra_stores)
    report.seconds = time.perf_counter() - started
    if not dry_run:
        report.audit_key = f"{AUDIT_PREFIX}{now.strftime('%Y%m%dT%H%M%S%fZ')}-{report.customer_hash[:12]}.json"
        entry = {"kind": "customer_erasure", "erased_at": report.started_at, **report.as_dict()}
        entry["environment"] = settings.environment()
        entry["stores"] = sorted({c.store for c in report.changes})
        entry["verification"] = ("not run" if report.traces is None
                                 else f"{len(report.traces)} traces of the id left in the lake and warehouse")
        store.write_bytes(report.audit_key, (json.dumps(entry, indent=2, sort_keys=True) + "\n").encode())
    return report


# ---------------------------------------------------------------------------------------------
# Searching for traces


def _traces_in_bytes(name: str, data: bytes, customer_id: str) -> list[str]:
    """Where the id shows in one file: its raw bytes (text, JSON, Parquet statistics, uncompressed
    pages), a Parquet file's text columns (decompressed; substring), a BM25 vocabulary's terms."""
    found = []
    if _pattern(customer_id).search(data):
        found.append(f"{name}: raw bytes")
    if _is_parquet(data):
        source = pq.ParquetFile(io.BytesIO(data))
        text = [f.name for f in source.schema_arrow if _is_text(f.type)]
        if text:
            table = source.read(columns=text)
            for column in text:
                values = table.column(column)
                values = values.cast(pa.string()) if pa.types.is_dictionary(values.type) else values
                n = pc.sum(pc.fill_null(pc.match_substring(values, customer_id), False)).as_py() or 0
                if n:
                    found.append(f"{name}: column {column} ({n} rows)")
    elif name.endswith("vocab.index.json"):
        # The id's word pieces (the analyzer splits "705cdcfd-7de4-…" at the hyphens) all in a BM25 vocabulary.
        terms = set(kb_index.analyze(customer_id))
        try:
            vocab = json.loads(data)
        except ValueError:
            vocab = {}
        if len(terms) > 1 and isinstance(vocab, dict) and terms <= set(vocab):
            found.append(f"{name}: every term of the id in the index vocabulary")
    return found


def _files(store: Store) -> Iterator[tuple[str, bytes]]:
    """Every file of a store with its bytes: locally every file under the root, hidden ones too (temporary
    files, DuckDB's WAL); on S3 every version of every object."""
    if isinstance(store, LocalStore):
        root = Path(store.root)
        for path in sorted(root.rglob("*")):
            if path.is_file():
                yield str(path.relative_to(root)), path.read_bytes()
    elif isinstance(store, S3Store):
        for version in _object_versions(store):
            if not version["marker"]:
                label = version["key"] if version["latest"] else f"{version['key']}@{version['version_id']}"
                yield label, _read_version(store, version["key"], version["version_id"])
    else:
        for key in store.list_keys(""):
            yield key, store.read_bytes(key)


def find_traces(store: Store, warehouse_path: str | Path | None, customer_id: str, *,
                extra_stores: Mapping[str, Store] = {}) -> list[str]:
    """Every trace of ``customer_id``: in each file of the lake (and each older S3 version) and of the
    ``extra_stores``, and in every table and view of the DuckDB warehouse (each text column, substring).
    An empty list means none was found."""
    customer_id = check_id(customer_id)
    traces = []
    for name, each in {"lake": store, **extra_stores}.items():
        for key, data in _files(each):
            traces += [f"{name}:{t}" for t in _traces_in_bytes(key, data, customer_id)]
    warehouse = Path(warehouse_path) if warehouse_path is not None else None
    if warehouse is not None and warehouse.exists():
        with _open_warehouse(warehouse) as con:
            catalog = con.execute("select current_database()").fetchone()[0]
            for schema, name, kind, columns in _tables(con, catalog):
                if columns:
                    n = con.execute(f"select count(*) from {_quote(schema)}.{_quote(name)} where "
                                    f"{_condition(columns, contains=True)}", {"id": customer_id}).fetchone()[0]
                    if n:
                        traces.append(f"warehouse:{schema}.{name} ({kind.lower()}): {n} rows")
    return traces


# ---------------------------------------------------------------------------------------------
# AWS: what erase can and cannot reach


def _s3_location(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ErasureRefused(f"not an s3:// location: {uri!r}")
    return parsed.netloc, parsed.path.strip("/")


def aws_plan(store: S3Store, glue: Any = None) -> tuple[dict[str, Store], list[str]]:
    """On AWS: the extra stores (Athena's query results) and the notes, or a refusal.

    dbt's Athena tables are Hive tables of Parquet files under ENGAGEMENT_ATHENA_DATA. Inside the lake
    (``s3://<lake>/warehouse/``, the deployment's setting) they are rewritten by the file pass like
    any Parquet file: Hive tables have no manifest naming files or sizes, and each object is replaced
    in one PUT. An Iceberg table (its manifests list files with their sizes and statistics) or table
    data outside the lake would be left behind: erase refuses rather than report a partial erasure."""
    aws = settings.aws_settings()
    bucket, prefix = _s3_location(aws["ENGAGEMENT_ATHENA_DATA"])
    lake_prefix = store.prefix.strip("/")
    if bucket != store.bucket or (lake_prefix and not (prefix + "/").startswith(lake_prefix + "/")):
        raise ErasureRefused(f"dbt's Athena tables live outside the lake (ENGAGEMENT_ATHENA_DATA="
                             f"{aws['ENGAGEMENT_ATHENA_DATA']}, lake s3://{store.bucket}/{lake_prefix}): erase "
                             "cannot rewrite them; nothing was changed")
    glue = glue or boto3.client("glue")
    databases = [aws["ENGAGEMENT_GLUE_DATABASE"], aws["ENGAGEMENT_GLUE_RAW_DATABASE"],
                 aws["ENGAGEMENT_GLUE_DATABASE"] + "_dbt_test__audit"]
    for database in databases:
        try:
            pages = list(glue.get_paginator("get_tables").paginate(DatabaseName=database))
        except glue.exceptions.EntityNotFoundException:
            continue
        for table in (t for page in pages for t in page["TableList"]):
            location = table.get("StorageDescriptor", {}).get("Location", "")
            if table.get("Parameters", {}).get("table_type", "").upper() == "ICEBERG":
                raise ErasureRefused(f"{database}.{table['Name']} is an Iceberg table: its data files cannot be "
                                     "rewritten under its manifests; delete the customer with Athena's DELETE "
                                     "first. Nothing was changed")
            if location and not location.startswith(f"s3://{store.bucket}/{lake_prefix}"):
                raise ErasureRefused(f"{database}.{table['Name']} keeps its data outside the lake ({location}): "
                                     "erase cannot rewrite it; nothing was changed")
    staging_bucket, staging_prefix = _s3_location(aws["ENGAGEMENT_ATHENA_STAGING"])
    extra = {"athena_results": S3Store(staging_bucket, staging_prefix, endpoint_url=store.endpoint_url,
                                       region_name=store.region_name)}
    notes = [("Athena's query history (the SQL text of past queries, kept 45 days) may name the customer and "
              "cannot be deleted through any API"),
             "dbt's Athena tables were rewritten as files under the lake's warehouse prefix (Hive tables)"]
    return extra, notes


# ---------------------------------------------------------------------------------------------
# Command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # a usage error is a refusal too: one line, exit 2
        raise ErasureRefused(f"{message} (usage: engagement-dagster erase CUSTOMER_ID [--dry-run] [--json])")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="engagement-dagster erase",
                                     description="Erase one customer from the lake, the warehouse and the "
                                                 "prediction cache (right to be forgotten).")
    parser.add_argument("customer_id", metavar="CUSTOMER_ID")
    parser.add_argument("--dry-run", action="store_true", help="report what would change; change nothing")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def erase_main(argv: Sequence[str] | None = None) -> int:
    """``CUSTOMER_ID [--dry-run] [--json]``: 0 when erased and no trace is left, 1 when traces or
    uncleaned files remain, 2 when refused (one line on stderr)."""
    try:
        args = _parser().parse_args(argv)
        store = open_store()
        extra: dict[str, Store] = {}
        notes = []
        if settings.environment() == "aws":
            extra, notes = aws_plan(store)
            warehouse = None
        else:
            warehouse = settings.warehouse_path()
        cache = os.environ.get("ENGAGEMENT_API_CACHE", "").strip().lower() or (
            "dynamodb" if settings.environment() == "aws" else "memory")
        table = os.environ.get("ENGAGEMENT_API_CACHE_TABLE", "").strip() if cache == "dynamodb" else None
        if cache == "dynamodb" and not table:
            raise ErasureRefused("ENGAGEMENT_API_CACHE=dynamodb needs ENGAGEMENT_API_CACHE_TABLE to erase the cache")
        if cache == "memory":
            notes.append("the API's memory cache lives in its process: its entries for the customer expire after "
                         "the cache TTL (1 hour by default); restart the API to drop them now")
        report = erase(store, args.customer_id, warehouse_path=warehouse, dynamodb_table=table,
                       extra_stores=extra, dry_run=args.dry_run, notes=notes)
    except (ErasureRefused, settings.MissingSettings, LakeBusy) as error:
        print(f"erase refused: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report.as_dict(), indent=2) if args.json else "\n".join(report.summary()))
    return 0 if not report.unhandled and not report.traces else 1
