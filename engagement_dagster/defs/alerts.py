"""Alerts and freshness: who hears of a failed run, and checks that fail when a week is missing.

- `notify_on_run_failure`: a run-failure sensor for every job of the code location; the message
  and the senders (log line, webhook, SNS: chosen by settings) are in `core.alerts`.
- `freshness` checks on `ingest/raw_customers` and `scoring/customer_predictions`: fail when the
  latest materialized week closed more than 8 days ago (the weekly run is due when a week closes,
  Monday 06:00 UTC, so this allows a day for a late or retried run). A week's age is counted from
  its close, not from when it was materialized: a backfill of old weeks does not make the asset fresh.
  Dagster's `build_time_partition_freshness_checks` asks for one particular partition instead, and
  fails a newer week than the one it expects; `build_last_update_freshness_checks` counts any
  materialization, old weeks included; neither is this rule.
- `freshness_checks_sensor`: Dagster's sensor for freshness checks, which runs them once they can
  have gone stale (`dagster/fresh_until_timestamp` on a passing result) and again after a failed
  one once the asset is materialized.

Register `SENSORS` and `ASSET_CHECKS` in the code location's Definitions, and leave
`FRESHNESS_CHECK_SELECTION` out of the jobs' selections.
"""


import datetime as dt
import warnings

import dagster as dg

from engagement_dagster.core import alerts
from engagement_dagster.defs.features.drift import feature_drift
from engagement_dagster.defs.partitions import weekly_partitions

RAW_CUSTOMERS = dg.AssetKey(["ingest", "raw_customers"])
CUSTOMER_PREDICTIONS = dg.AssetKey(["scoring", "customer_predictions"])
FRESHNESS_LIMIT = dt.timedelta(days=8)
FRESH_UNTIL = "dagster/fresh_until_timestamp"  # read by Dagster's freshness-check sensor


# ---------------------------------------------------------------- run failures


def _root_message(error) -> str:
    """The innermost cause of a step's error (the user's exception, not Dagster's wrapper)."""
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


def run_failure(context: dg.RunFailureSensorContext) -> alerts.RunFailure:
    run = context.dagster_run
    steps, errors = [], []
    for event in context.get_step_failure_events():
        steps.append(event.step_key)
        error = getattr(event.event_specific_data, "error", None)
        if error is not None:
            errors.append(f"{event.step_key}: {_root_message(error)}")
    # A run can fail outside any step (a run worker lost, a refused launch): the run's own message.
    message = "\n".join(errors) or context.failure_event.message or "the run failed"
    return alerts.RunFailure(
        run_id=run.run_id, job=run.job_name, snapshot_week=run.tags.get("dagster/partition"),
        failed_steps=tuple(steps), error=message, ui_url=alerts.ui_url())


@dg.run_failure_sensor(
    name="notify_on_run_failure",
    description="Tells of every failed run of this code location: a log line, and a POST to "
                f"${alerts.WEBHOOK_URL_ENV} and/or an SNS publish to ${alerts.SNS_TOPIC_ARN_ENV} when set.",
    # On by default: an alert that has to be switched on first is no alert. It launches no runs.
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def notify_on_run_failure(context: dg.RunFailureSensorContext):
    failure = run_failure(context)
    outcome = alerts.notify(failure, alerts.notifiers_from_env(log=context.log), log=context.log)
    context.log.info(f"alert for run {failure.run_id}: {outcome}")


# ---------------------------------------------------------------- freshness


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def freshness_result(asset_key: dg.AssetKey, weeks: set[str], now: dt.datetime,
                     limit: dt.timedelta = FRESHNESS_LIMIT) -> dg.AssetCheckResult:
    """Pass while the latest materialized week closed at most `limit` before `now`."""
    if not weeks:
        return dg.AssetCheckResult(asset_key=asset_key, passed=False, severity=dg.AssetCheckSeverity.ERROR,
                                   description="Never materialized: no week to be fresh.",
                                   metadata={"limit_days": limit.days})
    latest = max(weeks)  # ISO dates order as strings
    closed = weekly_partitions.time_window_for_partition_key(latest).end
    age = now - closed
    passed = age <= limit
    metadata = {"latest_week": latest, "week_closed_at": dg.MetadataValue.timestamp(closed),
                "age_days": round(age.total_seconds() / 86400, 2), "limit_days": limit.days}
    if passed:
        metadata[FRESH_UNTIL] = dg.MetadataValue.timestamp(closed + limit)
    verdict = "fresh" if passed else "stale"
    return dg.AssetCheckResult(
        asset_key=asset_key, passed=passed, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata,
        description=f"{verdict}: the latest week, {latest}, closed {age.total_seconds() / 86400:.1f} days ago "
                    f"(limit {limit.days} days).")


def _freshness_check(asset_key: dg.AssetKey) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset_key, name="freshness", blocking=False,
        description=f"Fails when the latest materialized week closed more than {FRESHNESS_LIMIT.days} days ago "
                    "(a week closes Monday 06:00 UTC, when its run is due).")
    def _check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        weeks = set(context.instance.get_materialized_partitions(asset_key))
        return freshness_result(asset_key, weeks, utc_now())

    return _check


FRESHNESS_CHECKS = [_freshness_check(RAW_CUSTOMERS), _freshness_check(CUSTOMER_PREDICTIONS)]

with warnings.catch_warnings():
    # Superseded by FreshnessPolicy (a state the freshness daemon keeps, not an asset check): this
    # sensor is still how checks like these get evaluated on time.
    warnings.simplefilter("ignore", dg.SupersessionWarning)
    freshness_checks_sensor = dg.build_sensor_for_freshness_checks(
        freshness_checks=FRESHNESS_CHECKS, name="freshness_checks_sensor",
        default_status=dg.DefaultSensorStatus.RUNNING)

SENSORS = [notify_on_run_failure, freshness_checks_sensor]
ASSET_CHECKS = [*FRESHNESS_CHECKS, feature_drift]
# For the jobs to leave out: a freshness check judges the time of evaluation, not the run's week, so
# inside a backfill of old weeks it would fail for no fault of that run. The sensor runs it instead
# (after each materialization of the asset, and when it can have gone stale).
FRESHNESS_CHECK_SELECTION = dg.AssetSelection.checks(*FRESHNESS_CHECKS)
