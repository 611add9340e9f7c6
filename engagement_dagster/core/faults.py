"""Fault injection for the crash tests: `checkpoint(name)` kills this process group with SIGKILL when
``ENGAGEMENT_FAULT_KILL_AT`` names that point, as a lost machine would, mid-stage. Unset (always, outside
tests/test_crash_reruns.py), a checkpoint is one environment lookup.

The points, in the order a weekly run meets them: ``ingest`` (the oracle file published, the raw
snapshot not), ``dbt_features`` and ``dbt_scoring`` (dbt has built its first model of the step, with
dbt's own process killed too), ``training`` (a model's version staged, others training),
``promotion`` (the commit record written, not yet applied), ``scoring`` (the first prediction shard
written), ``kb_index`` (index files written, not its manifest).
"""

from __future__ import annotations

import os
import signal

KILL_AT_ENV = "ENGAGEMENT_FAULT_KILL_AT"
POINTS = ("ingest", "dbt_features", "training", "promotion", "scoring", "dbt_scoring", "kb_index")


def checkpoint(name: str) -> None:
    if os.environ.get(KILL_AT_ENV) == name:
        os.killpg(os.getpgid(0), signal.SIGKILL)  # the whole group: dbt's subprocess dies with the run
