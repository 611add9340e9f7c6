"""Run-failure notifications: what failed, told to whoever the settings name. No Dagster here.

Where alerts go is read from the environment when a failure is reported (not at import):
- always a log line (ERROR), the default when nothing else is set;
- `ENGAGEMENT_ALERT_WEBHOOK_URL`: a JSON POST to any http(s) URL (a chat webhook, an on-call tool);
- `ENGAGEMENT_ALERT_SNS_TOPIC_ARN`: an SNS publish (on AWS; its region is the ARN's);
- `ENGAGEMENT_UI_URL` (optional): the Dagster UI's base URL, to turn the run's path into a link.

Every sender has a timeout and one retry, and `notify` never raises: an alert that cannot be
delivered is logged, it never breaks the sensor that reports the failure.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import boto3
from botocore.config import Config

WEBHOOK_URL_ENV = "ENGAGEMENT_ALERT_WEBHOOK_URL"
SNS_TOPIC_ARN_ENV = "ENGAGEMENT_ALERT_SNS_TOPIC_ARN"
UI_URL_ENV = "ENGAGEMENT_UI_URL"
TIMEOUT_SECONDS = 5.0
MAX_ERROR_CHARS = 2_000  # chat webhooks and SNS subjects/messages have limits; the run's page has the rest
SNS_SUBJECT_CHARS = 100

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunFailure:
    """A failed run, as an alert tells it."""

    run_id: str
    job: str
    snapshot_week: str | None  # the run's partition, when it has one
    failed_steps: tuple[str, ...]
    error: str
    ui_url: str | None = None  # the Dagster UI's base URL, if known
    event: str = field(default="run_failure", init=False)

    @property
    def run_path(self) -> str:
        return f"/runs/{self.run_id}"

    @property
    def run_url(self) -> str | None:
        return f"{self.ui_url.rstrip('/')}{self.run_path}" if self.ui_url else None

    def payload(self) -> dict:
        """The JSON body a webhook receives (and the SNS message)."""
        body = asdict(self)
        body.pop("ui_url")
        return {**body, "failed_steps": list(self.failed_steps), "error": _clip(self.error),
                "run_path": self.run_path, "run_url": self.run_url}

    def summary(self) -> str:
        """One line: the log line, and the text chat tools show."""
        week = f" (week {self.snapshot_week})" if self.snapshot_week else ""
        steps = ", ".join(self.failed_steps) or "no step (the run itself)"
        first_line = (self.error.strip().splitlines() or ["no error message"])[0]
        return (f"Run {self.run_id} of job {self.job}{week} failed in {steps}: {_clip(first_line, 300)} "
                f"→ {self.run_url or self.run_path}")

    def subject(self) -> str:
        """SNS subject: printable ASCII, one line, at most 100 characters."""
        week = f" {self.snapshot_week}" if self.snapshot_week else ""
        text = f"engagement-dagster: {self.job}{week} failed"
        return text.encode("ascii", "replace").decode()[:SNS_SUBJECT_CHARS]


def _clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Notifier(Protocol):
    name: str

    def send(self, failure: RunFailure) -> None:
        """Deliver or raise."""


class LogNotifier:
    name = "log"

    def __init__(self, log: logging.Logger | None = None):
        self.log = log or logger

    def send(self, failure: RunFailure) -> None:
        self.log.error(f"ALERT {failure.summary()}")


class WebhookNotifier:
    """POST the payload as JSON; retried once on a network error, a timeout, 429 or a 5xx."""

    name = "webhook"

    def __init__(self, url: str, timeout: float = TIMEOUT_SECONDS, retries: int = 1, pause: float = 0.5):
        self.url, self.timeout, self.retries, self.pause = url, timeout, retries, pause

    def send(self, failure: RunFailure) -> None:
        if not self.url.lower().startswith(("http://", "https://")):  # urllib would also open file:// URLs
            raise ValueError(f"{WEBHOOK_URL_ENV} must be an http(s) URL, got {self.url!r}")
        body = json.dumps(failure.payload()).encode()
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url, data=body, method="POST", headers={
                "Content-Type": "application/json", "User-Agent": "engagement-dagster-alerts"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read()
                return
            except urllib.error.HTTPError as exc:
                if (exc.code != 429 and exc.code < 500) or attempt == self.retries:
                    raise  # a 4xx will not heal by itself
            except (urllib.error.URLError, TimeoutError, ConnectionError):
                if attempt == self.retries:
                    raise
            time.sleep(self.pause)


class SnsNotifier:
    """Publish to an SNS topic: the summary as subject, the JSON payload as message. botocore's
    standard retry mode with two attempts is the one retry (transient errors and throttling only)."""

    name = "sns"

    def __init__(self, topic_arn: str, timeout: float = TIMEOUT_SECONDS, client=None):
        self.topic_arn, self.timeout, self._client = topic_arn, timeout, client

    def client(self):
        if self._client is None:
            parts = self.topic_arn.split(":")
            if len(parts) != 6 or parts[0] != "arn" or parts[2] != "sns":
                raise ValueError(f"{SNS_TOPIC_ARN_ENV} is not an SNS topic ARN: {self.topic_arn!r}")
            self._client = boto3.client("sns", region_name=parts[3], config=Config(
                connect_timeout=self.timeout, read_timeout=self.timeout,
                retries={"max_attempts": 2, "mode": "standard"}))
        return self._client

    def send(self, failure: RunFailure) -> None:
        self.client().publish(TopicArn=self.topic_arn, Subject=failure.subject(),
                              Message=json.dumps(failure.payload()),
                              MessageAttributes={"event": {"DataType": "String", "StringValue": failure.event}})


def notifiers_from_env(environ: Mapping[str, str] | None = None,
                       log: logging.Logger | None = None) -> list[Notifier]:
    """The log line, then every notifier the environment configures."""
    env = os.environ if environ is None else environ
    found: list[Notifier] = [LogNotifier(log)]
    if env.get(WEBHOOK_URL_ENV, "").strip():
        found.append(WebhookNotifier(env[WEBHOOK_URL_ENV].strip()))
    if env.get(SNS_TOPIC_ARN_ENV, "").strip():
        found.append(SnsNotifier(env[SNS_TOPIC_ARN_ENV].strip()))
    return found


def ui_url(environ: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    return env.get(UI_URL_ENV, "").strip() or None


def notify(failure: RunFailure, notifiers: Sequence[Notifier],
           log: logging.Logger | None = None) -> dict[str, str]:
    """Send through every notifier; returns notifier → "sent" or why not. Never raises."""
    log = log or logger
    outcome = {}
    for notifier in notifiers:
        try:
            notifier.send(failure)
            outcome[notifier.name] = "sent"
        except Exception as exc:  # an alert must never fail the sensor that reports a failure
            outcome[notifier.name] = f"failed: {type(exc).__name__}: {exc}"
            log.error(f"alert for run {failure.run_id} via {notifier.name} not delivered: {type(exc).__name__}: {exc}")
    return outcome
