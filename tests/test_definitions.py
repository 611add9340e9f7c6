import datetime as dt
import os
import subprocess
import sys

import dagster as dg

from engagement_dagster.core.settings import PROJECT_ROOT
from engagement_dagster.definitions import defs


def test_definitions_load_with_groups_as_key_prefixes():
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys() if graph.get(key).is_materializable}
    assert {"ingest/raw_customers", "features/stg_customers", "features/customer_features",
            "features/customer_model_input", "models/churn_model", "models/engagement_model", "models/ltv_model",
            "models/segment_model", "models/anomaly_model", "models/content_recommender",
            "scoring/customer_predictions", "scoring/predictions_final", "scoring/qa_review_sample",
            "scoring/at_risk_customers", "scoring/high_engagement_customers", "scoring/churn_by_segment",
            "scoring/weekly_prediction_summary", "scoring/weekly_summary", "knowledge_base/kb_documents",
            "knowledge_base/kb_index"} == keys
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if node.is_materializable:
            assert node.group_name == key.path[0]
    # dbt is wired to the Python assets through the sources' asset keys
    assert dg.AssetKey(["ingest", "raw_customers"]) in graph.get(dg.AssetKey(["features", "stg_customers"])).parent_keys
    assert dg.AssetKey(["scoring", "customer_predictions"]) in graph.get(
        dg.AssetKey(["scoring", "predictions_final"])).parent_keys
    # every model is gated by a blocking promotion check
    gates = [spec for spec in defs.resolve_asset_graph().asset_check_keys if spec.name == "promotion_gate"]
    assert len(gates) == 6


def test_heavy_jobs_ask_for_16_vcpu_64_gb_fargate_tasks():
    for name in ("weekly_refresh", "training", "scoring"):
        tags = defs.resolve_job_def(name).tags
        assert tags["ecs/cpu"] == "16384" and tags["ecs/memory"] == "65536"


def test_weekly_schedule_runs_monday_0600_utc_for_the_closed_week():
    schedule = defs.resolve_schedule_def("weekly_refresh_schedule")
    assert schedule.cron_schedule == "0 6 * * 1" and schedule.execution_timezone == "UTC"
    tick = dt.datetime(2026, 11, 23, 6, 0, tzinfo=dt.UTC)
    with dg.build_schedule_context(scheduled_execution_time=tick) as context:
        requests = schedule.evaluate_tick(context).run_requests
    assert [r.partition_key for r in requests] == ["2026-11-16"]
    assert schedule.job_name == "weekly_refresh"


def test_environment_switch_picks_the_lake(monkeypatch):
    import pytest

    from engagement_dagster.core.settings import AWS_SETTINGS, MissingSettings
    from engagement_dagster.defs.resources import build_resources
    from engagement_dagster.defs.resources.lake import LocalLake, S3Lake

    for name in AWS_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ENGAGEMENT_LAKE_BUCKET", "my-lake")
    with pytest.raises(MissingSettings) as missing:  # no global default names: each missing one is named
        build_resources("aws")
    assert "ENGAGEMENT_LAKE_BUCKET" not in str(missing.value)
    assert all(name in str(missing.value) for name in AWS_SETTINGS if name != "ENGAGEMENT_LAKE_BUCKET")
    for name in AWS_SETTINGS:
        monkeypatch.setenv(name, "my-lake" if name == "ENGAGEMENT_LAKE_BUCKET" else f"s3://x/{name.lower()}")
    aws = build_resources("aws")
    assert isinstance(aws["lake"], S3Lake) and aws["lake"].bucket == "my-lake" and aws["dbt"].target == "prod"
    local = build_resources("local")
    assert isinstance(local["lake"], LocalLake) and local["dbt"].target == "local"
    monkeypatch.setenv("ENGAGEMENT_ENV", "gcp")
    from engagement_dagster.core.settings import environment

    with pytest.raises(ValueError, match="ENGAGEMENT_ENV"):
        environment()


def test_dbt_prod_target_parses_without_aws_credentials(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    dbt = os.path.join(os.path.dirname(sys.executable), "dbt")
    done = subprocess.run(
        [dbt, "parse", "--target", "prod", "--project-dir", "dbt_project", "--profiles-dir", "dbt_project",
         "--target-path", str(tmp_path / "target")],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dagster_and_dg_clis_validate_the_code_location(tmp_path):
    """What an operator runs: `dagster definitions validate` (workspace.yaml) and `dg check defs`
    (the [tool.dg] project in pyproject.toml)."""
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    for command in (["dagster", "definitions", "validate"], ["dg", "check", "defs"]):
        done = subprocess.run([os.path.join(bin_dir, command[0]), *command[1:]], cwd=PROJECT_ROOT, env=env,
                              capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"


def test_the_run_summary_names_s3_and_glue_in_aws_mode(monkeypatch):
    from engagement_dagster.core.settings import AWS_SETTINGS, where_things_are

    for name in AWS_SETTINGS:
        monkeypatch.setenv(name, name.lower())
    monkeypatch.setenv("ENGAGEMENT_LAKE_BUCKET", "acme-engagement-lake")
    monkeypatch.setenv("ENGAGEMENT_LAKE_PREFIX", "prod/")
    monkeypatch.setenv("ENGAGEMENT_ENV", "aws")
    where = where_things_are()
    assert where["lake"] == "s3://acme-engagement-lake/prod/"
    assert where["registry"].startswith("s3://acme-engagement-lake/prod/models/")
    assert "Athena workgroup engagement_athena_workgroup" in where["warehouse"]
    assert "engagement_glue_raw_database (raw_customers, customer_predictions)" in where["warehouse"]
