"""The knowledge base: markdown documents generated each week from the week's real results.

Plain Python (no Dagster), so the agent and the API can read it; the Dagster asset that writes it
lives in `engagement_dagster.assets.kb`.
"""

from engagement_dagster.kb.documents import (
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
