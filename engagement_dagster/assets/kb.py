"""`knowledge_base` stage: the week's markdown documents (model cards, feature importance, segments,
at-risk and high-engagement analyses, week-over-week changes, data dictionary), generated from the
registry, the dbt marts and the dbt manifest by the plain `engagement_dagster.kb.documents`."""

import dagster as dg

from engagement_dagster.assets.models import MODEL_INPUT_KEY, MODEL_KEYS
from engagement_dagster.assets.scoring import CUSTOMER_PREDICTIONS
from engagement_dagster.dbt_project import engagement_dbt
from engagement_dagster.kb import documents
from engagement_dagster.lake import Lake
from engagement_dagster.partitions import weekly_partitions
from engagement_dagster.warehouse import AthenaWarehouse, DuckDBWarehouse, Warehouse

KB_DOCUMENTS = dg.AssetKey(["knowledge_base", "kb_documents"])
MART_KEYS = [dg.AssetKey(["scoring", mart]) for mart in documents.MARTS]  # dagster-dbt's keys (assets/dbt.py)


def marts_of(warehouse: Warehouse) -> documents.Marts:
    """The warehouse as the knowledge base reads it: its query function and the schema of the marts."""
    if isinstance(warehouse, DuckDBWarehouse):
        schema = warehouse.schema_name
    elif isinstance(warehouse, AthenaWarehouse):
        schema = warehouse.database
    else:
        schema = None
    return documents.Marts(query=warehouse.query, schema=schema)


@dg.asset(
    key=KB_DOCUMENTS,
    deps=[*MODEL_KEYS.values(), CUSTOMER_PREDICTIONS, *MART_KEYS, MODEL_INPUT_KEY],
    group_name="knowledge_base",
    partitions_def=weekly_partitions,
    backfill_policy=dg.BackfillPolicy.multi_run(1),
    kinds={"python", "markdown"},
    description="The week's knowledge-base documents under kb/snapshot_week=…/ (markdown with YAML front-matter, "
                "plus manifest.json with sha256 hashes), generated from the week's registry reports, dbt marts and "
                "dbt manifest; the same week regenerated gives the same bytes.",
)
def kb_documents(context: dg.AssetExecutionContext, lake: Lake, warehouse: Warehouse) -> dg.MaterializeResult:
    week = context.partition_key
    written = documents.generate(lake, week, marts_of(warehouse), engagement_dbt.manifest_path)
    previous = written.manifest["previous_week"]
    return dg.MaterializeResult(metadata={
        "documents": len(written.doc_ids),
        "doc_ids": ", ".join(written.doc_ids),
        "total_words": written.words,
        "previous_week": previous or "none (first week)",
        "path": dg.MetadataValue.path(lake.uri(documents.week_prefix(week))),
    })
