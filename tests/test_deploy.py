"""The AWS deployment files are valid for the libraries that read them."""

import yaml
from dagster._config.field_utils import convert_potential_field
from dagster._config.validate import process_config
from dagster_aws.ecs import EcsRunLauncher

from engagement_dagster.settings import PROJECT_ROOT


def test_instance_yaml_configures_a_valid_ecs_run_launcher():
    instance = yaml.safe_load((PROJECT_ROOT / "deploy" / "dagster.yaml").read_text())
    launcher = instance["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_aws.ecs", "EcsRunLauncher")
    schema = convert_potential_field(EcsRunLauncher.config_type()).config_type
    result = process_config(schema, launcher["config"])
    assert result.success, result.errors
    typo = process_config(schema, {**launcher["config"], "use_current_ecs_task_conf": True})
    assert not typo.success  # the schema really is checked


def test_container_image_serves_this_code_location_in_aws_mode():
    dockerfile = (PROJECT_ROOT / "containers" / "Dockerfile").read_text()
    assert "ENV ENGAGEMENT_ENV=aws" in dockerfile
    assert "-m\", \"engagement_dagster.definitions\"" in dockerfile
    assert "prepare-and-package --file engagement_dagster/dbt_project.py" in dockerfile
