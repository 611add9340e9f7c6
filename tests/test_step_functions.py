"""The Step Functions export of the weekly refresh (engagement_dagster/export/step_functions.py).

The committed files are a fresh export; stages follow the asset graph (Parallel for independent
groups, a group split where it depends on itself through another group); both ASL validators from
npm accept the machine and reject broken ones; the week arithmetic equals Dagster's partitions; the
scoring stage fans out (a plan task, a Distributed Map over the plan's groups of shards read from the
lake, each group retried alone, a publish task, then the dbt marts); and the machine runs on moto's
Step Functions, launching one ECS task per stage, and one per group of shards, in dependency order.

The validators run through npx (node/npm; the first run downloads them): without npx these tests
skip, unless ENGAGEMENT_REQUIRE_VALIDATORS=1 (CI), where they fail.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Collection

import dagster as dg
import pytest

from engagement_dagster.core.settings import PROJECT_ROOT
from engagement_dagster.defs.partitions import weekly_partitions
from engagement_dagster.export import step_functions as sfn

OUT_DIR = PROJECT_ROOT / "deploy" / "step_functions"
SAMPLE_VALUES = {
    "cluster_arn": "arn:aws:ecs:eu-west-1:123456789012:cluster/engagement-dagster",
    "task_definition_family": "engagement-dagster-run",
    "container_name": "engagement-dagster",
    "subnet_ids_json": ["subnet-0a1b2c3d4e5f60708", "subnet-0a1b2c3d4e5f60709"],
    "security_group_ids_json": ["sg-0a1b2c3d4e5f60708"],
    "sns_topic_arn": "arn:aws:sns:eu-west-1:123456789012:engagement-dagster-weekly-refresh-failures",
    "lake_bucket": "engagement-dagster-lake-123456789012",
    "lake_key_prefix": "team/lake/",
    "scoring_max_concurrency_json": 20,
}
FANOUT_STATES = ["Plan predictions", "Score predictions by shard group", "Publish predictions"]
ASL_VALIDATOR = ["npx", "--yes", "asl-validator@4.0.0"]
STATELINT = ["npx", "--yes", "-p", "@wmfs/statelint", "statelint"]
ECS_TARGET = sfn.EcsTarget("engagement-dagster", "engagement-dagster-run", "engagement-dagster",
                           ["subnet-1"], ["sg-1"], "arn:aws:sns:us-east-1:123456789012:failures")


@pytest.fixture(scope="module")
def defs():
    from engagement_dagster.definitions import defs

    return defs


@pytest.fixture(scope="module")
def exported(defs):
    return sfn.export_files(defs)


@pytest.fixture(scope="module")
def machine(exported):
    """The exported machine rendered with sample Terraform values."""
    return json.loads(sfn.render_template(exported[sfn.ASL_FILE], SAMPLE_VALUES))


# ---------------------------------------------------------------------------------------------
# Reading a machine back
# ---------------------------------------------------------------------------------------------

def ecs_tasks(states: dict) -> dict[str, dict]:
    """Every ecs:runTask.sync state, Parallel branches and Map item processors included."""
    found = {}
    for name, state in states.items():
        if state.get("Resource") == sfn.ECS_RUN_TASK_SYNC:
            found[name] = state
        for branch in [*state.get("Branches", ()), *([state["ItemProcessor"]] if "ItemProcessor" in state else [])]:
            found.update(ecs_tasks(branch["States"]))
    return found


def command_of(task: dict) -> str:
    return task["Parameters"]["Overrides"]["ContainerOverrides"][0]["Command.$"]


def selection_of(task: dict) -> str | None:
    """The --select of a `dagster asset materialize` task; None for the fan-out's CLI tasks."""
    match = re.search(r"'--select', '((?:[^'\\]|\\.)*)'", command_of(task))
    return re.sub(r"\\(.)", r"\1", match.group(1)) if match else None


def completed_before(states: dict, start: str, done: frozenset = frozenset(), into: dict | None = None) -> dict:
    """ECS task state → the ECS task states that succeeded before it on every path of the machine
    (success transitions: Next, every Choice branch; a Parallel completes all its branches)."""
    into = {} if into is None else into
    name = start
    while name is not None:
        state = states[name]
        if state["Type"] == "Choice":
            for target in [choice["Next"] for choice in state["Choices"]] + [state.get("Default")]:
                if target is not None:
                    completed_before(states, target, done, into)
            return into
        if state["Type"] in ("Parallel", "Map"):  # a Map completes all its items
            after = set(done)
            for branch in state.get("Branches") or [state["ItemProcessor"]]:
                inner = completed_before(branch["States"], branch["StartAt"], done, {})
                for task, before in inner.items():
                    into[task] = into[task] & before if task in into else set(before)
                after |= set(inner)
            done = frozenset(after)
        elif state.get("Resource") == sfn.ECS_RUN_TASK_SYNC:
            into[name] = into[name] & done if name in into else set(done)
            done = done | {name}
        if state.get("End") or state["Type"] in ("Succeed", "Fail"):
            return into
        name = state.get("Next")
    return into


def stage_layers(asl: dict) -> list[list[str]]:
    """The stage states from StartAt on the success path, a Parallel as the list of its branches."""
    layers, name = [], sfn.LAST_CLOSED_WEEK
    name = asl["States"][name]["Next"]
    while name != sfn.SUCCEEDED:
        state = asl["States"][name]
        layers.append([branch["StartAt"] for branch in state["Branches"]] if state["Type"] == "Parallel" else [name])
        name = state["Next"]
    return layers


# ---------------------------------------------------------------------------------------------
# (a) the committed files
# ---------------------------------------------------------------------------------------------

def test_the_committed_files_are_a_fresh_export(exported):
    for name, text in exported.items():
        path = OUT_DIR / name
        assert path.exists(), f"{path} is missing: run `python -m engagement_dagster.export.step_functions`"
        assert path.read_text() == text, f"{path} is stale: run `python -m engagement_dagster.export.step_functions`"
        assert text.endswith("}\n")
    assert "generated" in (OUT_DIR / "README.md").read_text().lower()


def test_export_sfn_main_writes_both_files_and_check_spots_a_stale_one(tmp_path, exported, capsys):
    assert sfn.export_sfn_main(["--out-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for name, text in exported.items():
        assert (tmp_path / name).read_text() == text
        assert f"wrote {tmp_path / name}" in printed
    assert "ingest [group:ingest, 2048/8192] -> features" in printed
    assert sfn.export_sfn_main(["--out-dir", str(tmp_path), "--check"]) == 0
    (tmp_path / sfn.RULE_FILE).write_text("{}\n")
    assert sfn.export_sfn_main(["--out-dir", str(tmp_path), "--check"]) == 1
    assert "stale" in capsys.readouterr().out


def test_the_template_uses_only_the_orchestration_modules_variables(exported):
    text = exported[sfn.ASL_FILE]
    assert set(re.findall(r"(?<!\$)\$\{(\w+)\}", text)) == set(SAMPLE_VALUES)
    assert "%{" not in text
    assert '"Subnets": ${subnet_ids_json}' in text and '"SecurityGroups": ${security_group_ids_json}' in text
    assert '"MaxConcurrency": ${scoring_max_concurrency_json}' in text
    assert "'${lake_key_prefix}scoring/plans/snapshot_week={}/items.json'" in text
    with pytest.raises(KeyError, match="cluster_arn"):
        sfn.render_template(text, {})


# ---------------------------------------------------------------------------------------------
# The real graph: stages, sizes, retries, dependencies
# ---------------------------------------------------------------------------------------------

def test_the_real_graph_runs_as_group_stages_sized_from_the_jobs(defs, machine):
    from engagement_dagster.definitions import HEAVY_RUN_TAGS

    assert stage_layers(machine) == [["Materialize ingest"], ["Materialize features"], ["Materialize models"],
                                     *([name] for name in FANOUT_STATES), ["Materialize scoring"],
                                     ["Materialize knowledge_base"]]
    tasks = ecs_tasks(machine["States"])
    sizes = {name: (t["Parameters"]["Overrides"]["Cpu"], t["Parameters"]["Overrides"]["Memory"])
             for name, t in tasks.items()}
    heavy = (HEAVY_RUN_TAGS["ecs/cpu"], HEAVY_RUN_TAGS["ecs/memory"])
    assert sizes == {"Materialize ingest": sfn.LIGHT_SIZE, "Materialize features": sfn.LIGHT_SIZE,
                     "Materialize models": heavy, "Plan predictions": sfn.LIGHT_SIZE,
                     sfn.GROUP_STATE: sfn.GROUP_SIZE, "Publish predictions": sfn.LIGHT_SIZE,
                     "Materialize scoring": heavy, "Materialize knowledge_base": sfn.LIGHT_SIZE}
    marts = sorted(k.to_user_string() for k in dg.AssetSelection.groups("scoring").resolve(defs.resolve_asset_graph())
                   if k.to_user_string() != sfn.SCORING_FANOUT.asset_key)
    selections = {name: selection_of(t) for name, t in tasks.items()}
    # The marts stage: the scoring group's dbt models, by key; customer_predictions is the fan-out's.
    assert sorted(selections.pop("Materialize scoring").split(",")) == marts and len(marts) >= 5
    assert selections == {
        "Materialize ingest": "group:ingest", "Materialize features": "group:features",
        "Materialize models": "group:models", "Plan predictions": None, sfn.GROUP_STATE: None,
        "Publish predictions": None, "Materialize knowledge_base": "group:knowledge_base"}
    for name, task in tasks.items():
        params = task["Parameters"]
        assert params["Cluster"] == SAMPLE_VALUES["cluster_arn"]
        assert params["TaskDefinition"] == "engagement-dagster-run"
        assert params["LaunchType"] == "FARGATE"
        assert params["NetworkConfiguration"]["AwsvpcConfiguration"] == {
            "Subnets": SAMPLE_VALUES["subnet_ids_json"], "SecurityGroups": SAMPLE_VALUES["security_group_ids_json"],
            "AssignPublicIp": "DISABLED"}
        (override,) = params["Overrides"]["ContainerOverrides"]
        assert override["Name"] == "engagement-dagster"
        retried = [error for retrier in task["Retry"] for error in retrier["ErrorEquals"]]
        assert {"ECS.AmazonECSException", "ECS.ServerException", "AmazonECS.Unknown"} <= set(retried)
        assert task["Retry"][0]["BackoffRate"] > 1 and task["Retry"][0]["MaxAttempts"] >= 3
        assert task["ResultPath"] is None
        if name == sfn.GROUP_STATE:  # inside the Map's child executions: the Map catches
            continue
        if selection_of(task) is not None:
            assert override["Command.$"].startswith(
                "States.Array('dagster', 'asset', 'materialize', '-m', 'engagement_dagster.definitions', '--select', ")
            assert override["Command.$"].endswith(
                "'--partition', $.run.snapshot_week, '--config-json', $.run.dagster_run_config)")
        # A failed 16 vCPU run is not rerun; a light one once.
        assert ("States.TaskFailed" in retried) == (sizes[name] == sfn.LIGHT_SIZE)
        assert task["Catch"] == [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": sfn.NOTIFY}]
    notify = machine["States"][sfn.NOTIFY]
    assert notify["Resource"] == sfn.SNS_PUBLISH and notify["Parameters"]["TopicArn"] == SAMPLE_VALUES["sns_topic_arn"]
    assert machine["States"][notify["Next"]]["Type"] == "Fail"


def test_the_scoring_stage_fans_out_over_groups_of_shards_read_from_the_lake(defs, machine):
    from engagement_dagster.core.ml import fanout

    states = machine["States"]
    plan, mapped, publish = (states[name] for name in FANOUT_STATES)
    assert command_of(plan) == "States.Array('engagement-dagster', 'scoring-plan', '--week', $.run.snapshot_week)"
    assert command_of(publish) == ("States.Array('engagement-dagster', 'scoring-publish', '--week', "
                                   "$.run.snapshot_week)")
    assert [plan["Next"], mapped["Next"], publish["Next"]] == [*FANOUT_STATES[1:], "Materialize scoring"]
    assert mapped["Type"] == "Map" and mapped["Catch"] == plan["Catch"] == publish["Catch"]

    # The items: the plan's items.json in the lake bucket, under the lake's prefix, for the run's week.
    reader = mapped["ItemReader"]
    assert reader["Resource"] == "arn:aws:states:::s3:getObject" and reader["ReaderConfig"] == {"InputType": "JSON"}
    assert reader["Parameters"] == {
        "Bucket": SAMPLE_VALUES["lake_bucket"],
        "Key.$": "States.Format('team/lake/scoring/plans/snapshot_week={}/items.json', $.run.snapshot_week)"}
    assert sfn.SCORING_FANOUT.items_key.format(week="2026-11-09") == fanout.items_key("2026-11-09")
    assert mapped["ItemSelector"] == {"snapshot_week.$": "$.run.snapshot_week", "group.$": "$$.Map.Item.Value.group"}

    # One child execution (STANDARD: .sync integrations) per group, each retried alone; no failure tolerated.
    processor = mapped["ItemProcessor"]
    assert processor["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
    assert list(processor["States"]) == [processor["StartAt"]] == [sfn.GROUP_STATE]
    group = processor["States"][sfn.GROUP_STATE]
    assert group["End"] is True and "Catch" not in group
    assert command_of(group) == ("States.Array('engagement-dagster', 'score-group', '--week', $.snapshot_week, "
                                 "'--group', States.Format('{}', $.group))")
    (task_failed,) = [r for r in group["Retry"] if r["ErrorEquals"] == ["States.TaskFailed"]]
    assert task_failed["MaxAttempts"] == 2 and task_failed["BackoffRate"] > 1 and task_failed["IntervalSeconds"] > 0
    assert group["TimeoutSeconds"] == sfn.GROUP_TIMEOUT_SECONDS
    assert group["Parameters"]["Group"] == "weekly-refresh:predictions-group"
    assert mapped["MaxConcurrency"] == SAMPLE_VALUES["scoring_max_concurrency_json"]
    assert mapped["ToleratedFailurePercentage"] == 0
    assert mapped["ResultPath"] is None  # the groups' outputs are not gathered into the execution's state

    # A concrete target (no prefix) exports plain values; without a lake bucket there is nowhere to read items.
    (stage,) = [stage for stage in sfn.graph_stages(defs) if stage.fanout is not None]
    assert (stage.name, stage.asset_keys, stage.upstream) == ("predictions", (sfn.SCORING_FANOUT.asset_key,),
                                                              ("features", "models"))
    target = dataclasses.replace(ECS_TARGET, lake_bucket="lake", lake_key_prefix="", max_concurrency=3)
    _, (_, plain_map), _ = sfn.fanout_states(stage, target)
    assert plain_map["ItemReader"]["Parameters"] == {
        "Bucket": "lake", "Key.$": "States.Format('scoring/plans/snapshot_week={}/items.json', $.run.snapshot_week)"}
    assert plain_map["MaxConcurrency"] == 3
    with pytest.raises(ValueError, match="lake's bucket"):
        sfn.fanout_states(stage, ECS_TARGET)


def test_every_asset_dependency_of_the_real_graph_is_respected_by_the_state_order(defs, machine):
    """Each task's --select resolved as `dagster asset materialize` resolves it (the fan-out: its plan
    task starts the asset, its publish task completes it); every asset in exactly one stage; an asset's
    stage starts after the stages of all its upstream assets."""
    graph = defs.resolve_asset_graph()
    starts, ends = {}, {}
    for name, task in ecs_tasks(machine["States"]).items():
        if selection_of(task) is None:
            continue
        keys = dg.AssetSelection.from_coercible(selection_of(task).split(",")).resolve(graph)
        assert keys, name
        for key in keys:
            assert key not in starts, f"{key} in {starts.get(key)} and {name}"
            starts[key] = ends[key] = name
        # The command's run config is valid for the job the CLI builds for these assets.
        job = defs.resolve_implicit_job_def_def_for_assets(list(keys))
        assert dg.validate_run_config(job, json.loads(sfn.RUN_CONFIG_JSON))
    fanned = dg.AssetKey.from_user_string(sfn.SCORING_FANOUT.asset_key)
    assert fanned not in starts
    starts[fanned], ends[fanned] = FANOUT_STATES[0], FANOUT_STATES[2]
    assert set(starts) == {key for key in graph.get_all_asset_keys() if graph.get(key).is_materializable}
    before = completed_before(machine["States"], machine["StartAt"])
    assert {FANOUT_STATES[0], sfn.GROUP_STATE} <= before[FANOUT_STATES[2]]  # publish after plan and every group
    assert FANOUT_STATES[0] in before[sfn.GROUP_STATE]
    crossing = 0
    for key, stage in starts.items():
        for parent in graph.get(key).parent_keys:
            if ends[parent] != stage:
                crossing += 1
                assert ends[parent] in before[stage], f"{key} ({stage}) may start before {parent}"
    assert crossing >= 10


# ---------------------------------------------------------------------------------------------
# (b) a fixture graph: Parallel, new groups, a split group, sizes
# ---------------------------------------------------------------------------------------------

def fixture_assets():
    @dg.asset(group_name="ingest", partitions_def=weekly_partitions)
    def orders(): ...

    @dg.asset(group_name="reference", partitions_def=weekly_partitions)
    def calendar_days(): ...

    @dg.asset(group_name="features", partitions_def=weekly_partitions, deps=[orders, calendar_days])
    def order_features(): ...

    return [orders, calendar_days, order_features]


def fixture_machine(assets, jobs=()):
    fixture = dg.Definitions(assets=assets, jobs=list(jobs), executor=dg.in_process_executor)
    stages = sfn.graph_stages(fixture, job_name=None)
    return sfn.state_machine(stages, ECS_TARGET, sfn.week_calendar(fixture, job_name=None)), stages


def test_independent_groups_run_as_parallel_branches_and_new_groups_change_the_export():
    asl, _ = fixture_machine(fixture_assets())
    assert stage_layers(asl) == [["Materialize ingest", "Materialize reference"], ["Materialize features"]]
    parallel = asl["States"]["Materialize ingest and reference"]
    assert parallel["Type"] == "Parallel" and parallel["Next"] == "Materialize features"
    assert parallel["Catch"][0]["Next"] == sfn.NOTIFY
    assert {selection_of(t) for t in ecs_tasks(asl["States"]).values()} == {
        "group:ingest", "group:reference", "group:features"}

    @dg.asset(group_name="reports", partitions_def=weekly_partitions, deps=["order_features"])
    def weekly_report(): ...

    @dg.asset(group_name="audit", partitions_def=weekly_partitions)
    def audit_log(): ...

    with_report, _ = fixture_machine([*fixture_assets(), weekly_report])
    assert stage_layers(with_report) == [["Materialize ingest", "Materialize reference"], ["Materialize features"],
                                         ["Materialize reports"]]
    with_audit, _ = fixture_machine([*fixture_assets(), audit_log])
    assert stage_layers(with_audit) == [["Materialize audit", "Materialize ingest", "Materialize reference"],
                                        ["Materialize features"]]
    assert "Materialize audit, ingest and reference" in with_audit["States"]


def test_a_group_that_depends_on_itself_through_another_group_is_split_into_ordered_stages():
    @dg.asset(group_name="scoring", partitions_def=weekly_partitions, deps=["order_features"])
    def scores(): ...

    @dg.asset(group_name="marts", partitions_def=weekly_partitions, deps=[scores])
    def mart(): ...

    @dg.asset(group_name="scoring", partitions_def=weekly_partitions, deps=[mart])
    def score_report(): ...

    asl, stages = fixture_machine([*fixture_assets(), scores, mart, score_report])
    assert [(stage.name, stage.selection) for stage in stages if stage.group != "ingest"][-3:] == [
        ("scoring-1", "scores"), ("marts", "group:marts"), ("scoring-2", "score_report")]
    assert stage_layers(asl)[-3:] == [["Materialize scoring-1"], ["Materialize marts"], ["Materialize scoring-2"]]
    # Plain planning, no Dagster: a group reached twice only through itself stays one stage.
    plan = sfn.plan_stages([sfn.AssetNode("a", "g"), sfn.AssetNode("b", "g", ("a",)), sfn.AssetNode("x", "h"),
                            sfn.AssetNode("c", "g", ("x", "b"))])
    assert [(stage.name, stage.asset_keys, stage.upstream) for stage in plan] == [
        ("h", ("x",), ()), ("g", ("a", "b", "c"), ("h",))]
    with pytest.raises(ValueError, match="cycle"):
        sfn.plan_stages([sfn.AssetNode("a", "g", ("b",)), sfn.AssetNode("b", "g", ("a",))])


FIXTURE_FANOUT = sfn.FanOut(asset_key="orders", stage="orders_by_shard", plan=("orders", "plan"),
                            group=("orders", "group"), publish=("orders", "publish"),
                            items_key="orders/plans/week={week}/items.json")


def fixture_fanout_machine():
    fixture = dg.Definitions(assets=fixture_assets(), executor=dg.in_process_executor)
    target = dataclasses.replace(ECS_TARGET, lake_bucket="lake-bucket", lake_key_prefix="", max_concurrency=4)
    stages = sfn.graph_stages(fixture, job_name=None, fanouts=[FIXTURE_FANOUT])
    return sfn.state_machine(stages, target, sfn.week_calendar(fixture, job_name=None)), stages


def test_a_fanned_out_asset_is_a_stage_of_its_own_also_inside_a_parallel_layer():
    asl, stages = fixture_fanout_machine()
    assert [(s.name, s.asset_keys, s.fanout is not None) for s in stages] == [
        ("orders_by_shard", ("orders",), True), ("reference", ("calendar_days",), False),
        ("features", ("order_features",), False)]
    assert sfn.layers(stages)[1][0].upstream == ("orders_by_shard", "reference")
    parallel = asl["States"]["Materialize orders_by_shard and reference"]
    fanned, reference = parallel["Branches"]
    assert fanned["StartAt"] == "Plan orders_by_shard"
    assert list(fanned["States"]) == ["Plan orders_by_shard", "Score orders_by_shard by shard group",
                                      "Publish orders_by_shard"]
    assert [state.get("Next", "End") for state in fanned["States"].values()] == [
        "Score orders_by_shard by shard group", "Publish orders_by_shard", "End"]
    mapped = fanned["States"]["Score orders_by_shard by shard group"]
    assert mapped["ItemReader"]["Parameters"] == {
        "Bucket": "lake-bucket", "Key.$": "States.Format('orders/plans/week={}/items.json', $.run.snapshot_week)"}
    assert command_of(mapped["ItemProcessor"]["States"][sfn.GROUP_STATE]) == (
        "States.Array('orders', 'group', '--week', $.snapshot_week, '--group', States.Format('{}', $.group))")
    assert all("Catch" not in state for state in fanned["States"].values())  # the Parallel catches
    assert parallel["Catch"][0]["Next"] == sfn.NOTIFY and reference["StartAt"] == "Materialize reference"
    with pytest.raises(ValueError, match="name of an asset group"):
        sfn.graph_stages(dg.Definitions(assets=fixture_assets(), executor=dg.in_process_executor), job_name=None,
                         fanouts=[dataclasses.replace(FIXTURE_FANOUT, stage="features")])


def test_stage_sizes_come_from_the_most_specific_sized_job_and_must_be_valid_fargate_sizes():
    heavy_tags = {"ecs/cpu": "16384", "ecs/memory": "65536"}
    jobs = [dg.define_asset_job("everything", selection=dg.AssetSelection.all(), tags={"ecs/cpu": "8192",
                                                                                       "ecs/memory": "16384"}),
            dg.define_asset_job("features_job", selection=dg.AssetSelection.groups("features"), tags=heavy_tags)]
    asl, stages = fixture_machine(fixture_assets(), jobs)
    sizes = {stage.name: (stage.cpu, stage.memory, stage.sized_by) for stage in stages}
    assert sizes == {"ingest": ("2048", "8192", None), "reference": ("2048", "8192", None),
                     "features": ("16384", "65536", "features_job")}
    features = asl["States"]["Materialize features"]
    assert features["TimeoutSeconds"] == sfn.HEAVY_TIMEOUT_SECONDS
    assert "States.TaskFailed" not in [e for r in features["Retry"] for e in r["ErrorEquals"]]
    bad = [dg.define_asset_job("bad", selection=dg.AssetSelection.groups("features"),
                               tags={"ecs/cpu": "16384", "ecs/memory": "16384"})]
    with pytest.raises(ValueError, match="Fargate refuses"):
        fixture_machine(fixture_assets(), bad)


def test_unpartitioned_or_mixed_assets_are_refused():
    @dg.asset(group_name="ingest")
    def unpartitioned(): ...

    with pytest.raises(ValueError, match="weekly partitions"):
        fixture_machine([*fixture_assets(), unpartitioned])


def test_a_graph_whose_materialize_would_not_run_in_one_process_is_refused():
    """The stages' run config is the in-process executor's: another executor would refuse it (or, for
    Dagster's default, start a process per step)."""
    with pytest.raises(ValueError, match=r"multi_or_in_process_executor.*one process"):
        sfn.graph_stages(dg.Definitions(assets=fixture_assets()), job_name=None)


# ---------------------------------------------------------------------------------------------
# The schedule
# ---------------------------------------------------------------------------------------------

def test_the_rule_is_the_dagster_schedule_in_eventbridge_cron(defs, exported):
    schedule = defs.resolve_schedule_def("weekly_refresh_schedule")
    assert sfn.eventbridge_cron(schedule.cron_schedule, schedule.execution_timezone) == "cron(0 6 ? * MON *)"
    rule = json.loads(exported[sfn.RULE_FILE])
    assert rule["PutRule"]["ScheduleExpression"] == "cron(0 6 ? * MON *)"
    assert rule["PutTargets"]["Targets"][0]["Input"] == "{}"
    assert sfn.eventbridge_cron("30 2 * * 0,3-5") == "cron(30 2 ? * SUN,WED-FRI *)"
    assert sfn.eventbridge_cron("0 6 1 * *") == "cron(0 6 1 * ? *)"
    with pytest.raises(ValueError, match="UTC"):
        sfn.eventbridge_cron("0 6 * * 1", "Europe/Berlin")


def test_the_rule_is_accepted_by_eventbridge_on_moto(aws_endpoint, exported):
    import boto3

    rule = json.loads(sfn.render_template(exported[sfn.RULE_FILE], {
        "state_machine_arn": "arn:aws:states:us-east-1:123456789012:stateMachine:weekly",
        "events_role_arn": "arn:aws:iam::123456789012:role/events"}))
    events = boto3.client("events")
    events.put_rule(**rule["PutRule"])
    events.put_targets(**rule["PutTargets"])
    described = events.describe_rule(Name=rule["PutRule"]["Name"])
    assert described["ScheduleExpression"] == "cron(0 6 ? * MON *)"
    assert events.list_targets_by_rule(Rule=rule["PutRule"]["Name"])["Targets"][0]["Input"] == "{}"


# ---------------------------------------------------------------------------------------------
# The snapshot week
# ---------------------------------------------------------------------------------------------

def dagster_last_closed_week(when: dt.datetime) -> str | None:
    with dg.partition_loading_context(effective_dt=when):
        return weekly_partitions.get_last_partition_key()


def edge_instants(years: range) -> list[dt.datetime]:
    utc = dt.UTC
    instants = []
    for year in years:
        for month, day in ((1, 1), (1, 7), (1, 8), (2, 28), (3, 1), (12, 24), (12, 31)):
            for hour, minute, second in ((0, 0, 0), (5, 59, 59), (6, 0, 0), (23, 59, 59)):
                instants.append(dt.datetime(year, month, day, hour, minute, second, tzinfo=utc))
        if year % 4 == 0:
            instants.append(dt.datetime(year, 2, 29, 12, tzinfo=utc))
    return instants


def test_the_week_arithmetic_equals_dagsters_last_partition(defs):
    calendar = sfn.week_calendar(defs)
    assert (calendar.weekday, calendar.hour, calendar.first_year) == (0, 6, weekly_partitions.start.year)
    first_close = weekly_partitions.time_window_for_partition_key(weekly_partitions.get_first_partition_key()).end
    instants = edge_instants(range(calendar.first_year, calendar.last_year + 1))
    day = first_close
    while day.year < calendar.first_year + 3:  # every day of three years, either side of 06:00
        instants += [day - dt.timedelta(seconds=1), day, day + dt.timedelta(hours=17)]
        day += dt.timedelta(days=1)
    checked = 0
    for when in instants:
        if when >= first_close:
            assert calendar.last_closed_week(when) == dagster_last_closed_week(when), when
            checked += 1
    assert checked > 3000
    with pytest.raises(ValueError, match="outside the calendar"):
        calendar.last_closed_week(dt.datetime(calendar.last_year + 1, 1, 5, tzinfo=dt.UTC))


# ---------------------------------------------------------------------------------------------
# (d) the validators
# ---------------------------------------------------------------------------------------------

def _validator_failure(message: str):
    if os.environ.get("ENGAGEMENT_REQUIRE_VALIDATORS") == "1":
        pytest.fail(message + " (ENGAGEMENT_REQUIRE_VALIDATORS=1)")
    pytest.skip(message)


def run_validator(command: list[str], paths: list, asl_validator: bool) -> subprocess.CompletedProcess:
    args = [arg for path in paths for arg in (["--json-path", str(path)] if asl_validator else [str(path)])]
    return subprocess.run(command + args, check=False, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "npm_config_update_notifier": "false"})


@pytest.fixture(scope="module")
def validators(tmp_path_factory):
    """Both validators, checked to run (npx present, packages downloadable) on a one-state machine."""
    if shutil.which("npx") is None:
        _validator_failure("npx is not installed: the ASL validators come from npm")
    minimal = tmp_path_factory.mktemp("asl") / "minimal.json"
    minimal.write_text(json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}))
    for command, is_asl in ((ASL_VALIDATOR, True), (STATELINT, False)):
        result = run_validator(command, [minimal], is_asl)
        if result.returncode != 0:
            _validator_failure(f"{' '.join(command)} did not run: {result.stdout}{result.stderr}"[-2000:])
    return {"asl-validator": (ASL_VALIDATOR, True), "statelint": (STATELINT, False)}


# statelint 1.30 (the newest on npm) predates these Distributed Map fields; asl-validator 4 checks them.
NEWER_THAN_STATELINT = ("ItemReader", "ToleratedFailurePercentage")


def without_fields(document, fields: Collection[str]):
    """A copy of the machine without `fields` in any state, however deep (Parallel, Map)."""
    if isinstance(document, dict):
        return {key: without_fields(value, fields) for key, value in document.items() if key not in fields}
    if isinstance(document, list):
        return [without_fields(value, fields) for value in document]
    return document


def test_both_validators_accept_the_exported_machines_and_reject_broken_ones(validators, machine, tmp_path):
    fixture, _ = fixture_machine(fixture_assets())
    fanned, _ = fixture_fanout_machine()
    good = {"weekly_refresh": machine, "fixture_parallel": fixture, "fixture_fanout_in_parallel": fanned}
    broken = {}
    dangling = json.loads(json.dumps(machine))
    dangling["States"]["Materialize models"]["Next"] = "Materialize nothing"
    broken["dangling_next"] = dangling
    no_resource = json.loads(json.dumps(machine))
    del no_resource["States"]["Materialize ingest"]["Resource"]
    broken["task_without_resource"] = no_resource
    bad_retry = json.loads(json.dumps(fixture))
    bad_retry["States"]["Materialize ingest and reference"]["Branches"][0]["States"]["Materialize ingest"][
        "Retry"][0]["BackoffRate"] = "fast"
    broken["retry_backoff_not_a_number"] = bad_retry
    map_retry = json.loads(json.dumps(machine))
    map_retry["States"][FANOUT_STATES[1]]["ItemProcessor"]["States"][sfn.GROUP_STATE]["Retry"][1]["MaxAttempts"] = "2"
    broken["group_retry_attempts_not_a_number"] = map_retry
    # Broken in the fields only asl-validator knows.
    changes = {"item_reader_without_resource": lambda m: m["ItemReader"].pop("Resource"),
               "tolerated_failure_over_100_percent": lambda m: m.update(ToleratedFailurePercentage=150)}
    newer = {}
    for name, change in changes.items():
        newer[name] = json.loads(json.dumps(machine))
        change(newer[name]["States"][FANOUT_STATES[1]])
    paths = {}
    for name, document in {**good, **broken, **newer}.items():
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(document, indent=2))
        paths[f"statelint_{name}"] = tmp_path / f"statelint_{name}.json"
        paths[f"statelint_{name}"].write_text(json.dumps(without_fields(document, NEWER_THAN_STATELINT), indent=2))
    for validator, (command, is_asl) in validators.items():
        prefix = "" if is_asl else "statelint_"
        accepted = run_validator(command, [paths[prefix + name] for name in good], is_asl)
        assert accepted.returncode == 0, f"{validator}: {accepted.stdout}{accepted.stderr}"
        rejects = [*broken, *(newer if is_asl else ())]
        rejected = run_validator(command, [paths[prefix + name] for name in rejects], is_asl)
        assert rejected.returncode == 1, f"{validator} accepted broken machines: {rejected.stdout}{rejected.stderr}"
        report = rejected.stdout + rejected.stderr
        for name in rejects:
            assert re.search(rf"{prefix}{name}\.json\"? (is invalid|is not valid)", report), (validator, name, report)
    # statelint's only objection to the full machine is those fields: nothing else goes unchecked.
    full = run_validator(STATELINT, [paths["weekly_refresh"]], asl_validator=False)
    objections = re.findall(r'Field "(\w+)" not allowed', full.stdout + full.stderr)
    assert full.returncode == 1 and set(objections) == set(NEWER_THAN_STATELINT), full.stdout + full.stderr
    assert len(re.findall(r"^\s+\S", full.stdout + full.stderr, flags=re.M)) == len(objections)


# ---------------------------------------------------------------------------------------------
# (e) on moto's Step Functions
# ---------------------------------------------------------------------------------------------

def _moto_api(endpoint: str, path: str, body: dict | None = None) -> dict | None:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{endpoint}/moto-api/{path}", data=data, method="GET" if body is None else "POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read()
    return json.loads(text) if text.strip().startswith(b"{") else None


def _patch_moto_ecs_integration(monkeypatch):
    """moto 5.2's interpreter hands ecs:runTask.sync its PascalCase parameters unconverted (KeyError
    'Cluster' / 'LaunchType') and reads the response un-normalised: convert both through botocore's
    ECS model, as AWS (and LocalStack, which moto's interpreter comes from) do."""
    from botocore.session import get_session
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import state_task_service_ecs

    model = get_session().get_service_model("ecs")

    def operation(service, service_action_name):
        action = service._get_boto_service_action(service_action_name)
        return model.operation_model("".join(part.title() for part in action.split("_")))

    def normalise_parameters(self, parameters, boto_service_name=None, service_action_name=None):
        self._to_boto_request(parameters, operation(self, service_action_name).input_shape)

    def normalise_response(self, response, boto_service_name=None, service_action_name=None):
        self._from_boto_response(response, operation(self, service_action_name).output_shape)

    service = state_task_service_ecs.StateTaskServiceEcs
    monkeypatch.setattr(service, "_normalise_parameters", normalise_parameters, raising=False)
    monkeypatch.setattr(service, "_normalise_response", normalise_response, raising=False)


@pytest.fixture
def moto_sfn(aws_endpoint, monkeypatch):
    """Executing Step Functions on moto; ECS tasks stay RUNNING until the test (the container) stops them."""
    import boto3

    # moto's interpreter calls ECS and SNS at localhost:$MOTO_PORT.
    monkeypatch.setenv("MOTO_PORT", str(urllib.parse.urlparse(aws_endpoint).port))
    _patch_moto_ecs_integration(monkeypatch)
    before = (_moto_api(aws_endpoint, "config") or {}).get("stepfunctions", {"execute_state_machine": False})
    _moto_api(aws_endpoint, "config", {"stepfunctions": {**before, "execute_state_machine": True}})
    try:
        _moto_api(aws_endpoint, "state-manager/set-transition",
                  {"model_name": "ecs::task", "transition": {"progression": "manual", "times": 1_000_000}})
        suffix = uuid.uuid4().hex[:8]
        ec2, ecs, sns, sqs = (boto3.client(name) for name in ("ec2", "ecs", "sns", "sqs"))
        vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
        ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24")["Subnet"]["SubnetId"]
        group = ec2.create_security_group(GroupName=f"tasks-{suffix}", Description="tasks", VpcId=vpc)["GroupId"]
        cluster = ecs.create_cluster(clusterName=f"engagement-dagster-{suffix}")["cluster"]["clusterArn"]
        family = f"engagement-dagster-run-{suffix}"
        # memoryReservation: moto's run_task needs container-level memory.
        ecs.register_task_definition(
            family=family, requiresCompatibilities=["FARGATE"], networkMode="awsvpc", cpu="16384", memory="65536",
            containerDefinitions=[{"name": "engagement-dagster", "image": "engagement-dagster:test",
                                   "memoryReservation": 1024, "essential": True}])
        lake_bucket = f"lake-{suffix}"
        boto3.client("s3").create_bucket(Bucket=lake_bucket)
        topic = sns.create_topic(Name=f"failures-{suffix}")["TopicArn"]
        queue = sqs.create_queue(QueueName=f"failures-{suffix}")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
        values = {"cluster_arn": cluster, "task_definition_family": family, "container_name": "engagement-dagster",
                  "subnet_ids_json": [subnet], "security_group_ids_json": [group], "sns_topic_arn": topic,
                  "lake_bucket": lake_bucket, "lake_key_prefix": "team/lake/", "scoring_max_concurrency_json": 2}
        yield {"values": values, "queue": queue, "suffix": suffix}
    finally:  # leave the shared server as it was found, even when the setup above fails
        _moto_api(aws_endpoint, "state-manager/unset-transition", {"model_name": "ecs::task"})
        _moto_api(aws_endpoint, "config", {"stepfunctions": before})


def execute(definition: str, execution_input: dict, cluster: str, hold_seconds: float = 1.5, timeout: float = 120):
    """Start an execution; act as each task's container: keep it running `hold_seconds`, then stop
    it. Returns the execution's description and, per task, its group, command, size, start, stop.

    moto's ASL grammar (LocalStack's) reads a Map's ToleratedFailurePercentage only as a non-integer
    number and evaluates it not at all (any failed item fails its Map there): it is left out here."""
    import boto3

    definition = json.dumps(without_fields(json.loads(definition), ["ToleratedFailurePercentage"]))
    states, ecs = boto3.client("stepfunctions"), boto3.client("ecs")
    name = f"weekly-{uuid.uuid4().hex[:12]}"
    arn = states.create_state_machine(name=name, definition=definition,
                                      roleArn="arn:aws:iam::123456789012:role/weekly-refresh-sfn")["stateMachineArn"]
    execution = states.start_execution(stateMachineArn=arn, name=name, input=json.dumps(execution_input))
    tasks: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        described = states.describe_execution(executionArn=execution["executionArn"])
        if described["status"] != "RUNNING":
            return described, sorted(tasks.values(), key=lambda task: task["started"])
        running = ecs.list_tasks(cluster=cluster, desiredStatus="RUNNING")["taskArns"]
        now = time.monotonic()
        for task in ecs.describe_tasks(cluster=cluster, tasks=running)["tasks"] if running else []:
            seen = tasks.setdefault(task["taskArn"], {
                "group": task["group"], "started": now, "stopped": None,
                "command": task["overrides"]["containerOverrides"][0]["command"],
                "size": (task["overrides"]["cpu"], task["overrides"]["memory"])})
            if now - seen["started"] >= hold_seconds:
                ecs.stop_task(cluster=cluster, task=task["taskArn"], reason="materialized (test)")
                seen["stopped"] = time.monotonic()
        time.sleep(0.1)
    pytest.fail(f"execution {name} still running after {timeout} s")


def notifications(queue: str) -> list[dict]:
    import boto3

    messages = boto3.client("sqs").receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=2)
    return [json.loads(message["Body"]) for message in messages.get("Messages", [])]


def test_the_weekly_refresh_runs_on_moto_one_task_per_stage_in_order(moto_sfn, exported):
    """Each stage's task after the last one's; the scoring stage as a plan task, one task per group of
    shards of the plan's items (read from the lake bucket, at most MaxConcurrency at a time), a publish
    task, then the marts."""
    import boto3

    from engagement_dagster.core.ml import fanout

    values = moto_sfn["values"]
    items = [{"week": "2026-11-09", "group": group, "shards": shards}
             for group, shards in enumerate([[0, 1], [2, 3], [4]])]
    # What `scoring-plan` (the plan task, here a container the test only starts and stops) writes.
    boto3.client("s3").put_object(Bucket=values["lake_bucket"], Key="team/lake/" + fanout.items_key("2026-11-09"),
                                  Body=json.dumps(items).encode())
    definition = sfn.render_template(exported[sfn.ASL_FILE], values)
    described, tasks = execute(definition, {"snapshot_week": "2026-11-09"}, values["cluster_arn"], timeout=180)
    assert described["status"] == "SUCCEEDED", described
    stages = ("ingest", "features", "models", "predictions-plan", *["predictions-group"] * 3, "predictions-publish",
              "scoring", "knowledge_base")
    assert [task["group"] for task in tasks] == [f"weekly-refresh:{name}" for name in stages]
    groups = tasks[4:7]
    for earlier, later in [*itertools.pairwise(tasks[:5]), *itertools.pairwise(tasks[6:])]:
        assert earlier["stopped"] is not None and earlier["stopped"] <= later["started"]
    assert all(task["stopped"] <= tasks[7]["started"] for task in groups)  # publish after every group
    assert groups[0]["started"] < groups[1]["stopped"] and groups[1]["started"] < groups[0]["stopped"]  # 2 at once
    assert groups[2]["started"] >= min(groups[0]["stopped"], groups[1]["stopped"])  # never 3
    assert sorted(task["command"] for task in groups) == [
        ["engagement-dagster", "score-group", "--week", "2026-11-09", "--group", str(group)] for group in range(3)]
    assert tasks[3]["command"] == ["engagement-dagster", "scoring-plan", "--week", "2026-11-09"]
    assert tasks[7]["command"] == ["engagement-dagster", "scoring-publish", "--week", "2026-11-09"]
    assert tasks[2]["command"] == [
        "dagster", "asset", "materialize", "-m", "engagement_dagster.definitions", "--select", "group:models",
        "--partition", "2026-11-09", "--config-json", sfn.RUN_CONFIG_JSON]
    assert tasks[8]["command"][:6] == ["dagster", "asset", "materialize", "-m", "engagement_dagster.definitions",
                                       "--select"]
    assert sfn.SCORING_FANOUT.asset_key not in tasks[8]["command"][6].split(",")
    light, heavy = ("2048", "8192"), ("16384", "65536")
    assert [task["size"] for task in tasks] == [light, light, heavy, light, *[sfn.GROUP_SIZE] * 3, light, heavy, light]
    assert json.loads(described["output"])["run"]["week_source"] == "execution input"
    assert notifications(moto_sfn["queue"]) == []


def test_independent_stages_run_at_the_same_time_on_moto(moto_sfn):
    values = moto_sfn["values"]
    target = sfn.EcsTarget(values["cluster_arn"], values["task_definition_family"], values["container_name"],
                           values["subnet_ids_json"], values["security_group_ids_json"], values["sns_topic_arn"])
    fixture = dg.Definitions(assets=fixture_assets(), executor=dg.in_process_executor)
    asl = sfn.state_machine(sfn.graph_stages(fixture, job_name=None), target, sfn.week_calendar(fixture, None))
    described, tasks = execute(json.dumps(asl), {"snapshot_week": "2026-11-09"}, values["cluster_arn"])
    assert described["status"] == "SUCCEEDED", described
    by_group = {task["group"].split(":")[1]: task for task in tasks}
    assert set(by_group) == {"ingest", "reference", "features"}
    ingest, reference, features = by_group["ingest"], by_group["reference"], by_group["features"]
    assert ingest["started"] < reference["stopped"] and reference["started"] < ingest["stopped"]  # overlapping
    assert features["started"] >= max(ingest["stopped"], reference["stopped"])


def test_failures_on_moto_publish_to_the_topic_and_end_in_the_fail_state(moto_sfn, exported):
    values = moto_sfn["values"]
    described, tasks = execute(sfn.render_template(exported[sfn.ASL_FILE], values), {"snapshot_week": 20261109},
                               values["cluster_arn"])
    assert (described["status"], described["error"]) == ("FAILED", "WeeklyRefreshFailed")
    assert tasks == []
    (message,) = notifications(moto_sfn["queue"])
    assert message["Subject"] == "engagement-dagster weekly refresh failed"
    assert "InvalidSnapshotWeek" in message["Message"]

    # RunTask itself refused (an unknown task definition): the stage's Catch notifies.
    missing = {**values, "task_definition_family": f"missing-{moto_sfn['suffix']}"}
    described, tasks = execute(sfn.render_template(exported[sfn.ASL_FILE], missing), {"snapshot_week": "2026-11-09"},
                               values["cluster_arn"])
    assert (described["status"], described["error"]) == ("FAILED", "WeeklyRefreshFailed")
    (message,) = notifications(moto_sfn["queue"])
    assert "Unable to describe task definition" in message["Message"] and "2026-11-09" in message["Message"]


def test_the_week_states_resolve_the_last_closed_week_on_moto(moto_sfn, defs):
    """The exported week states, fed chosen start times (moto's $$.Execution.StartTime is not the ISO
    string AWS gives, so the start time comes from the input here), against Dagster's answer."""
    calendar = sfn.week_calendar(defs)
    states = sfn.week_states(calendar, next_state="Done", failure_state="Failed", start_time_path="$.start")
    states["Done"] = {"Type": "Succeed"}
    states["Failed"] = {"Type": "Fail", "Error": "Unresolved"}
    definition = json.dumps({"StartAt": sfn.WEEK_GIVEN, "States": states})
    utc = dt.UTC
    instants = [dt.datetime(2026, 11, 16, 6, 0, tzinfo=utc), dt.datetime(2026, 11, 16, 5, 59, 59, 999000, tzinfo=utc),
                dt.datetime(2026, 11, 22, 23, 59, tzinfo=utc), dt.datetime(2027, 1, 1, 0, 0, tzinfo=utc),
                dt.datetime(2027, 1, 4, 5, 0, tzinfo=utc), dt.datetime(2027, 1, 4, 6, 0, tzinfo=utc),
                dt.datetime(2028, 2, 29, 7, 0, tzinfo=utc), dt.datetime(2028, 3, 6, 6, 30, tzinfo=utc),
                dt.datetime(2029, 1, 1, 5, 59, tzinfo=utc), dt.datetime(2029, 1, 1, 6, 0, tzinfo=utc),
                dt.datetime(2031, 12, 31, 23, 59, 59, tzinfo=utc),
                dt.datetime(calendar.last_year, 12, 31, 12, tzinfo=utc)]
    for when in instants:
        start = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")  # AWS's StartTime format
        described, _ = execute(definition, {"start": start}, moto_sfn["values"]["cluster_arn"], timeout=30)
        assert described["status"] == "SUCCEEDED", (start, described)
        run = json.loads(described["output"])["run"]
        assert run["snapshot_week"] == dagster_last_closed_week(when), start
        assert run["week_source"] == "the week that closed before the execution started"
        assert run["dagster_run_config"] == sfn.RUN_CONFIG_JSON
    outside = f"{calendar.last_year + 1}-01-05T06:00:00.000Z"
    described, _ = execute(definition, {"start": outside}, moto_sfn["values"]["cluster_arn"], timeout=30)
    assert (described["status"], described["error"]) == ("FAILED", "Unresolved")
