"""The prediction API on Lambda: the Mangum adapter, the image, and the function as Terraform sets it up.

1. The adapter (engagement_dagster/api/lambda_handler.py) is given API Gateway REST API (v1) proxy events
   built like the ones AWS sends (requestContext with stage and path, x-api-key, a body string) and
   runs a small FastAPI app in this process: status codes, headers and bodies round-trip, the lifespan
   starts once and never stops, the stage (or a custom domain's base path) becomes the root path.
2. The image (containers/api.Dockerfile, no Docker engine here): its requirement selection step is run
   against pyproject.toml, and the API is run from exactly the files the image copies, in a fresh
   process, the way the Lambda runtime loads the CMD's handler, with the environment Terraform gives the
   function, against a moto server holding the lake's registry, the cache table (with the Terraform's
   key and TTL attribute) and the API keys' secret (a JSON list, as Terraform writes it). It must
   answer, load no Dagster or dbt, and import exactly the distributions the image installs.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

import boto3
import pytest
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from packaging.requirements import Requirement
from pydantic import BaseModel, ConfigDict, Field

from engagement_dagster.api import lambda_handler
from engagement_dagster.api.lambda_handler import handler_for
from tests.test_container import _ignore_patterns as dockerignore_patterns
from tests.test_container import ignored as dockerignored
from tests.test_terraform import MODULES_DIR, TF_DIR, module_locals, one, unquote, variables

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "containers" / "api.Dockerfile"
API_MODULE = MODULES_DIR / "prediction_api"
API_KEY = "test-key-0123456789abcdefghij"
HOST = "a1b2c3d4e5.execute-api.eu-west-1.amazonaws.com"


# --- API Gateway REST API proxy events ----------------------------------------------------------------

def rest_api_event(method: str, path: str, body: dict | str | None = None, *, stage: str = "v1",
                   api_key: str | None = API_KEY, query: dict[str, str] | None = None,
                   requested_path: str | None = None, headers: dict[str, str] | None = None) -> dict:
    """An event as API Gateway's Lambda proxy integration sends it for `<stage URL><path>`. `path` is
    what API Gateway passes as the event's path (below the stage); `requested_path` what the client
    asked for (default `/<stage><path>`, the stage URL's)."""
    proxy = path.lstrip("/")
    sent = {"Host": HOST, "User-Agent": "curl/8.5.0", "Accept": "*/*", "X-Forwarded-Proto": "https",
            "X-Forwarded-Port": "443", "X-Forwarded-For": "203.0.113.7",
            "X-Amzn-Trace-Id": "Root=1-67a0c0de-0123456789abcdef01234567"}
    if api_key is not None:
        sent["x-api-key"] = api_key
    if body is not None:
        body = body if isinstance(body, str) else json.dumps(body)
        sent["Content-Type"] = "application/json"
        sent["Content-Length"] = str(len(body.encode()))
    sent.update(headers or {})
    resource = "/{proxy+}" if proxy else "/"
    return {
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "headers": sent,
        "multiValueHeaders": {name: [value] for name, value in sent.items()},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "pathParameters": {"proxy": proxy} if proxy else None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": "a1b2c3", "resourcePath": resource, "httpMethod": method,
            "extendedRequestId": "Ab1CdEfGhIjKlMn=", "requestTime": "16/Nov/2026:09:30:00 +0000",
            "path": requested_path if requested_path is not None else f"/{stage}{path}",
            "accountId": "123456789012", "protocol": "HTTP/1.1", "stage": stage, "domainPrefix": HOST.split(".")[0],
            "requestTimeEpoch": 1794821400000, "requestId": "0f8fad5b-d9cb-469f-a165-70867728950e",
            "identity": {"sourceIp": "203.0.113.7", "userAgent": "curl/8.5.0", "apiKey": api_key,
                         "apiKeyId": "k3y1d0001" if api_key else None, "accessKey": None, "accountId": None,
                         "caller": None, "user": None, "userArn": None, "cognitoIdentityId": None},
            "domainName": HOST, "apiId": HOST.split(".")[0],
        },
        "body": body,
        "isBase64Encoded": False,
    }


def lambda_context() -> SimpleNamespace:
    return SimpleNamespace(function_name="engagement-dagster-prediction-api", function_version="7",
                           invoked_function_arn="arn:aws:lambda:eu-west-1:123456789012:function:"
                                                "engagement-dagster-prediction-api:live",
                           memory_limit_in_mb=2048, aws_request_id="52fdfc07-2182-454f-963f-5f0f9a621d72",
                           get_remaining_time_in_millis=lambda: 15_000)


def body_of(response: dict):
    assert response["isBase64Encoded"] is False
    return json.loads(response["body"])


# --- 1. the adapter, with a small app -------------------------------------------------------------------

class Order(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_id: str
    quantity: int = Field(ge=1, le=10)


def small_app(events: list[str]) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app):
        events.append("startup")
        yield {"loaded": "models"}
        events.append("shutdown")

    app = FastAPI(lifespan=lifespan)

    @app.post("/orders", status_code=201)
    def create(order: Order, request: Request, x_api_key: str | None = Header(None)) -> JSONResponse:
        if x_api_key != API_KEY:
            raise HTTPException(401, "missing or unknown API key")
        return JSONResponse(
            {"order": order.model_dump(), "query": dict(request.query_params), "root_path": request.scope["root_path"],
             "state": request.state.loaded, "client": request.client.host, "url": str(request.url)},
            status_code=201, headers={"X-Order-Id": f"o-{order.customer_id}", "Cache-Control": "no-store"})

    @app.get("/")
    def root() -> dict:
        return {"service": "orders"}

    return app


@pytest.fixture
def events() -> list[str]:
    return []


@pytest.fixture
def handler(events):
    handler = handler_for(small_app(events))
    yield handler
    handler.app.shutdown()


def test_a_post_round_trips_status_headers_body_and_query(handler):
    order = {"customer_id": "c-42", "quantity": 3}
    response = handler(rest_api_event("POST", "/orders", order, query={"dry_run": "true"}), lambda_context())
    assert response["statusCode"] == 201
    assert response["headers"]["content-type"] == "application/json"
    assert response["headers"]["x-order-id"] == "o-c-42"
    assert response["headers"]["cache-control"] == "no-store"
    answer = body_of(response)
    assert answer["order"] == order
    assert answer["query"] == {"dry_run": "true"}
    assert answer["client"] == "203.0.113.7"
    # The URL the client called: scheme, host and the stage from the event.
    assert answer["url"] == f"https://{HOST}/v1/orders?dry_run=true"


def test_errors_keep_their_status_and_name_the_field(handler):
    wrong_key = handler(rest_api_event("POST", "/orders", {"customer_id": "c-1", "quantity": 1}, api_key="nope"),
                        lambda_context())
    assert wrong_key["statusCode"] == 401
    assert body_of(wrong_key) == {"detail": "missing or unknown API key"}

    invalid = handler(rest_api_event("POST", "/orders", {"customer_id": "c-1", "quantity": 11}), lambda_context())
    assert invalid["statusCode"] == 422
    (error,) = body_of(invalid)["detail"]
    assert error["loc"] == ["body", "quantity"]

    unknown = handler(rest_api_event("POST", "/orders", {"customer_id": "c-1", "quantity": 1, "colour": "red"}),
                      lambda_context())
    assert unknown["statusCode"] == 422
    assert body_of(unknown)["detail"][0]["loc"] == ["body", "colour"]

    not_json = handler(rest_api_event("POST", "/orders", "{not json"), lambda_context())
    assert not_json["statusCode"] == 422

    assert handler(rest_api_event("GET", "/nowhere"), lambda_context())["statusCode"] == 404
    assert handler(rest_api_event("DELETE", "/orders"), lambda_context())["statusCode"] == 405


def test_the_root_resource_reaches_the_apps_root(handler):
    response = handler(rest_api_event("GET", "/", requested_path="/v1/"), lambda_context())
    assert response["statusCode"] == 200
    assert body_of(response) == {"service": "orders"}


def test_the_lifespan_starts_once_per_execution_environment_and_never_stops(events):
    handler = handler_for(small_app(events))
    assert events == ["startup"]  # at init, before any request
    for customer in ("a", "b", "c"):
        response = handler(rest_api_event("POST", "/orders", {"customer_id": customer, "quantity": 1}),
                           lambda_context())
        assert response["statusCode"] == 201
        assert body_of(response)["state"] == "models"  # the lifespan's state reaches every request
    assert events == ["startup"]
    handler.app.shutdown()
    assert events == ["startup", "shutdown"]


def test_a_failing_startup_fails_the_init_not_the_requests():
    @asynccontextmanager
    async def lifespan(_app):
        raise RuntimeError("no champion in the registry")
        yield

    with pytest.raises(Exception, match="no champion in the registry"):
        handler_for(FastAPI(lifespan=lifespan))


def test_the_stage_becomes_the_root_path_so_the_openapi_document_names_the_stage_url(handler):
    response = handler(rest_api_event("GET", "/openapi.json", stage="prod"), lambda_context())
    assert response["statusCode"] == 200
    assert body_of(response)["servers"] == [{"url": "/prod"}]
    order = handler(rest_api_event("POST", "/orders", {"customer_id": "c-1", "quantity": 1}, stage="prod"),
                    lambda_context())
    assert body_of(order)["root_path"] == "/prod"


def test_a_custom_domains_base_path_is_stripped_and_kept_as_the_root_path(events):
    # api.example.com/scoring → stage v1: API Gateway passes the base path in the event's path.
    handler = handler_for(small_app(events), api_gateway_base_path="/scoring")
    event = rest_api_event("POST", "/scoring/orders", {"customer_id": "c-1", "quantity": 2},
                           requested_path="/scoring/orders", headers={"Host": "api.example.com"})
    response = handler(event, lambda_context())
    assert response["statusCode"] == 201
    answer = body_of(response)
    assert answer["root_path"] == "/scoring"
    assert answer["url"] == "https://api.example.com/scoring/orders"
    handler.app.shutdown()
    # Without the setting the app sees /scoring/orders, a route it does not have.
    plain = handler_for(small_app([]))
    assert plain(event, lambda_context())["statusCode"] == 404
    plain.app.shutdown()


def test_importing_the_module_builds_nothing():
    """Tools and tests import the module without a lake, models or keys; the app is built for `handler`."""
    probe = ("import sys, engagement_dagster.api.lambda_handler as m; "
             "print(m._configured_handler.cache_info().currsize, 'engagement_dagster.api.app' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("ENGAGEMENT_")})
    assert result.stdout.split() == ["0", "False"]


def test_the_runtime_gets_one_handler_built_from_create_app(monkeypatch):
    built = []
    monkeypatch.setattr("engagement_dagster.api.app.create_app", lambda: built.append(1) or small_app([]))
    lambda_handler._configured_handler.cache_clear()
    try:
        # What the Lambda runtime does with the image's CMD: import the module, getattr the handler.
        first = lambda_handler.handler
        assert lambda_handler.handler is first and built == [1]  # once per execution environment
        assert body_of(first(rest_api_event("GET", "/"), lambda_context())) == {"service": "orders"}
        with pytest.raises(AttributeError):
            lambda_handler.handle  # noqa: B018
        first.app.shutdown()
    finally:
        lambda_handler._configured_handler.cache_clear()


# --- 2. the image ---------------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: comments dropped, continuation lines joined."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, rest = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending
    return instructions


def dockerfile_arg(name: str) -> str:
    (value,) = [shlex.split(rest)[0].split("=", 1)[1] for keyword, rest in dockerfile_instructions()
                if keyword == "ARG" and rest.startswith(f"{name}=")]
    return value


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_files() -> dict[PurePosixPath, Path]:
    """Where each file the image copies from the repository lands (under /var/task)."""
    instructions = dockerfile_instructions()
    workdir = PurePosixPath(next(rest for keyword, rest in instructions if keyword == "WORKDIR"))
    files = {}
    for keyword, rest in instructions:
        if keyword != "COPY":
            continue
        *sources, dest = shlex.split(rest)
        target = workdir / dest
        for source in sources:
            local = ROOT / source
            assert local.exists(), f"COPY {source}: not in the repository"
            if local.is_dir():
                files |= {target / path.relative_to(local).as_posix(): path for path in local.rglob("*")
                          if path.is_file() and "__pycache__" not in path.parts}
            else:
                files[target / local.name if dest.endswith("/") else target] = local
    return files


def test_the_image_runs_the_lambda_runtime_client_on_the_handler_of_this_module():
    instructions = dict(dockerfile_instructions())
    assert json.loads(instructions["ENTRYPOINT"]) == ["python", "-m", "awslambdaric"]
    (handler,) = json.loads(instructions["CMD"])
    module, _, attribute = handler.rpartition(".")
    assert (module, attribute) == (lambda_handler.__name__, "handler")
    # The same Python as the Dagster image; not Amazon Linux 2's Lambda base (no xgboost-cpu >= 3.2 wheel).
    (dagster_base,) = re.findall(r"^FROM (\S+)", (ROOT / "containers" / "Dockerfile").read_text(), flags=re.M)
    assert instructions["FROM"] == dagster_base
    assert re.fullmatch(r"\d+\.\d+\.\d+", dockerfile_arg("AWSLAMBDARIC_VERSION"))
    env = dict(pair.split("=", 1) for keyword, rest in dockerfile_instructions() if keyword == "ENV"
               for pair in shlex.split(rest))
    assert env["ENGAGEMENT_ENV"] == "aws" and env["PYTHONPATH"] == instructions["WORKDIR"] == "/var/task"
    # Every module of the API and of core is in the image (none of the Dagster layer), compiled at build.
    files = image_files()
    for package in ("api", "core"):
        for path in (ROOT / "engagement_dagster" / package).rglob("*.py"):
            assert PurePosixPath("/var/task") / path.relative_to(ROOT).as_posix() in files, path
    assert not any("defs" in path.parts for path in files)
    # Every COPY source reaches the build context (.dockerignore is shared with containers/Dockerfile).
    patterns = dockerignore_patterns()
    for keyword, rest in dockerfile_instructions():
        if keyword == "COPY":
            for source in shlex.split(rest)[:-1]:
                assert not dockerignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
    assert any("compileall" in rest for keyword, rest in dockerfile_instructions() if keyword == "RUN")


def test_the_requirement_step_takes_the_apis_distributions_with_pyprojects_pins(tmp_path):
    (step,) = [rest for keyword, rest in dockerfile_instructions() if keyword == "RUN" and "API_DISTRIBUTIONS" in rest]
    words = shlex.split(step)
    assert words[:2] == ["python", "-c"]
    program = words[2]
    wanted = dockerfile_arg("API_DISTRIBUTIONS")

    def select(pyproject: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", program, str(pyproject)], capture_output=True, text=True,
                              env={**os.environ, "API_DISTRIBUTIONS": wanted}, timeout=60, check=False)

    result = select(ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stderr
    chosen = result.stdout.split()
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {normalize(Requirement(r).name): r
                for r in project["dependencies"] + project["optional-dependencies"]["api"]}
    assert sorted(chosen) == sorted(declared[normalize(name)] for name in wanted.split())
    assert not {normalize(Requirement(r).name) for r in chosen} & {"dagster", "dbt-core", "dbt-duckdb", "duckdb",
                                                                      "uvicorn"}
    # A distribution pyproject.toml does not declare stops the build.
    renamed = tmp_path / "pyproject.toml"
    renamed.write_text((ROOT / "pyproject.toml").read_text().replace('"mangum', '"mangum-renamed'))
    refused = select(renamed)
    assert refused.returncode != 0 and "mangum" in refused.stderr


# --- 2b. the function, run from the image's files with Terraform's environment, on moto ------------------

# What the Lambda runtime does (awslambdaric's bootstrap: import the CMD's module, getattr the handler,
# once, at init), then invocations. Distributions the image does not install are made absent first, so
# optional imports fall back as they will there and a needed one fails here. Reports timings, what was
# imported after the interpreter's own start-up, and the answers.
RUNTIME = r"""
import sys, time
started = time.time()
at_startup = set(sys.modules)
import importlib, importlib.metadata, json
handler_name, events_file, absent_file = sys.argv[1:4]
absent = set(json.load(open(absent_file)))


class NotInTheImage:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in absent:
            raise ModuleNotFoundError(f"No module named {name!r} (not installed in the image)", name=name)
        return None


sys.meta_path.insert(0, NotInTheImage())
events = json.load(open(events_file))
module_name, _, attribute = handler_name.rpartition(".")
module = importlib.import_module(module_name)
imported = time.time()
handler = getattr(module, attribute)
initialised = time.time()
context = type("Context", (), {"get_remaining_time_in_millis": lambda self: 15000,
                                "aws_request_id": "52fdfc07-2182-454f-963f-5f0f9a621d72"})()
answers, latencies = [], []
for event in events:
    begun = time.perf_counter()
    answers.append(handler(event, context))
    latencies.append((time.perf_counter() - begun) * 1000)
    if len(answers) == 1:
        first_answered = time.time()
distributions = importlib.metadata.packages_distributions()
top_level = {name.split(".")[0] for name in set(sys.modules) - at_startup}
print(json.dumps({
    "answers": answers, "latencies_ms": latencies,
    "times": {"started": started, "imported": imported, "initialised": initialised, "first_answered": first_answered},
    "package_file": sys.modules["engagement_dagster"].__file__,
    "modules": sorted(top_level),
    "distributions": sorted({d for name in top_level - {"engagement_dagster"} for d in distributions.get(name, [])}),
}))
"""


def installed_closure(names: list[str]) -> set[str]:
    """The distributions pip installs for `names` (their requirements, recursively), from this environment's
    metadata: what the image gets."""
    seen: set[str] = set()
    stack = [(normalize(name), frozenset()) for name in names]
    while stack:
        name, extras = stack.pop()
        if name in seen and not extras:
            continue
        seen.add(name)
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
            if requirement.marker and not any(requirement.marker.evaluate(e) for e in environments):
                continue
            stack.append((normalize(requirement.name), frozenset(requirement.extras)))
    return seen


@pytest.fixture(scope="module")
def function_environment(kb_weeks, moto_server, tmp_path_factory):
    """The lake's registry in an S3 bucket (under a lake prefix), the cache table and the keys' secret on the
    moto server, and the function's environment as the Terraform sets it, with these resources' names."""
    aws = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "eu-west-1",
           "AWS_DEFAULT_REGION": "eu-west-1", "AWS_ENDPOINT_URL": moto_server}
    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="eu-west-1")
    # Unique names: the moto server is shared by the whole session.
    suffix = uuid.uuid4().hex[:8]
    bucket, prefix = f"engagement-dagster-lake-{suffix}", "lake"
    table = f"engagement-dagster-prediction-cache-{suffix}"

    s3 = session.client("s3", endpoint_url=moto_server)
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    models = kb_weeks[0] / "models"
    for path in sorted(models.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}/models/{path.relative_to(models).as_posix()}")

    # The table as the Terraform declares it: its hash key, attribute type and TTL attribute.
    declared = one("resource", "aws_dynamodb_table", "cache", API_MODULE)
    (attribute,) = declared["attribute"]
    dynamodb = session.client("dynamodb", endpoint_url=moto_server)
    dynamodb.create_table(TableName=table, BillingMode=unquote(declared["billing_mode"]),
                          AttributeDefinitions=[{"AttributeName": unquote(attribute["name"]),
                                                 "AttributeType": unquote(attribute["type"])}],
                          KeySchema=[{"AttributeName": unquote(declared["hash_key"]), "KeyType": "HASH"}])
    dynamodb.update_time_to_live(TableName=table, TimeToLiveSpecification={
        "Enabled": declared["ttl"][0]["enabled"], "AttributeName": unquote(declared["ttl"][0]["attribute_name"])})

    # jsonencode([... .value]): a JSON list of the keys' values.
    secret = session.client("secretsmanager", endpoint_url=moto_server).create_secret(
        Name=f"engagement-dagster/prediction-api/api-keys-{suffix}",
        SecretString=json.dumps([API_KEY, "second-client-key"]))

    # The root passes the lake's settings (by name, from the Dagster containers' environment); the module
    # adds its own. Each Terraform expression is replaced by what it names here.
    lake_settings = {"ENGAGEMENT_LAKE_BUCKET": bucket, "ENGAGEMENT_LAKE_PREFIX": prefix,
                     "ENGAGEMENT_GLUE_RAW_DATABASE": "engagement_raw", "ENGAGEMENT_GLUE_DATABASE": "engagement",
                     "ENGAGEMENT_ATHENA_WORKGROUP": "engagement-dagster",
                     "ENGAGEMENT_ATHENA_STAGING": f"s3://athena-results-{bucket}/athena/",
                     "ENGAGEMENT_ATHENA_DATA": f"s3://{bucket}/{prefix}/warehouse/"}
    names = [unquote(n) for n in module_locals(TF_DIR)["lake_setting_names"]]
    assert set(names) == set(lake_settings)
    expressions = {
        "${aws_dynamodb_table.cache.name}": table,
        "${aws_secretsmanager_secret.api_keys.arn}": secret["ARN"],
        "${tostring(var.cache_ttl_seconds)}": str(variables(API_MODULE)["cache_ttl_seconds"]["default"]),
        "${tostring(var.model_check_seconds)}": str(variables(API_MODULE)["model_check_seconds"]["default"]),
    }
    api_settings = {name: expressions[value] if value.startswith("${") else unquote(value)
                    for name, value in module_locals(API_MODULE)["api_environment"].items()}
    return {**lake_settings, **api_settings}, aws


def image_root(tmp_path: Path) -> Path:
    """/var/task as the image lays it out: exactly the files its COPY instructions put there."""
    root = tmp_path / "var" / "task"
    for destination, source in image_files().items():
        if not destination.is_relative_to("/var/task"):
            continue  # build inputs (pyproject.toml in /tmp)
        target = root / destination.relative_to("/var/task")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return root


def test_the_function_answers_from_the_image_files_with_terraforms_environment(function_environment, tmp_path):
    from engagement_dagster.api.schema import EXAMPLE_CUSTOMER, EXAMPLE_WEEK

    environment, aws = function_environment
    root = image_root(tmp_path)
    customer = {**EXAMPLE_CUSTOMER, "snapshot_week": EXAMPLE_WEEK}
    second = {**EXAMPLE_CUSTOMER, "customer_id": "2f0e1c56-9d1b-4c55-8a0e-5a9a9a9a0001", "age": 31}
    invalid = {**EXAMPLE_CUSTOMER, "age": 12}
    events = [
        rest_api_event("GET", "/health"),
        rest_api_event("POST", "/predict", customer),
        rest_api_event("POST", "/predict", customer),
        rest_api_event("POST", "/predict/batch", {"customers": [EXAMPLE_CUSTOMER, second],
                                                  "snapshot_week": EXAMPLE_WEEK}),
        rest_api_event("POST", "/predict", customer, api_key="not-a-key"),
        rest_api_event("POST", "/predict", invalid),
        rest_api_event("POST", "/predict", customer, api_key="second-client-key"),
    ]
    (tmp_path / "events.json").write_text(json.dumps(events))
    # Every importable top-level name of this environment that no distribution of the image provides.
    listed = [normalize(name) for name in dockerfile_arg("API_DISTRIBUTIONS").split()]
    installed = installed_closure(listed)
    absent = sorted(name for name, providers in importlib.metadata.packages_distributions().items()
                    if name != "engagement_dagster" and not {normalize(p) for p in providers} & installed)
    assert {"dagster", "dbt", "duckdb", "uvicorn", "yaml"} <= set(absent)
    (tmp_path / "absent.json").write_text(json.dumps(absent))
    handler_name = json.loads(dict(dockerfile_instructions())["CMD"])[0]
    # A clean environment: the function's variables, what Lambda itself sets, the moto endpoint.
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8", "PYTHONPATH": str(root),
           "LAMBDA_TASK_ROOT": str(root), "PYTHONDONTWRITEBYTECODE": "1", **aws, **environment}
    spawned = time.time()
    result = subprocess.run([sys.executable, "-c", RUNTIME, handler_name, str(tmp_path / "events.json"),
                             str(tmp_path / "absent.json")],
                            cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert Path(report["package_file"]).is_relative_to(root)  # the image's copy, not the repository

    health, miss, hit, batch, wrong_key, too_young, other_key = report["answers"]
    assert health["statusCode"] == 200, health
    assert body_of(health)["models_loaded"] is True
    assert set(body_of(health)["versions"]) >= {"churn_model", "engagement_model"}
    assert miss["statusCode"] == 200, miss
    prediction = body_of(miss)
    assert prediction["customer_id"] == EXAMPLE_CUSTOMER["customer_id"]
    assert 0 <= prediction["churn_probability"] <= 1 and len(prediction["churn_drivers"]) == 3
    assert prediction["cached"] is False and body_of(hit)["cached"] is True  # the DynamoDB table, on moto
    assert {k: v for k, v in body_of(hit).items() if k not in {"cached", "latency_ms"}} == \
        {k: v for k, v in prediction.items() if k not in {"cached", "latency_ms"}}
    assert batch["statusCode"] == 200 and body_of(batch)["cached"] == 1
    assert wrong_key["statusCode"] == 401
    assert too_young["statusCode"] == 422 and "age" in too_young["body"]
    assert other_key["statusCode"] == 200  # every key of the secret's list is accepted
    assert health["headers"]["content-type"] == "application/json"

    # The cache entries are in the table Terraform declares, with the TTL attribute it enables.
    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="eu-west-1")
    table = environment["ENGAGEMENT_API_CACHE_TABLE"]
    items = session.client("dynamodb", endpoint_url=aws["AWS_ENDPOINT_URL"]).scan(TableName=table)["Items"]
    assert len(items) == 2 and all("expires_at" in item and "pk" in item for item in items)

    # No Dagster, no dbt; exactly the distributions the image installs, and each of them used.
    assert not {m for m in report["modules"] if m.startswith(("dagster", "dbt", "duckdb"))}, report["modules"]
    imported = {normalize(d) for d in report["distributions"]}
    assert imported <= installed, f"imported but not installed in the image: {sorted(imported - installed)}"
    assert set(listed) <= imported, f"installed but never imported: {sorted(set(listed) - imported)}"
    assert not {d for d in installed if d.startswith(("dagster", "dbt"))} and "duckdb" not in installed

    times, latencies = report["times"], report["latencies_ms"]
    print(f"\nLambda-style cold start, process start to first answer (models from moto S3): "
          f"{(times['first_answered'] - spawned) * 1000:.0f} ms = interpreter {(times['started'] - spawned) * 1000:.0f}"
          f" + import {(times['imported'] - times['started']) * 1000:.0f}"
          f" + init {(times['initialised'] - times['imported']) * 1000:.0f} + first request {latencies[0]:.1f}; "
          f"then /predict miss {latencies[1]:.1f} ms, hit {latencies[2]:.1f} ms, batch of 2 {latencies[3]:.1f} ms")
