"""One run per week, one lake writer at a time (issue 13): the run queue and the lake's writer lease.

The queue: Dagster's own QueuedRunCoordinator daemon, configured by the instance files this project
ships (the local one `make ui` uses and deploy/dagster.yaml), dequeues runs of the real code location
(launches recorded by Dagster's test launcher instead of executed). The lease: two real processes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import boto3
import dagster as dg
import pytest
import yaml
from dagster._core.test_utils import MockedRunLauncher, create_test_daemon_workspace_context, instance_for_test
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

from engagement_dagster.cli import WeeklyRefresh, location_name
from engagement_dagster.core.storage import lease
from engagement_dagster.core.storage.lake import LocalStore, S3Store
from engagement_dagster.core.storage.lease import LakeBusy, current_holder, writer_lease
from engagement_dagster.ui import INSTANCE_YAML

PROJECT = Path(__file__).resolve().parents[1]
WEEKS = ("2026-11-09", "2026-11-16")


def coordinators() -> dict[str, dict]:
    deploy = yaml.safe_load((PROJECT / "deploy" / "dagster.yaml").read_text())
    return {"local": yaml.safe_load(INSTANCE_YAML)["run_coordinator"], "aws": deploy["run_coordinator"]}


def test_local_and_aws_queues_share_the_week_and_writer_limits():
    limits = {env: [limit for limit in c["config"]["tag_concurrency_limits"] if limit["key"] != "ecs/cpu"]
              for env, c in coordinators().items()}
    assert limits["local"] == limits["aws"]
    assert {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits["local"]
    assert {"key": "engagement/lake-writer", "limit": 1} in limits["local"]


@pytest.mark.parametrize("env", ["local", "aws"])
def test_the_queue_starts_one_run_per_week_and_one_writer_in_order(env, tmp_path):
    """Three runs queued together: week 1, week 1 again, week 2. Only the first starts; when it ends,
    the second (same week, queued earlier) starts before week 2."""
    coordinator = coordinators()[env]
    overrides = {"run_coordinator": coordinator,
                 "run_launcher": {"module": "dagster._core.test_utils", "class": "MockedRunLauncher"}}
    with instance_for_test(overrides=overrides) as instance, WeeklyRefresh(instance) as refresh:
        runs = [refresh.create_run(week, {}, {}) for week in (WEEKS[0], WEEKS[0], WEEKS[1])]
        for run in runs:
            instance.submit_run(run.run_id, refresh.workspace)
        assert {instance.get_run_by_id(r.run_id).status for r in runs} == {dg.DagsterRunStatus.QUEUED}

        from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
        target = InProcessWorkspaceLoadTarget(refresh.location.origin)
        with create_test_daemon_workspace_context(target, instance) as workspace:
            daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)

            def dequeue() -> list[dg.DagsterRunStatus]:
                list(daemon.run_iteration(workspace))
                return [instance.get_run_by_id(r.run_id).status for r in runs]

            assert dequeue() == [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.QUEUED,
                                 dg.DagsterRunStatus.QUEUED]
            assert dequeue()[1:] == [dg.DagsterRunStatus.QUEUED] * 2  # still waiting while the first runs
            instance.report_run_failed(instance.get_run_by_id(runs[0].run_id))
            assert dequeue() == [dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.STARTING,
                                 dg.DagsterRunStatus.QUEUED]
            instance.report_run_failed(instance.get_run_by_id(runs[1].run_id))
            assert dequeue()[2] == dg.DagsterRunStatus.STARTING
        launcher = instance.run_launcher
        assert isinstance(launcher, MockedRunLauncher)
        assert [run.run_id for run in launcher.queue()] == [run.run_id for run in runs]
        assert location_name()  # the runs came from the project's code location


HOLD = textwrap.dedent("""
    import sys, time
    from engagement_dagster.core.storage.lake import LocalStore
    from engagement_dagster.core.storage.lease import writer_lease
    with writer_lease(LocalStore(sys.argv[1]), "run abc of job weekly_refresh for week 2026-11-16"):
        print("held", flush=True)
        time.sleep(60)
""")


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=PROJECT)
    try:
        assert holder.stdout.readline().strip() == "held"
        store = LocalStore(tmp_path)
        assert current_holder(store)["pid"] == holder.pid
        with pytest.raises(LakeBusy) as refused, writer_lease(store, "erase"):
            pass
        message = str(refused.value)
        assert "run abc of job weekly_refresh for week 2026-11-16" in message and f"pid {holder.pid}" in message
        assert str(tmp_path) in message and "Wait for it to finish" in message
    finally:
        holder.kill()
        holder.wait()
    # SIGKILLed: the kernel dropped its lock; the next writer gets the lease at once.
    with writer_lease(LocalStore(tmp_path), "the next run") as held:
        assert held["pid"] == os.getpid()
        with writer_lease(LocalStore(tmp_path), "a nested writer of the same process"):
            pass  # re-entrant within the process
        assert current_holder(LocalStore(tmp_path))["what"] == "the next run"
    assert current_holder(LocalStore(tmp_path)) is None


def test_a_run_started_while_another_writes_fails_at_its_start_and_writes_nothing(tmp_path, monkeypatch):
    """A whole Dagster run refused by the lease: it fails before its first step, and the lake is untouched."""
    from engagement_dagster.definitions import defs
    from engagement_dagster.defs.resources import build_resources

    monkeypatch.setenv("ENGAGEMENT_LAKE_DIR", str(tmp_path))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=PROJECT)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = dg.materialize(defs.assets, partition_key=WEEKS[0], resources=build_resources("local"),
                                raise_on_error=False,
                                run_config={"ops": {"ingest__raw_customers": {"config": {"n_customers": 500}}}})
    finally:
        holder.kill()
        holder.wait()
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "RESOURCE_INIT_FAILURE")
    assert "is being written by run abc of job weekly_refresh" in str(failure.event_specific_data)
    assert not result.get_asset_materialization_events()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        ".locks/writer"]


def test_the_s3_lease_refuses_a_second_writer_renews_and_is_taken_over_once_expired(aws_endpoint, monkeypatch):
    """On a moto server over HTTP: conditional writes decide who holds the lease."""
    client = boto3.client("s3", endpoint_url=aws_endpoint)
    client.create_bucket(Bucket="lease-lake")
    store = S3Store("lease-lake", prefix="team", endpoint_url=aws_endpoint)
    key = "team/" + lease.LEASE_KEY + ".json"
    monkeypatch.setattr(lease, "HEARTBEAT_SECONDS", 0.2)
    with lease.writer_lease(store, "run one"):
        first = json.loads(client.get_object(Bucket="lease-lake", Key=key)["Body"].read())
        assert first["what"] == "run one"
        # Another process would hold no entry in this process's table of held leases: ask as one.
        with pytest.raises(LakeBusy, match="run one"):
            lease._S3Lease(store).acquire(lease.holder_record("run two"))
        time.sleep(0.6)  # the renewer has written a newer heartbeat meanwhile
        renewed = json.loads(client.get_object(Bucket="lease-lake", Key=key)["Body"].read())
        assert renewed["renewed"] >= first["renewed"] and renewed["what"] == "run one"
    assert "Contents" not in client.list_objects_v2(Bucket="lease-lake", Prefix=key)  # released: deleted

    # A holder that died without releasing: its lease stops being renewed and, once expired, is taken over.
    stale = {**lease.holder_record("a killed task"), "expires_seconds": 300,
             "renewed": (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=6)).isoformat()}
    client.put_object(Bucket="lease-lake", Key=key, Body=json.dumps(stale).encode())
    assert lease.current_holder(store) is None
    with lease.writer_lease(store, "the rerun") as held:
        assert held["what"] == "the rerun"
    fresh = {**stale, "renewed": dt.datetime.now(dt.UTC).isoformat()}
    client.put_object(Bucket="lease-lake", Key=key, Body=json.dumps(fresh).encode())
    with pytest.raises(LakeBusy, match="a killed task"):
        with lease.writer_lease(store, "too early"):
            pass
