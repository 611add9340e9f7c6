"""Alerts and freshness: a failed run in a temporary instance reaches the run-failure sensor, which
tells a real HTTP receiver on 127.0.0.1, an SNS topic on a moto server, or the log; senders time out,
retry once and never raise. The freshness checks pass on a week that closed a day ago and fail on one
that closed nine days ago."""

import datetime as dt
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import dagster as dg
import pytest
from dagster._core.test_utils import freeze_time  # Dagster's own clock, which its freshness sensor reads

from engagement_dagster.core import alerts
from engagement_dagster.defs import alerts as alert_defs
from engagement_dagster.defs.ingest.assets import raw_customers
from engagement_dagster.defs.partitions import weekly_partitions
from engagement_dagster.defs.resources import build_resources
from engagement_dagster.defs.scoring.assets import customer_predictions

WEEK = "2026-11-16"  # closes Monday 2026-11-23 06:00 UTC
CLOSED = dt.datetime(2026, 11, 23, 6, tzinfo=dt.UTC)
FAILURE = alerts.RunFailure(run_id="r-1", job="weekly_refresh", snapshot_week=WEEK, failed_steps=("dbt_features",),
                            error="dbt_features: RuntimeError: dbt build failed\n  at line 3")


# ------------------------------------------------------------------ a failing run and the sensor


@dg.asset(partitions_def=weekly_partitions)
def flaky_asset():
    raise ValueError("the lake is on fire")


@dg.asset(partitions_def=weekly_partitions)
def steady_asset():
    return 1


small_defs = dg.Definitions(
    assets=[flaky_asset, steady_asset],
    jobs=[dg.define_asset_job("small_job", selection=[flaky_asset]),
          dg.define_asset_job("steady_job", selection=[steady_asset])],
    sensors=alert_defs.SENSORS,
)


def failed_runs_seen_by_the_sensor(instance, job: str = "small_job") -> tuple[dg.DagsterRun, object]:
    """Run `job` for WEEK in the instance and evaluate the sensor the way the daemon does: a first
    tick sets the cursor, the run happens, the next tick finds its failure in the event log."""
    sensor = small_defs.resolve_sensor_def("notify_on_run_failure")
    repo = small_defs.get_repository_def()
    first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, repository_def=repo))
    result = small_defs.resolve_job_def(job).execute_in_process(
        instance=instance, partition_key=WEEK, raise_on_error=False)
    tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, repository_def=repo, cursor=first.cursor))
    return result.dagster_run, tick


class Receiver:
    """A real HTTP server on 127.0.0.1 that records each POST and answers with the next status."""

    def __init__(self, statuses=(200,), delay: float = 0.0):
        self.requests: list[dict] = []
        self.statuses = list(statuses)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"path": self.path, "content_type": self.headers["Content-Type"],
                                          "json": json.loads(body)})
                time.sleep(delay)
                status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/engagement"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def no_alert_settings(monkeypatch):
    for name in (alerts.WEBHOOK_URL_ENV, alerts.SNS_TOPIC_ARN_ENV, alerts.UI_URL_ENV):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_failed_run_is_posted_to_the_webhook(no_alert_settings):
    with Receiver() as receiver, dg.instance_for_test() as instance:
        no_alert_settings.setenv(alerts.WEBHOOK_URL_ENV, receiver.url)
        no_alert_settings.setenv(alerts.UI_URL_ENV, "http://dagster.internal:3000/")
        run, tick = failed_runs_seen_by_the_sensor(instance)
        assert tick.cursor  # the sensor moved past the failure
    (request,) = receiver.requests
    assert request["path"] == "/hooks/engagement" and request["content_type"] == "application/json"
    assert request["json"] == {
        "event": "run_failure", "run_id": run.run_id, "job": "small_job", "snapshot_week": WEEK,
        "failed_steps": ["flaky_asset"], "error": "flaky_asset: ValueError: the lake is on fire",
        "run_path": f"/runs/{run.run_id}", "run_url": f"http://dagster.internal:3000/runs/{run.run_id}",
    }


def test_a_successful_run_sends_nothing(no_alert_settings):
    with Receiver() as receiver, dg.instance_for_test() as instance:
        no_alert_settings.setenv(alerts.WEBHOOK_URL_ENV, receiver.url)
        run, _ = failed_runs_seen_by_the_sensor(instance, job="steady_job")
        assert run.is_success
    assert receiver.requests == []


def test_a_failed_run_is_published_to_sns(aws_endpoint, no_alert_settings):
    sns, sqs = boto3.client("sns"), boto3.client("sqs")
    topic = sns.create_topic(Name="engagement-alerts")["TopicArn"]
    queue = sqs.create_queue(QueueName="engagement-alerts-inbox")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    no_alert_settings.setenv(alerts.SNS_TOPIC_ARN_ENV, topic)
    with dg.instance_for_test() as instance:
        run, _ = failed_runs_seen_by_the_sensor(instance)
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=2).get("Messages", [])
    (message,) = messages
    envelope = json.loads(message["Body"])  # SNS's notification, as SQS receives it
    assert envelope["TopicArn"] == topic
    assert envelope["Subject"] == f"engagement-dagster: small_job {WEEK} failed"
    payload = json.loads(envelope["Message"])
    assert payload["run_id"] == run.run_id and payload["failed_steps"] == ["flaky_asset"]
    assert payload["error"] == "flaky_asset: ValueError: the lake is on fire" and payload["run_url"] is None
    assert envelope["MessageAttributes"]["event"]["Value"] == "run_failure"


def test_the_default_is_a_log_line(no_alert_settings, capfd):
    with dg.instance_for_test() as instance:
        run, _ = failed_runs_seen_by_the_sensor(instance)
    # The sensor's context.log: on the console here, in the tick's log in the UI under the daemon.
    errors = [line for line in capfd.readouterr().err.splitlines() if " - ERROR - " in line and "ALERT" in line]
    assert len(errors) == 1
    assert errors[0].endswith(f"ALERT Run {run.run_id} of job small_job (week {WEEK}) failed in flaky_asset: "
                              f"flaky_asset: ValueError: the lake is on fire → /runs/{run.run_id}")


def test_the_library_logs_through_python_logging_by_default(caplog):
    with caplog.at_level(logging.ERROR, logger="engagement_dagster.core.alerts"):
        assert alerts.notify(FAILURE, alerts.notifiers_from_env({})) == {"log": "sent"}
    (record,) = caplog.records
    assert record.getMessage() == ("ALERT Run r-1 of job weekly_refresh (week 2026-11-16) failed in dbt_features: "
                                   "dbt_features: RuntimeError: dbt build failed → /runs/r-1")


def test_an_unreachable_webhook_is_logged_and_never_raises(no_alert_settings, capfd):
    with Receiver() as gone:
        url = gone.url
    no_alert_settings.setenv(alerts.WEBHOOK_URL_ENV, url)  # nothing listens there any more
    with dg.instance_for_test() as instance:
        run, tick = failed_runs_seen_by_the_sensor(instance)
    text = capfd.readouterr().err
    assert f"alert for run {run.run_id} via webhook not delivered: URLError" in text
    assert f"ALERT Run {run.run_id}" in text  # the log line still went out
    assert tick.cursor


# ------------------------------------------------------------------ the senders alone


def test_the_webhook_retries_once_on_a_server_error():
    with Receiver(statuses=(503, 200)) as receiver:
        assert alerts.notify(FAILURE, [alerts.WebhookNotifier(receiver.url, pause=0)]) == {"webhook": "sent"}
    assert len(receiver.requests) == 2


def test_the_webhook_gives_up_after_one_retry_or_on_a_client_error():
    with Receiver(statuses=(500,)) as receiver:
        outcome = alerts.notify(FAILURE, [alerts.WebhookNotifier(receiver.url, pause=0)])
    assert outcome["webhook"].startswith("failed: HTTPError") and len(receiver.requests) == 2
    with Receiver(statuses=(404,)) as receiver:
        outcome = alerts.notify(FAILURE, [alerts.WebhookNotifier(receiver.url, pause=0)])
    assert outcome["webhook"].startswith("failed: HTTPError") and len(receiver.requests) == 1  # a 4xx won't heal


def test_a_slow_webhook_times_out():
    with Receiver(delay=2.0) as receiver:
        started = time.monotonic()
        outcome = alerts.notify(FAILURE, [alerts.WebhookNotifier(receiver.url, timeout=0.3, pause=0)])
        elapsed = time.monotonic() - started
    assert outcome["webhook"].startswith("failed:") and len(receiver.requests) == 2
    assert elapsed < 1.5  # two attempts of 0.3 s, not the receiver's 2 s each


def test_only_http_urls_and_sns_arns_are_accepted():
    outcome = alerts.notify(FAILURE, [alerts.WebhookNotifier("file:///etc/passwd"), alerts.SnsNotifier("not-an-arn")])
    assert outcome["webhook"].startswith("failed: ValueError") and outcome["sns"].startswith("failed: ValueError")


def test_the_settings_choose_the_notifiers():
    assert [n.name for n in alerts.notifiers_from_env({})] == ["log"]
    chosen = alerts.notifiers_from_env({alerts.WEBHOOK_URL_ENV: "https://hooks.example/x",
                                        alerts.SNS_TOPIC_ARN_ENV: "arn:aws:sns:eu-west-1:123456789012:alerts"})
    assert [n.name for n in chosen] == ["log", "webhook", "sns"]


def test_the_sns_subject_is_short_ascii_and_the_error_is_clipped():
    long = alerts.RunFailure(run_id="r", job="j" * 200, snapshot_week=None, failed_steps=(), error="é" * 5000)
    assert len(long.subject()) == 100 and long.subject().isascii()
    assert len(long.payload()["error"]) == alerts.MAX_ERROR_CHARS
    assert "failed in no step (the run itself)" in long.summary()


# ------------------------------------------------------------------ freshness


@pytest.fixture
def freshness(lake_dir):
    """The two real assets and their freshness checks in a temporary instance."""
    defs = dg.Definitions(
        assets=[raw_customers, customer_predictions], asset_checks=alert_defs.FRESHNESS_CHECKS,
        sensors=[alert_defs.freshness_checks_sensor], resources=build_resources("local"),
        jobs=[dg.define_asset_job("freshness", selection=dg.AssetSelection.checks(*alert_defs.FRESHNESS_CHECKS))])
    with dg.instance_for_test() as instance:
        yield defs, instance


def evaluate(defs, instance, monkeypatch, now: dt.datetime) -> dict[str, dg.AssetCheckEvaluation]:
    monkeypatch.setattr(alert_defs, "utc_now", lambda: now)
    result = defs.resolve_job_def("freshness").execute_in_process(instance=instance)
    return {e.asset_key.to_user_string(): e for e in result.get_asset_check_evaluations()}


def materialize_week(instance, week: str) -> None:
    for key in (alert_defs.RAW_CUSTOMERS, alert_defs.CUSTOMER_PREDICTIONS):
        instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=week))


def test_fresh_a_day_after_the_week_closed_and_stale_after_nine(freshness, monkeypatch):
    defs, instance = freshness
    never = evaluate(defs, instance, monkeypatch, CLOSED)
    assert {k: v.passed for k, v in never.items()} == {"ingest/raw_customers": False,
                                                       "scoring/customer_predictions": False}
    assert never["ingest/raw_customers"].description == "Never materialized: no week to be fresh."

    materialize_week(instance, WEEK)
    fresh = evaluate(defs, instance, monkeypatch, CLOSED + dt.timedelta(days=1))
    assert all(e.passed for e in fresh.values()) and len(fresh) == 2
    check = fresh["scoring/customer_predictions"]
    assert check.metadata["latest_week"].value == WEEK and check.metadata["age_days"].value == 1.0
    assert check.metadata[alert_defs.FRESH_UNTIL].value == (CLOSED + dt.timedelta(days=8)).timestamp()
    assert check.severity == dg.AssetCheckSeverity.ERROR

    assert all(e.passed for e in evaluate(defs, instance, monkeypatch, CLOSED + dt.timedelta(days=8)).values())
    stale = evaluate(defs, instance, monkeypatch, CLOSED + dt.timedelta(days=9))
    assert not any(e.passed for e in stale.values())
    assert stale["ingest/raw_customers"].description == (
        f"stale: the latest week, {WEEK}, closed 9.0 days ago (limit 8 days).")


def test_a_backfilled_old_week_does_not_make_an_asset_fresh(freshness, monkeypatch):
    defs, instance = freshness
    materialize_week(instance, WEEK)
    materialize_week(instance, "2026-11-02")  # materialized last, but an older week
    stale = evaluate(defs, instance, monkeypatch, CLOSED + dt.timedelta(days=9))
    assert not any(e.passed for e in stale.values())
    assert stale["ingest/raw_customers"].metadata["latest_week"].value == WEEK


def test_the_freshness_sensor_runs_the_checks_when_they_can_have_gone_stale(freshness, monkeypatch):
    defs, instance = freshness
    sensor = defs.resolve_sensor_def("freshness_checks_sensor")
    expected = {check.key for checks in alert_defs.FRESHNESS_CHECKS for check in checks.check_specs}

    def requested(now: dt.datetime) -> set:
        with freeze_time(now):
            tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance,
                                                                repository_def=defs.get_repository_def()))
        return {key for request in tick.run_requests for key in request.asset_check_keys or ()}

    assert requested(CLOSED) == expected  # never evaluated
    materialize_week(instance, WEEK)
    evaluate(defs, instance, monkeypatch, CLOSED + dt.timedelta(days=1))  # fresh until CLOSED + 8 days
    assert requested(CLOSED + dt.timedelta(days=7)) == set()
    assert requested(CLOSED + dt.timedelta(days=8, hours=1)) == expected


def test_the_code_location_loads_with_the_alerts(lake_dir):
    """What definitions.py gains (SENSORS, ASSET_CHECKS; the jobs without the freshness checks) loads
    beside everything already there: no check or sensor name clashes."""
    from engagement_dagster.definitions import defs

    jobs = [dg.define_asset_job(job.name, selection=job.selection - alert_defs.FRESHNESS_CHECK_SELECTION)
            for job in defs.jobs]
    merged = dg.Definitions(assets=defs.assets, asset_checks=[*(defs.asset_checks or []), *alert_defs.ASSET_CHECKS],
                            sensors=alert_defs.SENSORS, jobs=jobs, resources=defs.resources)
    dg.Definitions.validate_loadable(merged)
    weekly = merged.resolve_job_def("weekly_refresh")
    checks = {name for name in weekly.graph.node_names() if "freshness" in name or "feature_drift" in name}
    assert checks == {"features__customer_model_input_feature_drift"}
    sensors = {s.name for s in merged.get_repository_def().sensor_defs}
    assert sensors >= {"notify_on_run_failure", "freshness_checks_sensor"}
