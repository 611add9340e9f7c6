"""What `make run` leaves in the Dagster instance, and how the UI reads it.

`engagement-dagster run` runs in its own process, as `make run` does, on a temporary DAGSTER_HOME and
lake (3,000 customers): first a history of two weeks (`--weeks 2`, a backfill), then one week alone.
The UI's own GraphQL resolvers, on a workspace that names the code location as `make ui` does, then
read the instance: the runs under the job, the backfill, the partitions, the skipped checks.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import dagster as dg
import pytest

from engagement_dagster import cli
from engagement_dagster.core.settings import PROJECT_ROOT
from engagement_dagster.defs.partitions import DEFAULT_FIRST_WEEK, weekly_partitions

HISTORY = ("2026-10-26", "2026-11-02")  # the partitions' first week (the default), and the next
SINGLE = "2026-11-09"
N = 3_000
RAW = dg.AssetKey(["ingest", "raw_customers"])


def run_cli(home, lake, *args, returncode: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "DAGSTER_HOME": str(home), "ENGAGEMENT_LAKE_DIR": str(lake), "ENGAGEMENT_ENV": "local",
           "ENGAGEMENT_KB_EMBEDDINGS": "off",  # the run's mechanics, not the embeddings, are under test
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    for name in ("ENGAGEMENT_FIRST_WEEK", "ENGAGEMENT_SOURCE_URI", "DAGSTER_CODE_LOCATION_NAME"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "engagement_dagster.cli", "run", "--customers", str(N), *args],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == returncode, done.stdout[-4000:] + done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """`make run WEEKS=2 WEEK=2026-11-02`, then `make run WEEKS=1 WEEK=2026-11-09`, in a fresh instance and lake."""
    home, lake = tmp_path_factory.mktemp("dagster_home"), tmp_path_factory.mktemp("lake")
    history = run_cli(home, lake, "--weeks", "2", "--week", HISTORY[-1])
    single = run_cli(home, lake, "--week", SINGLE)
    instance = dg.DagsterInstance.from_config(str(home))
    yield instance, history.stdout + history.stderr, single.stdout, lake
    instance.dispose()


def ui_query(instance, query: str, variables: dict | None = None) -> dict:
    """A GraphQL query answered by the UI's resolvers, on the code location as `make ui` loads it
    (`dagster dev -m engagement_dagster.definitions`: same module, same location name)."""
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget, ModuleTarget
    from dagster_graphql.test.utils import execute_dagster_graphql

    (ui_origin,) = ModuleTarget(module_name=cli.DEFINITIONS_MODULE, attribute=None, working_directory=str(PROJECT_ROOT),
                                location_name=None).create_origins()
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(executable_path=sys.executable, module_name=cli.DEFINITIONS_MODULE,
                             working_directory=str(PROJECT_ROOT)), location_name=ui_origin.location_name)
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as process:
        result = execute_dagster_graphql(process.create_request_context(), query, variables)
    assert not result.errors, result.errors
    return result.data


def test_a_run_is_a_run_of_the_weekly_refresh_job_of_the_code_location(made):
    instance, _, single_output, _ = made
    runs = {run.tags["dagster/partition"]: run for run in instance.get_runs()}
    assert set(runs) == {*HISTORY, SINGLE}
    single = runs[SINGLE]
    assert single.job_name == "weekly_refresh" and single.status == dg.DagsterRunStatus.SUCCESS
    origin = single.remote_job_origin
    assert origin is not None and origin.job_name == "weekly_refresh"
    assert origin.repository_origin.code_location_origin.location_name == "engagement_dagster.definitions"
    assert single.tags["dagster/partition_set"] == "weekly_refresh_partition_set"
    assert single.tags["ecs/cpu"] == "16384" and single.tags["ecs/memory"] == "65536"  # the job's tags
    assert single.tags["engagement/source"] == "synthetic" and single.tags["engagement/customers"] == str(N)
    assert "dagster/backfill" not in single.tags  # one week: a run, not a backfill
    assert f"  run:       {single.run_id} (job weekly_refresh, partition {SINGLE})" in single_output

    # The job's page (Jobs → weekly_refresh → Runs; Overview) lists the runs of the job in the code location.
    data = ui_query(instance, """
        query($location: String!) {
          pipelineOrError(params: {repositoryLocationName: $location, repositoryName: "__repository__",
                                   pipelineName: "weekly_refresh"}) {
            __typename ... on Pipeline { runs { runId status tags { key value } } }
          }
        }""", {"location": cli.location_name()})
    listed = {run["runId"]: run for run in data["pipelineOrError"]["runs"]}
    assert set(listed) == {run.run_id for run in runs.values()}
    tags = {tag["key"]: tag["value"] for tag in listed[single.run_id]["tags"]}
    assert tags["dagster/partition"] == SINGLE and listed[single.run_id]["status"] == "SUCCESS"


def test_a_history_is_a_backfill_run_week_after_week(made):
    instance, history_output, _, _ = made
    # The first week's skipped week-over-week checks are in the summary, not a warning on the terminal.
    assert "emitted no result" not in history_output and "Warning" not in history_output
    (backfill,) = instance.get_backfills()
    assert backfill.partition_names == list(HISTORY)
    assert backfill.status.value == "COMPLETED_SUCCESS"
    assert backfill.partition_set_origin.partition_set_name == "weekly_refresh_partition_set"
    records = sorted(instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill.backfill_id})),
                     key=lambda record: record.start_time)
    assert [record.dagster_run.tags["dagster/partition"] for record in records] == list(HISTORY)
    assert records[0].end_time <= records[1].start_time  # one after the other, oldest first
    assert all(record.dagster_run.status == dg.DagsterRunStatus.SUCCESS for record in records)

    # The second week compared itself with the first: its raw snapshot with the first week's, its
    # models with the champions the first week promoted.
    second = cli.RunResult(instance, records[1].dagster_run.run_id)
    (raw,) = [e for e in second.get_asset_materialization_events() if e.asset_key == RAW]
    assert raw.event_specific_data.materialization.metadata["previous_week"].value == HISTORY[0]
    gates = [c for c in second.get_asset_check_evaluations() if c.check_name == "promotion_gate"]
    assert len(gates) == 6 and all("champion" in gate.metadata for gate in gates)

    # Overview → Backfills: the backfill of the job, each week's run and its status.
    data = ui_query(instance, """
        {
          partitionBackfillsOrError {
            ... on PartitionBackfills { results { id status title partitionNames
              partitionSet { pipelineName repositoryOrigin { repositoryLocationName } }
              partitionStatuses { ... on PartitionStatuses { results { partitionName runStatus runId } } } } }
          }
          assetNodeOrError(assetKey: {path: ["ingest", "raw_customers"]}) {
            ... on AssetNode { partitionStats { numMaterialized numPartitions } }
          }
        }""")
    (shown,) = data["partitionBackfillsOrError"]["results"]
    assert shown["id"] == backfill.backfill_id and shown["status"] == "COMPLETED_SUCCESS"
    assert shown["title"] == f"make run: 2 weeks, {HISTORY[0]} to {HISTORY[1]}"
    assert shown["partitionSet"] == {"pipelineName": "weekly_refresh",
                                     "repositoryOrigin": {"repositoryLocationName": cli.location_name()}}
    assert {(s["partitionName"], s["runStatus"]) for s in shown["partitionStatuses"]["results"]} == {
        (week, "SUCCESS") for week in HISTORY}
    stats = data["assetNodeOrError"]["partitionStats"]
    assert stats["numMaterialized"] == 3 and stats["numPartitions"] == len(weekly_partitions.get_partition_keys())

    # What the command printed: a line per week, then the full summary of the last week.
    lines = history_output.splitlines()
    assert lines[0].startswith(f"history of 2 weeks, {HISTORY[0]} to {HISTORY[1]}, oldest first: backfill "
                               f"{backfill.backfill_id} of job weekly_refresh")
    assert lines[1].startswith(f"  week {HISTORY[0]}: succeeded in ") and ", 2 skipped  (run " in lines[1]
    assert lines[2].startswith(f"  week {HISTORY[1]}: succeeded in ") and ", 0 skipped  (run " in lines[2]
    assert lines[3].startswith(f"weekly refresh for snapshot week {HISTORY[1]} (local): succeeded in ")
    assert "Running with dbt" not in history_output  # the steps' own output stays in the run's logs


def test_a_first_weeks_week_over_week_checks_are_skipped_with_the_reason(made):
    instance, _, _, _ = made
    first = next(run for run in instance.get_runs() if run.tags["dagster/partition"] == HISTORY[0])
    result = cli.RunResult(instance, first.run_id)
    reason = (f"no previous week to compare with: {HISTORY[0]} is the first week of the partitions "
              f"(ENGAGEMENT_FIRST_WEEK={HISTORY[0]})")
    assert cli.skipped_checks(result) == {"ingest/raw_customers": {"row_count_change": reason,
                                                                   "distribution_drift": reason}}
    evaluated = {c.check_name for c in result.get_asset_check_evaluations() if c.asset_key == RAW}
    assert evaluated == {"schema", "unique_customer_ids", "null_rates", "value_ranges"}
    logged = [entry.user_message for entry in instance.all_logs(first.run_id)]  # the run's log in the UI
    assert f"Skipped row_count_change, distribution_drift: {reason}." in logged
    text = cli.summary(result, HISTORY[0], 1.0, {})
    assert ", 0 warning(s), 2 skipped" in text
    assert f"    SKIPPED ingest/raw_customers:distribution_drift, row_count_change: {reason}" in text

    # The UI: the check did not execute in that week's run (skipped); the next week's ran and passed.
    for check in ("row_count_change", "distribution_drift"):
        data = ui_query(instance, """
            query($check: String!) {
              assetCheckExecutions(assetKey: {path: ["ingest", "raw_customers"]}, checkName: $check, limit: 10) {
                partition status
              }
            }""", {"check": check})
        statuses = {e["partition"]: e["status"] for e in data["assetCheckExecutions"]}
        assert statuses == {HISTORY[0]: "SKIPPED", HISTORY[1]: "SUCCEEDED", SINGLE: "SUCCEEDED"}, check
    from engagement_dagster.defs.ingest.assets import raw_customers

    specs = {spec.name: spec for spec in raw_customers.check_specs}  # what the check's page describes
    assert "Skipped (not run) on a week without a previous snapshot" in specs["row_count_change"].description


def test_a_failed_week_stops_the_history(tmp_path):
    """A week that fails (here a file that breaks the contract) stops the history: the weeks after it
    are canceled, not gated against a week that did not happen; the backfill ends as failed."""
    home, lake = tmp_path / "home", tmp_path / "lake"
    home.mkdir()
    bad = tmp_path / "bad_week.csv"
    bad.write_text("customer_id,age\nc-1,40\n")
    done = run_cli(home, lake, "--weeks", "2", "--week", HISTORY[1], "--source", str(bad), returncode=1)
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        (backfill,) = instance.get_backfills()
        assert backfill.status.value == "COMPLETED_FAILED"
        statuses = {run.tags["dagster/partition"]: run.status for run in instance.get_runs()}
        assert statuses == {HISTORY[0]: dg.DagsterRunStatus.FAILURE, HISTORY[1]: dg.DagsterRunStatus.CANCELED}
    finally:
        instance.dispose()
    lines = done.stdout.splitlines()
    assert lines[1].startswith(f"  week {HISTORY[0]}: FAILED in ")
    assert lines[2] == (f"  week {HISTORY[1]}: not run (run canceled: week {HISTORY[0]} failed, and each week is "
                        "gated against the week before)")
    assert lines[3].startswith(f"weekly refresh for snapshot week {HISTORY[0]} (local): FAILED in ")
    assert f"  STOPPED at ingest__raw_customers: {bad}: " in done.stdout


LAUNCH_A_CHECK = """
import json, os, sys
import dagster as dg
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster_graphql.test.utils import execute_dagster_graphql

LAUNCH = ("mutation($params: ExecutionParams!) { launchRun(executionParams: $params) "
          "{ __typename ... on LaunchRunSuccess { run { runId } } } }")
instance = dg.DagsterInstance.get()
origin = InProcessCodeLocationOrigin(
    LoadableTargetOrigin(executable_path=sys.executable, module_name="engagement_dagster.definitions",
                         working_directory=os.getcwd()),
    location_name="engagement_dagster.definitions")
found = {}
with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as process:
    for week in sys.argv[1:]:
        selector = {"repositoryLocationName": "engagement_dagster.definitions", "repositoryName": "__repository__",
                    "jobName": "weekly_refresh", "assetSelection": [],
                    "assetCheckSelection": [{"assetKey": {"path": ["ingest", "raw_customers"]},
                                             "name": "row_count_change"}]}
        params = {"selector": selector,
                  "executionMetadata": {"tags": [{"key": "dagster/partition", "value": week}]}}
        launched = execute_dagster_graphql(process.create_request_context(), LAUNCH, {"params": params}).data
        run_id = launched["launchRun"]["run"]["runId"]
        events = [e.dagster_event for e in instance.all_logs(run_id) if e.dagster_event]
        found[week] = {"status": instance.get_run_by_id(run_id).status.value,
                       "types": sorted({e.event_type_value for e in events
                                        if e.event_type_value in ("ASSET_MATERIALIZATION", "ASSET_CHECK_EVALUATION")}),
                       "checks": {e.event_specific_data.check_name: e.event_specific_data.passed for e in events
                                  if e.event_type_value == "ASSET_CHECK_EVALUATION"}}
print(json.dumps(found))
"""


def test_the_ui_can_run_a_check_alone_on_the_stored_snapshot(made, tmp_path):
    """One check of raw_customers executed from the UI for a week (a launched run selecting that
    check alone): the step re-checks the week's stored snapshot and re-ingests nothing; on the first
    week the check is skipped."""
    lake = made[3]
    home = tmp_path / "home"
    home.mkdir()  # an instance whose launcher runs a launched run right here, as the code server would
    (home / "dagster.yaml").write_text(
        "run_launcher: {module: dagster._core.launcher.sync_in_memory_run_launcher, class: SyncInMemoryRunLauncher}\n"
        "run_coordinator: {module: dagster._core.run_coordinator, class: DefaultRunCoordinator}\n"
        "telemetry: {enabled: false}\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "ENGAGEMENT_LAKE_DIR": str(lake), "ENGAGEMENT_ENV": "local"}
    env.pop("ENGAGEMENT_FIRST_WEEK", None)
    written = lake / "raw" / "customers" / f"snapshot_week={HISTORY[1]}"
    before = {path: path.stat().st_mtime_ns for path in written.rglob("*")}
    done = subprocess.run([sys.executable, "-c", LAUNCH_A_CHECK, HISTORY[1], HISTORY[0]], cwd=PROJECT_ROOT,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found[HISTORY[1]] == {"status": "SUCCESS", "types": ["ASSET_CHECK_EVALUATION"],
                                 "checks": {"row_count_change": True}}
    assert found[HISTORY[0]] == {"status": "SUCCESS", "types": [], "checks": {}}  # the first week: skipped
    assert before and {path: path.stat().st_mtime_ns for path in written.rglob("*")} == before


def test_a_history_starts_at_the_partitions_first_week():
    assert cli.history("2026-11-02", 2) == (["2026-10-26", "2026-11-02"], None)
    weeks, note = cli.history("2026-11-02", 4)
    assert weeks == ["2026-10-26", "2026-11-02"]
    assert note.startswith("4 weeks asked, 2 run: the partitions start at 2026-10-26; set ENGAGEMENT_FIRST_WEEK")
    for week in ("2026-10-19", "2026-11-03", "2999-01-05"):
        with pytest.raises(cli.UsageError, match=f"--week {week} is not a week of the partitions"):
            cli.history(week, 1)
    with pytest.raises(cli.UsageError, match="give 1 or more weeks"):
        cli.history(None, 0)


def test_the_default_first_week_is_where_make_runs_default_history_starts():
    """On the day it was chosen (Monday 2026-11-23, after the 06:00 close), `make run`'s default history
    (4 weeks ending at the last closed week) is exactly the partitions: they read 100% filled."""
    assert weekly_partitions.get_first_partition_key() == DEFAULT_FIRST_WEEK == "2026-10-26"
    then = dt.datetime(2026, 11, 23, 7, tzinfo=dt.UTC)
    assert weekly_partitions.get_partition_keys(current_time=then) == [
        "2026-10-26", "2026-11-02", "2026-11-09", "2026-11-16"]


def test_the_first_week_is_configurable_and_checked():
    def first_key(value):
        env = {**os.environ, "ENGAGEMENT_FIRST_WEEK": value}
        return subprocess.run(
            [sys.executable, "-c", ("from engagement_dagster.defs.partitions import weekly_partitions as p; "
                                    "print(p.get_first_partition_key())")],
            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)

    assert first_key("2026-09-28").stdout.strip() == "2026-09-28"
    refused = first_key("2026-09-29")
    assert refused.returncode != 0
    assert ("ENGAGEMENT_FIRST_WEEK='2026-09-29' is not a week's key: weeks are keyed by their Monday, YYYY-MM-DD "
            "(the week of 2026-09-29 is 2026-09-28)") in refused.stderr
