"""The weekly refresh as an AWS Step Functions state machine, exported from the Dagster asset graph.

For teams that run production without a resident Dagster (webserver, daemon): the state machine runs
the same code location image as Fargate tasks, one `ecs:runTask.sync` task per stage, each running

    dagster asset materialize -m engagement_dagster.definitions --select <stage> --partition <week>
        --config-json '{"execution": {"config": {}}}'

(in-process, the code location's executor, like the project's jobs: the models stage must not hold
six copies of the table).

Stages. A stage is an asset group (ingest, features, models, scoring). A group is split into several
stages only where it depends on itself through another group (a → other group → a); the stages run
in layers by the longest dependency path, stages of one layer as the branches of a `Parallel` state,
so every stage starts after all stages of its upstream assets. `--select` is `group:<name>` for a
whole group, else the stage's asset keys; the export checks that each selection resolves, the way
the CLI resolves it, to exactly that stage's assets.

Sizes. A stage takes the `ecs/cpu` / `ecs/memory` run tags of the most specific job that selects all
of its assets (`training` for models, `scoring` for scoring: 16 vCPU / 64 GB); a job that selects the
whole export (`weekly_refresh`) sizes a one-task run of everything and says nothing about one stage.
Other stages (ingest streams files, features is dbt on Athena) get `LIGHT_SIZE`, 2 vCPU / 8 GB.

Failures. `Retry` with exponential backoff and jitter on errors of the ECS API, not of our code:
`ECS.AmazonECSException` (the SDK's class for throttling, "Rate exceeded", and tasks that could not
start for lack of Fargate capacity), `ECS.ServerException` (ECS side 5xx) and `AmazonECS.Unknown`
(RunTask answered 200 with a non-empty `failures` list). `States.TaskFailed` (the container stopped
with a non-zero exit: a Dagster step or a blocking check failed, or Fargate lost the task) is retried
once on light stages only, where a rerun costs minutes of 2 vCPU and failures are mostly S3 / Athena
/ image-pull hiccups. On heavy stages it is not retried: a failed 16 vCPU run (a blocking check, bad
data, out of memory at 64 GB) fails the same way again after up to ~35 minutes of the largest size,
so the operator hears at once and reruns with `{"snapshot_week": ...}`. `States.Timeout` is never
retried. Every stage `Catch`es `States.ALL` into an SNS publish, then a `Fail` state.

The snapshot week. `$.snapshot_week` from the execution input ("YYYY-MM-DD", the partition key), or
else the week that closed before the execution started, as Dagster's `get_last_partition_key` would
give it at that instant (the Monday-keyed week whose window [Monday 06:00, next Monday 06:00) UTC
ended last). ASL has no date functions, so the export embeds a calendar computed from the partitions
definition: per year, the day offsets of the months and the keys of the weeks; Pass states split
`$$.Execution.StartTime` with `States.StringSplit`, add with `States.MathAdd`, and divide by seven
with `States.ArrayPartition`/`States.ArrayLength`. The calendar covers `CALENDAR_YEARS` years from the
partitions' start year; an execution outside it without `snapshot_week` fails through the SNS
notification, saying so. `WeekCalendar.last_closed_week` is the same arithmetic in Python.

Deployment values are Terraform `templatefile()` placeholders (deploy/terraform/modules/orchestration
renders the file with these variables): `${cluster_arn}`, `${task_definition_family}`,
`${container_name}`, `${sns_topic_arn}` inside JSON strings, and `${subnet_ids_json}`,
`${security_group_ids_json}` as bare JSON lists, so the committed file is JSON only once rendered.
`render_template` renders it the way templatefile does (tests, manual use); `EcsTarget` with concrete
values exports plain JSON instead.

Plain functions over a list of `Stage`s build the ASL (`plan_stages`, `size_stages`, `state_machine`);
only `graph_stages`, `week_calendar` and the export functions read a `dg.Definitions`. The files in
deploy/step_functions/ are written by `export_sfn_main` (the `export-sfn` CLI subcommand) and never
edited by hand; tests/test_step_functions.py fails when they differ from a fresh export.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import re
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import dagster as dg

MODULE = "engagement_dagster.definitions"
JOB = "weekly_refresh"
SCHEDULED_NAME = "engagement-dagster-weekly-refresh"
LIGHT_SIZE = ("2048", "8192")
HEAVY_CPU = 8192  # CPU units from which a stage counts as heavy (8 and 16 vCPU Fargate sizes)
CALENDAR_YEARS = 25
# Per attempt. 60M customers are estimated (not measured) at under an hour on 16 vCPU (docs/deploy-aws.md).
HEAVY_TIMEOUT_SECONDS = 4 * 3600
LIGHT_TIMEOUT_SECONDS = 2 * 3600
EXECUTION_TIMEOUT_SECONDS = 24 * 3600
# The code location's executor is in-process (definitions.py): the config only says so explicitly.
RUN_CONFIG_JSON = json.dumps({"execution": {"config": {}}}, sort_keys=True)

ASL_FILE = "weekly_refresh.asl.json"
RULE_FILE = "weekly_rule.json"

# State names.
WEEK_GIVEN = "Snapshot week given"
USE_GIVEN_WEEK = "Use the given week"
INVALID_WEEK = "Invalid snapshot week"
READ_START = "Read the execution start"
PARSE_START = "Parse the execution start"
START_IN_CALENDAR = "Start within the calendar"
OUTSIDE_CALENDAR = "Start outside the calendar"
DAYS_SINCE_BASE = "Days since the calendar base"
BEFORE_CLOSE = "Before the weekly close hour"
PREVIOUS_DAY = "Count from the previous day"
LAST_CLOSED_WEEK = "Last closed week"
NOTIFY = "Notify failure"
FAILED = "Weekly refresh failed"
SUCCEEDED = "Weekly refresh succeeded"

ECS_RUN_TASK_SYNC = "arn:aws:states:::ecs:runTask.sync"
SNS_PUBLISH = "arn:aws:states:::sns:publish"


# ---------------------------------------------------------------------------------------------
# Where the tasks run
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EcsTarget:
    """Cluster (name or ARN), task definition (family or ARN), container, network, failure topic.

    `subnets` and `security_groups` are lists, or the name of a template variable holding a JSON
    list written as "${name_json}" (emitted unquoted by `template_text`).
    """

    cluster: str
    task_definition: str
    container: str
    subnets: Sequence[str] | str
    security_groups: Sequence[str] | str
    sns_topic_arn: str


# The variables of deploy/terraform/modules/orchestration (local.definition_vars).
TERRAFORM = EcsTarget(
    cluster="${cluster_arn}",
    task_definition="${task_definition_family}",
    container="${container_name}",
    subnets="${subnet_ids_json}",
    security_groups="${security_group_ids_json}",
    sns_topic_arn="${sns_topic_arn}",
)

_PLACEHOLDER = re.compile(r"(?<!\$)\$\{(\w+)\}")
_JSON_PLACEHOLDER_STRING = re.compile(r'"\$\{(\w+_json)\}"')


def template_text(document: Mapping[str, Any]) -> str:
    """Pretty JSON with sorted keys and a trailing newline; "${x_json}" strings become bare ${x_json}."""
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    return _JSON_PLACEHOLDER_STRING.sub(r"${\1}", text)


def render_template(text: str, values: Mapping[str, Any]) -> str:
    """What Terraform's templatefile() does with plain `${name}` references: `*_json` values are
    JSON-encoded, others inserted as text; `$${` is a literal `${`. Unknown names raise KeyError."""

    def value(match: re.Match) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"template variable {name!r} has no value")
        return json.dumps(values[name]) if name.endswith("_json") else str(values[name])

    return _PLACEHOLDER.sub(value, text).replace("$${", "${")


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AssetNode:
    key: str  # as `dagster asset materialize --select` reads it: "features/stg_customers"
    group: str
    deps: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stage:
    name: str
    group: str
    asset_keys: tuple[str, ...]
    upstream: tuple[str, ...] = ()  # stage names whose assets this stage's assets depend on
    selection: str = ""  # the --select argument
    cpu: str = LIGHT_SIZE[0]
    memory: str = LIGHT_SIZE[1]
    sized_by: str | None = None  # the job whose run tags gave the size

    @property
    def heavy(self) -> bool:
        return int(self.cpu) >= HEAVY_CPU


def _toposort(edges: Mapping[str, Collection[str]]) -> list[str]:
    """Nodes after all their upstream nodes (edges: node → its upstream nodes); ties by name."""
    remaining = {node: set(ups) for node, ups in edges.items()}
    order: list[str] = []
    while remaining:
        ready = sorted(node for node, ups in remaining.items() if not ups)
        if not ready:
            raise ValueError(f"dependency cycle among {sorted(remaining)}")
        for node in ready:
            order.append(node)
            del remaining[node]
        for ups in remaining.values():
            ups.difference_update(ready)
    return order


def _block_edges(block_of: Mapping[str, tuple[str, int]], deps: Mapping[str, Sequence[str]]):
    edges: dict[tuple[str, int], set[tuple[str, int]]] = {block: set() for block in block_of.values()}
    for key, ups in deps.items():
        for up in ups:
            if block_of[up] != block_of[key]:
                edges[block_of[key]].add(block_of[up])
    return edges


def _is_acyclic(edges: Mapping[Any, Collection[Any]]) -> bool:
    names = {node: repr(node) for node in edges}
    try:
        _toposort({names[node]: {names[up] for up in ups} for node, ups in edges.items()})
    except ValueError:
        return False
    return True


def plan_stages(nodes: Sequence[AssetNode], complete_groups: Collection[str] | None = None) -> list[Stage]:
    """Stages in a topological order, with light sizes.

    One stage per group, unless a group depends on itself through another group: then each asset
    starts in block (group, number of group changes on its longest upstream path), and the blocks of
    a group are merged in that order as long as the block graph stays acyclic. `complete_groups`: the
    groups all of whose assets are in `nodes` (selected as `group:<name>`); default: every group.
    """
    by_key = {node.key: node for node in nodes}
    deps = {node.key: tuple(dict.fromkeys(d for d in node.deps if d in by_key)) for node in nodes}
    order = _toposort(deps)
    depth: dict[str, int] = {}
    for key in order:
        group = by_key[key].group
        depth[key] = max((depth[up] + (by_key[up].group != group) for up in deps[key]), default=0)
    block_of = {key: (by_key[key].group, depth[key]) for key in order}
    for group in sorted({node.group for node in nodes}):
        blocks = sorted({block for block in block_of.values() if block[0] == group}, key=lambda block: block[1])
        current = blocks[0]
        for block in blocks[1:]:
            trial = {key: current if b == block else b for key, b in block_of.items()}
            if _is_acyclic(_block_edges(trial, deps)):
                block_of = trial
            else:
                current = block

    edges = _block_edges(block_of, deps)
    label = {block: f"{block[0]}\x00{block[1]:06d}" for block in edges}
    unlabel = {text: block for block, text in label.items()}
    block_order = [unlabel[text] for text in _toposort({label[b]: {label[u] for u in ups} for b, ups in edges.items()})]
    per_group: dict[str, list[tuple[str, int]]] = {}
    for block in block_order:
        per_group.setdefault(block[0], []).append(block)
    name_of = {}
    for group, blocks in per_group.items():
        for number, block in enumerate(blocks, start=1):
            name_of[block] = group if len(blocks) == 1 else f"{group}-{number}"

    complete = set(per_group) if complete_groups is None else set(complete_groups)
    stages = []
    for block in block_order:
        keys = tuple(key for key in order if block_of[key] == block)
        whole_group = len(per_group[block[0]]) == 1 and block[0] in complete
        stages.append(Stage(
            name=name_of[block], group=block[0], asset_keys=keys,
            upstream=tuple(sorted(name_of[up] for up in edges[block])),
            selection=f"group:{block[0]}" if whole_group else ",".join(keys),
        ))
    return stages


@dataclass(frozen=True)
class JobSize:
    job: str
    asset_keys: frozenset[str]
    cpu: str
    memory: str


def size_stages(stages: Sequence[Stage], jobs: Sequence[JobSize], export_keys: Collection[str],
                light: tuple[str, str] = LIGHT_SIZE) -> list[Stage]:
    """Each stage takes the size of the smallest sized job selecting all its assets, other than a
    job selecting the whole export (a one-task run of everything); otherwise `light`."""
    from engagement_dagster.core.deploy_sizes import validate_fargate_size

    everything = frozenset(export_keys)
    validate_fargate_size(*light)
    sized = []
    for stage in stages:
        covering = [job for job in jobs if set(stage.asset_keys) <= job.asset_keys and job.asset_keys != everything]
        if covering:
            job = min(covering, key=lambda job: (len(job.asset_keys), job.job))
            validate_fargate_size(job.cpu, job.memory)
            sized.append(dataclasses.replace(stage, cpu=job.cpu, memory=job.memory, sized_by=job.job))
        else:
            sized.append(dataclasses.replace(stage, cpu=light[0], memory=light[1], sized_by=None))
    return sized


def layers(stages: Sequence[Stage]) -> list[list[Stage]]:
    """Stages by their longest upstream path: a layer's stages are independent of each other."""
    by_name = {stage.name: stage for stage in stages}
    level: dict[str, int] = {}
    for name in _toposort({stage.name: set(stage.upstream) for stage in stages}):
        level[name] = max((level[up] + 1 for up in by_name[name].upstream), default=0)
    grouped: list[list[Stage]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for name in sorted(level):
        grouped[level[name]].append(by_name[name])
    return grouped


# ---------------------------------------------------------------------------------------------
# The snapshot week
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WeekCalendar:
    """Weekly partitions keyed by their first day (Python weekday `weekday`, Monday 0), closing at
    `hour`:00 UTC, for the years `first_year`..`last_year`.

    Per year Y the base day B is the partition weekday on or before January 1, minus a week. For a
    start time on day D at hour h: n = (D - B in days) - (1 if h < hour), and the week that closed
    last starts on B + 7 × (n // 7 - 1) = `week_keys(Y)[n // 7]`.
    """

    weekday: int
    hour: int
    first_year: int
    last_year: int

    def base(self, year: int) -> dt.date:
        january_first = dt.date(year, 1, 1)
        return january_first - dt.timedelta(days=(january_first.weekday() - self.weekday) % 7 + 7)

    def month_starts(self, year: int) -> list[int]:
        return [(dt.date(year, month, 1) - self.base(year)).days for month in range(1, 13)]

    def week_keys(self, year: int) -> list[str]:
        base = self.base(year)
        last = (dt.date(year, 12, 31) - base).days // 7
        return [(base + dt.timedelta(days=7 * (index - 1))).isoformat() for index in range(last + 1)]

    def last_closed_week(self, when: dt.datetime) -> str:
        """The arithmetic the state machine performs, in Python."""
        utc = when.astimezone(dt.UTC)
        if not self.first_year <= utc.year <= self.last_year:
            raise ValueError(f"{utc.isoformat()} is outside the calendar {self.first_year}-{self.last_year}")
        n = self.month_starts(utc.year)[utc.month - 1] + utc.day - 1 - (1 if utc.hour < self.hour else 0)
        return self.week_keys(utc.year)[n // 7]


def _int_of_two_digits(path: str, index: int) -> str:
    # "08" is not JSON: "1" + "08" = "108" is, minus 101 gives the zero-based index 7.
    return f"States.StringToJson(States.Format('1{{}}', States.ArrayGetItem({path}, {index})))"


def week_states(calendar: WeekCalendar, next_state: str, failure_state: str = NOTIFY,
                start_time_path: str = "$$.Execution.StartTime") -> dict[str, dict]:
    """The states that put {"snapshot_week", "week_source", "dagster_run_config"} at $.run, then go
    to `next_state`. `start_time_path` is where the ISO start time is read (tests feed their own)."""
    years = range(calendar.first_year, calendar.last_year + 1)
    run_fields = {"dagster_run_config": RUN_CONFIG_JSON}
    parts = "$.run.parts"
    return {
        WEEK_GIVEN: {
            "Type": "Choice",
            "Comment": ("A string snapshot_week in the input wins; a non-string one is an error; "
                        "else the last closed week."),
            "Choices": [
                {"And": [{"Variable": "$.snapshot_week", "IsPresent": True},
                         {"Variable": "$.snapshot_week", "IsString": True}], "Next": USE_GIVEN_WEEK},
                {"And": [{"Variable": "$.snapshot_week", "IsPresent": True},
                         {"Not": {"Variable": "$.snapshot_week", "IsNull": True}}], "Next": INVALID_WEEK},
            ],
            "Default": READ_START,
        },
        USE_GIVEN_WEEK: {
            "Type": "Pass",
            "Parameters": {"snapshot_week.$": "$.snapshot_week", "week_source": "execution input", **run_fields},
            "ResultPath": "$.run",
            "Next": next_state,
        },
        INVALID_WEEK: {
            "Type": "Pass",
            "Parameters": {
                "error": {"Error": "InvalidSnapshotWeek",
                          "Cause": "snapshot_week must be a string, the partition key: the week's Monday, YYYY-MM-DD"},
                "input.$": "$$.Execution.Input",
            },
            "ResultPath": "$",
            "Next": failure_state,
        },
        READ_START: {
            "Type": "Pass",
            "Comment": (f"Calendar {calendar.first_year}-{calendar.last_year}: per year, the days from the base "
                        "day to the first of each month, and the week keys by the number of weeks since the base "
                        "day. Generated from the partitions definition."),
            "Parameters": {
                "parts.$": f"States.StringSplit({start_time_path}, '-T:')",
                "month_starts": [",".join(str(days) for days in calendar.month_starts(year)) for year in years],
                "week_keys": [",".join(calendar.week_keys(year)) for year in years],
            },
            "ResultPath": "$.run",
            "Next": PARSE_START,
        },
        PARSE_START: {
            "Type": "Pass",
            "Parameters": {
                "year.$": f"States.StringToJson(States.ArrayGetItem({parts}, 0))",
                "year_index.$": f"States.MathAdd(States.StringToJson(States.ArrayGetItem({parts}, 0)), "
                                f"-{calendar.first_year})",
                "month_index.$": f"States.MathAdd({_int_of_two_digits(parts, 1)}, -101)",
                "day_index.$": f"States.MathAdd({_int_of_two_digits(parts, 2)}, -101)",
                "hour_plus_100.$": _int_of_two_digits(parts, 3),
                "month_starts.$": "$.run.month_starts",
                "week_keys.$": "$.run.week_keys",
            },
            "ResultPath": "$.run",
            "Next": START_IN_CALENDAR,
        },
        START_IN_CALENDAR: {
            "Type": "Choice",
            "Choices": [{"And": [{"Variable": "$.run.year", "NumericGreaterThanEquals": calendar.first_year},
                                 {"Variable": "$.run.year", "NumericLessThanEquals": calendar.last_year}],
                         "Next": DAYS_SINCE_BASE}],
            "Default": OUTSIDE_CALENDAR,
        },
        OUTSIDE_CALENDAR: {
            "Type": "Pass",
            "Parameters": {
                "error": {
                    "Error": "SnapshotWeekUnresolved",
                    "Cause.$": f"States.Format('The execution started in {{}}, outside the exported calendar "
                               f"{calendar.first_year}-{calendar.last_year}: pass snapshot_week in the input, or "
                               f"re-export with a later calendar.', $.run.year)",
                },
                "input.$": "$$.Execution.Input",
            },
            "ResultPath": "$",
            "Next": failure_state,
        },
        DAYS_SINCE_BASE: {
            "Type": "Pass",
            "Parameters": {
                "n.$": "States.MathAdd(States.StringToJson(States.ArrayGetItem(States.StringSplit("
                       "States.ArrayGetItem($.run.month_starts, $.run.year_index), ','), $.run.month_index)), "
                       "$.run.day_index)",
                "hour_plus_100.$": "$.run.hour_plus_100",
                "year_index.$": "$.run.year_index",
                "week_keys.$": "$.run.week_keys",
            },
            "ResultPath": "$.run",
            "Next": BEFORE_CLOSE,
        },
        BEFORE_CLOSE: {
            "Type": "Choice",
            "Comment": f"Before {calendar.hour:02d}:00 UTC the week that closes today is still open.",
            "Choices": [{"Variable": "$.run.hour_plus_100", "NumericLessThan": 100 + calendar.hour,
                         "Next": PREVIOUS_DAY}],
            "Default": LAST_CLOSED_WEEK,
        },
        PREVIOUS_DAY: {
            "Type": "Pass",
            "Parameters": {"n.$": "States.MathAdd($.run.n, -1)", "year_index.$": "$.run.year_index",
                           "week_keys.$": "$.run.week_keys"},
            "ResultPath": "$.run",
            "Next": LAST_CLOSED_WEEK,
        },
        LAST_CLOSED_WEEK: {
            "Type": "Pass",
            "Comment": "n // 7 = the number of 7-item chunks of [0..n], minus one (ASL has no division).",
            "Parameters": {
                "snapshot_week.$": "States.ArrayGetItem(States.StringSplit(States.ArrayGetItem($.run.week_keys, "
                                   "$.run.year_index), ','), States.MathAdd(States.ArrayLength(States.ArrayPartition("
                                   "States.ArrayRange(0, $.run.n, 1), 7)), -1))",
                "week_source": "the week that closed before the execution started",
                **run_fields,
            },
            "ResultPath": "$.run",
            "Next": next_state,
        },
    }


# ---------------------------------------------------------------------------------------------
# The state machine
# ---------------------------------------------------------------------------------------------

def _intrinsic_string(text: str) -> str:
    escaped = re.sub(r"([\\'{}])", r"\\\1", text)
    return f"'{escaped}'"


def stage_command(stage: Stage, module: str = MODULE) -> str:
    """The container command as a States.Array over $.run (week and run config)."""
    fixed = ["dagster", "asset", "materialize", "-m", module, "--select", stage.selection, "--partition"]
    return ("States.Array(" + ", ".join(_intrinsic_string(arg) for arg in fixed)
            + ", $.run.snapshot_week, '--config-json', $.run.dagster_run_config)")


def stage_retriers(stage: Stage) -> list[dict]:
    """See the module docstring: ECS API errors on every stage, task failures once on light stages."""
    retriers = [{
        # Throttling / no Fargate capacity at start, ECS 5xx, RunTask 200 with `failures`.
        "ErrorEquals": ["ECS.AmazonECSException", "ECS.ServerException", "AmazonECS.Unknown"],
        "IntervalSeconds": 30, "BackoffRate": 2.0, "MaxAttempts": 4, "MaxDelaySeconds": 300,
        "JitterStrategy": "FULL",
    }]
    if not stage.heavy:
        # A light rerun costs minutes of 2 vCPU; its failures are mostly S3/Athena/image-pull hiccups.
        retriers.append({"ErrorEquals": ["States.TaskFailed"], "IntervalSeconds": 60, "BackoffRate": 2.0,
                         "MaxAttempts": 1})
    return retriers


def stage_state_name(stage: Stage) -> str:
    return f"Materialize {stage.name}"


def layer_state_name(layer: Sequence[Stage]) -> str:
    if len(layer) == 1:
        return stage_state_name(layer[0])
    names = [stage.name for stage in layer]
    name = f"Materialize {', '.join(names[:-1])} and {names[-1]}"
    return name if len(name) <= 80 else f"Materialize {len(names)} stages in parallel from {names[0]}"[:80]


def task_state(stage: Stage, target: EcsTarget, module: str = MODULE) -> dict:
    return {
        "Type": "Task",
        "Comment": (f"{stage.name}: {', '.join(stage.asset_keys)} | {stage.cpu} CPU units, {stage.memory} MiB"
                    + (f" (run tags of job {stage.sized_by})" if stage.sized_by else "")),
        "Resource": ECS_RUN_TASK_SYNC,
        "Parameters": {
            "Cluster": target.cluster,
            "TaskDefinition": target.task_definition,
            "LaunchType": "FARGATE",
            "Group": f"weekly-refresh:{stage.name}",
            "PropagateTags": "TASK_DEFINITION",
            "NetworkConfiguration": {"AwsvpcConfiguration": {
                "Subnets": target.subnets if isinstance(target.subnets, str) else list(target.subnets),
                "SecurityGroups": (target.security_groups if isinstance(target.security_groups, str)
                                   else list(target.security_groups)),
                "AssignPublicIp": "DISABLED",
            }},
            "Overrides": {
                "Cpu": stage.cpu,
                "Memory": stage.memory,
                "ContainerOverrides": [{"Name": target.container, "Command.$": stage_command(stage, module)}],
            },
        },
        # The task description is in the execution history; the state keeps $.run for the next stage.
        "ResultPath": None,
        "TimeoutSeconds": HEAVY_TIMEOUT_SECONDS if stage.heavy else LIGHT_TIMEOUT_SECONDS,
        "Retry": stage_retriers(stage),
    }


def _catch() -> list[dict]:
    return [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": NOTIFY}]


def state_machine(stages: Sequence[Stage], target: EcsTarget, calendar: WeekCalendar, *, module: str = MODULE,
                  start_time_path: str = "$$.Execution.StartTime", comment: str | None = None) -> dict:
    """Amazon States Language for `stages` (topological order, sizes set)."""
    stage_layers = layers(stages)
    if not stage_layers:
        raise ValueError("nothing to export: no stages")
    names = [layer_state_name(layer) for layer in stage_layers]
    states = week_states(calendar, next_state=names[0], start_time_path=start_time_path)
    for index, layer in enumerate(stage_layers):
        following = names[index + 1] if index + 1 < len(names) else SUCCEEDED
        if len(layer) == 1:
            state = {**task_state(layer[0], target, module), "Catch": _catch(), "Next": following}
        else:
            state = {
                "Type": "Parallel",
                "Comment": "Independent stages; a failing branch fails the whole state (the others are stopped).",
                "Branches": [{"StartAt": stage_state_name(stage),
                              "States": {stage_state_name(stage): {**task_state(stage, target, module), "End": True}}}
                             for stage in layer],
                "ResultPath": None,
                "Catch": _catch(),
                "Next": following,
            }
        states[names[index]] = state
    states[NOTIFY] = {
        "Type": "Task",
        "Resource": SNS_PUBLISH,
        "Parameters": {
            "TopicArn": target.sns_topic_arn,
            "Subject": "engagement-dagster weekly refresh failed",
            "Message.$": "States.Format('The engagement-dagster weekly refresh failed. Execution: {}. "
                         "Error, week and input: {}', $$.Execution.Id, States.JsonToString($))",
        },
        "ResultPath": "$.notification",
        "Retry": [{"ErrorEquals": ["States.ALL"], "IntervalSeconds": 10, "BackoffRate": 2.0, "MaxAttempts": 3}],
        "Next": FAILED,
    }
    states[FAILED] = {"Type": "Fail", "Error": "WeeklyRefreshFailed",
                      "Cause": "A stage failed or the snapshot week could not be resolved: see the SNS message."}
    states[SUCCEEDED] = {"Type": "Succeed"}
    return {
        "Comment": comment or ("Weekly refresh, " + " -> ".join(
            "(" + " | ".join(stage.name for stage in layer) + ")" if len(layer) > 1 else layer[0].name
            for layer in stage_layers) + ". Generated by engagement_dagster.export.step_functions: do not edit."),
        "StartAt": WEEK_GIVEN,
        "States": states,
        "TimeoutSeconds": EXECUTION_TIMEOUT_SECONDS,
    }


# ---------------------------------------------------------------------------------------------
# The schedule
# ---------------------------------------------------------------------------------------------

_WEEKDAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")


def eventbridge_cron(cron: str, timezone: str = "UTC") -> str:
    """A 5-field cron (Dagster's) as an EventBridge schedule expression; EventBridge rules run in UTC."""
    if timezone not in ("UTC", "Etc/UTC"):
        raise ValueError(f"EventBridge rules run in UTC; the schedule runs in {timezone}")
    fields = cron.split()
    if len(fields) != 5 or not all(re.fullmatch(r"[0-9*,/-]+", field) for field in fields):
        raise ValueError(f"not a plain 5-field cron expression: {cron!r}")
    minute, hour, day, month, weekday = fields
    if weekday == "*":
        weekday = "?"
    elif day != "*":
        raise ValueError(f"{cron!r} sets both day of month and day of week; EventBridge takes one")
    else:
        day = "?"
        weekday = re.sub(r"\d+", lambda match: _WEEKDAYS[int(match.group()) % 7], weekday)
    return f"cron({minute} {hour} {day} {month} {weekday} *)"


def weekly_rule(schedule_expression: str, *, name: str = f"{SCHEDULED_NAME}-schedule",
                state_machine_arn: str = "${state_machine_arn}", role_arn: str = "${events_role_arn}") -> dict:
    """EventBridge PutRule and PutTargets requests; the input is {}, so the machine resolves the week."""
    return {
        "PutRule": {"Name": name, "Description": "Starts the engagement-dagster weekly refresh state machine",
                    "ScheduleExpression": schedule_expression, "State": "ENABLED"},
        "PutTargets": {"Rule": name, "Targets": [{"Id": "weekly-refresh", "Arn": state_machine_arn,
                                                  "RoleArn": role_arn, "Input": "{}"}]},
    }


# ---------------------------------------------------------------------------------------------
# From the Dagster definitions
# ---------------------------------------------------------------------------------------------

def _asset_job(defs: dg.Definitions, name: str):
    for job in defs.jobs or ():
        if job.name == name:
            if getattr(job, "selection", None) is None:
                raise ValueError(f"job {name!r} is not an asset job")
            return job
    raise ValueError(f"no job {name!r} in the definitions")


def _export_keys(defs: dg.Definitions, job_name: str | None):
    graph = defs.resolve_asset_graph()
    keys = graph.get_all_asset_keys() if job_name is None else _asset_job(defs, job_name).selection.resolve(graph)
    return graph, sorted((key for key in keys if graph.get(key).is_materializable), key=lambda key: key.path)


def graph_stages(defs: dg.Definitions, job_name: str | None = JOB, light: tuple[str, str] = LIGHT_SIZE) -> list[Stage]:
    """The stages of `job_name`'s assets (every materializable asset when None), sized from the jobs'
    ecs/cpu and ecs/memory run tags; each --select checked against the CLI's resolution."""
    import dagster as dg

    graph, keys = _export_keys(defs, job_name)
    if not keys:
        raise ValueError("nothing to export: no materializable assets")
    selected = set(keys)
    nodes = [AssetNode(key.to_user_string(), graph.get(key).group_name or "default",
                       tuple(sorted(parent.to_user_string() for parent in graph.get(key).parent_keys)))
             for key in keys]
    groups = {node.group for node in nodes}
    everything = [key for key in graph.get_all_asset_keys() if graph.get(key).is_materializable]
    complete = {group for group in groups
                if all(key in selected for key in everything if (graph.get(key).group_name or "default") == group)}
    jobs = []
    for job in defs.jobs or ():
        tags = getattr(job, "tags", None) or {}
        if getattr(job, "selection", None) is not None and "ecs/cpu" in tags and "ecs/memory" in tags:
            job_keys = frozenset(key.to_user_string() for key in job.selection.resolve(graph))
            jobs.append(JobSize(job.name, job_keys, str(tags["ecs/cpu"]), str(tags["ecs/memory"])))
    stages = size_stages(plan_stages(nodes, complete), jobs, [node.key for node in nodes], light)
    by_string = {key.to_user_string(): key for key in keys}
    for stage in stages:
        resolved = dg.AssetSelection.from_coercible(stage.selection.split(",")).resolve(graph)
        if resolved != {by_string[key] for key in stage.asset_keys}:
            raise ValueError(f"--select {stage.selection!r} does not resolve to exactly the assets of stage "
                             f"{stage.name}: {sorted(k.to_user_string() for k in resolved)}")
    return stages


def week_calendar(defs: dg.Definitions, job_name: str | None = JOB, years: int = CALENDAR_YEARS) -> WeekCalendar:
    """The calendar of the weekly partitions shared by the exported assets (UTC, on the hour)."""
    graph, keys = _export_keys(defs, job_name)
    partitions = {graph.get(key).partitions_def for key in keys}
    if len(partitions) != 1 or None in partitions:
        raise ValueError("every exported asset must share one weekly partitions definition "
                         "(`dagster asset materialize --partition` runs one key)")
    (definition,) = partitions
    cron = getattr(definition, "cron_schedule", "") or ""
    fields = cron.split()
    if (getattr(definition, "timezone", None) not in ("UTC", "Etc/UTC") or len(fields) != 5
            or fields[0] != "0" or not fields[1].isdigit() or fields[2:4] != ["*", "*"] or not fields[4].isdigit()):
        raise ValueError(f"the export handles weekly partitions on the hour in UTC, not {cron!r} "
                         f"({getattr(definition, 'timezone', None)})")
    first = definition.start.year
    return WeekCalendar(weekday=(int(fields[4]) - 1) % 7, hour=int(fields[1]), first_year=first,
                        last_year=first + years - 1)


def export_state_machine(defs: dg.Definitions, target: EcsTarget = TERRAFORM, job_name: str | None = JOB,
                         module: str = MODULE) -> dict:
    return state_machine(graph_stages(defs, job_name), target, week_calendar(defs, job_name), module=module)


def export_rule(defs: dg.Definitions, job_name: str = JOB) -> dict:
    """The EventBridge rule of the schedule of `job_name`."""
    schedules = [schedule for schedule in defs.schedules or () if getattr(schedule, "job_name", None) == job_name]
    if len(schedules) != 1:
        raise ValueError(f"expected one schedule for job {job_name!r}, found {len(schedules)}")
    schedule = defs.resolve_schedule_def(schedules[0].name)
    return weekly_rule(eventbridge_cron(schedule.cron_schedule, schedule.execution_timezone or "UTC"))


def export_files(defs: dg.Definitions) -> dict[str, str]:
    """File name → text of what deploy/step_functions/ must hold."""
    return {ASL_FILE: template_text(export_state_machine(defs)), RULE_FILE: template_text(export_rule(defs))}


def default_out_dir() -> Path:
    from engagement_dagster.core.settings import PROJECT_ROOT

    return Path(PROJECT_ROOT) / "deploy" / "step_functions"


def export_sfn_main(argv: Sequence[str] | None = None) -> int:
    """`engagement-dagster export-sfn`: write deploy/step_functions/ from the definitions."""
    parser = argparse.ArgumentParser(
        prog="engagement-dagster export-sfn",
        description="Export the weekly refresh as a Step Functions state machine and its EventBridge rule.")
    parser.add_argument("--out-dir", type=Path, default=None, help="default: deploy/step_functions")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when the files differ from a fresh export")
    args = parser.parse_args(argv)
    out_dir = args.out_dir or default_out_dir()

    from engagement_dagster.definitions import defs  # dagster-dbt and the models take seconds to import

    files = export_files(defs)
    stages = graph_stages(defs)
    stale = []
    for name, text in files.items():
        path = out_dir / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path} ({len(text.encode())} bytes)")
    if args.check:
        for path in stale:
            print(f"stale: {path} (run `engagement-dagster export-sfn`)")
        return 1 if stale else 0
    plan = " -> ".join(" | ".join(f"{stage.name} [{stage.selection}, {stage.cpu}/{stage.memory}]" for stage in layer)
                       for layer in layers(stages))
    print(f"  stages: {plan}")
    print(f"  schedule: {json.loads(files[RULE_FILE])['PutRule']['ScheduleExpression']}")
    return 0


if __name__ == "__main__":
    sys.exit(export_sfn_main())
