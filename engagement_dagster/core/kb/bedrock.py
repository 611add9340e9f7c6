"""The knowledge base on AWS: the week's documents published to an Amazon Bedrock Knowledge Base
(S3 data source, S3 Vectors store) and searched there.

    s3://<bucket>/<prefix>snapshot_week=YYYY-MM-DD/<doc_id>.md                  the document, bytes as in the lake
    s3://<bucket>/<prefix>snapshot_week=YYYY-MM-DD/<doc_id>.md.metadata.json    Bedrock's metadata sidecar:
        {"metadataAttributes": {"snapshot_week", "doc_id", "doc_type", "title", "sha256"}} (strings), so a
        retrieval can filter on the week
    s3://<bucket>/<state_prefix>snapshot_week=YYYY-MM-DD/_published.json        what the last COMPLETE ingestion
                                                                                 holds: doc sha256s, job id, statistics
    s3://<bucket>/<state_prefix>snapshot_week=YYYY-MM-DD/_failed.json           the last FAILED/STOPPED job, if any

The two state files are not documents and must never be ingested as documents. The S3 data source
(Terraform, deploy/terraform/modules/knowledge_base) has one inclusion prefix, ``kb/``, and no
exclusion patterns, so every object under it is scanned: a JSON file there that is no document's
``.metadata.json`` sidecar is not a supported document format and would at best be skipped, at
worst counted in numberOfDocumentsFailed on every sync. So the state lives under ``state_prefix``
(default ``state/``), outside the data source's prefix. ``state_prefix=None`` keeps it beside the
documents, in the week's own prefix (only for a data source that cannot see JSON files there).

Publishing a week does no work when nothing changed: ``_published.json`` holds the sha256 of every
document the last COMPLETE job ingested, so a week whose manifest has the same hashes returns
"unchanged" after one S3 read (no upload, no Bedrock call). Otherwise the record is first marked
pending (so a run that dies halfway never leaves a record vouching for objects it changed), only
objects whose bytes differ are uploaded (an S3 ETag is the MD5 of a plain upload; under SSE-KMS it
is not, and every document of a changed week is uploaded again), objects of documents the week no
longer has are deleted, and one ingestion job syncs the data source.

The ingestion job's ``clientToken`` is derived from the week, its hashes, the last COMPLETE job and
the last failed job: re-running after a crash or a timeout sends the same token and so gets the
same job back (Bedrock starts no second one) and waits on it again; after a FAILED job the token
differs, so a re-run starts a fresh job; a week that goes back to earlier contents (A → B → A)
gets a new job too.

Plain Python, no Dagster; boto3 clients are made only when none is given.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engagement_dagster.core.kb.documents import LakeLike, document_key, manifest_key, parse_document, read_manifest
from engagement_dagster.core.kb.index import Passage

log = logging.getLogger(__name__)

PUBLISHED_FILE = "_published.json"
FAILED_FILE = "_failed.json"
SIDECAR_SUFFIX = ".metadata.json"
METADATA_KEYS = ("snapshot_week", "doc_id", "doc_type", "title", "sha256")
CHUNK_ID_KEY = "x-amz-bedrock-kb-chunk-id"
SOURCE_URI_KEY = "x-amz-bedrock-kb-source-uri"
DONE, FAILED = "COMPLETE", ("FAILED", "STOPPED")
MAX_RESULTS = 100  # Bedrock's numberOfResults limit


@dataclass(frozen=True)
class BedrockKnowledgeBase:
    bucket: str  # the knowledge base's S3 bucket (the data source reads it)
    prefix: str  # key prefix of the knowledge base's documents, e.g. "kb/" ("" for the bucket's root)
    knowledge_base_id: str
    data_source_id: str
    region_name: str | None = None
    # Where _published.json and _failed.json go: outside the data source's inclusion prefix (None: in the
    # week's document prefix).
    state_prefix: str | None = "state/"

    def week_prefix(self, week: str) -> str:
        return _join(self.prefix, f"snapshot_week={week}/")

    def state_key(self, week: str, name: str) -> str:
        if self.state_prefix is None:
            return self.week_prefix(week) + name
        return _join(self.state_prefix, f"snapshot_week={week}/{name}")

    def where(self) -> str:
        return f"knowledge base {self.knowledge_base_id} (data source {self.data_source_id})"


def _join(prefix: str, rest: str) -> str:
    base = prefix.strip("/")
    return f"{base}/{rest}" if base else rest


SETTINGS = {
    "ENGAGEMENT_KB_BUCKET": "the knowledge base's documents bucket",
    "ENGAGEMENT_KB_ID": "the Bedrock knowledge base id",
    "ENGAGEMENT_KB_DATA_SOURCE_ID": "the knowledge base's S3 data source id",
}


def target_from_settings(env: Mapping[str, str] = os.environ) -> BedrockKnowledgeBase:
    """The knowledge base the deployment names (the Terraform sets these on every container):
    ``ENGAGEMENT_KB_BUCKET``, ``ENGAGEMENT_KB_ID``, ``ENGAGEMENT_KB_DATA_SOURCE_ID``; optional
    ``ENGAGEMENT_KB_PREFIX`` (default ``kb/``) and ``ENGAGEMENT_KB_STATE_PREFIX`` (default ``state/``);
    the region from AWS_REGION / AWS_DEFAULT_REGION (else boto3's own configuration)."""
    value = {name: (env.get(name) or "").strip() for name in SETTINGS}
    missing = [f"{name} ({what})" for name, what in SETTINGS.items() if not value[name]]
    if missing:
        raise ValueError("the Bedrock knowledge base needs " + "; ".join(missing))
    region = (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "").strip() or None
    return BedrockKnowledgeBase(value["ENGAGEMENT_KB_BUCKET"], (env.get("ENGAGEMENT_KB_PREFIX") or "kb/").strip(),
                                value["ENGAGEMENT_KB_ID"], value["ENGAGEMENT_KB_DATA_SOURCE_ID"], region,
                                (env.get("ENGAGEMENT_KB_STATE_PREFIX") or "state/").strip())


class KnowledgeBaseError(RuntimeError):
    """A Bedrock knowledge-base call failed; the message says which, why and what to do."""


class IngestionFailed(KnowledgeBaseError):
    """The week's ingestion job failed, was stopped, or did not finish in time."""

    def __init__(self, message: str, job_id: str | None = None, status: str | None = None,
                 failure_reasons: list[str] | None = None, statistics: dict | None = None):
        super().__init__(message)
        self.job_id = job_id
        self.status = status
        self.failure_reasons = list(failure_reasons or [])
        self.statistics = dict(statistics or {})


@dataclass(frozen=True)
class PublishResult:
    week: str
    status: str  # "ingested" | "unchanged"
    uploaded: int  # documents whose file or sidecar was (re)written
    ingestion_job_id: str | None
    statistics: dict  # the ingestion job's (for "unchanged": the job that ingested these hashes)
    seconds: float
    deleted: list[str] = field(default_factory=list)  # S3 keys removed: documents the week no longer has


# ---------------------------------------------------------------------------------------------
# Publishing


def publish_week(lake: LakeLike, week: str, target: BedrockKnowledgeBase, s3: Any = None, agent: Any = None,
                 poll_seconds: float = 5.0, timeout_seconds: float = 1800.0,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> PublishResult:
    """Upload the week's documents (with metadata sidecars) to the knowledge base's bucket and
    ingest them; return once the ingestion job is COMPLETE, or "unchanged" when the same hashes
    were ingested before. Raises `IngestionFailed` on a FAILED/STOPPED job or after ``timeout_seconds``."""
    started = clock()
    if not lake.exists(manifest_key(week)):
        raise FileNotFoundError(f"the lake has no knowledge-base documents for week {week} "
                                f"({manifest_key(week)} is missing): build knowledge_base/kb_documents first")
    manifest = read_manifest(lake, week)
    hashes = {d["doc_id"]: d["sha256"] for d in manifest["documents"]}
    if s3 is None:
        import boto3

        s3 = boto3.client("s3", region_name=target.region_name)
    prefix = target.week_prefix(week)
    published_key, failed_key = target.state_key(week, PUBLISHED_FILE), target.state_key(week, FAILED_FILE)
    published = _read_json(s3, target.bucket, published_key)
    if published is not None and _published_matches(published, hashes, target):
        log.info("week %s: unchanged since ingestion job %s, nothing to publish", week, published["ingestion_job_id"])
        return PublishResult(week, "unchanged", 0, published["ingestion_job_id"], published.get("statistics", {}),
                             clock() - started)
    if published is not None and published.get("documents") is not None:
        # From here on S3 changes: the record stops vouching for it until a job is COMPLETE (it keeps
        # the last COMPLETE job, which the clientToken reads).
        _write_json(s3, target.bucket, published_key, {**published, "documents": None, "pending": hashes})

    existing = _list_etags(s3, target.bucket, prefix)
    wanted: set[str] = set()
    uploaded = 0
    for entry in manifest["documents"]:
        doc_id, sha = entry["doc_id"], entry["sha256"]
        data = lake.read_bytes(document_key(week, doc_id))
        if hashlib.sha256(data).hexdigest() != sha:  # never publish bytes the manifest does not vouch for
            raise ValueError(f"{document_key(week, doc_id)} no longer matches the sha256 in its manifest: the week "
                             "is being rewritten; publish it once knowledge_base/kb_documents has finished")
        key = f"{prefix}{doc_id}.md"
        files = {key: (data, "text/markdown; charset=utf-8"),
                 key + SIDECAR_SUFFIX: (_sidecar(week, doc_id, sha, data), "application/json")}
        wanted |= set(files)
        changed = [k for k, (body, _) in files.items() if existing.get(k) != _md5(body)]
        for k in changed:
            body, content_type = files[k]
            s3.put_object(Bucket=target.bucket, Key=k, Body=body, ContentType=content_type)
        uploaded += bool(changed)
    deleted = sorted(k for k in existing if k not in wanted and k not in (published_key, failed_key))
    _delete(s3, target.bucket, deleted)  # before the job, so the sync removes them from the index too

    if agent is None:
        import boto3

        agent = boto3.client("bedrock-agent", region_name=target.region_name)
    failed = _read_json(s3, target.bucket, failed_key)
    token = _client_token(week, hashes, target, published, failed)
    job = _start(agent, target, week, token, len(hashes))
    job_id = job["ingestionJobId"]
    log.info("week %s: %d document(s) uploaded, %d object(s) deleted, ingestion job %s started",
             week, uploaded, len(deleted), job_id)
    job_started = clock()
    while job["status"] != DONE and job["status"] not in FAILED:
        if clock() - job_started >= timeout_seconds:
            raise IngestionFailed(
                f"ingestion job {job_id} of {target.where()} for week {week} is still {job['status']} after "
                f"{timeout_seconds:g} s. It keeps running in Bedrock: publish the week again to wait for the same "
                "job (the same clientToken returns it), or follow it in the Bedrock console",
                job_id, job["status"], job.get("failureReasons"), job.get("statistics"))
        sleep(poll_seconds)
        job = _get(agent, target, job_id)

    statistics = dict(job.get("statistics") or {})
    if job["status"] in FAILED:
        reasons = list(job.get("failureReasons") or [])
        _write_json(s3, target.bucket, failed_key,
                    {"snapshot_week": week, "ingestion_job_id": job_id, "status": job["status"],
                     "failure_reasons": reasons, "statistics": statistics, "documents": hashes})
        raise IngestionFailed(
            f"ingestion job {job_id} of {target.where()} for week {week} ended {job['status']}: "
            f"{'; '.join(reasons) or 'Bedrock gave no reason'} (statistics: {json.dumps(statistics, sort_keys=True)}). "
            "Fix the cause (the data source's role must read the bucket and the embedding model must be "
            "enabled), then publish the week again: a new job is started",
            job_id, job["status"], reasons, statistics)
    if statistics.get("numberOfDocumentsFailed"):
        log.warning("week %s: ingestion job %s is COMPLETE but %s document(s) failed: %s", week, job_id,
                    statistics["numberOfDocumentsFailed"], statistics)
    _write_json(s3, target.bucket, published_key,
                {"snapshot_week": week, "knowledge_base_id": target.knowledge_base_id,
                 "data_source_id": target.data_source_id, "documents": hashes, "ingestion_job_id": job_id,
                 "statistics": statistics})
    if failed is not None:
        _delete(s3, target.bucket, [failed_key])
    return PublishResult(week, "ingested", uploaded, job_id, statistics, clock() - started, deleted)


def _published_matches(published: dict, hashes: dict[str, str], target: BedrockKnowledgeBase) -> bool:
    return (published.get("documents") == hashes and published.get("knowledge_base_id") == target.knowledge_base_id
            and published.get("data_source_id") == target.data_source_id and bool(published.get("ingestion_job_id")))


def _sidecar(week: str, doc_id: str, sha: str, data: bytes) -> bytes:
    front, _ = parse_document(data.decode())
    values = {"snapshot_week": week, "doc_id": doc_id, "doc_type": front.get("doc_type") or doc_id,
              "title": front.get("title") or doc_id, "sha256": sha}
    # Strings only: Bedrock filters compare a string attribute with a string value.
    return json.dumps({"metadataAttributes": {k: str(values[k]) for k in METADATA_KEYS}},
                      ensure_ascii=False, sort_keys=True).encode()


def _client_token(week: str, hashes: dict[str, str], target: BedrockKnowledgeBase, published: dict | None,
                  failed: dict | None) -> str:
    """Same inputs, same token: a retry gets the job already started. The last published job makes
    A → B → A a new job; the last failed job makes a re-run after a failure a new job."""
    basis = {"week": week, "documents": hashes, "knowledge_base_id": target.knowledge_base_id,
             "data_source_id": target.data_source_id,
             "after": (published or {}).get("ingestion_job_id"), "failed": (failed or {}).get("ingestion_job_id")}
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()  # 64 chars: Bedrock wants 33–256


def _start(agent: Any, target: BedrockKnowledgeBase, week: str, token: str, documents: int) -> dict:
    from botocore.exceptions import ClientError

    try:
        # The description depends on the token's inputs only: a retry must send the same request.
        return agent.start_ingestion_job(
            knowledgeBaseId=target.knowledge_base_id, dataSourceId=target.data_source_id, clientToken=token,
            description=f"engagement knowledge base, snapshot week {week}: {documents} documents")["ingestionJob"]
    except ClientError as exc:
        raise _client_error(exc, f"starting an ingestion job on {target.where()} for week {week}",
                            "another ingestion job may be running on this data source (one at a time): wait for it "
                            "and publish again; otherwise check the ids and bedrock:StartIngestionJob") from exc


def _get(agent: Any, target: BedrockKnowledgeBase, job_id: str) -> dict:
    from botocore.exceptions import ClientError

    try:
        return agent.get_ingestion_job(knowledgeBaseId=target.knowledge_base_id, dataSourceId=target.data_source_id,
                                       ingestionJobId=job_id)["ingestionJob"]
    except ClientError as exc:
        raise _client_error(exc, f"reading ingestion job {job_id} of {target.where()}", "check "
                            "bedrock:GetIngestionJob for these credentials; the job itself may still run") from exc


def _client_error(exc: Any, doing: str, todo: str) -> IngestionFailed:
    error = exc.response.get("Error", {})
    return IngestionFailed(f"{doing} failed: {error.get('Code', 'Unknown')}: {error.get('Message', exc)}; {todo}")


# ---------------------------------------------------------------------------------------------
# S3 helpers


def _read_json(s3: Any, bucket: str, key: str) -> dict | None:
    from botocore.exceptions import ClientError

    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise


def _write_json(s3: Any, bucket: str, key: str, value: dict) -> None:
    s3.put_object(Bucket=bucket, Key=key, ContentType="application/json",
                  Body=(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()  # compared with S3 ETags, not a security hash


def _list_etags(s3: Any, bucket: str, prefix: str) -> dict[str, str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {obj["Key"]: obj["ETag"].strip('"') for page in pages for obj in page.get("Contents", [])}


def _delete(s3: Any, bucket: str, keys: list[str]) -> None:
    for start in range(0, len(keys), 1000):  # delete_objects takes 1,000 keys at most
        response = s3.delete_objects(Bucket=bucket, Delete={
            "Objects": [{"Key": k} for k in keys[start:start + 1000]], "Quiet": True})
        if response.get("Errors"):
            raise KnowledgeBaseError(f"could not delete s3://{bucket}/ objects: {response['Errors'][:5]}; "
                                     "check s3:DeleteObject on the knowledge base's bucket")


# ---------------------------------------------------------------------------------------------
# Retrieval


def retrieve(target: BedrockKnowledgeBase, week: str, question: str, k: int = 5, client: Any = None) -> list[Passage]:
    """The ``k`` passages of ``week`` that Bedrock ranks best for ``question``, best first."""
    if not question.strip():
        raise ValueError("the question is empty")
    if not 1 <= k <= MAX_RESULTS:
        raise ValueError(f"k must be between 1 and {MAX_RESULTS} (Bedrock's limit), got {k}")
    if client is None:
        import boto3

        client = boto3.client("bedrock-agent-runtime", region_name=target.region_name)
    from botocore.exceptions import ClientError

    try:
        response = client.retrieve(
            knowledgeBaseId=target.knowledge_base_id, retrievalQuery={"text": question},
            retrievalConfiguration={"vectorSearchConfiguration": {
                "numberOfResults": k, "filter": {"equals": {"key": "snapshot_week", "value": week}}}})
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise KnowledgeBaseError(
            f"retrieving from {target.where()} for week {week} failed: {error.get('Code', 'Unknown')}: "
            f"{error.get('Message', exc)}; check the knowledge base id, the region and bedrock:Retrieve") from exc
    passages = []
    for n, result in enumerate(response.get("retrievalResults", [])):
        metadata = result.get("metadata") or {}
        doc_id = str(metadata.get("doc_id") or _doc_id_from_location(result, metadata))
        chunk_id = metadata.get(CHUNK_ID_KEY)
        passages.append(Passage(doc_id=doc_id, chunk_id=str(chunk_id) if chunk_id else f"{doc_id}#bedrock-{n}",
                                text=(result.get("content") or {}).get("text", ""),
                                score=float(result.get("score") or 0.0), title=str(metadata.get("title") or doc_id)))
    return passages


def _doc_id_from_location(result: dict, metadata: dict) -> str:
    # A document ingested without its sidecar: its id is the file name.
    uri = metadata.get(SOURCE_URI_KEY) or ((result.get("location") or {}).get("s3Location") or {}).get("uri") or ""
    return uri.rsplit("/", 1)[-1].removesuffix(".md") or "unknown"
