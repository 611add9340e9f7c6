"""`features` stage: the dbt models (staging, customer_features, customer_model_input), with
every dbt test shown as a Dagster asset check."""


import json
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, dbt_assets

from engagement_dagster.dbt_project import engagement_dbt
from engagement_dagster.partitions import weekly_partitions


class EngagementDbtTranslator(DagsterDbtTranslator):
    """Models land in the `features` group with the group as key prefix; sources keep the key
    their YAML gives (`meta.dagster.asset_key`), which ties dbt to `ingest/raw_customers`."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return super().get_asset_key(dbt_resource_props)
        return dg.AssetKey(["features", dbt_resource_props["name"]])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return "features"


@dbt_assets(
    manifest=engagement_dbt.manifest_path,
    project=engagement_dbt,
    dagster_dbt_translator=EngagementDbtTranslator(settings=DagsterDbtTranslatorSettings(enable_asset_checks=True)),
    partitions_def=weekly_partitions,
    backfill_policy=dg.BackfillPolicy.multi_run(1),  # one snapshot week per dbt invocation
)
def dbt_features(context: dg.AssetExecutionContext, dbt: DbtCliResource):
    week_vars = json.dumps({"snapshot_week": context.partition_key})
    yield from dbt.cli(["build", "--vars", week_vars], context=context).stream()
