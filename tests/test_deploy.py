"""The AWS deployment's Dagster files are valid for the libraries that read them, and consistent.

deploy/dagster.yaml is validated as a whole instance config (dagster's own loader, with the env vars
it reads set) and each configurable class against its own schema; deploy/workspace.yaml resolves to
the gRPC code server named by the environment. That a run really launches from them is
tests/test_ecs_launch.py's subject; the image is tests/test_container.py's.
"""

import re
import shutil

import pytest
import yaml
from dagster._config.field_utils import convert_potential_field
from dagster._config.validate import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._core.workspace.load import location_origins_from_yaml_paths
from dagster_aws.ecs import EcsRunLauncher
from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
from dagster_postgres import DagsterPostgresStorage

from engagement_dagster.core.settings import PROJECT_ROOT

DAGSTER_YAML = PROJECT_ROOT / "deploy" / "dagster.yaml"
WORKSPACE_YAML = PROJECT_ROOT / "deploy" / "workspace.yaml"
# What the deployment sets in every container (deploy/terraform), test values.
DEPLOY_ENV = {
    "DAGSTER_PG_HOST": "db.internal", "DAGSTER_PG_PORT": "5432", "DAGSTER_PG_DB": "dagster",
    "DAGSTER_PG_USERNAME": "dagster", "DAGSTER_PG_PASSWORD": "from-secrets-manager",
    "DAGSTER_COMPUTE_LOG_BUCKET": "logs-bucket", "DAGSTER_COMPUTE_LOG_PREFIX": "compute-logs",
    "DAGSTER_CODE_SERVER_HOST": "code-server.engagement.local", "DAGSTER_CODE_SERVER_PORT": "4000",
    "DAGSTER_CODE_LOCATION_NAME": "engagement_dagster",
}


@pytest.fixture
def instance_yaml() -> dict:
    return yaml.safe_load(DAGSTER_YAML.read_text())


@pytest.fixture
def deploy_env(monkeypatch):
    for name, value in DEPLOY_ENV.items():
        monkeypatch.setenv(name, value)
    return DEPLOY_ENV


def _schema(cls):
    return convert_potential_field(cls.config_type()).config_type


def _env_refs(node) -> set[str]:
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {node["env"]}
        return set().union(*(_env_refs(value) for value in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_env_refs(value) for value in node)) if node else set()
    return set()


def test_instance_yaml_is_a_valid_instance_config_as_dagster_loads_it(tmp_path, deploy_env):
    shutil.copy(DAGSTER_YAML, tmp_path / "dagster.yaml")
    config, custom_class = dagster_instance_config(str(tmp_path))
    assert custom_class is None
    assert set(config) >= {"storage", "run_coordinator", "run_launcher", "compute_logs", "run_monitoring", "telemetry"}
    assert config["telemetry"] == {"enabled": False}
    assert config["run_monitoring"]["enabled"] is True


def test_instance_yaml_refuses_a_typo_anywhere(tmp_path, deploy_env, instance_yaml):
    from dagster._core.errors import DagsterInvalidConfigError

    instance_yaml["run_monitoring"]["start_timeout_secs"] = 900
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml))
    with pytest.raises(DagsterInvalidConfigError):
        dagster_instance_config(str(tmp_path))


def test_instance_yaml_configures_a_valid_ecs_run_launcher(instance_yaml):
    launcher = instance_yaml["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_aws.ecs", "EcsRunLauncher")
    schema = _schema(EcsRunLauncher)
    result = process_config(schema, launcher["config"])
    assert result.success, result.errors
    typo = process_config(schema, {**launcher["config"], "use_current_ecs_task_conf": True})
    assert not typo.success  # the schema really is checked
    config = result.value
    assert config["use_current_ecs_task_config"] is True
    assert config["container_name"] == "engagement-dagster"
    assert "task_definition" not in config  # a fixed task definition would drop env_vars and the image
    assert config["secrets_tag"] is None  # no Secrets Manager listing at launch
    assert {"key": "project", "value": "engagement-dagster"} in config["run_ecs_tags"]


def test_instance_yaml_configures_valid_storage_queue_and_compute_logs(instance_yaml, deploy_env):
    storage = process_config(_schema(DagsterPostgresStorage), instance_yaml["storage"]["postgres"])
    assert storage.success, storage.errors
    db = storage.value["postgres_db"]
    assert (db["hostname"], db["port"], db["db_name"], db["username"], db["password"]) == (
        "db.internal", 5432, "dagster", "dagster", "from-secrets-manager")
    # dagster-postgres ships psycopg2; SQLAlchemy 2.1 would pick psycopg 3 for a bare postgresql://.
    assert db["scheme"] == "postgresql+psycopg2"

    coordinator = instance_yaml["run_coordinator"]
    assert coordinator["class"] == "QueuedRunCoordinator"
    queue = process_config(_schema(QueuedRunCoordinator), coordinator["config"])
    assert queue.success, queue.errors
    limits = {(limit["key"], str(limit.get("value"))): limit["limit"]
              for limit in queue.value["tag_concurrency_limits"]}
    assert limits[("dagster/partition", str({"applyLimitPerUniqueValue": True}))] == 1
    assert limits[("ecs/cpu", "16384")] >= 1

    logs = instance_yaml["compute_logs"]
    assert (logs["module"], logs["class"]) == ("dagster_aws.s3.compute_log_manager", "S3ComputeLogManager")
    compute = process_config(_schema(S3ComputeLogManager), logs["config"])
    assert compute.success, compute.errors
    assert (compute.value["bucket"], compute.value["prefix"]) == ("logs-bucket", "compute-logs")


def test_the_heavy_limit_names_the_size_the_jobs_carry(instance_yaml):
    from engagement_dagster.definitions import HEAVY_RUN_TAGS

    keyed = [limit for limit in instance_yaml["run_coordinator"]["config"]["tag_concurrency_limits"]
             if limit["key"] == "ecs/cpu"]
    assert [limit["value"] for limit in keyed] == [HEAVY_RUN_TAGS["ecs/cpu"]]


def test_every_env_var_the_instance_reads_reaches_the_run_task(instance_yaml):
    """A run task rebuilds the instance from these settings in its own environment: every variable
    dagster.yaml reads must be in env_vars (copied from the launcher), except the password, which
    only the task definition's `secrets` may carry (never plain text in the task definition)."""
    read = _env_refs({k: v for k, v in instance_yaml.items() if k != "run_launcher"})
    env_vars = instance_yaml["run_launcher"]["config"]["env_vars"]
    bare = {entry for entry in env_vars if "=" not in entry}
    assert read - bare == {"DAGSTER_PG_PASSWORD"}
    assert not any(entry.startswith("DAGSTER_PG_PASSWORD") for entry in env_vars)
    assert "ENGAGEMENT_ENV=aws" in env_vars
    from engagement_dagster.core.settings import AWS_SETTINGS

    assert set(AWS_SETTINGS) <= bare  # what ENGAGEMENT_ENV=aws refuses to start without


def test_every_bare_env_var_says_where_it_comes_from():
    """Each `- NAME` of env_vars must be set where the launcher runs: the line says by whom."""
    lines = [line for line in DAGSTER_YAML.read_text().splitlines() if re.match(r"\s+- [A-Z_]+(\s|$)", line)]
    assert lines
    for line in lines:
        assert "#" in line and line.split("#", 1)[1].strip(), f"no source given: {line.strip()}"


def test_workspace_yaml_points_at_the_code_server_from_the_environment(deploy_env):
    (origin,) = location_origins_from_yaml_paths([str(WORKSPACE_YAML)])
    assert type(origin).__name__ == "GrpcServerCodeLocationOrigin"
    assert (origin.host, origin.port, origin.location_name) == (
        "code-server.engagement.local", 4000, "engagement_dagster")


def test_workspace_yaml_refuses_to_load_without_its_settings(monkeypatch):
    from dagster._core.errors import DagsterInvalidConfigError

    monkeypatch.delenv("DAGSTER_CODE_SERVER_HOST", raising=False)
    for name in ("DAGSTER_CODE_SERVER_PORT", "DAGSTER_CODE_LOCATION_NAME"):
        monkeypatch.setenv(name, DEPLOY_ENV[name])
    with pytest.raises((DagsterInvalidConfigError, Exception), match="DAGSTER_CODE_SERVER_HOST"):
        location_origins_from_yaml_paths([str(WORKSPACE_YAML)])


def test_the_laptop_workspace_stays_a_python_module():
    workspace = yaml.safe_load((PROJECT_ROOT / "workspace.yaml").read_text())
    assert workspace["load_from"][0]["python_module"]["module_name"] == "engagement_dagster.definitions"
