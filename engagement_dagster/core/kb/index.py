"""The knowledge base's index: the week's documents cut into overlapping chunks, ranked by BM25
(`bm25s`), and searched by question.

    kb/index/snapshot_week=YYYY-MM-DD/chunks.parquet          one row per chunk (doc, ordinal, token span, text)
    kb/index/snapshot_week=YYYY-MM-DD/bm25/<bm25s files>      the BM25 index as bm25s saves it (NumPy arrays + JSON)
    kb/index/snapshot_week=YYYY-MM-DD/embeddings.npy          float32 chunk embeddings (with the [kb] extra only)
    kb/index/snapshot_week=YYYY-MM-DD/index_manifest.json     each document's sha256 (from the documents' manifest),
                                                              the chunk settings, the backend and the counts

Tokens. A token is a run of word characters (letters, digits, ``_``) or one punctuation mark:
``TOKEN_PATTERN``. ``log_weekly_minutes`` is one token, ``|`` is one, ``0.3979`` is three
(``0``, ``.``, ``3979``). Chunk sizes and overlaps are counted in these tokens.

Chunks. A document's markdown body (its front-matter is not indexed) is cut into windows of at
most ``chunk_tokens`` tokens; consecutive chunks share exactly ``overlap_tokens`` tokens (the
last window only ends earlier). A window ends at the end of a line when one falls in its second
half, so a markdown table row stays whole in at least one chunk. Each chunk's ``text`` (what
is ranked and what a reader is given) starts with the document's title, the heading the chunk
falls under and, for a chunk that starts inside a table, the table's header row.

Ranking. BM25 over an analysed form of ``text``: lower case, English stop words dropped,
identifiers also split at ``_`` (``log_weekly_minutes`` → itself + ``log``, ``weekly``,
``minutes``), the Snowball English stemmer (`_stem`). With the ``[kb]`` extra every chunk's ``text`` is
also embedded (`embeddings.SentenceEmbedder`, all-MiniLM-L6-v2, stored as ``embeddings.npy``)
and a search fuses the BM25 ranking with the cosine ranking (reciprocal-rank fusion): hybrid,
because it ranks the evaluation set's documents better than either alone (`make eval-kb`
prints all three). Without the extra the index is BM25 only and its manifest says so.

Re-indexing a week whose documents (their sha256 in the documents' manifest) and settings have
not changed does no work: nothing is read beyond the two manifests and nothing is written.
Plain Python, no Dagster: the lake is any object with ``read_bytes``, ``write_bytes``,
``list_keys`` and ``exists`` (``delete`` is used when present).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engagement_dagster.core import faults
from engagement_dagster.core.kb import embeddings
from engagement_dagster.core.kb.documents import KB_PREFIX, LakeLike, document_key, parse_document, read_manifest
from engagement_dagster.core.kb.embeddings import default_embedder

log = logging.getLogger(__name__)

INDEX_PREFIX = f"{KB_PREFIX}/index"
DEFAULT_CHUNK_TOKENS = 300
DEFAULT_OVERLAP = 0.2  # of chunk_tokens
TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]")
TOKENIZER = r"regex \w+|[^\w\s] (a word, or one punctuation mark)"
ANALYZER_VERSION = "3"  # bump when `analyze` changes: every week is re-indexed
BACKEND_LEXICAL = "bm25 (lexical only: install the [kb] extra for embeddings)"
BACKEND_LEXICAL_SWITCHED_OFF = f"bm25 (lexical only: {embeddings.SWITCH}=off)"
BACKEND_HYBRID = "hybrid: bm25 + cosine, reciprocal-rank fusion"
# The registry's version ids (ModelRegistry.register): the UTC registration time, then the training
# data's fingerprint.
VERSION_PATTERN = re.compile(r"\b\d{8}T\d{12}Z-[0-9a-f]{8}\b")
RRF_K = 60  # reciprocal-rank fusion's constant (Cormack et al.): 1 / (RRF_K + rank) per ranking
BM25_PARAMS = {"k1": 1.5, "b": 0.75, "method": "lucene"}

CHUNKS_FILE = "chunks.parquet"
EMBEDDINGS_FILE = "embeddings.npy"
BM25_DIR = "bm25"
MANIFEST_FILE = "index_manifest.json"


def index_prefix(week: str) -> str:
    return f"{INDEX_PREFIX}/snapshot_week={week}/"


def index_manifest_key(week: str) -> str:
    return f"{index_prefix(week)}{MANIFEST_FILE}"


# ---------------------------------------------------------------------------------------------
# Tokens and chunks


def tokenize(text: str) -> list[str]:
    """The tokens chunk sizes are counted in (see the module docstring)."""
    return TOKEN_PATTERN.findall(text)


@dataclass(frozen=True)
class ChunkSettings:
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    overlap: float = DEFAULT_OVERLAP  # a fraction of chunk_tokens

    def __post_init__(self) -> None:
        if self.chunk_tokens < 10:
            raise ValueError(f"chunk_tokens must be at least 10, got {self.chunk_tokens}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap is a fraction of chunk_tokens in [0, 1), got {self.overlap}")

    @property
    def overlap_tokens(self) -> int:
        return round(self.chunk_tokens * self.overlap)

    def describe(self) -> dict:
        return {"chunk_tokens": self.chunk_tokens, "overlap": self.overlap, "overlap_tokens": self.overlap_tokens,
                "tokenizer": TOKENIZER, "analyzer_version": ANALYZER_VERSION, "bm25": BM25_PARAMS}


@dataclass(frozen=True)
class Chunk:
    chunk_id: str  # "<doc_id>#<ordinal, 3 digits>"
    doc_id: str
    ordinal: int
    title: str
    heading: str  # the section heading the chunk starts under ("" before the first one)
    token_start: int  # [token_start, token_end) in tokenize(body)
    token_end: int
    passage: str  # the body's text from the first token to the last, as written
    text: str  # title / heading / table header, then the passage: what is ranked and returned


def _line_context(body: str) -> list[tuple[int, str, str]]:
    """For each line: (its start offset, the heading above it, and for a line of a table, the
    table's header: its header row and separator row; else "")."""
    out, heading, header, offset = [], "", "", 0
    lines = body.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("#"):
            heading, header = line.lstrip("#").strip(), ""
            out.append((offset, heading, ""))
        elif line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = line + "\n" + lines[i + 1]
            out.append((offset, heading, header))
        else:
            header = header if line.startswith("|") else ""
            out.append((offset, heading, header))
        offset += len(line) + 1
    return out


def chunk_document(doc_id: str, title: str, body: str, settings: ChunkSettings = ChunkSettings()) -> list[Chunk]:
    """Cut a markdown body into overlapping windows of tokens (see the module docstring)."""
    spans = [(m.start(), m.end()) for m in TOKEN_PATTERN.finditer(body)]
    n, size, overlap = len(spans), settings.chunk_tokens, settings.overlap_tokens
    if n == 0:
        return []
    # line_end[i]: token i is the last token of its line (a newline follows before the next token)
    line_end = [i == n - 1 or "\n" in body[spans[i][1]:spans[i + 1][0]] for i in range(n)]
    context = _line_context(body)
    line_starts = [c[0] for c in context]

    chunks, start = [], 0
    while True:
        end = min(start + size, n)
        if end < n:
            floor = start + max(overlap, size // 2)  # never snap below half a window (and always progress)
            snapped = next((e for e in range(end, floor, -1) if line_end[e - 1]), None)
            end = snapped or end
        char_start, char_end = spans[start][0], spans[end - 1][1]
        line = _line_index(line_starts, char_start)
        _, heading, header = context[line]
        passage = body[char_start:char_end]
        lead = [] if passage.startswith(f"# {title}") else [title]
        if heading and heading != title:
            lead.append(heading)
        if header and not passage.startswith(header):
            lead.append(header)
        ordinal = len(chunks)
        chunks.append(Chunk(chunk_id=f"{doc_id}#{ordinal:03d}", doc_id=doc_id, ordinal=ordinal, title=title,
                            heading=heading, token_start=start, token_end=end, passage=passage,
                            text="\n".join([*lead, "", passage]) if lead else passage))
        if end == n:
            return chunks
        start = end - overlap


def _line_index(line_starts: list[int], offset: int) -> int:
    lo, hi = 0, len(line_starts) - 1
    while lo < hi:  # the last line starting at or before offset
        mid = (lo + hi + 1) // 2
        if line_starts[mid] <= offset:
            lo = mid
        else:
            hi = mid - 1
    return lo


# ---------------------------------------------------------------------------------------------
# Lexical analysis for BM25

STOP_WORDS = frozenset(
    "a about above after again all also am an and any are as at be because been before being below between both "
    "but by can could did do does doing down during each few for from further had has have having he her here "
    "hers him his how i if in into is it its itself just me more most my no nor not now of off on once only or "
    "other our ours out over own same she should so some such than that the their theirs them then there these "
    "they this those through to too under until up very was we were what when where which while who whom why "
    "will with would you your yours".split())
_WORD = re.compile(r"\w+")


_STEMMER = threading.local()  # PyStemmer objects are not thread-safe: one per thread


def _stem(word: str) -> str:
    """The Snowball English stemmer (PyStemmer), the same for documents and questions: calibrated,
    calibration → calibr; recommender, recommendation → recommend. Numbers are kept as they are."""
    if word.isdigit():
        return word
    stemmer = getattr(_STEMMER, "english", None)
    if stemmer is None:
        import Stemmer

        stemmer = _STEMMER.english = Stemmer.Stemmer("english")
    return stemmer.stemWord(word)


def analyze(text: str) -> list[str]:
    """The terms BM25 ranks on (see the module docstring)."""
    terms = []
    for word in _WORD.findall(text.lower()):
        parts = [p for p in word.split("_") if p]
        if len(parts) > 1:
            terms.append(word)
        terms += [_stem(p) for p in parts if p not in STOP_WORDS]
    return terms


# ---------------------------------------------------------------------------------------------
# Embeddings: the interface a sentence-embedding backend plugs into (`embeddings.SentenceEmbedder`)


@runtime_checkable
class Embedder(Protocol):
    """A sentence-embedding model: one L2-normalised float32 row per text."""

    name: str

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


_DEFAULT = object()  # "the process's default embedder": the [kb] extra's model, or none without it


def _resolve(embedder: Embedder | object | None) -> Embedder | None:
    return default_embedder() if embedder is _DEFAULT else embedder  # type: ignore[return-value]


def backend_name(embedder: Embedder | None) -> str:
    return f"{BACKEND_HYBRID} + {embedder.name}" if embedder is not None else lexical_backend()


def lexical_backend() -> str:
    if embeddings.switched_off() and embeddings.extra_installed():
        return BACKEND_LEXICAL_SWITCHED_OFF
    return BACKEND_LEXICAL


# ---------------------------------------------------------------------------------------------
# Building the index


@dataclass(frozen=True)
class IndexResult:
    week: str
    status: str  # "rebuilt" or "unchanged"
    backend: str
    documents: int
    chunks: int
    settings: ChunkSettings
    seconds: float
    manifest: dict


def _json_bytes(value: object) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def index_files_prefix(week: str, manifest: dict) -> str:
    """Where the files the manifest lists are: its generation's folder (the week's folder for an index
    built before generations)."""
    generation = manifest.get("generation")
    return index_prefix(week) + (f"{generation}/" if generation else "")


def read_index_manifest(lake: LakeLike, week: str) -> dict | None:
    key = index_manifest_key(week)
    return json.loads(lake.read_bytes(key)) if lake.exists(key) else None


def build_index(lake: LakeLike, week: str, settings: ChunkSettings = ChunkSettings(),
                embedder: Embedder | object | None = _DEFAULT) -> IndexResult:
    """Index the week's documents, unless the index already holds these documents with these settings
    and this backend (then nothing is embedded, read beyond the manifests, or written)."""
    started = time.perf_counter()
    docs = read_manifest(lake, week)["documents"]
    hashes = {d["doc_id"]: d["sha256"] for d in docs}
    embedder = _resolve(embedder)
    backend = backend_name(embedder)
    previous = read_index_manifest(lake, week)
    if (previous is not None and previous["document_sha256"] == hashes
            and previous["settings"] == settings.describe() and previous["backend"] == backend
            and all(lake.exists(index_files_prefix(week, previous) + name) for name in previous["files"])):
        return IndexResult(week, "unchanged", backend, len(docs), previous["counts"]["chunks"], settings,
                           time.perf_counter() - started, previous)

    chunks: list[Chunk] = []
    for entry in docs:
        data = lake.read_bytes(document_key(week, entry["doc_id"]))
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ValueError(f"{document_key(week, entry['doc_id'])} does not match its sha256 in the week's "
                             "manifest.json: the documents changed while being indexed; materialize kb_documents "
                             "for the week again, then the index")
        front, body = parse_document(data.decode())
        chunks += chunk_document(entry["doc_id"], front.get("title") or entry["title"], body, settings)
    if not chunks:
        raise ValueError(f"week {week}'s documents have no text to index")

    files = {CHUNKS_FILE: _chunks_parquet(chunks), **_bm25_files([analyze(c.text) for c in chunks])}
    if embedder is not None:
        files[EMBEDDINGS_FILE] = _npy_bytes(embedder.embed([for_embedding(c.text) for c in chunks]))
    # A new set of files goes into its own folder, named after its content, and the manifest (written
    # last) names it: a reader never mixes a killed build's new files with the old ones.
    generation = hashlib.sha256(b"".join(name.encode() + hashlib.sha256(data).digest()
                                         for name, data in sorted(files.items()))).hexdigest()[:16]
    prefix = index_prefix(week)
    for name, data in files.items():
        lake.write_bytes(f"{prefix}{generation}/{name}", data)
    faults.checkpoint("kb_index")
    per_doc = {}
    for c in chunks:
        per_doc[c.doc_id] = per_doc.get(c.doc_id, 0) + 1
    manifest = {
        "snapshot_week": week,
        "backend": backend,
        "embedding_model": embedder.name if embedder is not None else None,
        "settings": settings.describe(),
        "document_sha256": hashes,
        "documents": [{"doc_id": d["doc_id"], "sha256": d["sha256"], "chunks": per_doc.get(d["doc_id"], 0)}
                      for d in docs],
        "counts": {"documents": len(docs), "chunks": len(chunks),
                   "tokens": sum(c.token_end - c.token_start for c in chunks)},
        "files": sorted(files),
        "generation": generation,
    }
    lake.write_bytes(index_manifest_key(week), _json_bytes(manifest))  # the commit point, written last
    delete = getattr(lake, "delete", None)
    if delete is not None:  # files an earlier build wrote that this one has not (another bm25s version)
        keep = {f"{prefix}{generation}/{name}" for name in files} | {index_manifest_key(week)}
        for key in lake.list_keys(prefix):
            if key not in keep:
                delete(key)
    _CACHE.pop((_lake_id(lake), week), None)
    return IndexResult(week, "rebuilt", backend, len(docs), len(chunks), settings,
                       time.perf_counter() - started, manifest)


def for_embedding(text: str) -> str:
    """A chunk's text as the embedding model reads it: model version ids (a registration time and a
    hash) become the word "version". They mean nothing to the model, and their word pieces would
    make a week's embeddings depend on when its models were trained."""
    return VERSION_PATTERN.sub("version", text)


def _npy_bytes(matrix: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, matrix.astype(np.float32), allow_pickle=False)
    return buffer.getvalue()


def _chunks_parquet(chunks: list[Chunk]) -> bytes:
    table = pa.Table.from_pylist([asdict(c) for c in chunks])
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def _bm25_files(corpus_terms: list[list[str]]) -> dict[str, bytes]:
    """bm25s's index of the analysed chunks, as bm25s saves it (file name under bm25/ → bytes). The
    vocabulary is built here in sorted order so the same chunks give the same bytes."""
    import bm25s

    vocab = {term: i for i, term in enumerate(sorted({t for terms in corpus_terms for t in terms}))}
    ids = [[vocab[t] for t in terms] for terms in corpus_terms]
    retriever = bm25s.BM25(**BM25_PARAMS)
    retriever.index((ids, vocab), show_progress=False)  # adds the empty term "" for queries with no known term
    with tempfile.TemporaryDirectory() as tmp:
        retriever.save(tmp, show_progress=False)
        return {f"{BM25_DIR}/{p.name}": p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# Searching


@dataclass(frozen=True)
class Passage:
    doc_id: str
    chunk_id: str
    text: str
    score: float
    title: str


class SearchResults(list):
    """The passages, best first, with the query's latency: ``seconds`` to rank (the index in
    memory), ``load_seconds`` to load the index first (0.0 when it was cached)."""

    def __init__(self, passages: list[Passage], seconds: float, load_seconds: float):
        super().__init__(passages)
        self.seconds = seconds
        self.load_seconds = load_seconds


@dataclass
class _LoadedIndex:
    manifest_sha256: str
    backend: str
    chunks: list[dict]
    retriever: object
    vocab: dict[str, int]
    embeddings: np.ndarray | None  # one normalised row per chunk, when the week was indexed with a model
    idf: dict[str, float]  # each term's inverse document frequency over the chunks


def _idf(chunks: list[dict]) -> dict[str, float]:
    df: dict[str, int] = {}
    for chunk in chunks:
        for term in set(analyze(chunk["text"])):
            df[term] = df.get(term, 0) + 1
    n = len(chunks)
    return {term: float(np.log(1 + (n - d + 0.5) / (d + 0.5))) for term, d in df.items()}


def term_weights(lake: LakeLike, week: str) -> dict[str, float]:
    """How much each term says about a chunk (BM25's idf over the week's chunks): rare terms weigh most."""
    return load_index(lake, week).idf


_CACHE: dict[tuple[str, str], _LoadedIndex] = {}
_CACHE_LOCK = threading.Lock()


def _lake_id(lake: LakeLike) -> str:
    uri = getattr(lake, "uri", None)
    return uri("") if callable(uri) else f"{type(lake).__name__}@{id(lake)}"


def load_index(lake: LakeLike, week: str) -> _LoadedIndex:
    """The week's index, cached per process; reloaded when its manifest changes."""
    raw = lake.read_bytes(index_manifest_key(week)) if lake.exists(index_manifest_key(week)) else None
    if raw is None:
        raise FileNotFoundError(f"no knowledge-base index for week {week}: materialize knowledge_base/kb_index "
                                f"for {week} (expected {index_manifest_key(week)})")
    sha = hashlib.sha256(raw).hexdigest()
    key = (_lake_id(lake), week)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None and cached.manifest_sha256 == sha:
            return cached
        import bm25s

        manifest = json.loads(raw)
        prefix = index_files_prefix(week, manifest)
        chunks = pq.read_table(io.BytesIO(lake.read_bytes(prefix + CHUNKS_FILE))).to_pylist()
        with tempfile.TemporaryDirectory() as tmp:
            for name in manifest["files"]:
                if name.startswith(f"{BM25_DIR}/"):
                    (Path(tmp) / name.removeprefix(f"{BM25_DIR}/")).write_bytes(lake.read_bytes(prefix + name))
            retriever = bm25s.BM25.load(tmp, show_progress=False)
        vectors = (np.load(io.BytesIO(lake.read_bytes(prefix + EMBEDDINGS_FILE)), allow_pickle=False)
                   if EMBEDDINGS_FILE in manifest["files"] else None)
        loaded = _LoadedIndex(sha, manifest["backend"], chunks, retriever, retriever.vocab_dict, vectors,
                              _idf(chunks))
        _CACHE[key] = loaded
        return loaded


MODES = ("auto", "hybrid", "lexical", "dense")
MAX_PER_DOC = 2


def _bm25_ranking(index: _LoadedIndex, question: str) -> list[tuple[int, float]]:
    """(chunk row, BM25 score) for every chunk sharing a term with the question, best first."""
    ids = [index.vocab[t] for t in analyze(question) if t in index.vocab]
    if not ids:
        return []
    rows, scores = index.retriever.retrieve([ids], k=len(index.chunks), show_progress=False)
    return [(int(i), float(s)) for i, s in zip(rows[0], scores[0], strict=True) if s > 0]


def _dense_ranking(index: _LoadedIndex, question: str, embedder: Embedder) -> list[tuple[int, float]]:
    """(chunk row, cosine similarity) for every chunk, best first."""
    similarity = index.embeddings @ embedder.embed([question])[0]
    order = np.argsort(-similarity, kind="stable")
    return [(int(i), float(similarity[i])) for i in order]


def _fuse(*rankings: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion: each ranking gives a chunk 1 / (RRF_K + its rank); ties by row."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, (row, _) in enumerate(ranking, 1):
            fused[row] = fused.get(row, 0.0) + 1.0 / (RRF_K + rank)
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


def _diverse(ranking: list[tuple[int, float]], chunks: list[dict], per_doc: int | None) -> list[tuple[int, float]]:
    """The ranking with at most ``per_doc`` chunks of any one document (the rest keep their order after)."""
    if not per_doc:
        return ranking
    seen: dict[str, int] = {}
    first, rest = [], []
    for row, score in ranking:
        doc = chunks[row]["doc_id"]
        seen[doc] = seen.get(doc, 0) + 1
        (first if seen[doc] <= per_doc else rest).append((row, score))
    return first + rest


def search(lake: LakeLike, week: str, question: str, k: int = 5, mode: str = "auto",
           embedder: Embedder | object | None = _DEFAULT, per_doc: int | None = MAX_PER_DOC) -> SearchResults:
    """The ``k`` chunks of the week's documents that best answer ``question``, best first.

    ``mode``: "auto" (hybrid when the week was indexed with embeddings and the model is here, else
    BM25), or "hybrid", "lexical", "dense" to compare them. Scores are the ranking's own (BM25,
    cosine, or the fused reciprocal ranks), comparable within one result only. At most ``per_doc``
    chunks of one document come before any other document's (the data dictionary, many chunks long,
    would otherwise crowd the others out); None turns that off."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    started = time.perf_counter()
    index = load_index(lake, week)
    embedder = _resolve(embedder) if index.embeddings is not None and mode != "lexical" else None
    if embedder is not None and hasattr(embedder, "load"):
        embedder.load()  # loading the model counts as load time, not query time
    if mode in ("hybrid", "dense") and embedder is None:
        raise ValueError(f"week {week}'s index has no embeddings or the [kb] extra is not installed "
                         f"(index backend: {index.backend}); use mode='lexical'")
    loaded = time.perf_counter()
    if mode == "lexical" or (mode == "auto" and embedder is None):
        ranking = _bm25_ranking(index, question)
    elif mode == "dense":
        ranking = _dense_ranking(index, question, embedder)
    else:
        ranking = _fuse(_bm25_ranking(index, question), _dense_ranking(index, question, embedder))
    passages = []
    for row, score in _diverse(ranking, index.chunks, per_doc)[:max(k, 0)]:
        c = index.chunks[row]
        passages.append(Passage(doc_id=c["doc_id"], chunk_id=c["chunk_id"], text=c["text"], score=score,
                                title=c["title"]))
    done = time.perf_counter()
    log.debug("kb search %s %r: %d passages in %.1f ms (load %.1f ms)", week, question, len(passages),
              (done - loaded) * 1e3, (loaded - started) * 1e3)
    return SearchResults(passages, seconds=done - loaded, load_seconds=loaded - started)
