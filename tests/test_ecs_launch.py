"""A run launched the way the AWS deployment launches it, against real servers.

- The SHIPPED deploy/dagster.yaml, in a fresh DAGSTER_HOME, on a real PostgreSQL (Debian's server
  binaries, started for the session) and moto's AWS API server (ECS, EC2, S3, Secrets Manager).
- The code location served by `dagster code-server start` (what the image's `code-server` entrypoint
  runs) with DAGSTER_CURRENT_IMAGE, and loaded over gRPC through the SHIPPED deploy/workspace.yaml.
- In moto: a VPC, subnet and security group, the cluster, the code server's and the daemon's task
  definitions (as deploy/terraform registers them) and a running daemon task. The launcher runs
  "inside" that daemon task: a small local HTTP server answers the ECS task metadata endpoint v4
  (ECS_CONTAINER_METADATA_URI_V4), as the ECS agent does in a real task.
- Runs of the real jobs of `engagement_dagster.definitions` are queued by the QueuedRunCoordinator
  and launched by one iteration of the daemon's queue loop, i.e. by the EcsRunLauncher, into moto.
- The launched task's side: the ExecuteRunArgs of its command (`dagster api execute_run <args>`) are
  opened as `execute_run` opens them (DagsterInstance.from_ref), and DAGSTER_HOME's yaml is loaded,
  in a process whose environment is only the registered task definition's (the Postgres password
  resolved from Secrets Manager as ECS does): both find the run in Postgres and write to its log.

moto 5.2.5 runs these tasks once the VPC has DNS hostnames and the awsvpc configuration names a
security group (the launcher copies both from the daemon's task), with one patch (fixture
`fargate_memory_in_moto`): moto sums container-level memory for every RunTask, and fails on a
container without `memory`/`memoryReservation`, which Fargate task definitions need not have (the
daemon's in deploy/terraform has none, and the run's is copied from it).

PostgreSQL: `apt-get install -y postgresql`. Without its binaries these tests skip, or fail when
ENGAGEMENT_REQUIRE_POSTGRES=1 (CI).
"""

from __future__ import annotations

import copy
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
import yaml

from engagement_dagster.core.settings import PROJECT_ROOT

DEPLOY = PROJECT_ROOT / "deploy"
LOCATION = "engagement_dagster"
RUN_CONTAINER = "engagement-dagster"  # run_launcher.container_name, the code server's container
DAEMON_CONTAINER = "dagster-daemon"
REGISTRY = "123456789012.dkr.ecr.us-east-1.amazonaws.com/engagement-dagster"
# The code server runs a newer build than the daemon (a code deploy without a platform deploy):
# runs must take the code location's image, never the launching task's.
CODE_IMAGE = f"{REGISTRY}:code-2026-11-16"
DAEMON_IMAGE = f"{REGISTRY}:platform-2026-11-02"
PG_USER = "dagster"
PG_PASSWORD = "pg-password-from-secrets-manager"
HEAVY = {"ecs/cpu": "16384", "ecs/memory": "65536"}
AWS_TEST_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
# What ENGAGEMENT_ENV=aws needs (settings.AWS_SETTINGS), pointed at names inside moto.
ENGAGEMENT_AWS = {"ENGAGEMENT_ENV": "aws", "ENGAGEMENT_LAKE_BUCKET": "engagement-lake-test",
                  "ENGAGEMENT_LAKE_PREFIX": "", "ENGAGEMENT_GLUE_RAW_DATABASE": "engagement_raw",
                  "ENGAGEMENT_GLUE_DATABASE": "engagement", "ENGAGEMENT_ATHENA_WORKGROUP": "engagement",
                  "ENGAGEMENT_ATHENA_STAGING": "s3://engagement-lake-test/athena/",
                  "ENGAGEMENT_ATHENA_DATA": "s3://engagement-lake-test/warehouse/"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- PostgreSQL ---------------------------------------------------------------------------------

def _postgres_bin_dir() -> Path:
    candidates = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")
                  if (Path(p).parent / "pg_ctl").exists()]
    candidates.sort(key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)
    if candidates:
        return candidates[-1]
    message = ("no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin: "
               "install them with `apt-get install -y postgresql`")
    if os.environ.get("ENGAGEMENT_REQUIRE_POSTGRES") == "1":
        pytest.fail(message + " (ENGAGEMENT_REQUIRE_POSTGRES=1)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on 127.0.0.1 and a free port, password authentication only."""
    bin_dir = _postgres_bin_dir()
    # PostgreSQL refuses to run as root: as root, run its binaries as the `postgres` system user
    # on a data directory that user owns.
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="engagement-pg-"))
    data, sockets, password_file, log = root / "data", root / "sockets", root / "password", root / "server.log"
    pg_ctl = [*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data)]
    try:
        sockets.mkdir()
        password_file.write_text(PG_PASSWORD)
        if as_postgres:
            for path in (root, sockets, password_file):
                shutil.chown(path, "postgres", "postgres")
        init = subprocess.run(
            [*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", PG_USER, f"--pwfile={password_file}",
             "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C"],
            capture_output=True, text=True, check=False)
        assert init.returncode == 0, init.stdout + init.stderr
        port = _free_port()
        options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={sockets} -c fsync=off"
        start = subprocess.run([*pg_ctl, "-l", str(log), "-o", options, "-w", "-t", "60", "start"],
                               capture_output=True, text=True, check=False)
        assert start.returncode == 0, start.stdout + start.stderr + (log.read_text() if log.exists() else "")
        yield SimpleNamespace(host="127.0.0.1", port=port, user=PG_USER, password=PG_PASSWORD)
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*pg_ctl, "-m", "fast", "-w", "-t", "60", "stop"], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def _create_database(pg, name: str) -> None:
    import psycopg2

    connection = psycopg2.connect(host=pg.host, port=pg.port, user=pg.user, password=pg.password, dbname="postgres")
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        connection.close()


# --- the code location over gRPC ------------------------------------------------------------------

@pytest.fixture(scope="module")
def code_server(moto_server, tmp_path_factory):
    """`dagster code-server start` on the real definitions, in AWS mode, naming the image runs use."""
    from dagster._grpc.client import DagsterGrpcClient

    port = _free_port()
    log = tmp_path_factory.mktemp("code_server") / "code-server.log"
    env = {**os.environ, **AWS_TEST_ENV, **ENGAGEMENT_AWS, "AWS_ENDPOINT_URL": moto_server,
           "DAGSTER_CURRENT_IMAGE": CODE_IMAGE}
    env.pop("DAGSTER_HOME", None)
    dagster = str(Path(sys.executable).parent / "dagster")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [dagster, "code-server", "start", "-h", "127.0.0.1", "-p", str(port),
             "-m", "engagement_dagster.definitions", "--location-name", LOCATION],
            cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    client = DagsterGrpcClient(port=port, host="127.0.0.1")
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"the code server exited ({process.returncode}):\n{log.read_text()[-4000:]}")
            try:
                client.list_repositories()
                break
            except Exception:  # still starting: the gRPC server answers only once the code has loaded
                if time.monotonic() > deadline:
                    pytest.fail(f"the code server did not answer within 180 s:\n{log.read_text()[-4000:]}")
                time.sleep(0.5)
        yield SimpleNamespace(host="127.0.0.1", port=port)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)


# --- the ECS task metadata endpoint of the daemon's task --------------------------------------------

class _TaskMetadataHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        task = self.server.task  # type: ignore[attr-defined]
        container = {"Name": DAEMON_CONTAINER, "Image": DAEMON_IMAGE, "DockerName": f"ecs-{DAEMON_CONTAINER}"}
        if self.path.rstrip("/").endswith("/task"):
            body = {"Cluster": task["clusterArn"], "TaskARN": task["taskArn"],
                    "Family": task["taskDefinitionArn"].split("/")[-1].split(":")[0],
                    "LaunchType": "FARGATE", "Containers": [container]}
        else:
            body = container
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def _serve_task_metadata(task: dict) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TaskMetadataHandler)
    server.task = task  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# --- moto ---------------------------------------------------------------------------------------------

@pytest.fixture
def fargate_memory_in_moto(monkeypatch):
    """moto 5.2.5's RunTask adds up each container's `memory` or `memoryReservation` (used to place
    EC2 tasks) and raises a TypeError, answered as HTTP 500, when a container has neither. AWS
    requires container memory only for the EC2 launch type; a Fargate task definition may size
    the task alone (cpu/memory at task level), as deploy/terraform's daemon task and the run task
    definition the launcher derives from it do. Count such containers as 0 MiB instead."""
    from moto.ecs.models import EC2ContainerServiceBackend

    original = EC2ContainerServiceBackend._calculate_task_resource_requirements
    sized = ("memory", "Memory", "memoryReservation", "MemoryReservation")

    def resource_requirements(task_definition):
        containers = task_definition.container_definitions
        if all(any(key in c for key in sized) for c in containers):
            return original(task_definition)
        view = copy.copy(task_definition)
        view.container_definitions = [c if any(key in c for key in sized) else {**c, "memoryReservation": 0}
                                      for c in containers]
        return original(view)

    # ThreadedMotoServer serves from this process: its backends are these classes.
    monkeypatch.setattr(EC2ContainerServiceBackend, "_calculate_task_resource_requirements",
                        staticmethod(resource_requirements))


# --- one deployment per test: its own database, VPC, cluster and DAGSTER_HOME ------------------------

@pytest.fixture
def deployment(postgres, code_server, moto_server, fargate_memory_in_moto, tmp_path, monkeypatch, request):
    from dagster import DagsterInstance

    name = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40]
    database = f"dagster_{name}"
    _create_database(postgres, database)
    for key, value in {**AWS_TEST_ENV, "AWS_ENDPOINT_URL": moto_server}.items():
        monkeypatch.setenv(key, value)

    ec2, ecs = boto3.client("ec2"), boto3.client("ecs")
    vpc = ec2.create_vpc(CidrBlock="10.40.0.0/16")["Vpc"]["VpcId"]
    # moto's RunTask reports each awsvpc task's ENI with its private DNS name, which moto only
    # generates in a VPC with DNS hostnames (without, RunTask fails).
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.40.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName=f"tasks-{name}", Description="Dagster tasks", VpcId=vpc)["GroupId"]
    cluster = ecs.create_cluster(clusterName=f"engagement-{name}"[:255].replace("_", "-"))["cluster"]["clusterArn"]
    compute_log_bucket = f"engagement-dagster-logs-{name}".replace("_", "-")[:63]
    boto3.client("s3").create_bucket(Bucket=compute_log_bucket)
    # The RDS-managed secret: {"username", "password"}; ECS injects one JSON key of it.
    secret_arn = boto3.client("secretsmanager").create_secret(
        Name=f"rds-{name}", SecretString=json.dumps({"username": PG_USER, "password": PG_PASSWORD}))["ARN"]
    password_secret = {"name": "DAGSTER_PG_PASSWORD", "valueFrom": f"{secret_arn}:password::"}

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    # The environment every container of the deployment gets (deploy/terraform's task definitions).
    environment = {
        **ENGAGEMENT_AWS,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": postgres.host, "DAGSTER_PG_PORT": str(postgres.port),
        "DAGSTER_PG_DB": database, "DAGSTER_PG_USERNAME": postgres.user,
        "DAGSTER_COMPUTE_LOG_BUCKET": compute_log_bucket, "DAGSTER_COMPUTE_LOG_PREFIX": "compute-logs",
        "DAGSTER_CURRENT_IMAGE": CODE_IMAGE,
        "DAGSTER_CODE_SERVER_HOST": code_server.host, "DAGSTER_CODE_SERVER_PORT": str(code_server.port),
        "DAGSTER_CODE_LOCATION_NAME": LOCATION,
    }
    container_environment = [{"name": k, "value": v} for k, v in sorted(environment.items())]
    log_configuration = {"logDriver": "awslogs", "options": {
        "awslogs-group": "/ecs/engagement-dagster", "awslogs-region": "us-east-1", "awslogs-stream-prefix": "daemon"}}
    fargate = {"requiresCompatibilities": ["FARGATE"], "networkMode": "awsvpc",
               "runtimePlatform": {"operatingSystemFamily": "LINUX", "cpuArchitecture": "X86_64"}}
    code_server_definition = ecs.register_task_definition(
        family=f"code-server-{name}", cpu="2048", memory="8192", **fargate,
        containerDefinitions=[{
            "name": RUN_CONTAINER, "image": CODE_IMAGE, "essential": True, "memoryReservation": 4096,
            "command": ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000",
                        "-m", "engagement_dagster.definitions", "--location-name", LOCATION],
            "portMappings": [{"containerPort": 4000, "protocol": "tcp"}],
            "environment": container_environment, "secrets": [password_secret]}])
    daemon_definition = ecs.register_task_definition(
        family=f"daemon-{name}", cpu="1024", memory="4096", **fargate,
        containerDefinitions=[{
            "name": DAEMON_CONTAINER, "image": DAEMON_IMAGE, "essential": True,
            "command": ["/bin/sh", "-c", "exec dagster-daemon run -w deploy/workspace.yaml"],
            "environment": container_environment, "secrets": [password_secret],
            "logConfiguration": log_configuration,
            "healthCheck": {"command": ["CMD", "dagster-daemon", "liveness-check"], "interval": 60}}])
    network = {"awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group], "assignPublicIp": "DISABLED"}}
    daemon_task = ecs.run_task(cluster=cluster, taskDefinition=daemon_definition["taskDefinition"]["taskDefinitionArn"],
                               launchType="FARGATE", networkConfiguration=network)["tasks"][0]
    metadata = _serve_task_metadata(daemon_task)

    # This test process is the daemon: its environment is the daemon task's.
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", PG_PASSWORD)  # what ECS resolved from the secret
    monkeypatch.setenv("ECS_CONTAINER_METADATA_URI_V4", f"http://127.0.0.1:{metadata.server_port}/v4/daemon")
    monkeypatch.setenv("RUN_TASK_RETRIES", "0")

    instance = DagsterInstance.from_config(str(home))
    try:
        yield SimpleNamespace(instance=instance, ecs=ecs, ec2=ec2, cluster=cluster, subnet=subnet, group=group,
                              secret_arn=secret_arn, password_secret=password_secret, home=home,
                              daemon_task=daemon_task, environment=environment, database=database,
                              code_server_definition=code_server_definition["taskDefinition"])
    finally:
        instance.dispose()
        metadata.shutdown()
        metadata.server_close()


def _workspace(instance):
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    return WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(DEPLOY / "workspace.yaml")]))


def _queue_run(instance, request_context, job_name: str, week: str, asset_keys=None):
    """Create and submit a run of a real job of the code location, as the webserver does: job tags
    (from the code server's snapshot) plus the partition's tag, origins from the gRPC location."""
    from dagster import AssetKey

    from engagement_dagster.definitions import defs

    location = request_context.get_code_location(LOCATION)
    repository = next(iter(location.get_repositories().values()))
    remote_job = repository.get_full_job(job_name)
    if job_name == "__ASSET_JOB":
        job_def = defs.resolve_implicit_global_asset_job_def()
    else:
        job_def = defs.resolve_job_def(job_name)
    run = instance.create_run_for_job(
        job_def=job_def, tags={**remote_job.run_tags, "dagster/partition": week},
        asset_selection={AssetKey(key) for key in asset_keys} if asset_keys else None,
        remote_job_origin=remote_job.get_remote_origin(), job_code_origin=remote_job.get_python_origin())
    instance.submit_run(run.run_id, request_context)
    return run.run_id


def _dequeue(process_context) -> None:
    """One iteration of the daemon's run queue: what `dagster-daemon run` does every few seconds."""
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

    with QueuedRunCoordinatorDaemon(interval_seconds=1) as daemon:
        list(daemon.run_iteration(process_context))


def _env_var_entries() -> list[str]:
    config = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    return config["run_launcher"]["config"]["env_vars"]


# Runs in a process whose environment is only the launched task definition's: what the run
# container does with its command `dagster api execute_run <ExecuteRunArgs>` before executing.
RUN_TASK_SCRIPT = r"""
import json, sys
from dagster import DagsterInstance
from dagster._core.events import EngineEventData
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import deserialize_value

args = deserialize_value(sys.argv[1], ExecuteRunArgs)
from_ref = DagsterInstance.from_ref(args.instance_ref)   # what `dagster api execute_run` does
from_home = DagsterInstance.get()                         # DAGSTER_HOME's dagster.yaml, same env
found = {}
for name, instance in (("from_ref", from_ref), ("from_home", from_home)):
    run = instance.get_run_by_id(args.run_id)
    found[name] = None if run is None else {
        "job_name": run.job_name, "status": run.status.value, "tags": dict(run.tags),
        "run_storage": type(instance.run_storage).__name__,
        "event_storage": type(instance.event_log_storage).__name__,
        "compute_logs": type(instance.compute_log_manager).__name__}
from_ref.report_engine_event("hello from the run task", from_ref.get_run_by_id(args.run_id),
                             EngineEventData())
print(json.dumps(found))
"""


def _run_task_environment(deployment, container: dict) -> dict[str, str]:
    """The environment ECS gives the run container: its definition's `environment` (later entries
    win, as in Docker) and its `secrets` resolved from Secrets Manager (ARN:json-key::)."""
    env = {entry["name"]: entry["value"] for entry in container.get("environment", [])}
    secrets = boto3.client("secretsmanager")
    for secret in container.get("secrets", []):
        arn, _, rest = secret["valueFrom"].partition(":password")
        value = secrets.get_secret_value(SecretId=arn)["SecretString"]
        env[secret["name"]] = json.loads(value)["password"] if rest == "::" else value
    # The task role's credentials and the AWS endpoint (moto), as the ECS agent provides them.
    return {**env, **AWS_TEST_ENV, "AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"],
            "PATH": os.environ["PATH"], "HOME": str(deployment.home)}


def test_weekly_refresh_is_launched_as_a_16_vcpu_64_gb_fargate_task_that_finds_its_run(deployment):
    from dagster import DagsterRunStatus
    from dagster._grpc.types import ExecuteRunArgs
    from dagster._serdes import deserialize_value
    from dagster_aws.ecs import EcsRunLauncher
    from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    instance, ecs = deployment.instance, deployment.ecs
    # The shipped yaml, as loaded: Postgres storage, the ECS launcher, compute logs on S3.
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.run_launcher, EcsRunLauncher)
    assert isinstance(instance.compute_log_manager, S3ComputeLogManager)

    week = "2026-11-09"
    with _workspace(instance) as process_context:
        request_context = process_context.create_request_context()
        assert not request_context.get_code_location_error(LOCATION)
        run_id = _queue_run(instance, request_context, "weekly_refresh", week)
        queued = instance.get_run_by_id(run_id)
        assert queued.status == DagsterRunStatus.QUEUED  # the webserver only queues
        assert {k: queued.tags[k] for k in HEAVY} == HEAVY
        _dequeue(process_context)

    run = instance.get_run_by_id(run_id)
    assert run.status == DagsterRunStatus.STARTING, run.status
    task_arn, cluster = run.tags["ecs/task_arn"], run.tags["ecs/cluster"]
    assert cluster == deployment.cluster
    assert task_arn in ecs.list_tasks(cluster=cluster)["taskArns"]
    task = ecs.describe_tasks(cluster=cluster, tasks=[task_arn], include=["TAGS"])["tasks"][0]

    # The size: task-level overrides (strings) and the container's (integers).
    overrides = task["overrides"]
    assert (overrides["cpu"], overrides["memory"]) == ("16384", "65536")
    (container_override,) = overrides["containerOverrides"]
    assert container_override["name"] == RUN_CONTAINER
    assert (container_override["cpu"], container_override["memory"]) == (16384, 65536)
    # The command: dagster 1.13 runs `dagster api execute_run <serialized ExecuteRunArgs>`.
    command = container_override["command"]
    assert command[:3] == ["dagster", "api", "execute_run"], command[:3]
    args = deserialize_value(command[3], ExecuteRunArgs)
    assert args.run_id == run_id
    assert args.job_origin.job_name == "weekly_refresh"

    # Placement: Fargate in the daemon's subnet with its security group, no public IP.
    assert task["launchType"] == "FARGATE"
    (attachment,) = task["attachments"]
    details = {d["name"]: d["value"] for d in attachment["details"]}
    assert details["subnetId"] == deployment.subnet
    eni = deployment.ec2.describe_network_interfaces(NetworkInterfaceIds=[details["networkInterfaceId"]])
    assert [g["GroupId"] for g in eni["NetworkInterfaces"][0]["Groups"]] == [deployment.group]
    tags = {t["key"]: t["value"] for t in task.get("tags", [])}
    assert tags["dagster/run_id"] == run_id
    assert tags["dagster/job_name"] == "weekly_refresh"
    assert tags["project"] == "engagement-dagster"
    assert tags["dagster/partition"] == week

    # The task definition registered for the run: the code location's image, the container name
    # of dagster.yaml, the daemon's environment plus env_vars, the password only as a secret.
    definition = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]
    assert definition["family"].startswith("run_")
    assert definition["requiresCompatibilities"] == ["FARGATE"]
    assert definition["networkMode"] == "awsvpc"
    assert (definition["cpu"], definition["memory"]) == ("4096", "16384")  # run_resources; overridden above
    assert definition["ephemeralStorage"] == {"sizeInGiB": 100}
    (container,) = definition["containerDefinitions"]
    assert container["name"] == RUN_CONTAINER
    # The code server's image (its task definition's, announced as DAGSTER_CURRENT_IMAGE), not the daemon's.
    assert container["image"] == CODE_IMAGE == deployment.code_server_definition["containerDefinitions"][0]["image"]
    assert container["image"] != DAEMON_IMAGE
    assert not container.get("entryPoint")
    assert "healthCheck" not in container  # the daemon's liveness check is not the run's
    environment: dict[str, set[str]] = {}
    for entry in container["environment"]:
        environment.setdefault(entry["name"], set()).add(entry["value"])
    for entry in _env_var_entries():
        name, has_value, value = entry.partition("=")
        expected = value if has_value else os.environ[name]
        # Listed in env_vars and also inherited from the daemon's container: the same value twice.
        assert environment.get(name) == {expected}, (name, environment.get(name))
    assert environment["DAGSTER_RUN_JOB_NAME"] == {"weekly_refresh"}
    assert "DAGSTER_PG_PASSWORD" not in environment
    assert container["secrets"] == [deployment.password_secret]
    assert PG_PASSWORD not in json.dumps(definition, default=str) + json.dumps(task, default=str)

    # The run task's side: its command, in the task definition's environment, finds the run.
    result = subprocess.run([sys.executable, "-c", RUN_TASK_SCRIPT, command[3]],
                            env=_run_task_environment(deployment, container), cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    for how in ("from_ref", "from_home"):
        assert found[how] is not None, f"the run task's instance ({how}) does not find run {run_id}"
        assert found[how]["job_name"] == "weekly_refresh"
        assert found[how]["status"] == "STARTING"
        assert found[how]["tags"] == dict(run.tags)
        assert found[how]["run_storage"] == "PostgresRunStorage"
        assert found[how]["event_storage"] == "PostgresEventLogStorage"
        assert found[how]["compute_logs"] == "S3ComputeLogManager"
    # What the run task writes, the daemon and webserver read: one event log.
    messages = [record.message for record in instance.all_logs(run_id)]
    assert "hello from the run task" in messages
    assert "[EcsRunLauncher] Launching run in ECS task" in messages


def test_the_queue_holds_runs_of_a_busy_week_and_other_lake_writers(deployment):
    from dagster import DagsterRunStatus

    instance, ecs = deployment.instance, deployment.ecs
    with _workspace(instance) as process_context:
        request_context = process_context.create_request_context()
        first = _queue_run(instance, request_context, "weekly_refresh", "2026-11-02")
        same_week = _queue_run(instance, request_context, "training", "2026-11-02")
        second_heavy = _queue_run(instance, request_context, "scoring", "2026-11-09")
        third_heavy = _queue_run(instance, request_context, "weekly_refresh", "2026-11-16")
        # An ad-hoc materialization from the UI: the implicit asset job, no size tags.
        light = _queue_run(instance, request_context, "__ASSET_JOB", "2026-11-23",
                           asset_keys=[["ingest", "raw_customers"]])
        _dequeue(process_context)

    status = {run_id: instance.get_run_by_id(run_id).status
              for run_id in (first, same_week, second_heavy, third_heavy, light)}
    assert status == {first: DagsterRunStatus.STARTING,
                      same_week: DagsterRunStatus.QUEUED,      # one run per week at a time
                      second_heavy: DagsterRunStatus.QUEUED,   # one run of a job (a lake writer) at a time
                      third_heavy: DagsterRunStatus.QUEUED,
                      # No job, no job tags: the queue lets it through, and the lake's writer lease
                      # would stop it at its start while `first` writes.
                      light: DagsterRunStatus.STARTING}
    run_tasks = [arn for arn in ecs.list_tasks(cluster=deployment.cluster)["taskArns"]
                 if arn != deployment.daemon_task["taskArn"]]
    assert len(run_tasks) == 2

    light_task = ecs.describe_tasks(cluster=deployment.cluster,
                                    tasks=[instance.get_run_by_id(light).tags["ecs/task_arn"]])["tasks"][0]
    # Without ecs/cpu and ecs/memory tags the run gets run_resources: 4 vCPU / 16 GB.
    assert (light_task["overrides"]["cpu"], light_task["overrides"]["memory"]) == ("4096", "16384")
