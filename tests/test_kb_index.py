"""The knowledge base's index: chunks of exact size and overlap that cover every token in order,
no work for an unchanged week, a rebuild for a changed document, and business questions answered
from a week of the whole graph on a small snapshot (each question's document in the top 5)."""

import io
import itertools
import json
import subprocess
import sys

import dagster as dg
import numpy as np
import pytest

from engagement_dagster.core.kb import documents, index
from engagement_dagster.defs.kb.assets import KB_INDEX, kb_index
from engagement_dagster.defs.resources.lake import LocalLake
from tests.conftest import KB_WEEKS, index_files

WEEK0, WEEK = KB_WEEKS

BODY = """# Churn by segment (week of 2026-11-09)

From the churn_by_segment mart: customers, churn risk and value at risk per segment. """ + " ".join(
    f"Sentence {i} says the segment's churn probability moved, with value at risk in USD." for i in range(12)) + """

## Segments

| segment | customers | mean churn probability | value at risk (USD) |
|---|---|---|---|
""" + "\n".join(f"| Segment {i} | {1000 + i:,} | 0.{3000 + i} | {50_000 + i:,}.25 |" for i in range(25)) + """

## Notes

Highest mean churn probability: Segment 7 (0.3007). The most value at risk is held by Segment 24.
"""


def _rows(body: str) -> list[str]:
    return [line for line in body.splitlines() if line.startswith("| Segment")]


@pytest.mark.parametrize(("size", "overlap"), [(40, 0.25), (64, 0.2), (300, 0.2), (25, 0.0)])
def test_chunks_have_the_size_and_exact_overlap_and_cover_every_token_in_order(size, overlap):
    settings = index.ChunkSettings(chunk_tokens=size, overlap=overlap)
    tokens = index.tokenize(BODY)
    chunks = index.chunk_document("churn_by_segment", "Churn by segment", BODY, settings)
    assert len(tokens) > 600 and (len(chunks) > 1)
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert [c.chunk_id for c in chunks] == [f"churn_by_segment#{i:03d}" for i in range(len(chunks))]
    assert chunks[0].token_start == 0 and chunks[-1].token_end == len(tokens)
    for chunk in chunks:
        assert 0 < chunk.token_end - chunk.token_start <= size
        assert index.tokenize(chunk.passage) == tokens[chunk.token_start:chunk.token_end]  # the text, in order
        assert chunk.text.endswith(chunk.passage) and chunk.text.startswith("Churn by segment")
    for before, after in itertools.pairwise(chunks):
        assert before.token_end - after.token_start == settings.overlap_tokens  # exactly the overlap
        assert after.token_start > before.token_start  # forward, in order
        assert before.token_end - before.token_start >= size // 2  # a window is cut short only to end a line
    covered = set().union(*(range(c.token_start, c.token_end) for c in chunks))
    assert covered == set(range(len(tokens)))
    # every table row whole in some chunk, and a chunk inside a table carries the heading and the table's header
    for row in _rows(BODY):
        assert any(row in c.passage.splitlines() for c in chunks), row
    starts = [m.start() for m in index.TOKEN_PATTERN.finditer(BODY)]
    lines = BODY.split("\n")
    in_table = [c for c in chunks if lines[BODY[:starts[c.token_start]].count("\n")].startswith("|")]
    assert in_table or size >= 300  # chunks that start in a table
    for chunk in in_table:
        assert "\nSegments\n" in chunk.text and "| segment | customers |" in chunk.text


def test_default_settings_are_300_tokens_with_20_percent_overlap():
    settings = index.ChunkSettings()
    assert (settings.chunk_tokens, settings.overlap_tokens) == (300, 60)
    assert settings.describe()["tokenizer"] == index.TOKENIZER
    assert index.tokenize("log_weekly_minutes is 0.3979 | ok.") == ["log_weekly_minutes", "is", "0", ".", "3979",
                                                                     "|", "ok", "."]
    with pytest.raises(ValueError, match="overlap"):
        index.ChunkSettings(overlap=1.0)
    with pytest.raises(ValueError, match="chunk_tokens"):
        index.ChunkSettings(chunk_tokens=5)


def test_the_analyzer_splits_identifiers_drops_stop_words_and_stems():
    assert index.analyze("What does log_weekly_minutes mean for the Segments?") == [
        "log_weekly_minutes", "log", "week", "minut", "mean", "segment"]
    # Snowball: one stem for a question's word and the document's
    assert index.analyze("calibrated recommender") == index.analyze("calibration recommendation")


def test_the_plain_module_imports_no_dagster():
    code = ("import sys; import engagement_dagster.core.kb.index as i; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in {'dagster', 'dagster_dbt', 'dbt'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- building and re-building a week, on documents written by the documents module


class CountingLake:
    """A LocalLake that counts its writes and deletes."""

    def __init__(self, root):
        self.inner, self.writes, self.deletes = LocalLake(root=str(root)), [], []

    def write_bytes(self, key, data):
        self.writes.append(key)
        return self.inner.write_bytes(key, data)

    def delete(self, key):
        self.deletes.append(key)
        return self.inner.delete(key)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _doc(doc_id: str, title: str, body: str) -> documents.Document:
    return documents.Document(doc_id, title, body, {"doc_id": doc_id, "title": title, "doc_type": doc_id,
                                                    "snapshot_week": WEEK})


def _write(lake, docs) -> None:
    documents.write_week(lake, documents.KnowledgeBaseWeek(WEEK, docs, {}, {}, None))


def test_an_unchanged_week_is_not_reindexed_and_a_changed_document_is(tmp_path):
    lake = CountingLake(tmp_path)
    churn = _doc("churn_by_segment", "Churn by segment", BODY)
    card = _doc("model_card_churn_model", "Model card: churn_model",
                "# Model card: churn_model\n\nAUC 0.87, calibrated by isotonic regression: ECE 0.02.\n")
    _write(lake, [churn, card])

    first = index.build_index(lake, WEEK)
    expected_backend = index.backend_name(index.default_embedder())
    assert first.status == "rebuilt" and first.documents == 2 and first.backend == expected_backend
    manifest = json.loads(lake.read_bytes(index.index_manifest_key(WEEK)))
    sha = {d["doc_id"]: d["sha256"] for d in documents.read_manifest(lake, WEEK)["documents"]}
    assert manifest["document_sha256"] == sha
    assert manifest["settings"] == index.ChunkSettings().describe()
    assert manifest["counts"]["chunks"] == first.chunks == sum(d["chunks"] for d in manifest["documents"])
    assert manifest["backend"] == expected_backend
    files = index_files(tmp_path)
    generation = f"snapshot_week={WEEK}/{manifest['generation']}"  # the files' folder, named by the manifest
    assert {f"{generation}/chunks.parquet", f"snapshot_week={WEEK}/index_manifest.json",
            f"{generation}/bm25/vocab.index.json"} <= set(files)
    assert index.search(lake, WEEK, "how calibrated is the churn model")[0].doc_id == "model_card_churn_model"

    lake.writes.clear()
    again = index.build_index(lake, WEEK)
    assert again.status == "unchanged" and again.chunks == first.chunks
    assert lake.writes == [] and lake.deletes == []
    assert index_files(tmp_path) == files  # same bytes, same mtimes, same files

    # the same documents regenerated (same bytes): still nothing to do
    _write(lake, [churn, card])
    lake.writes.clear()
    assert index.build_index(lake, WEEK).status == "unchanged" and lake.writes == []

    # one changed document: rebuilt, and search sees the new text (the per-process cache is refreshed)
    _write(lake, [churn, _doc(card.doc_id, card.title, card.body_markdown + "\nRecalibrated with Platt scaling.\n")])
    lake.writes.clear()
    changed = index.build_index(lake, WEEK)
    assert changed.status == "rebuilt" and index.index_manifest_key(WEEK) == lake.writes[-1]  # the manifest last
    new_generation = index.read_index_manifest(lake, WEEK)["generation"]
    assert new_generation != manifest["generation"]  # a new folder: the old files were never overwritten
    assert all(key.startswith(f"{index.index_prefix(WEEK)}{new_generation}/") for key in lake.writes[:-1])
    assert not any(p.startswith(generation) for p in index_files(tmp_path))  # and are gone once it is committed
    assert index.search(lake, WEEK, "platt scaling")[0].doc_id == "model_card_churn_model"

    # other chunk settings: rebuilt with them
    smaller = index.build_index(lake, WEEK, index.ChunkSettings(chunk_tokens=50, overlap=0.1))
    assert smaller.status == "rebuilt" and smaller.chunks > changed.chunks
    assert index.read_index_manifest(lake, WEEK)["settings"]["overlap_tokens"] == 5


needs_kb_extra = pytest.mark.skipif(index.default_embedder() is None,
                                    reason="the [kb] extra (sentence-transformers, the bundled model) is missing")


@needs_kb_extra
def test_with_the_kb_extra_chunks_are_embedded_once_and_search_is_hybrid(tmp_path):
    lake = CountingLake(tmp_path)
    _write(lake, [_doc("churn_by_segment", "Churn by segment", BODY),
                  _doc("model_card_churn_model", "Model card: churn_model",
                       "# Model card: churn_model\n\nAUC 0.87, calibrated by isotonic regression: ECE 0.02.\n")])
    embedder = index.default_embedder()
    before = embedder.calls
    built = index.build_index(lake, WEEK)
    assert embedder.calls - before == built.chunks  # one embedding per chunk
    manifest = index.read_index_manifest(lake, WEEK)
    assert manifest["embedding_model"] == embedder.name and built.backend.startswith(index.BACKEND_HYBRID)
    matrix = np.load(io.BytesIO(lake.read_bytes(index.index_files_prefix(WEEK, manifest) + index.EMBEDDINGS_FILE)))
    assert matrix.shape == (built.chunks, 384) and matrix.dtype == np.float32
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1, atol=1e-4)

    again = index.build_index(lake, WEEK)  # the same week: no embedding computed, nothing written
    assert again.status == "unchanged" and embedder.calls - before == built.chunks

    question = "how well calibrated are the churn model's probabilities"
    for mode in ("hybrid", "dense", "lexical"):
        hits = index.search(lake, WEEK, question, k=3, mode=mode)
        assert hits[0].doc_id == "model_card_churn_model", mode
    # the question's words are not in the text: only the embeddings find it
    assert index.search(lake, WEEK, "how trustworthy are the forecasts", k=1, mode="lexical") == []
    assert index.search(lake, WEEK, "how trustworthy are the forecasts", k=1, mode="dense")[0].doc_id


def test_without_embeddings_the_index_is_lexical_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGAGEMENT_KB_EMBEDDINGS", "off")
    lake = LocalLake(root=str(tmp_path))
    _write(lake, [_doc("churn_by_segment", "Churn by segment", BODY)])
    built = index.build_index(lake, WEEK)
    assert built.backend.startswith("bm25 (lexical only") and index.EMBEDDINGS_FILE not in built.manifest["files"]
    assert built.manifest["embedding_model"] is None
    assert index.search(lake, WEEK, "value at risk")[0].doc_id == "churn_by_segment"
    with pytest.raises(ValueError, match="mode='lexical'"):
        index.search(lake, WEEK, "value at risk", mode="hybrid")
    if index.embeddings.extra_installed():  # switched back on: the backend changed, so the week is re-indexed
        monkeypatch.setenv("ENGAGEMENT_KB_EMBEDDINGS", "auto")
        assert index.build_index(lake, WEEK).status == "rebuilt"
        assert index.EMBEDDINGS_FILE in index.read_index_manifest(lake, WEEK)["files"]


def test_reciprocal_rank_fusion_rewards_agreement():
    bm25 = [(0, 9.0), (1, 5.0), (3, 1.0)]
    cosine = [(1, 0.9), (2, 0.8), (0, 0.1), (3, 0.0)]
    fused = index._fuse(bm25, cosine)
    # 1 is 2nd and 1st, 0 is 1st and 3rd; 3, last in both, still beats 2, found by one ranking only
    assert [row for row, _ in fused] == [1, 0, 3, 2]
    assert fused[0][1] == pytest.approx(1 / (index.RRF_K + 2) + 1 / (index.RRF_K + 1))


def test_a_week_without_an_index_is_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="materialize knowledge_base/kb_index for 2026-11-16"):
        index.search(LocalLake(root=str(tmp_path)), WEEK, "churn")


# --- a week of the whole graph

QUESTIONS = {
    "which segments have the highest churn risk": {"churn_by_segment", "segment_profiles"},
    "how accurate is the churn model and how calibrated is it": {"model_card_churn_model"},
    "what are the top features for engagement": {"feature_importance", "model_card_engagement_model"},
    "how many customers are at risk and what is their lifetime value": {"at_risk_analysis"},
    "what changed since last week": {"week_over_week"},
    "what does the column log_weekly_minutes mean": {"data_dictionary"},
    "how many high-engagement customers are there": {"high_engagement_analysis"},
    "what drives churn for at-risk customers": {"at_risk_analysis"},
    "how many anomalies were flagged this week": {"model_card_anomaly_model"},
    "are churn decisions fair across gender and age": {"model_card_churn_model"},
    "what are the customer segments like": {"segment_profiles", "model_card_segment_model"},
    "weekly summary of the predictions": {"weekly_summary"},
    "how did the figures change compared with the previous week": {"week_over_week"},
}


@pytest.fixture(scope="module")
def week(kb_weeks):
    """Two weeks of the whole graph and their indexes (the second week's documents say what changed),
    then the second week's index materialized again (tests/conftest.py)."""
    return kb_weeks


def _metadata(result) -> dict:
    event = next(e for e in result.get_asset_materialization_events() if e.asset_key == KB_INDEX)
    return {k: v.value for k, v in event.event_specific_data.materialization.metadata.items()}


def test_the_asset_indexes_the_week_and_does_no_work_the_second_time(week):
    root, lake, first, again, files = week
    assert kb_index.group_names_by_key[KB_INDEX] == "knowledge_base"
    assert {dep.asset_key for spec in kb_index.specs for dep in spec.deps} == {dg.AssetKey(["knowledge_base",
                                                                                            "kb_documents"])}
    meta = _metadata(first)
    manifest = index.read_index_manifest(lake, WEEK)
    assert meta["status"] == "rebuilt"
    assert meta["backend"] == manifest["backend"] == index.backend_name(index.default_embedder())
    assert meta["documents"] == len(documents.read_manifest(lake, WEEK)["documents"]) == 14
    assert meta["chunks"] == manifest["counts"]["chunks"] > meta["documents"]
    assert (meta["tokens_per_chunk"], meta["overlap_tokens"]) == (300, 60)
    assert meta["index_build_seconds"] > 0
    assert meta["path"] == str(root / "kb" / "index" / f"snapshot_week={WEEK}")
    assert _metadata(again)["status"] == "unchanged"
    assert index_files(root) == files


def test_business_questions_find_their_document_in_the_top_5(week):
    _, lake, *_ = week
    index.search(lake, WEEK, "warm the cache")
    loaded = dict(index._CACHE)
    ranks, latencies = {}, []
    for question, expected in QUESTIONS.items():
        hits = index.search(lake, WEEK, question, k=5)
        assert len(hits) == 5 and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert all(h.chunk_id.startswith(h.doc_id + "#") and h.title and h.text for h in hits)
        ranks[question] = next((i for i, h in enumerate(hits, 1) if h.doc_id in expected), None)
        latencies.append(hits.seconds)
    print("\nranks:", json.dumps(ranks, indent=1), f"\nmax query latency {max(latencies) * 1e3:.2f} ms")
    assert all(ranks.values()), {q: r for q, r in ranks.items() if r is None}
    # Cached: every question used the index loaded once (latency is measured by `make eval-kb`, not here).
    assert all(index._CACHE[key] is value for key, value in loaded.items())


def test_a_fresh_process_loads_the_index_and_answers(week):
    _, lake, *_ = week
    index._CACHE.clear()
    hits = index.search(lake, WEEK, "what does the column log_weekly_minutes mean")
    assert "data_dictionary" in [h.doc_id for h in hits] and hits.load_seconds > 0
    assert index.search(lake, WEEK0, "churn by segment")[0].title.endswith(f"(week of {WEEK0})")  # each week its own


def test_version_ids_are_not_what_the_embedding_model_reads(tmp_path):
    from engagement_dagster.core.ml.registry import ModelRegistry

    registry = ModelRegistry(LocalLake(root=str(tmp_path)))  # a real version id, from register()
    model = type("M", (), {"name": "m", "to_files": lambda self: {}})()
    version = registry.register(model, {}, "card", "3f0895be" * 8)
    text = f"| churn_model | {version} | 2026-11-16 |"
    assert index.VERSION_PATTERN.search(text).group(0) == version
    assert index.for_embedding(text) == "| churn_model | version | 2026-11-16 |"


@needs_kb_extra
def test_bfloat16_embeddings_equal_float32_to_rounding_and_the_name_says_which(monkeypatch):
    from engagement_dagster.core.kb import embeddings

    texts = [BODY, "Model card: churn_model. AUC 0.87, calibrated by isotonic regression: ECE 0.02.",
             "Which segment has the highest churn risk this week?", "Top three content categories per customer."]
    found = embeddings.compare_precisions(texts, repeat=1)  # what `python -m …kb.embeddings` prints
    assert found["texts"] == 4 and found["cosine_min"] >= 0.998, found  # the figure the README states
    f32, b16 = embeddings.SentenceEmbedder(precision="float32"), embeddings.SentenceEmbedder(precision="bfloat16")
    assert b16.name.endswith(", bfloat16)") and "bfloat16" not in f32.name  # the index records which
    monkeypatch.setenv(embeddings.PRECISION, "auto")
    assert embeddings.precision() == ("bfloat16" if embeddings.native_bf16() else "float32")
    monkeypatch.setenv(embeddings.PRECISION, "float32")
    assert embeddings.precision() == "float32"
    monkeypatch.setenv(embeddings.PRECISION, "fp8")
    with pytest.raises(ValueError, match="ENGAGEMENT_KB_PRECISION must be"):
        embeddings.precision()
