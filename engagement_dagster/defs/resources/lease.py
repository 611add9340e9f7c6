"""The lake's writer lease as a Dagster resource: taken when a run starts, released when it ends.

Every asset that writes the lake, the warehouse or the registry requires this resource. The jobs run
in-process, so Dagster builds it once per run, before the first step, and tears it down after the
last: the whole run holds the lease, and a second run on the same lake fails at its start with
`LakeBusy` (the holder's run, week and pid in the message) instead of interleaving writes. The lease
itself is the plain `engagement_dagster.core.storage.lease`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from engagement_dagster.core.storage.lease import writer_lease
from engagement_dagster.defs.resources.lake import Lake


class WriterLease(dg.ConfigurableResource):
    lake: Lake

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator[WriterLease]:
        run = context.dagster_run
        if run is None:  # built outside a run (a unit test of an asset body): nothing to hold
            yield self
            return
        week = run.tags.get("dagster/partition")
        what = f"run {run.run_id} of job {run.job_name}" + (f" for week {week}" if week else "")
        with writer_lease(self.lake.store(), what):
            yield self
