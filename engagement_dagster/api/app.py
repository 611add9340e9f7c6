"""The real-time prediction API: FastAPI over the registry's serving models, with a cache.

`POST /predict` scores one customer from the raw columns of the data contract (the same contract
ingest enforces, so the two never disagree), `POST /predict/batch` up to `MAX_BATCH` customers,
`GET /health` says whether the models are loaded and which versions serve. The features are
computed as dbt computes them (`api.features`), the models are the champions of the registry
(`api.predictor`, reloaded when a champion changes, no restart), and a prediction is cached under
the customer, the hash of its features and the model versions (`api.cache`), so a new champion never
serves a stale answer.

Imports no Dagster (a test checks): on Lambda the cold start is what a user waits for.
"""

from __future__ import annotations

import datetime as dt
import gc
import hmac
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader

from engagement_dagster.api.cache import PredictionCache, cache_from_settings, cache_key
from engagement_dagster.api.features import FeatureError, online_features
from engagement_dagster.api.predictor import Predictor
from engagement_dagster.api.schema import (
    MAX_BATCH,
    BatchRequest,
    BatchResponse,
    Health,
    Prediction,
    PredictRequest,
    contract_errors,
)

log = logging.getLogger("engagement_dagster.api")

# A batch of MAX_BATCH customers is about 1.5 MB of JSON; anything much larger is refused unread.
MAX_BODY_BYTES = int(os.environ.get("ENGAGEMENT_API_MAX_BODY_BYTES", str(4 * 1024 * 1024)))
KEY_HEADER = "x-api-key"  # the header API Gateway reads its own keys from, too


class ConfigurationError(RuntimeError):
    """The API cannot start as configured (no API keys, no models)."""


def api_keys_from_settings() -> list[str]:
    """The accepted keys: `ENGAGEMENT_API_KEYS` (comma-separated), or on AWS the Secrets Manager
    secret `ENGAGEMENT_API_KEYS_SECRET_ARN` (a JSON list of keys, or one key). Never logged."""
    keys = [k.strip() for k in os.environ.get("ENGAGEMENT_API_KEYS", "").split(",") if k.strip()]
    arn = os.environ.get("ENGAGEMENT_API_KEYS_SECRET_ARN")
    if arn:
        import boto3

        secret = boto3.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"]
        try:
            loaded = json.loads(secret)
        except json.JSONDecodeError:
            loaded = secret
        keys += [loaded] if isinstance(loaded, str) else [str(k) for k in loaded]
    if not keys:
        raise ConfigurationError(
            "no API keys: set ENGAGEMENT_API_KEYS (comma-separated) or ENGAGEMENT_API_KEYS_SECRET_ARN; "
            "`make serve` sets a local development key")
    return keys


def key_checker(keys: Sequence[str]) -> Callable:
    """A FastAPI dependency: 401 unless the request's key equals one of `keys`, compared in constant
    time (every key is compared, whichever matches)."""
    encoded = [k.encode() for k in keys]
    header = APIKeyHeader(name=KEY_HEADER, auto_error=False, description="One of the configured API keys.")

    def check(key: str | None = Depends(header)) -> None:
        given = (key or "").encode()
        matched = False
        for candidate in encoded:
            matched |= hmac.compare_digest(given, candidate)
        if not matched:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or unknown API key",
                                headers={"WWW-Authenticate": "ApiKey"})

    return check


def create_app(predictor: Predictor | None = None, cache: PredictionCache | None = None,
               api_keys: Sequence[str] | None = None, clock: Callable[[], dt.date] | None = None) -> FastAPI:
    """The application. Without arguments everything comes from the environment (the registry of
    `ENGAGEMENT_ENV`'s lake, the cache of `ENGAGEMENT_API_CACHE`, the keys); tests pass their own."""
    keys = list(api_keys) if api_keys is not None else api_keys_from_settings()
    today = clock or (lambda: dt.datetime.now(dt.UTC).date())
    state: dict = {"predictor": predictor, "cache": cache}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        # Models load once per process (per Lambda execution environment), before the first request.
        if state["predictor"] is None:
            state["predictor"] = Predictor.from_settings()
        if state["cache"] is None:
            state["cache"] = cache_from_settings()
        # The models and libraries are loaded for good: moved out of the garbage collector's view, a full
        # collection no longer walks them (50–130 ms pauses at a 1,000-row batch's scale otherwise).
        gc.collect()
        gc.freeze()
        yield

    app = FastAPI(
        title="engagement-dagster prediction API",
        version="1",
        description=("Engagement, churn, lifetime value, segment, content and anomaly predictions for one customer "
                     "or a batch, from the raw columns of the data contract, by the registry's champion models."),
        lifespan=lifespan,
    )
    authorized = key_checker(keys)

    @app.exception_handler(RequestValidationError)
    async def refused(_request: Request, error: RequestValidationError) -> JSONResponse:
        # 422 naming each field and the contract's rule ("age: below the minimum 13: …").
        return JSONResponse(jsonable_encoder({"detail": contract_errors(error.errors())}), status_code=422)

    def not_computable(error: FeatureError, loc: tuple) -> HTTPException:
        # A value the contract allows but the feature SQL cannot compute (dbt's build would fail on it too).
        return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, jsonable_encoder(error.errors(loc)))

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            return JSONResponse({"detail": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        if declared is None and request.method in ("POST", "PUT", "PATCH"):
            body = await request.body()  # chunked: count what arrives (Starlette caches it for the route)
            if len(body) > MAX_BODY_BYTES:
                return JSONResponse({"detail": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        return await call_next(request)

    def serving() -> tuple[Predictor, PredictionCache]:
        predictor_, cache_ = state["predictor"], state["cache"]
        if predictor_ is not None:
            # A new champion (or the first models of a fresh lake) is picked up without a restart;
            # the predictor checks the registry at most every few seconds.
            predictor_.refresh_if_changed()
        if predictor_ is None or not predictor_.loaded():
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no models in the registry yet: run the weekly "
                                "refresh (`make run`) first")
        return predictor_, cache_

    def predict_rows(records: list[dict], week: dt.date) -> tuple[list[dict], int]:
        """Predictions for raw records, from the cache where it holds them; returns them and the hit count."""
        predictor_, cache_ = serving()
        features = online_features(records, week)
        versions = predictor_.versions()
        keys_ = [cache_key(r["customer_id"], f, versions) for r, f in zip(records, features, strict=True)]
        found = cache_.get_many(keys_)
        missing = [i for i, hit in enumerate(found) if hit is None]
        if missing:
            fresh = predictor_.predict([features[i] for i in missing])
            for i, prediction in zip(missing, fresh, strict=True):
                found[i] = prediction
            # Cached under the versions that made each prediction (a reload may land between the lookup and it).
            cache_.put_many([(keys_[i] if found[i]["model_versions"] == versions else
                              cache_key(records[i]["customer_id"], features[i], found[i]["model_versions"]), found[i])
                             for i in missing])
        computed = set(missing)
        return [{**p, "cached": i not in computed} for i, p in enumerate(found)], len(records) - len(missing)

    @app.post("/predict", response_model=Prediction, dependencies=[Depends(authorized)],
              summary="Predict for one customer")
    async def predict(request: PredictRequest) -> dict:
        # On the event loop, not a worker thread: a prediction is ~1 ms of CPU that holds the GIL anyway,
        # and threads taking turns at it under load made every request wait for all the others.
        started = time.perf_counter()
        record = request.model_dump(exclude={"snapshot_week"})
        try:
            (prediction,), _ = predict_rows([record], request.snapshot_week or today())
        except FeatureError as error:
            raise not_computable(error, ("body",)) from None
        prediction["latency_ms"] = (time.perf_counter() - started) * 1000
        return prediction

    @app.post("/predict/batch", response_model=BatchResponse, dependencies=[Depends(authorized)],
              summary=f"Predict for up to {MAX_BATCH} customers")
    def predict_batch(request: BatchRequest) -> dict:
        started = time.perf_counter()
        records = [c.model_dump() for c in request.customers]
        try:
            predictions, hits = predict_rows(records, request.snapshot_week or today())
        except FeatureError as error:
            raise not_computable(error, ("body", "customers", error.row)) from None
        latency = (time.perf_counter() - started) * 1000
        for p in predictions:
            p["latency_ms"] = latency
        return {"predictions": predictions, "cached": hits, "latency_ms": latency}

    @app.get("/health", response_model=Health, summary="Models loaded, and the versions that serve")
    def health() -> dict:
        predictor_ = state["predictor"]
        loaded = predictor_ is not None and predictor_.loaded()
        return {"status": "ok" if loaded else "loading", "models_loaded": loaded,
                "versions": predictor_.versions() if loaded else {}}

    return app
