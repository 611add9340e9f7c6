"""The prediction cache: a prediction is stored under the customer, the hash of its features and the
versions of the models that made it, for one hour by default.

Because the model versions are part of the key, a new champion never serves a stale prediction: its
requests look up keys nobody wrote yet, and the old entries age out. Because the features are part of
the key, a customer whose data changed is scored again.

Three implementations, picked by ``ENGAGEMENT_API_CACHE`` (see ``cache_from_settings``):

- ``MemoryCache``: an in-process TTL + LRU cache (cachetools), the local default.
- ``DynamoDBCache``: a DynamoDB table, the AWS default. Every Lambda execution environment shares it.
  DynamoDB deletes expired items lazily (up to days after their TTL) and moto never does, so a read
  checks ``expires_at`` itself. A cache is an optimisation: a DynamoDB error (throttling, timeout, a
  missing table) turns a read into a miss and skips a write, never fails a prediction.
- ``NoCache``: ``ENGAGEMENT_API_CACHE=off``.

The DynamoDB table (the Terraform in deploy/terraform must match; ``create_table`` makes one for tests):
hash key ``pk`` (type S) and nothing else, TTL enabled on the Number attribute ``expires_at`` (epoch
seconds); each item also holds ``value``, the prediction as compact JSON (a string).

No Dagster and, until a DynamoDB cache is built, no boto3 here: the API's cold start pays for neither.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import logging
import numbers
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

from cachetools import TTLCache

from engagement_dagster.core import settings

log = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 3600
DEFAULT_MAXSIZE = 100_000

# Bumped whenever the canonical form below changes, so old entries can never match a new encoding.
KEY_FORMAT = "v1"
_KEY_SEPARATOR = "#"
# Integers beyond ±2**53 do not survive a trip through float64: they keep their decimal digits.
_EXACT_FLOAT_INT = 2**53
_NAN = float("nan")

# The DynamoDB item layout (and the Terraform table's hash key and TTL attribute).
PARTITION_KEY = "pk"
VALUE_ATTRIBUTE = "value"
TTL_ATTRIBUTE = "expires_at"

# A cache lookup must cost less than what it saves (a miss is scored in ~2 ms), so DynamoDB gets one
# attempt with short timeouts: a retry or a slow call would cost more than scoring without the cache.
DEFAULT_TIMEOUT_SECONDS = 0.25
BATCH_GET_LIMIT = 100  # BatchGetItem's limit per request
BATCH_WRITE_LIMIT = 25  # BatchWriteItem's limit per request
BATCH_ATTEMPTS = 3  # for the unprocessed part of a batch (DynamoDB's partial throttling)
BATCH_BACKOFF_SECONDS = 0.01  # doubled per attempt: 10 ms, 20 ms
BATCH_THREADS = 8  # a 1,000-customer batch is 10 BatchGetItem calls: in parallel, not one after another


# ----------------------------------------------------------------------------------------------- key


def _canonical(value: Any) -> Any:
    """A value in the one form that equal inputs share.

    Every real number (int, bool, float, NumPy scalar, Decimal) becomes a Python float, hashed as its
    exact float64 value: ``3``, ``3.0`` and ``np.int64(3)`` agree (the models see a float either way),
    while two floats that differ in any bit of their value stay different (no rounding, so no two real
    values are merged). ``-0.0`` becomes ``0.0`` (equal to it). Integers that float64 cannot hold
    exactly (beyond ±2**53) keep their digits. Dates and datetimes are ISO strings, so
    ``date(2026, 11, 9)`` and ``"2026-11-09"`` agree. Strings and None stay as they are. Anything else
    raises TypeError: an arbitrary object's repr could change between processes or collide.
    """
    kind = type(value)
    if kind is float:
        return value + 0.0  # -0.0 + 0.0 == 0.0
    if kind is str or value is None:
        return value
    if kind is int or kind is bool:
        return float(value) if -_EXACT_FLOAT_INT <= value <= _EXACT_FLOAT_INT else int(value)
    if isinstance(value, dt.date):  # datetime is a date too
        return value.isoformat()
    if callable(getattr(value, "item", None)):  # NumPy scalars
        return _canonical(value.item())
    if isinstance(value, numbers.Integral):
        return _canonical(int(value))
    if isinstance(value, (numbers.Real, decimal.Decimal)):
        return _canonical(float(value))
    if isinstance(value, str):  # a str subclass (an enum member): its plain text
        return str.__str__(value)
    raise TypeError(f"cannot build a cache key from a {kind.__name__} value")


def cache_key(customer_id: str, features: Mapping[str, Any], versions: Mapping[str, str]) -> str:
    """``<customer_id>#<32 hex digits>``: the customer (an opaque pseudonymous id; keys are never
    logged) and a BLAKE2b-128 digest of the canonical features and model versions.

    What is hashed: the repr of (KEY_FORMAT, the customer id, the sorted feature names, the non-numeric
    features as (position, value), the sorted model versions), a NUL byte (repr never writes one),
    then every numeric feature, in name order, as its 8 little-endian float64 bytes: its exact value,
    at a fraction of repr's cost (see ``_canonical`` for which numbers count as equal; NaNs are made
    one bit pattern). So dict order does not matter, ``3`` and ``3.0`` agree, the string ``"3.0"`` and
    the number 3.0 do not, and any real change of a feature or of a model version gives another key.
    """
    names = sorted(features)
    floats: list[float] = []
    others: list[tuple[int, Any]] = []
    for position, name in enumerate(names):
        try:
            value = _canonical(features[name])
        except TypeError as error:
            raise TypeError(f"feature {name!r}: {error}") from None
        if type(value) is float:
            floats.append(value if value == value else _NAN)
        else:
            others.append((position, value))
    model_versions = sorted((name, str(version)) for name, version in versions.items())
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((KEY_FORMAT, customer_id, names, others, model_versions)).encode())
    digest.update(b"\0")
    digest.update(struct.pack(f"<{len(floats)}d", *floats))
    return f"{customer_id}{_KEY_SEPARATOR}{digest.hexdigest()}"


# --------------------------------------------------------------------------------------------- caches


@runtime_checkable
class PredictionCache(Protocol):
    """What the API needs of a cache. ``get_many`` answers in the order of ``keys`` (None for a miss)."""

    kind: str

    def get(self, key: str) -> dict | None: ...

    def put(self, key: str, value: dict) -> None: ...

    def get_many(self, keys: Sequence[str]) -> list[dict | None]: ...

    def put_many(self, items: Iterable[tuple[str, dict]]) -> None: ...


class NoCache:
    """``ENGAGEMENT_API_CACHE=off``: every lookup misses and nothing is stored."""

    kind = "off"

    def get(self, key: str) -> dict | None:
        return None

    def put(self, key: str, value: dict) -> None:
        return None

    def get_many(self, keys: Sequence[str]) -> list[dict | None]:
        return [None] * len(keys)

    def put_many(self, items: Iterable[tuple[str, dict]]) -> None:
        return None


class MemoryCache:
    """An in-process cache: an entry lives ``ttl_seconds``; beyond ``maxsize`` entries the least
    recently used goes first (expired ones before that). Thread-safe (one lock: uvicorn runs sync
    routes in a thread pool). A hit is a shallow copy, so a caller adding fields to its answer does
    not change the cached one; nested lists are shared and must be treated as read-only."""

    kind = "memory"

    def __init__(self, ttl_seconds: float = DEFAULT_TTL_SECONDS, maxsize: int = DEFAULT_MAXSIZE,
                 clock: Callable[[], float] = time.monotonic):
        if ttl_seconds <= 0 or maxsize <= 0:
            raise ValueError("ttl_seconds and maxsize must be positive")
        self.ttl_seconds = ttl_seconds
        self._entries: TTLCache = TTLCache(maxsize=maxsize, ttl=ttl_seconds, timer=clock)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._entries.expire()
            return len(self._entries)

    def get(self, key: str) -> dict | None:
        with self._lock:
            value = self._entries.get(key)
        return None if value is None else dict(value)

    def put(self, key: str, value: dict) -> None:
        with self._lock:
            self._entries[key] = dict(value)

    def get_many(self, keys: Sequence[str]) -> list[dict | None]:
        with self._lock:
            values = [self._entries.get(key) for key in keys]
        return [None if value is None else dict(value) for value in values]

    def put_many(self, items: Iterable[tuple[str, dict]]) -> None:
        copies = [(key, dict(value)) for key, value in items]
        with self._lock:
            for key, value in copies:
                self._entries[key] = value


def _json_default(value: Any) -> Any:
    if callable(getattr(value, "item", None)):  # NumPy scalars from a model
        return value.item()
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _chunks(items: Sequence, size: int) -> list[Sequence]:
    return [items[start:start + size] for start in range(0, len(items), size)]


class DynamoDBCache:
    """A DynamoDB table as the cache (layout in the module docstring).

    Reads are eventually consistent GetItem/BatchGetItem calls (half the price; a prediction written a
    moment ago and not yet visible is only a miss) and treat ``expires_at <= now`` as a miss, since
    DynamoDB removes expired items lazily. Writes are PutItem/BatchWriteItem. The client gets one
    attempt with ``timeout_seconds`` to connect and to read (default 0.25 s; see
    DEFAULT_TIMEOUT_SECONDS): a failure of any kind is a miss or a skipped write, counted in
    ``errors`` and logged as a warning once when the cache starts failing (and once, as info, when it
    works again), without the key, which names the customer. Batches run up to 8 requests at once and
    retry their unprocessed part twice (10 ms, then 20 ms later); what is still unprocessed is a miss
    or an unwritten entry.
    """

    kind = "dynamodb"

    def __init__(self, table_name: str, ttl_seconds: float = DEFAULT_TTL_SECONDS, region_name: str | None = None,
                 endpoint_url: str | None = None, clock: Callable[[], float] = time.time, client: Any = None,
                 timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS):
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        # boto3 costs ~0.2 s to import: only processes that use DynamoDB pay for it.
        import boto3
        from botocore.config import Config

        self.table_name = table_name
        self.ttl_seconds = ttl_seconds
        self.errors = 0
        self._clock = clock
        self._failing = False
        self._state_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        # endpoint_url=None lets boto3 read AWS_ENDPOINT_URL_DYNAMODB / AWS_ENDPOINT_URL itself.
        self.client = client or boto3.client(
            "dynamodb", region_name=region_name, endpoint_url=endpoint_url,
            config=Config(connect_timeout=timeout_seconds, read_timeout=timeout_seconds,
                          retries={"total_max_attempts": 1, "mode": "standard"},
                          max_pool_connections=BATCH_THREADS + 2))

    # -- single items

    def get(self, key: str) -> dict | None:
        try:
            response = self.client.get_item(TableName=self.table_name, Key={PARTITION_KEY: {"S": key}},
                                             ConsistentRead=False)
            value = self._fresh_value(response.get("Item"), self._clock())
        except Exception as error:  # any failure of an optimisation is a miss
            self._failed("GetItem", error)
            return None
        self._worked()
        return value

    def put(self, key: str, value: dict) -> None:
        try:
            self.client.put_item(TableName=self.table_name, Item=self._item(key, value, self._clock()))
        except Exception as error:  # a write that fails only costs a later miss
            self._failed("PutItem", error)
            return
        self._worked()

    # -- batches

    def get_many(self, keys: Sequence[str]) -> list[dict | None]:
        unique = list(dict.fromkeys(keys))  # BatchGetItem refuses a request that names a key twice
        found: dict[str, dict] = {}
        now = self._clock()
        for part in self._map(self._get_chunk, _chunks(unique, BATCH_GET_LIMIT)):
            for item in part:
                try:
                    value = self._fresh_value(item, now)
                except Exception as error:  # an item this class did not write is a miss
                    self._failed("BatchGetItem", error)
                    continue
                if value is not None:
                    found[item[PARTITION_KEY]["S"]] = value
        return [found.get(key) for key in keys]

    def put_many(self, items: Iterable[tuple[str, dict]]) -> None:
        now = self._clock()
        try:
            # BatchWriteItem refuses a request that names a key twice: the last value of a key wins.
            unique = {key: self._item(key, value, now) for key, value in items}
        except Exception as error:  # a value JSON cannot hold is skipped like a failed write
            self._failed("BatchWriteItem", error)
            return
        requests = [{"PutRequest": {"Item": item}} for item in unique.values()]
        list(self._map(self._write_chunk, _chunks(requests, BATCH_WRITE_LIMIT)))

    def _get_chunk(self, keys: Sequence[str]) -> list[dict]:
        request = {self.table_name: {"Keys": [{PARTITION_KEY: {"S": key}} for key in keys], "ConsistentRead": False}}
        items: list[dict] = []
        try:
            for attempt in range(BATCH_ATTEMPTS):
                if attempt:
                    time.sleep(BATCH_BACKOFF_SECONDS * 2 ** (attempt - 1))
                response = self.client.batch_get_item(RequestItems=request)
                items.extend(response.get("Responses", {}).get(self.table_name, []))
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    break
            else:
                self._failed("BatchGetItem", f"keys still unprocessed after {BATCH_ATTEMPTS} attempts")
                return items
        except Exception as error:  # the rest of this chunk are misses
            self._failed("BatchGetItem", error)
            return items
        self._worked()
        return items

    def _write_chunk(self, requests: Sequence[dict]) -> None:
        pending = {self.table_name: list(requests)}
        try:
            for attempt in range(BATCH_ATTEMPTS):
                if attempt:
                    time.sleep(BATCH_BACKOFF_SECONDS * 2 ** (attempt - 1))
                pending = self.client.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
                if not pending:
                    break
            else:
                self._failed("BatchWriteItem", f"items still unprocessed after {BATCH_ATTEMPTS} attempts")
                return
        except Exception as error:  # the rest of this chunk is not cached
            self._failed("BatchWriteItem", error)
            return
        self._worked()

    def _map(self, function: Callable, chunks: list) -> Iterable:
        if len(chunks) <= 1:
            return map(function, chunks)
        if self._executor is None:
            with self._state_lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(max_workers=BATCH_THREADS,
                                                        thread_name_prefix="prediction-cache")
        return self._executor.map(function, chunks)

    # -- items and health

    def _item(self, key: str, value: dict, now: float) -> dict:
        body = json.dumps(value, separators=(",", ":"), default=_json_default)
        # Rounded down: an entry may leave up to a second early, never late.
        return {PARTITION_KEY: {"S": key}, VALUE_ATTRIBUTE: {"S": body},
                TTL_ATTRIBUTE: {"N": str(int(now + self.ttl_seconds))}}

    @staticmethod
    def _fresh_value(item: dict | None, now: float) -> dict | None:
        """The cached prediction, or None when there is none or it has expired (DynamoDB still returns
        an expired item until its background sweep deletes it). An item without ``expires_at`` was not
        written by this class and is ignored."""
        if not item or TTL_ATTRIBUTE not in item or float(item[TTL_ATTRIBUTE]["N"]) <= now:
            return None
        return json.loads(item[VALUE_ATTRIBUTE]["S"])

    def _failed(self, operation: str, error: Exception | str) -> None:
        if isinstance(error, Exception):
            # botocore's ClientError carries the service's error code (ThrottlingException, ...); the
            # message is left out, as a validation message may quote the request (and so a customer id).
            response = getattr(error, "response", None)
            code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
            error = code or type(error).__name__
        with self._state_lock:
            self.errors += 1
            first = not self._failing
            self._failing = True
        if first:
            log.warning("prediction cache: DynamoDB %s on table %s failed (%s); serving without the cache until it "
                        "works again", operation, self.table_name, error)

    def _worked(self) -> None:
        if self._failing:
            with self._state_lock:
                recovered, self._failing = self._failing, False
            if recovered:
                log.info("prediction cache: DynamoDB table %s works again (%d failed calls so far)",
                         self.table_name, self.errors)


def create_table(client: Any, table_name: str) -> None:
    """Create the cache table (on-demand capacity) and turn on its TTL, as the Terraform does; waits
    until the table is active. For tests and local setups against moto."""
    client.create_table(TableName=table_name, BillingMode="PAY_PER_REQUEST",
                        AttributeDefinitions=[{"AttributeName": PARTITION_KEY, "AttributeType": "S"}],
                        KeySchema=[{"AttributeName": PARTITION_KEY, "KeyType": "HASH"}])
    client.get_waiter("table_exists").wait(TableName=table_name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    client.update_time_to_live(TableName=table_name,
                               TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE})


# ------------------------------------------------------------------------------------------- settings

CACHE_KINDS = ("memory", "dynamodb", "off")


def cache_from_settings() -> NoCache | MemoryCache | DynamoDBCache:
    """The cache the environment asks for.

    ``ENGAGEMENT_API_CACHE``: ``memory`` (default when ENGAGEMENT_ENV=local), ``dynamodb`` (default
    when ENGAGEMENT_ENV=aws; the table from ``ENGAGEMENT_API_CACHE_TABLE``, required) or ``off``.
    ``ENGAGEMENT_API_CACHE_TTL_SECONDS``: default 3600. ``ENGAGEMENT_API_CACHE_MAXSIZE``: entries of
    the memory cache, default 100,000. DynamoDB's region and endpoint come from boto3's own settings
    (AWS_REGION, AWS_ENDPOINT_URL_DYNAMODB, AWS_ENDPOINT_URL).
    """
    default = "dynamodb" if settings.environment() == "aws" else "memory"
    kind = os.environ.get("ENGAGEMENT_API_CACHE", "").strip().lower() or default
    if kind not in CACHE_KINDS:
        raise ValueError(f"ENGAGEMENT_API_CACHE must be one of {CACHE_KINDS}, got {kind!r}")
    if kind == "off":
        return NoCache()
    ttl = _positive_number("ENGAGEMENT_API_CACHE_TTL_SECONDS", DEFAULT_TTL_SECONDS)
    if kind == "memory":
        return MemoryCache(ttl_seconds=ttl, maxsize=int(_positive_number("ENGAGEMENT_API_CACHE_MAXSIZE",
                                                                         DEFAULT_MAXSIZE)))
    table = os.environ.get("ENGAGEMENT_API_CACHE_TABLE", "").strip()
    if not table:
        raise settings.MissingSettings("ENGAGEMENT_API_CACHE=dynamodb needs ENGAGEMENT_API_CACHE_TABLE "
                                       "(the DynamoDB table of the prediction cache)")
    return DynamoDBCache(table, ttl_seconds=ttl)


def _positive_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = 0
    if not value > 0:
        raise ValueError(f"{name} must be a positive number, got {raw!r} (ENGAGEMENT_API_CACHE=off turns the "
                         "cache off)")
    return value
