"""The knowledge base and its Q&A agent. Plain Python (no Dagster); the two Dagster assets that
write it (`knowledge_base/kb_documents`, `knowledge_base/kb_index`) live in `engagement_dagster.defs.kb.assets`.

    documents   the week's markdown documents from the registry, the marts and the dbt manifest
    index       chunks, BM25 and (with the [kb] extra) embeddings; hybrid search
    embeddings  the [kb] extra's sentence-embedding model (all-MiniLM-L6-v2, offline)
    bedrock     the same documents published to a Bedrock knowledge base on AWS; its retrieval
    agent       questions → retrieval → tools → a cited answer (offline, or a language model)
    tools       the agent's tools: read-only SQL, customer details, a prediction's explanation
    sql_tool    the SQL tool's guard (sqlglot) and executor
    llm         chat backends with tool use: Bedrock Converse, OpenAI-compatible
    ask         the `engagement-dagster ask` command
    evaluate    `make eval-kb`: the evaluation set (evals/kb_questions.yaml) scored
"""

from engagement_dagster.core.kb.documents import (
    Document,
    KnowledgeBaseWeek,
    Marts,
    WeekNotInWarehouse,
    available_weeks,
    build_documents,
    build_week,
    generate,
    parse_document,
    read_document,
    read_manifest,
    write_week,
)

__all__ = [
    "Document",
    "KnowledgeBaseWeek",
    "Marts",
    "WeekNotInWarehouse",
    "available_weeks",
    "build_documents",
    "build_week",
    "generate",
    "parse_document",
    "read_document",
    "read_manifest",
    "write_week",
]
