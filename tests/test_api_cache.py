"""The prediction cache (engagement_dagster.api.cache): keys that change exactly when a prediction
could, an in-process TTL cache, and the DynamoDB cache on a real moto server over HTTP, including its
expiry check on read (moto, like DynamoDB for up to days, keeps expired items) and its failures."""

import datetime as dt
import json
import logging
import math
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import numpy as np
import pytest

from engagement_dagster.api.cache import (
    DEFAULT_TIMEOUT_SECONDS,
    PARTITION_KEY,
    TTL_ATTRIBUTE,
    VALUE_ATTRIBUTE,
    DynamoDBCache,
    MemoryCache,
    NoCache,
    PredictionCache,
    cache_from_settings,
    cache_key,
    create_table,
)
from engagement_dagster.core.settings import MissingSettings

VERSIONS = {"churn": "20261109-0600-a1b2", "engagement": "20261109-0600-c3d4", "ltv": "20261109-0600-e5f6"}


def feature_row(**changes) -> dict:
    """A model-input row shaped like dbt's customer_model_input: 45 features of every kind it holds."""
    row = {"customer_id": "c-0001", "snapshot_week": dt.date(2026, 11, 9), "gender": "F", "age_band": "25-34",
           "location": "US-CA", "platform": "ios", "acquisition_channel": "organic"}
    row.update({f"count_{i}": i * 7 for i in range(8)})
    row.update({f"score_{i}": (i + 1) / 37 for i in range(30)})
    return row | changes


PREDICTION = {"customer_id": "c-0001", "engagement_score": 0.4187, "churn_probability": 0.1234567890123,
              "lifetime_value_usd": 1234.5, "segment_id": 3, "segment": "Social butterflies",
              "top_categories": ["music", "travel", "food"], "anomaly_score": -0.02, "is_anomaly": False,
              "churn_drivers": [{"feature": "sessions_last_7_days", "contribution": 0.31, "direction": "raises"}],
              "model_versions": VERSIONS}


# ------------------------------------------------------------------------------------------------ key


def test_the_key_ignores_dict_order_and_names_the_customer():
    row = feature_row()
    reordered = dict(reversed(list(row.items())))
    key = cache_key("c-0001", row, VERSIONS)
    assert key == cache_key("c-0001", reordered, dict(reversed(list(VERSIONS.items()))))
    assert key.startswith("c-0001#") and len(key.split("#")[1]) == 32


def test_numbers_that_are_equal_give_one_key():
    key = cache_key("c", feature_row(count_3=3, score_0=0.0), VERSIONS)
    for three in (3.0, np.int64(3), np.float64(3.0), np.int32(3)):
        assert cache_key("c", feature_row(count_3=three, score_0=0.0), VERSIONS) == key, repr(three)
    assert cache_key("c", feature_row(count_3=3, score_0=-0.0), VERSIONS) == key
    assert cache_key("c", feature_row(count_3=True), VERSIONS) == cache_key("c", feature_row(count_3=1), VERSIONS)
    # a date and its ISO text, and any two NaNs, are the same input
    assert cache_key("c", feature_row(snapshot_week="2026-11-09"), VERSIONS) == cache_key("c", feature_row(), VERSIONS)
    assert (cache_key("c", feature_row(score_1=float("nan")), VERSIONS)
            == cache_key("c", feature_row(score_1=np.float64("nan")), VERSIONS)
            == cache_key("c", feature_row(score_1=-math.nan), VERSIONS))


def test_any_real_difference_gives_another_key():
    base = feature_row()
    key = cache_key("c-0001", base, VERSIONS)
    smallest_step = math.nextafter(base["score_4"], 1.0)
    different = [
        cache_key("c-0001", feature_row(score_4=smallest_step), VERSIONS),
        cache_key("c-0001", feature_row(count_2=15), VERSIONS),
        cache_key("c-0001", feature_row(platform="android"), VERSIONS),
        cache_key("c-0001", feature_row(snapshot_week=dt.date(2026, 11, 16)), VERSIONS),
        cache_key("c-0001", feature_row(score_1=None), VERSIONS),
        cache_key("c-0001", feature_row(score_1=float("nan")), VERSIONS),
        cache_key("c-0001", feature_row(extra=1.0), VERSIONS),
        # two values swapped between columns: same multiset of numbers, other rows
        cache_key("c-0001", feature_row(score_0=base["score_1"], score_1=base["score_0"]), VERSIONS),
        cache_key("c-0002", base, VERSIONS),
    ]
    assert key not in different and len(set(different)) == len(different)
    # text is not a number, None is not "None", and big integers are not rounded through float64
    assert cache_key("c", {"a": "3.0"}, {}) != cache_key("c", {"a": 3.0}, {})
    assert cache_key("c", {"a": None}, {}) != cache_key("c", {"a": "None"}, {})
    assert cache_key("c", {"a": 2**60}, {}) != cache_key("c", {"a": 2**60 + 1}, {})


def test_a_new_model_version_gives_another_key():
    row = feature_row()
    key = cache_key("c-0001", row, VERSIONS)
    assert cache_key("c-0001", row, VERSIONS | {"churn": "20261116-0600-ffff"}) != key
    assert cache_key("c-0001", row, VERSIONS | {"anomaly": "20261109-0600-0000"}) != key
    assert cache_key("c-0001", row, {k: v for k, v in VERSIONS.items() if k != "ltv"}) != key


def test_the_key_is_the_same_in_every_process():
    """Pinned: a change of the canonical form must bump KEY_FORMAT (and this value), or entries written
    under the old encoding could be read under the new one. A fresh interpreter with another string
    hash seed computes the same key."""
    expected = "c-0001#54c8983ce6f5b8330e356e7d84b0189a"
    assert cache_key("c-0001", feature_row(), VERSIONS) == expected
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            "from test_api_cache import feature_row, VERSIONS; "
            "from engagement_dagster.api.cache import cache_key; print(cache_key('c-0001', feature_row(), VERSIONS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout
    assert out.strip() == expected


def test_an_unhashable_feature_is_named():
    with pytest.raises(TypeError, match="feature 'tags'"):
        cache_key("c", {"tags": ["a", "b"]}, VERSIONS)


# ----------------------------------------------------------------------------------------- in-process


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_memory_cache_hits_until_the_ttl_and_misses_after():
    clock = FakeClock()
    cache = MemoryCache(ttl_seconds=3600, clock=clock)
    assert cache.get("k") is None
    cache.put("k", PREDICTION)
    clock.now += 3599.9
    assert cache.get("k") == PREDICTION
    clock.now += 0.1
    assert cache.get("k") is None and len(cache) == 0


def test_the_memory_cache_hands_out_copies():
    cache = MemoryCache()
    value = dict(PREDICTION)
    cache.put("k", value)
    value["engagement_score"] = 0.0  # the caller's dict changes after the put
    hit = cache.get("k")
    hit["cached"] = True  # and the answer is decorated, as the API does
    assert cache.get("k") == PREDICTION


def test_the_memory_cache_evicts_the_least_recently_used_beyond_maxsize():
    cache = MemoryCache(maxsize=3)
    for key in "abc":
        cache.put(key, {"k": key})
    assert cache.get("a") == {"k": "a"}  # a is now the most recently used
    cache.put("d", {"k": "d"})
    assert cache.get("b") is None
    assert [cache.get(k) for k in "acd"] == [{"k": "a"}, {"k": "c"}, {"k": "d"}]
    assert len(cache) == 3


def test_the_memory_cache_batch_calls_answer_in_key_order():
    cache = MemoryCache()
    cache.put_many([("a", {"v": 1}), ("b", {"v": 2}), ("a", {"v": 3})])
    assert cache.get_many(["b", "x", "a", "b"]) == [{"v": 2}, None, {"v": 3}, {"v": 2}]


def test_no_cache_stores_nothing():
    cache = NoCache()
    cache.put("k", PREDICTION)
    cache.put_many([("k", PREDICTION)])
    assert cache.get("k") is None and cache.get_many(["k", "k"]) == [None, None]


def test_every_cache_has_the_interface_the_api_uses():
    for cache in (NoCache(), MemoryCache()):
        assert isinstance(cache, PredictionCache)


# ---------------------------------------------------------------------------------------------- moto


@pytest.fixture
def table(aws_endpoint):
    name = f"predictions-{uuid.uuid4().hex[:8]}"
    client = boto3.client("dynamodb", endpoint_url=aws_endpoint)
    create_table(client, name)
    return name, client


def raw_item(client, table_name: str, key: str) -> dict | None:
    return client.get_item(TableName=table_name, Key={PARTITION_KEY: {"S": key}}, ConsistentRead=True).get("Item")


def test_the_table_has_the_layout_the_terraform_declares(table):
    name, client = table
    described = client.describe_table(TableName=name)["Table"]
    assert described["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert described["AttributeDefinitions"] == [{"AttributeName": "pk", "AttributeType": "S"}]
    ttl = client.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}


def test_dynamodb_round_trip(table):
    name, client = table
    clock = FakeClock()
    cache = DynamoDBCache(name, clock=clock, timeout_seconds=5)
    key = cache_key("c-0001", feature_row(), VERSIONS)
    assert cache.get(key) is None
    cache.put(key, PREDICTION)
    assert cache.get(key) == PREDICTION
    item = raw_item(client, name, key)
    assert item[TTL_ATTRIBUTE] == {"N": str(int(clock.now) + 3600)}
    assert json.loads(item[VALUE_ATTRIBUTE]["S"]) == PREDICTION
    # model outputs may be NumPy scalars: stored as plain numbers
    cache.put("numpy", {"score": np.float32(0.5), "segment_id": np.int64(2), "flag": np.bool_(True)})
    assert cache.get("numpy") == {"score": 0.5, "segment_id": 2, "flag": True}
    assert cache.errors == 0


def test_dynamodb_misses_after_the_ttl_though_the_item_is_still_there(table):
    name, client = table
    clock = FakeClock()
    cache = DynamoDBCache(name, ttl_seconds=600, clock=clock, timeout_seconds=5)
    cache.put("k", PREDICTION)
    clock.now += 599
    assert cache.get("k") == PREDICTION and cache.get_many(["k"]) == [PREDICTION]
    clock.now += 1
    assert cache.get("k") is None and cache.get_many(["k"]) == [None]
    # moto kept it, as DynamoDB does until its lazy sweep: the check on read is what expired it
    assert raw_item(client, name, "k")[TTL_ATTRIBUTE] == {"N": str(int(clock.now))}
    assert cache.errors == 0


def test_dynamodb_batches_in_key_order(table):
    name, client = table
    clock = FakeClock()
    cache = DynamoDBCache(name, clock=clock, timeout_seconds=5)
    # DynamoDB refuses a batch that names a key twice; moto does not check BatchWriteItem: record the requests
    written: list[list[str]] = []
    cache.client.meta.events.register("before-parameter-build.dynamodb.BatchWriteItem", lambda params, **_:
                                      written.append([r["PutRequest"]["Item"]["pk"]["S"]
                                                      for r in params["RequestItems"][name]]))
    # 260 entries: 11 BatchWriteItem requests of 25 and 3 BatchGetItem requests of 100; one key twice in
    # what would be one request (DynamoDB refuses that)
    items = [(f"c-{i:04d}#x", {**PREDICTION, "customer_id": f"c-{i:04d}"}) for i in range(260)]
    cache.put_many([*items[:10], ("c-0007#x", {"customer_id": "last write wins"}), *items[10:]])
    keys = [key for key, _ in items]
    answers = cache.get_many(["nobody#x", *reversed(keys), keys[0]])
    assert answers[0] is None
    assert [a["customer_id"] for a in answers[1:-1]] == [
        "last write wins" if k == "c-0007#x" else k.split("#")[0] for k in reversed(keys)]
    assert answers[-1] == items[0][1]
    assert client.scan(TableName=name, Select="COUNT")["Count"] == 260
    assert len(written) == 11 and all(len(set(keys)) == len(keys) for keys in written)
    assert cache.errors == 0


def withhold_half(client, operation: str, calls: list, times: int):
    """Make DynamoDB's partial answer happen on moto: for the first `times` calls of a batch operation,
    send only half of the request and report the other half as unprocessed, as DynamoDB does when it
    throttles part of a batch. The client and the server stay real."""
    unprocessed = "UnprocessedKeys" if operation == "BatchGetItem" else "UnprocessedItems"

    def before(params, context, **_):
        calls.append(operation)
        if calls.count(operation) > times:
            return
        (table_name, spec), = params["RequestItems"].items()
        if operation == "BatchGetItem":
            keys = spec["Keys"]
            params["RequestItems"] = {table_name: {**spec, "Keys": keys[: len(keys) // 2]}}
            context["withheld"] = {table_name: {**spec, "Keys": keys[len(keys) // 2:]}}
        else:
            params["RequestItems"] = {table_name: spec[: len(spec) // 2]}
            context["withheld"] = {table_name: spec[len(spec) // 2:]}

    def after(parsed, context, **_):
        if "withheld" in context:
            parsed[unprocessed] = context["withheld"]

    client.meta.events.register(f"before-parameter-build.dynamodb.{operation}", before)
    client.meta.events.register(f"after-call.dynamodb.{operation}", after)


def test_dynamodb_batches_retry_what_dynamodb_left_unprocessed(table):
    name, _ = table
    cache = DynamoDBCache(name, timeout_seconds=5)
    calls: list[str] = []
    withhold_half(cache.client, "BatchWriteItem", calls, times=1)
    withhold_half(cache.client, "BatchGetItem", calls, times=1)
    items = [(f"k{i}", {"i": i}) for i in range(20)]
    cache.put_many(items)
    assert cache.get_many([k for k, _ in items]) == [v for _, v in items]
    assert calls == ["BatchWriteItem", "BatchWriteItem", "BatchGetItem", "BatchGetItem"]
    assert cache.errors == 0


def test_dynamodb_batches_give_up_after_three_attempts(table, caplog):
    name, _ = table
    cache = DynamoDBCache(name, timeout_seconds=5)
    cache.put_many([(f"k{i}", {"i": i}) for i in range(8)])
    calls: list[str] = []
    withhold_half(cache.client, "BatchGetItem", calls, times=99)
    with caplog.at_level(logging.WARNING, logger="engagement_dagster.api.cache"):
        answers = cache.get_many([f"k{i}" for i in range(8)])
    # 4 keys answered, then 2, then 1: the last one stays a miss
    assert len(calls) == 3 and sum(a is not None for a in answers) == 7
    assert cache.errors == 1 and "unprocessed" in caplog.text


def test_dynamodb_failures_are_misses_logged_once(aws_endpoint, caplog):
    cache = DynamoDBCache(f"missing-{uuid.uuid4().hex[:8]}", timeout_seconds=5)
    key = cache_key("c-secret-customer", feature_row(), VERSIONS)
    with caplog.at_level(logging.INFO, logger="engagement_dagster.api.cache"):
        assert cache.get(key) is None
        cache.put(key, PREDICTION)
        assert cache.get_many([key, "other"]) == [None, None]
        cache.put_many([(key, PREDICTION)])
        assert cache.errors == 4
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "ResourceNotFoundException" in warnings[0].getMessage()
        # the table appears: the cache works again and says so once
        create_table(boto3.client("dynamodb", endpoint_url=aws_endpoint), cache.table_name)
        cache.put(key, PREDICTION)
        assert cache.get(key) == PREDICTION
    infos = [r for r in caplog.records if r.levelno == logging.INFO and "works again" in r.getMessage()]
    assert len(infos) == 1
    assert "c-secret-customer" not in caplog.text  # keys name customers: never logged


def test_dynamodb_unreachable_is_a_miss(aws_endpoint):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cache = DynamoDBCache("predictions", endpoint_url=f"http://127.0.0.1:{port}")
    assert cache.get("k") is None and cache.get_many(["a", "b"]) == [None, None]
    cache.put("k", PREDICTION)
    cache.put_many([("k", PREDICTION)])
    assert cache.errors == 4


def test_a_slow_dynamodb_costs_one_short_timeout(aws_endpoint):
    """A server that accepts connections and never answers: botocore's defaults (60 s read timeout,
    retries) would hold the request for minutes; the cache gives up after one 0.25 s attempt."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        cache = DynamoDBCache("predictions", endpoint_url=f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.perf_counter()
        assert cache.get("k") is None
        cache.put("k", PREDICTION)
        elapsed = time.perf_counter() - started
    assert 2 * DEFAULT_TIMEOUT_SECONDS <= elapsed < 2.0 and cache.errors == 2
    config = cache.client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (DEFAULT_TIMEOUT_SECONDS, DEFAULT_TIMEOUT_SECONDS)
    assert config.retries["total_max_attempts"] == 1


# ------------------------------------------------------------------------------------------- settings


def test_the_local_default_is_the_memory_cache(monkeypatch):
    monkeypatch.setenv("ENGAGEMENT_ENV", "local")
    monkeypatch.delenv("ENGAGEMENT_API_CACHE", raising=False)
    monkeypatch.setenv("ENGAGEMENT_API_CACHE_TTL_SECONDS", "90")
    cache = cache_from_settings()
    assert isinstance(cache, MemoryCache) and cache.ttl_seconds == 90
    monkeypatch.setenv("ENGAGEMENT_API_CACHE", "off")
    assert isinstance(cache_from_settings(), NoCache)


def test_the_aws_default_is_dynamodb_from_boto3s_own_endpoint_settings(table, monkeypatch):
    name, _ = table
    monkeypatch.setenv("ENGAGEMENT_ENV", "aws")
    monkeypatch.delenv("ENGAGEMENT_API_CACHE", raising=False)
    monkeypatch.delenv("ENGAGEMENT_API_CACHE_TABLE", raising=False)
    with pytest.raises(MissingSettings, match="ENGAGEMENT_API_CACHE_TABLE"):
        cache_from_settings()
    monkeypatch.setenv("ENGAGEMENT_API_CACHE_TABLE", name)
    cache = cache_from_settings()  # AWS_ENDPOINT_URL (the fixture's moto server) is read by boto3 itself
    assert isinstance(cache, DynamoDBCache) and cache.ttl_seconds == 3600
    cache.put("k", PREDICTION)
    assert cache.get("k") == PREDICTION and cache.errors == 0


@pytest.mark.parametrize(("name", "value"), [("ENGAGEMENT_API_CACHE", "redis"),
                                             ("ENGAGEMENT_API_CACHE_TTL_SECONDS", "0"),
                                             ("ENGAGEMENT_API_CACHE_TTL_SECONDS", "an hour")])
def test_a_bad_setting_is_refused_by_name(monkeypatch, name, value):
    monkeypatch.setenv("ENGAGEMENT_ENV", "local")
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        cache_from_settings()


def test_the_cache_module_imports_neither_dagster_nor_boto3():
    """The API's cold start: the cache module pulls in no Dagster, and boto3 only once a DynamoDB cache
    is built (the local API never pays for it)."""
    code = ("import sys; import engagement_dagster.api.cache; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'dagster', 'dagster_dbt', 'dagster_aws', 'dbt', 'boto3', 'botocore'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
