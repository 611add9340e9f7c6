"""`knowledge_base` stage: the week's markdown documents (model cards, feature importance, segments,
at-risk and high-engagement analyses, week-over-week changes, data dictionary), generated from the
registry, the dbt marts and the dbt manifest by the plain `engagement_dagster.core.kb.documents`; and
their search index (chunks, BM25 and, with the [kb] extra, sentence embeddings), built by the plain
`engagement_dagster.core.kb.index`. On AWS with a knowledge base configured (ENGAGEMENT_KB_ID), the week
is also published to Bedrock (`engagement_dagster.core.kb.bedrock`)."""

import os

import dagster as dg
from pydantic import Field

from engagement_dagster.core import settings
from engagement_dagster.core.kb import bedrock, documents, index
from engagement_dagster.defs.dbt.project import engagement_dbt
from engagement_dagster.defs.models.assets import MODEL_INPUT_KEY, MODEL_KEYS
from engagement_dagster.defs.partitions import weekly_partitions
from engagement_dagster.defs.resources.embeddings import KbEmbeddings
from engagement_dagster.defs.resources.lake import Lake
from engagement_dagster.defs.resources.lease import WriterLease
from engagement_dagster.defs.resources.warehouse import AthenaWarehouse, DuckDBWarehouse, Warehouse
from engagement_dagster.defs.scoring.assets import CUSTOMER_PREDICTIONS

KB_DOCUMENTS = dg.AssetKey(["knowledge_base", "kb_documents"])
KB_INDEX = dg.AssetKey(["knowledge_base", "kb_index"])
MART_KEYS = [dg.AssetKey(["scoring", mart]) for mart in documents.MARTS]  # dagster-dbt's keys (defs/dbt/assets.py)


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
def kb_documents(context: dg.AssetExecutionContext, lake: Lake, warehouse: Warehouse,
                 writer_lease: WriterLease) -> dg.MaterializeResult:
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



class KbIndexConfig(dg.Config):
    chunk_tokens: int = Field(default=index.DEFAULT_CHUNK_TOKENS,
                              description="Tokens per chunk (a token: a word, or one punctuation mark).")
    overlap: float = Field(default=index.DEFAULT_OVERLAP,
                           description="Tokens consecutive chunks share, as a fraction of chunk_tokens (0 to <1).")


@dg.asset(
    key=KB_INDEX,
    deps=[KB_DOCUMENTS],
    group_name="knowledge_base",
    partitions_def=weekly_partitions,
    backfill_policy=dg.BackfillPolicy.multi_run(1),
    kinds={"python", "bm25", "bedrock"},
    description="The week's documents cut into overlapping chunks (default 300 tokens, 20% overlap), ranked by BM25 "
                "and, with the [kb] extra, by all-MiniLM-L6-v2 embeddings fused with BM25 (hybrid), under "
                "kb/index/snapshot_week=…/ (chunks.parquet, the bm25s files, embeddings.npy, index_manifest.json "
                "with each document's sha256). Without the extra: lexical only, said in the metadata. On AWS with "
                "ENGAGEMENT_KB_ID set, the documents are also uploaded to the Bedrock knowledge base and ingested. "
                "A week whose documents and settings are unchanged does no work.",
)
def kb_index(context: dg.AssetExecutionContext, config: KbIndexConfig, lake: Lake, kb_embeddings: KbEmbeddings,
             writer_lease: WriterLease) -> dg.MaterializeResult:
    week = context.partition_key
    chunking = index.ChunkSettings(chunk_tokens=config.chunk_tokens, overlap=config.overlap)
    embedder = kb_embeddings.embedder()
    built = index.build_index(lake, week, chunking, embedder=embedder)
    context.log.info(f"kb_index {week}: {built.status} ({built.chunks} chunks from {built.documents} documents, "
                     f"{built.seconds:.2f} s)")
    if embedder is not None and embedder.load_seconds is not None:
        context.log.info(f"{embedder.name} loaded in {embedder.load_seconds:.1f} s on thread {embedder.loaded_in}")
    published = {}
    if settings.environment() == "aws" and os.environ.get("ENGAGEMENT_KB_ID"):
        result = bedrock.publish_week(lake, week, bedrock.target_from_settings())  # raises on a failed job
        context.log.info(f"Bedrock knowledge base {week}: {result.status} ({result.uploaded} uploaded, job "
                         f"{result.ingestion_job_id or '–'})")
        published = {"bedrock_status": result.status, "bedrock_ingestion_job": result.ingestion_job_id or "–",
                     "bedrock_uploaded": result.uploaded,
                     "bedrock_statistics": dg.MetadataValue.json(result.statistics or {})}
    return dg.MaterializeResult(metadata={
        **published,
        "status": built.status,
        "backend": built.backend,
        "documents": built.documents,
        "chunks": built.chunks,
        "embedding_model": built.manifest.get("embedding_model") or "none (lexical only)",
        "tokens_per_chunk": chunking.chunk_tokens,
        "overlap_tokens": chunking.overlap_tokens,
        "index_build_seconds": round(built.seconds, 3),
        "path": dg.MetadataValue.path(lake.uri(index.index_prefix(week))),
    })
