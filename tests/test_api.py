"""The prediction API over real HTTP (uvicorn on 127.0.0.1) on a lake the whole graph built: keys,
refusals naming the field, the same predictions as the weekly batch, the cache, a new champion picked
up without a restart, and a schema-driven fuzz run with no 5xx."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import httpx
import pandas as pd
import pytest

from engagement_dagster.api.app import create_app
from engagement_dagster.api.bench import customer_records
from engagement_dagster.api.cache import MemoryCache
from engagement_dagster.api.predictor import Predictor
from engagement_dagster.api.schema import MAX_BATCH
from engagement_dagster.core.ml.registry import GateDecision, ModelRegistry
from engagement_dagster.core.storage.lake import LocalStore
from tests.conftest import KB_WEEKS

KEYS = ["first-key", "second-key"]
WEEK = KB_WEEKS[-1]


class Clock:
    def __init__(self):
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def raw_records(root, week: str = WEEK) -> list[dict]:
    """The week's raw customers as a client sends them."""
    return customer_records(root, week=week)[1]


def batch_predictions(root, week: str = WEEK) -> pd.DataFrame:
    parts = sorted((root / "predictions" / f"snapshot_week={week}").glob("*.parquet"))
    return pd.concat(pd.read_parquet(p) for p in parts).set_index("customer_id")


class Server:
    """uvicorn serving an app on a free port of 127.0.0.1, in a thread of this process."""

    def __init__(self, app):
        import uvicorn

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> httpx.Client:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        return self.client

    def __exit__(self, *exc):
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def lake(kb_weeks, tmp_path_factory):
    """A copy of the two-week lake, so champion changes here touch no other test."""
    import shutil

    root = tmp_path_factory.mktemp("api_lake") / "lake"
    shutil.copytree(kb_weeks[0] / "models", root / "models")
    shutil.copytree(kb_weeks[0] / "raw", root / "raw")
    shutil.copytree(kb_weeks[0] / "predictions", root / "predictions")
    return root


@pytest.fixture(scope="module")
def clock():
    return Clock()


@pytest.fixture(scope="module")
def api(lake, clock):
    predictor = Predictor.from_store(LocalStore(lake))
    app = create_app(predictor=predictor, cache=MemoryCache(ttl_seconds=3600, clock=clock), api_keys=KEYS)
    with Server(app) as client:
        yield client


@pytest.fixture(scope="module")
def records(lake):
    return raw_records(lake)


def post(client, path, body, key=KEYS[0]):
    headers = {"x-api-key": key} if key is not None else {}
    return client.post(path, json=body, headers=headers)


def test_health_says_the_models_are_loaded_and_which_versions_serve(api, lake):
    health = api.get("/health").json()
    assert health["models_loaded"] is True and health["status"] == "ok"
    registry = ModelRegistry(LocalStore(lake))
    assert health["versions"]["churn_model"] == registry.serving("churn_model")[1]
    assert set(health["versions"]) == {"engagement_model", "churn_model", "ltv_model", "segment_model",
                                       "anomaly_model", "content_recommender"}


@pytest.mark.parametrize("key", [None, "wrong-key", "first-key-but-longer", ""])
def test_a_missing_or_wrong_key_gets_401(api, records, key):
    response = post(api, "/predict", {**records[0], "snapshot_week": WEEK}, key=key)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "ApiKey"


def test_every_configured_key_is_accepted(api, records):
    for key in KEYS:
        assert post(api, "/predict", {**records[1], "snapshot_week": WEEK}, key=key).status_code == 200


BAD_FIELDS = [
    ("age", "forty", "not a whole number"),                       # wrong type
    ("age", 7, "below the minimum 13"),                           # under the contract's minimum
    ("session_duration_avg_minutes", 2000, "above the maximum 1440"),  # over a day
    ("gender", "X", "not one of ['M', 'F', 'O', 'N']"),           # not an allowed value
    ("social_influence_tier", "Giga", "not one of"),
    ("location", "usa", "not of the expected shape"),             # not the shape of a location
    ("customer_id", "=HYPERLINK(1)", "not of the expected shape"),  # a spreadsheet formula is not an id
    ("engagement_score", 0.5, "a target the models predict"),     # a target is not an input
    ("favourite_colour", "blue", "not a column of the data contract"),  # unknown fields are refused
]


@pytest.mark.parametrize(("field", "value", "words"), BAD_FIELDS)
def test_a_bad_field_gets_422_naming_it(api, records, field, value, words):
    response = post(api, "/predict", {**records[0], field: value})
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert [e["loc"][-1] for e in errors] == [field]
    assert errors[0]["msg"].startswith(f"{field}: ") and words in errors[0]["msg"]


def test_a_missing_field_gets_422_naming_it(api, records):
    body = {k: v for k, v in records[0].items() if k != "tenure_months"}
    errors = post(api, "/predict", body).json()["detail"]
    assert [(e["loc"][-1], e["type"]) for e in errors] == [("tenure_months", "missing")]


def test_a_batch_over_the_limit_gets_422_and_an_oversized_body_413(api, records):
    over = {"customers": [records[0]] * (MAX_BATCH + 1)}
    response = post(api, "/predict/batch", over)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "customers"
    huge = b'{"customers": [' + b'{"x": "' + b"y" * (5 * 1024 * 1024) + b'"}]}'
    response = api.post("/predict/batch", content=huge, headers={"x-api-key": KEYS[0],
                                                                 "content-type": "application/json"})
    assert response.status_code == 413


def test_online_predictions_equal_the_weekly_batch(api, lake, records):
    """Raw columns in, through the API's features and models, against the batch the graph wrote."""
    batch = batch_predictions(lake)
    sample = records[:400]
    answer = post(api, "/predict/batch", {"customers": sample, "snapshot_week": WEEK}).json()["predictions"]
    singles = [post(api, "/predict", {**r, "snapshot_week": WEEK}).json() for r in sample[:25]]
    for got in answer + singles:
        want = batch.loc[got["customer_id"]]
        assert got["engagement_score"] == pytest.approx(want["predicted_engagement_score"], rel=1e-5, abs=1e-7)
        assert got["churn_probability"] == pytest.approx(want["churn_probability"], rel=1e-5, abs=1e-7)
        assert got["lifetime_value_usd"] == pytest.approx(want["predicted_lifetime_value_usd"], rel=1e-5)
        assert (got["segment_id"], got["segment"]) == (want["segment_id"], want["segment"])
        assert got["top_categories"] == [want[f"recommended_category_{i}"] for i in (1, 2, 3)]
        assert got["is_anomaly"] == bool(want["is_anomaly"])
        assert got["anomaly_score"] == pytest.approx(want["anomaly_score"], rel=1e-5, abs=1e-7)
        if want["churn_drivers_method"] == "exact_treeshap":  # the batch's exact drivers (p ≥ 0.5)
            assert [d["feature"] for d in got["churn_drivers"]] == [want[f"churn_driver_{i}"] for i in (1, 2, 3)]
            contributions = [d["contribution"] for d in got["churn_drivers"]]
            assert contributions == pytest.approx([want[f"churn_driver_{i}_contribution"] for i in (1, 2, 3)],
                                                  rel=1e-4, abs=1e-6)
        for driver in got["churn_drivers"]:
            assert driver["direction"].startswith("raises" if driver["contribution"] > 0 else "lowers")
        assert got["model_versions"]["churn_model"] == want["churn_model_version"]


def test_a_repeat_is_served_from_the_cache_and_a_changed_feature_is_not(api, records):
    body = {**records[1050], "snapshot_week": WEEK}  # not among the customers predicted above
    first, again = post(api, "/predict", body).json(), post(api, "/predict", body).json()
    assert (first["cached"], again["cached"]) == (False, True)
    assert {k: v for k, v in again.items() if k not in ("cached", "latency_ms")} == \
        {k: v for k, v in first.items() if k not in ("cached", "latency_ms")}
    changed = post(api, "/predict", {**body, "sessions_last_7_days": body["sessions_last_7_days"] + 1}).json()
    assert changed["cached"] is False


def test_the_cache_misses_after_its_ttl(api, records, clock):
    body = {**records[1060], "snapshot_week": WEEK}
    assert post(api, "/predict", body).json()["cached"] is False
    assert post(api, "/predict", body).json()["cached"] is True
    clock.now += 3601
    assert post(api, "/predict", body).json()["cached"] is False


def test_a_new_champion_is_served_without_a_restart_and_never_from_the_cache(api, lake, records):
    body = {**records[1070], "snapshot_week": WEEK}
    before = post(api, "/predict", body).json()
    assert post(api, "/predict", body).json()["cached"] is True
    registry = ModelRegistry(LocalStore(lake))
    versions = registry.versions("ltv_model")
    current = registry.serving("ltv_model")[1]
    other = next(v for v in versions if v != current)  # the first week's model
    registry.promote("ltv_model", other, GateDecision(True, "an operator rolls back to the first week's model",
                                                      "mae", 0.0, 0.0, None, 0.02))
    deadline = time.monotonic() + 30
    while (after := post(api, "/predict", body).json())["model_versions"]["ltv_model"] != other:
        assert after["cached"] is True  # the old champion's answer, until the registry is checked again
        assert time.monotonic() < deadline, "the new champion was not picked up"
        time.sleep(0.5)
    assert after["cached"] is False  # the new champion's first answer is computed, not the old one's
    assert api.get("/health").json()["versions"]["ltv_model"] == other
    assert after["lifetime_value_usd"] != before["lifetime_value_usd"]


def test_the_openapi_document_describes_the_contract(api):
    document = api.get("/openapi.json").json()
    record = document["components"]["schemas"]["CustomerRecord"]
    assert record["additionalProperties"] is False
    assert record["properties"]["age"]["minimum"] == 13 and record["properties"]["age"]["maximum"] == 120
    assert set(record["properties"]["gender"]["enum"]) == {"M", "F", "O", "N"}
    assert "engagement_score" not in record["properties"]  # targets are not inputs
    assert set(document["paths"]) >= {"/predict", "/predict/batch", "/health"}


def test_the_api_imports_no_dagster():
    code = ("import sys; import engagement_dagster.api.app, engagement_dagster.api.serve; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'dagster', 'dagster_dbt', 'dbt'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_schema_driven_fuzz_run_gets_no_5xx(lake):
    """schemathesis generates requests from the OpenAPI document (valid and invalid) against the app in
    this process: every answer is a 2xx or a 4xx, never a 5xx, and matches the documented schema."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    app = create_app(predictor=Predictor.from_store(LocalStore(lake)), cache=MemoryCache(), api_keys=KEYS)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures, statuses = [], []

    def fuzz(op):
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def run(case):
            case.headers = {**(case.headers or {}), "x-api-key": KEYS[0]}
            response = case.call()
            statuses.append(response.status_code)
            if response.status_code >= 500:
                failures.append((op.label, response.status_code, case.body))

        run()

    for operation in schema.get_all_operations():
        fuzz(operation.ok())
    assert failures == []
    assert {200, 422} <= set(statuses)  # it reached the models with valid requests, and was refused invalid ones


def test_the_readmes_curl_example_is_answered(api):
    """README: `curl -H "x-api-key: …" -H "content-type: application/json" -d @docs/examples/predict.json …/predict`."""
    from engagement_dagster.api.schema import EXAMPLE_CUSTOMER, EXAMPLE_WEEK
    from engagement_dagster.core.settings import PROJECT_ROOT

    body = (PROJECT_ROOT / "docs" / "examples" / "predict.json").read_bytes()
    assert json.loads(body) == {**EXAMPLE_CUSTOMER, "snapshot_week": EXAMPLE_WEEK}
    response = api.post("/predict", content=body, headers={"x-api-key": KEYS[0], "content-type": "application/json"})
    assert response.status_code == 200
    answer = response.json()
    assert answer["customer_id"] == EXAMPLE_CUSTOMER["customer_id"] and 0 <= answer["churn_probability"] <= 1
    assert len(answer["top_categories"]) == 3 and len(answer["churn_drivers"]) == 3


def test_api_keys_never_reach_the_logs(api, records, caplog):
    """Neither a configured key nor a wrong one a client sent appears in any log record of the server."""
    import logging

    caplog.set_level(logging.DEBUG)
    body = {**records[1100], "snapshot_week": WEEK}
    assert post(api, "/predict", body, key="a-wrong-key-from-a-client").status_code == 401
    assert post(api, "/predict", body).status_code == 200
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert caplog.records  # the server did log (httpx, uvicorn): what it logged is under test
    assert not [key for key in (*KEYS, "a-wrong-key-from-a-client") if key in logged]
