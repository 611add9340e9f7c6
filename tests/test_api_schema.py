"""The API's request models are the data contract: the same columns, and no value the API takes that
ingest refuses (the API is stricter only where its module docstring says); errors name the field and the
contract's rule; validation is cheap."""

from __future__ import annotations

import datetime as dt
import json
import math

import pyarrow as pa
import pytest
from pydantic import ValidationError

from engagement_dagster.api.schema import (
    EXAMPLE_CUSTOMER,
    MAX_BATCH,
    RECORD_COLUMNS,
    BatchRequest,
    BatchResponse,
    CustomerRecord,
    Health,
    Prediction,
    PredictRequest,
    contract_errors,
    integer_limit,
)
from engagement_dagster.core.data.contract import (
    CONTRACT,
    DATE,
    FLOAT,
    INT,
    OPTIONAL,
    TARGETS,
    Column,
    ContractViolation,
    validate_batch,
)

TARGET_VALUES = {"engagement_score": 0.5, "churn_30_day": 0, "lifetime_value_usd": 10.0,
                 "content_category_primary": "music"}
MISSING = object()


def csv_text(value) -> str:
    return "" if value is None else value if isinstance(value, str) else repr(value)


def ingest(record: dict) -> dict | None:
    """The record as ingest types it from one CSV row (every value text, an empty cell for null), or None
    when ingest refuses it."""
    row = {name: csv_text(value) for name, value in {**TARGET_VALUES, **record}.items()}
    try:
        table = validate_batch(pa.Table.from_pylist([row], schema=pa.schema([(n, pa.string()) for n in row])),
                               "request.csv")
    except ContractViolation:
        return None
    return table.to_pylist()[0]


def api(record: dict) -> dict | None:
    """The record as the API types it from JSON, or None when it refuses it."""
    try:
        return CustomerRecord.model_validate_json(json.dumps(record)).model_dump()
    except ValidationError:
        return None


def candidates(column: Column) -> list:
    """Values around each rule of a column, and values of the wrong JSON type."""
    if column.kind in (INT, FLOAT):
        step = 1 if column.kind == INT else 1e-9
        values = [0, 1, 12, -1, True, None, "12", 12.0, 12.5, 2**31 - 1, 2**31, 2**62, 2**62 + 1, 1e308,
                  math.nan, math.inf]
        for bound in (column.min, column.max):
            if bound is not None:
                values += [bound - step, bound, bound + step]
        return values
    if column.kind == DATE:
        return ["2026-11-10", "2026-1-1", "11/10/2026", "2026-11-10T00:00:00", "2026-02-30", "", None, 20261110]
    values = ["", "   ", None, 1, "ios", "=1+1", "US-CA", " US-CA ", "US", "us-ca", "USA", "US-ABCD", "UK-LON",
              "a.b:c-d_e", "-abc", "ab c", "67b650ab-3bed-4bec-b0bb-ab3796a9777b"]
    for allowed in column.allowed or ():
        values += [allowed, allowed.lower(), f" {allowed} "]
    return values


def api_is_stricter_on(column: Column, value) -> bool:
    """The documented cases where the API refuses what ingest takes (schema's module docstring)."""
    if isinstance(value, bool):
        return True  # a boolean never passes as a number
    if column.kind == INT:
        return isinstance(value, float | str) or value > integer_limit(column)[0]
    if column.kind == FLOAT:
        return isinstance(value, str)
    if column.kind == DATE:
        return True  # any spelling other than YYYY-MM-DD
    return not isinstance(value, str)  # text must be a JSON string


@pytest.mark.parametrize("column", RECORD_COLUMNS, ids=[c.name for c in RECORD_COLUMNS])
def test_the_api_never_takes_what_ingest_refuses_and_types_what_both_take_alike(column):
    for value in candidates(column):
        record = {**EXAMPLE_CUSTOMER, column.name: value}
        by_ingest, by_api = ingest(record), api(record)
        where = (f"{column.name}={value!r}: ingest {by_ingest and by_ingest[column.name]!r}, "
                 f"api {by_api and by_api[column.name]!r}")
        if by_api is not None:
            assert by_ingest is not None, where
            got, want = by_api[column.name], by_ingest[column.name]
            assert type(got) is type(want) and got == want, where
        elif by_ingest is not None:
            assert api_is_stricter_on(column, value), where


def test_a_missing_optional_column_is_null_and_a_missing_contract_column_refused():
    for column in OPTIONAL:
        record = {k: v for k, v in EXAMPLE_CUSTOMER.items() if k != column.name}
        assert api(record)[column.name] is None and ingest(record)[column.name] is None
    for column in RECORD_COLUMNS:
        if not column.nullable:
            assert api({k: v for k, v in EXAMPLE_CUSTOMER.items() if k != column.name}) is None, column.name


def test_the_fields_are_the_contract_columns_without_targets():
    expected = [c.name for c in CONTRACT if not c.target] + [c.name for c in OPTIONAL]
    assert list(CustomerRecord.model_fields) == expected
    assert not set(TARGETS) & set(CustomerRecord.model_fields)
    for name, info in CustomerRecord.model_fields.items():
        column = next(c for c in RECORD_COLUMNS if c.name == name)
        assert info.is_required() is (not column.nullable), name
        assert info.description, name
        for words in (column.scale, column.shape):
            if words:
                assert words in info.description, name
    assert list(PredictRequest.model_fields) == [*expected, "snapshot_week"]


def test_the_json_schema_carries_the_rules_and_an_example_both_paths_accept():
    schema = CustomerRecord.model_json_schema()
    properties = schema["properties"]
    assert schema["additionalProperties"] is False
    assert (properties["age"]["minimum"], properties["age"]["maximum"]) == (13, 120)
    assert properties["age"]["type"] == "integer" and properties["trust_score"]["type"] == "number"
    assert properties["match_success_rate"]["maximum"] == 100 and "percent" in properties["match_success_rate"][
        "description"]
    assert set(properties["social_influence_tier"]["enum"]) == {"Nano", "Micro", "Mid", "Macro", "Mega"}
    assert properties["location"]["pattern"] == next(c.pattern for c in CONTRACT if c.name == "location")
    assert properties["swipes_right_last_30_days"]["maximum"] == 2**31 - 1
    assert properties["followers_count"]["maximum"] == 2**62  # BIGINT in the warehouse: ingest's limit
    assert properties["last_active_date"]["default"] is None
    assert schema["examples"] == [EXAMPLE_CUSTOMER]
    assert set(EXAMPLE_CUSTOMER) == set(CustomerRecord.model_fields)
    assert api(EXAMPLE_CUSTOMER) is not None and ingest(EXAMPLE_CUSTOMER) is not None
    for model in (PredictRequest, BatchRequest):
        for example in model.model_json_schema()["examples"]:
            model.model_validate_json(json.dumps(example))


BAD_FIELDS = [
    ("age", 5, "age: below the minimum 13: the contract's scale is 13–120 (years"),
    ("age", 121, "age: above the maximum 120: the contract's scale is 13–120"),
    ("match_success_rate", 100.5, "above the maximum 100: the contract's scale is 0–100 (a percent)"),
    ("trust_score", -0.1, "trust_score: below the minimum 0: the contract's scale is 0–1 (a fraction)"),
    ("swipes_right_last_30_days", 2**31, "above the maximum 2147483647: the dbt staging model stores it as a 32-bit"),
    ("gender", "X", "gender: not one of ['M', 'F', 'O', 'N']"),
    ("location", "usa", "location: not of the expected shape: a country code with an optional region"),
    ("customer_id", "=HYPERLINK()", "customer_id: not of the expected shape: letters, digits"),
    ("tenure_months", 1.5, "tenure_months: not a whole number"),
    ("tenure_months", 12.0, "tenure_months: not a whole number"),
    ("tenure_months", "12", "tenure_months: not a whole number"),
    ("age", True, "age: not a whole number"),
    ("trust_score", "0.5", "trust_score: not a number"),
    ("trust_score", False, "trust_score: not a number"),
    ("avg_sentiment_score", math.nan, "avg_sentiment_score: not a finite number"),
    ("response_time_avg_hours", math.inf, "response_time_avg_hours: not a finite number"),
    ("signup_date", "11/10/2026", "signup_date: not a date (expected YYYY-MM-DD)"),
    ("platform", 3, "platform: not text"),
    ("customer_id", MISSING, "customer_id: required column missing"),
    ("email", "someone@example.com", "email: not a column of the data contract"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD_FIELDS, ids=[f"{f}={v!r}" for f, v, _ in BAD_FIELDS])
def test_each_kind_of_bad_field_is_refused_naming_the_field_and_the_rule(field, value, message):
    record = {**EXAMPLE_CUSTOMER, "snapshot_week": "2026-11-16", field: value}
    if value is MISSING:
        del record[field]
    with pytest.raises(ValidationError) as raised:
        PredictRequest.model_validate_json(json.dumps(record))
    (error,) = contract_errors(raised.value.errors())
    assert error["loc"] == (field,)
    assert message in error["msg"]


def test_a_batch_holds_one_to_max_batch_customers_and_errors_name_the_customer():
    full = {"customers": [EXAMPLE_CUSTOMER] * MAX_BATCH}
    assert len(BatchRequest.model_validate_json(json.dumps(full)).customers) == MAX_BATCH
    for size, kind in ((0, "too_short"), (MAX_BATCH + 1, "too_long")):
        with pytest.raises(ValidationError) as raised:
            BatchRequest.model_validate_json(json.dumps({"customers": [EXAMPLE_CUSTOMER] * size}))
        assert [(e["type"], e["loc"]) for e in raised.value.errors()] == [(kind, ("customers",))]
    customers = [EXAMPLE_CUSTOMER, EXAMPLE_CUSTOMER, {**EXAMPLE_CUSTOMER, "age": 7}]
    with pytest.raises(ValidationError) as raised:
        BatchRequest.model_validate_json(json.dumps({"customers": customers, "snapshot_week": "16/11/2026"}))
    errors = contract_errors(raised.value.errors())
    assert [e["loc"] for e in errors] == [("customers", 2, "age"), ("snapshot_week",)]
    assert errors[0]["msg"].startswith("age: below the minimum 13: the contract's scale is 13–120")
    with pytest.raises(ValidationError, match="extra_forbidden"):
        BatchRequest.model_validate_json(json.dumps({"customers": [EXAMPLE_CUSTOMER], "week": "2026-11-16"}))


def test_the_week_is_optional_and_a_date():
    assert PredictRequest.model_validate_json(json.dumps(EXAMPLE_CUSTOMER)).snapshot_week is None
    given = PredictRequest.model_validate_json(json.dumps({**EXAMPLE_CUSTOMER, "snapshot_week": "2026-11-16"}))
    assert given.snapshot_week == dt.date(2026, 11, 16)
    assert "snapshot_week" not in given.model_dump(exclude={"snapshot_week"})
    for week in ("2026-11-16T00:00:00", 1763251200, "next monday"):
        with pytest.raises(ValidationError):
            PredictRequest.model_validate_json(json.dumps({**EXAMPLE_CUSTOMER, "snapshot_week": week}))


def test_text_is_trimmed_and_a_blank_optional_text_is_null_as_ingest_reads_them():
    record = api({**EXAMPLE_CUSTOMER, "gender": " F ", "location": " US-CA", "platform": "  ",
                  "acquisition_channel": " paid "})
    assert (record["gender"], record["location"], record["platform"], record["acquisition_channel"]) == \
        ("F", "US-CA", None, "paid")


def test_a_fastapi_app_answers_422_naming_the_field_in_the_contracts_words():
    from fastapi import FastAPI, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from fastapi.testclient import TestClient

    app = FastAPI()

    @app.exception_handler(RequestValidationError)
    async def refused(_request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse(jsonable_encoder({"detail": contract_errors(error.errors())}), status_code=422)

    @app.post("/predict")
    def predict(request: PredictRequest) -> dict:
        return {"age": request.age}

    client = TestClient(app)
    assert client.post("/predict", json=EXAMPLE_CUSTOMER).json() == {"age": EXAMPLE_CUSTOMER["age"]}
    response = client.post("/predict", json={**EXAMPLE_CUSTOMER, "peak_activity_hour": 24})
    assert response.status_code == 422
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["body", "peak_activity_hour"]
    assert detail["msg"] == ("peak_activity_hour: above the maximum 23: "
                             "the contract's scale is 0–23 (an hour of the day)")
    document = client.get("/openapi.json").json()
    assert document["components"]["schemas"]["PredictRequest"]["properties"]["age"]["maximum"] == 120


def test_responses_take_what_the_predictor_returns():
    prediction = {
        "customer_id": "c1", "engagement_score": 0.4, "churn_probability": 0.7, "lifetime_value_usd": 120.5,
        "segment_id": 2, "segment": "casual browsers", "top_categories": ["music", "tech", "travel"],
        "anomaly_score": -0.1, "is_anomaly": False,
        "churn_drivers": [{"feature": "days_since_last_active", "contribution": 0.8, "direction": "raises churn risk"},
                          {"feature": "log_weekly_minutes", "contribution": -0.3, "direction": "lowers churn risk"}],
        "model_versions": {"churn_model": "v3"}, "cached": False, "latency_ms": 1.2,
    }
    assert Prediction.model_validate(prediction).churn_drivers[0].feature == "days_since_last_active"
    batch = BatchResponse.model_validate({"predictions": [prediction], "cached": 0, "latency_ms": 3.0})
    assert batch.predictions[0].segment == "casual browsers"
    with pytest.raises(ValidationError):
        Prediction.model_validate({**prediction, "churn_drivers": [{**prediction["churn_drivers"][0],
                                                                     "direction": "up"}]})
    assert Health.model_validate({"status": "ok", "models_loaded": True, "versions": {"churn_model": "v3"}})


