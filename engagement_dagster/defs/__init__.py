"""The Dagster layer: one folder per domain (ingest, dbt, models, scoring, kb) with its assets and
checks, the shared partitions and the resources that wrap `engagement_dagster.core`. Thin on purpose:
read, call the library, write, report metadata.

We use two Dagster features on purpose that print a Beta/Preview note at every import (partitioned
asset checks, an asset's backfill policy). Those notes are about Dagster's API, not about the user's
data: silenced here, once, for every entry point (`make run`, `make ui`, `dg`, the code server)."""

import warnings

import dagster as dg

for _category in (dg.BetaWarning, dg.PreviewWarning):
    warnings.filterwarnings("ignore", category=_category)
