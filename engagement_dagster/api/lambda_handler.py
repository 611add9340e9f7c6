"""The prediction API on AWS Lambda: API Gateway (REST API, Lambda proxy integration) events are handed
to the FastAPI app by Mangum.

The image's CMD is `engagement_dagster.api.lambda_handler.handler` (containers/api.Dockerfile). The
Lambda runtime imports this module and reads `handler` during the function's init phase, once per
execution environment: that is when the app is built and its lifespan started (API keys read, champions
loaded from the lake, the cache opened). Every request of that environment then reuses them.

Why not `Mangum(app, lifespan="auto")`: Mangum runs the app's lifespan startup *and shutdown* around
every invocation. Here the lifespan starts once and is never shut down: Lambda freezes an idle
environment and later discards it without a shutdown hook (a function without extensions gets none).

Paths: for the stage URL (`https://<api>.execute-api.<region>.amazonaws.com/<stage>/predict`) API
Gateway passes `/predict`; behind a custom domain with a base path mapping it passes the base path too
(`/v1/predict`), which `ENGAGEMENT_API_BASE_PATH` (`/v1`) strips. Whatever precedes the app's path in the
URL the client called (the stage, or the base path) becomes the ASGI `root_path`, so the OpenAPI
document names the URL clients must call.
"""

from __future__ import annotations

import asyncio
import functools
import os
from typing import Any

from mangum import Mangum
from mangum.handlers import APIGateway
from mangum.protocols import LifespanCycle
from mangum.types import ASGI, Receive, Scope, Send

BASE_PATH_SETTING = "ENGAGEMENT_API_BASE_PATH"


def _url_prefix(requested_path: str, app_path: str) -> str:
    """What precedes the app's path in the path the client requested: `/prod` for `/prod/predict` and
    `/predict`; empty when the two do not line up (then the app is served as if at the root)."""
    if app_path == "/":
        prefix = requested_path.rstrip("/")
    elif requested_path.endswith(app_path):
        prefix = requested_path[: -len(app_path)]
    else:
        return ""
    return prefix if prefix.startswith("/") else ""


class RestApiProxyEvent(APIGateway):
    """An API Gateway REST API (payload v1) proxy event, with the stage or base path as `root_path`."""

    @classmethod
    def infer(cls, event: dict, context: Any, config: dict) -> bool:
        # HTTP APIs' payload 1.0 also carries "resource", but names its "version": Mangum's HTTPGateway's.
        return super().infer(event, context, config) and "version" not in event

    @property
    def scope(self) -> Scope:
        scope = super().scope
        app_path = scope["path"] or "/"  # Mangum leaves "" when the base path was the whole path
        prefix = _url_prefix(self.event["requestContext"].get("path") or "", app_path)
        # ASGI: `path` includes `root_path`; Starlette routes on the part after it.
        scope.update(root_path=prefix, path=prefix + app_path)
        return scope


class LifespanStartedOnce:
    """`app` with its lifespan started at construction (it raises there if the startup fails). Requests
    get a copy of the lifespan's state, as an ASGI server would give them."""

    def __init__(self, app: ASGI):
        self.app = app
        self._lifespan = LifespanCycle(app, "auto")  # "auto": an app without a lifespan is fine too
        self._lifespan.__enter__()

    def shutdown(self) -> None:
        """Run the app's lifespan shutdown. Lambda never does (tests and local tools do)."""
        self._lifespan.__exit__(None, None, None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = {**scope, "state": self._lifespan.lifespan_state.copy()}
        await self.app(scope, receive, send)


def _event_loop() -> asyncio.AbstractEventLoop:
    """The thread's event loop, made if there is none (or it was closed). Mangum runs every invocation on
    it, and the lifespan started here waits on it between invocations."""
    try:
        loop = asyncio.get_event_loop()
    except RuntimeError:
        loop = None
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
    return loop


def handler_for(app: ASGI, api_gateway_base_path: str = "/") -> Mangum:
    """A Lambda handler for API Gateway REST API proxy events serving `app`, its lifespan started now."""
    _event_loop()
    return Mangum(LifespanStartedOnce(app), lifespan="off", api_gateway_base_path=api_gateway_base_path,
                  custom_handlers=[RestApiProxyEvent])


@functools.cache
def _configured_handler() -> Mangum:
    from engagement_dagster.api.app import create_app

    return handler_for(create_app(), api_gateway_base_path=os.environ.get(BASE_PATH_SETTING, "/") or "/")


def __getattr__(name: str) -> Any:
    # `handler` is built on first access, not at import: the Lambda runtime reads it right after the
    # import, still in the init phase, while tests and tools can import this module without a lake,
    # models or API keys.
    if name == "handler":
        return _configured_handler()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
