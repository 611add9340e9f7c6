"""The knowledge base on AWS: S3 through a moto server over HTTP, Bedrock (bedrock-agent ingestion
jobs, bedrock-agent-runtime retrieve) through botocore's Stubber on real clients, so every request
is checked against botocore's service model. moto has neither ingestion jobs nor retrieve."""

import dataclasses
import datetime as dt
import hashlib
import json
import uuid

import boto3
import pytest
from botocore.stub import ANY, Stubber

from engagement_dagster.core.kb import documents
from engagement_dagster.core.kb.bedrock import (
    BedrockKnowledgeBase,
    IngestionFailed,
    KnowledgeBaseError,
    publish_week,
    retrieve,
    target_from_settings,
)
from engagement_dagster.core.kb.index import Passage
from engagement_dagster.defs.resources.embeddings import KbEmbeddings
from engagement_dagster.defs.resources.lake import LocalLake
from engagement_dagster.defs.resources.lease import WriterLease

WEEK = "2026-11-09"
PREFIX = f"kb/snapshot_week={WEEK}/"  # the documents (the data source's inclusion prefix is kb/)
STATE = f"state/snapshot_week={WEEK}/"  # the publication state, outside it
KB_ID, DS_ID = "KB12345678", "DS12345678"
NOW = dt.datetime(2026, 11, 10, 6, 0, tzinfo=dt.UTC)
STATS = {"numberOfDocumentsScanned": 3, "numberOfMetadataDocumentsScanned": 3, "numberOfNewDocumentsIndexed": 3,
         "numberOfModifiedDocumentsIndexed": 0, "numberOfMetadataDocumentsModified": 0, "numberOfDocumentsDeleted": 0,
         "numberOfDocumentsFailed": 0}


def _doc(doc_id: str, title: str, body: str) -> documents.Document:
    return documents.Document(doc_id, title, body, {"doc_id": doc_id, "title": title, "doc_type": f"{doc_id}_type",
                                                    "snapshot_week": WEEK})


DOCS = [_doc("weekly_summary", "Weekly summary (week of 2026-11-09)", "# Weekly summary\n\n12,000 customers scored.\n"),
        _doc("churn_by_segment", "Churn by segment",
             "# Churn by segment\n\n| segment | churn |\n|---|---|\n| a | 0.5 |\n"),
        _doc("model_card_churn_model", "Model card: churn_model — AUC 0.87", "# churn_model\n\nAUC 0.87.\n")]


def _write(lake, docs) -> None:
    documents.write_week(lake, documents.KnowledgeBaseWeek(WEEK, docs, {}, {}, None))


class Clock:
    """Time that passes only when the code under test sleeps."""

    def __init__(self):
        self.now, self.sleeps = 100.0, []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def env(aws_endpoint, tmp_path):
    s3 = boto3.client("s3", endpoint_url=aws_endpoint)
    bucket = f"kb-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    lake = LocalLake(root=str(tmp_path / "lake"))
    _write(lake, DOCS)
    return lake, s3, BedrockKnowledgeBase(bucket, "kb/", KB_ID, DS_ID, region_name="us-east-1")


class Agent:
    """A real bedrock-agent client under a Stubber that also records StartIngestionJob's params."""

    def __init__(self):
        self.client = boto3.client("bedrock-agent", region_name="us-east-1")
        self.stub = Stubber(self.client)
        self.starts = []
        self.client.meta.events.register("before-parameter-build.bedrock-agent.StartIngestionJob",
                                         lambda params, **_: self.starts.append(dict(params)))
        self.stub.activate()

    def job(self, job_id, statuses, statistics=STATS, reasons=(), token=ANY, documents=3):
        """start_ingestion_job answering ``statuses[0]``, then one get_ingestion_job per further status."""
        description = f"engagement knowledge base, snapshot week {WEEK}: {documents} documents"
        self.stub.add_response("start_ingestion_job", {"ingestionJob": _job(job_id, statuses[0], {}, ())},
                               {"knowledgeBaseId": KB_ID, "dataSourceId": DS_ID, "clientToken": token,
                                "description": description})
        for n, status in enumerate(statuses[1:], 2):
            last = n == len(statuses)  # the last status carries the statistics and reasons
            job = _job(job_id, status, statistics if last else {}, reasons if last else ())
            self.stub.add_response("get_ingestion_job", {"ingestionJob": job},
                                   {"knowledgeBaseId": KB_ID, "dataSourceId": DS_ID, "ingestionJobId": job_id})


def _job(job_id, status, statistics, reasons):
    job = {"knowledgeBaseId": KB_ID, "dataSourceId": DS_ID, "ingestionJobId": job_id, "status": status,
           "startedAt": NOW, "updatedAt": NOW}
    if statistics:
        job["statistics"] = statistics
    if reasons:
        job["failureReasons"] = list(reasons)
    return job


def _objects(s3, bucket) -> dict[str, bytes]:
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def _count_puts(s3) -> list:
    puts = []
    s3.meta.events.register("before-parameter-build.s3.PutObject", lambda params, **_: puts.append(params["Key"]))
    return puts


@pytest.mark.parametrize("state_prefix", ["state/", None])
def test_a_week_is_uploaded_with_sidecars_ingested_and_then_unchanged(env, state_prefix):
    lake, s3, target = env
    target = dataclasses.replace(target, state_prefix=state_prefix)
    state = STATE if state_prefix else PREFIX
    agent, clock = Agent(), Clock()
    agent.job("JOB0000001", ["STARTING", "IN_PROGRESS", "COMPLETE"])
    result = publish_week(lake, WEEK, target, s3=s3, agent=agent.client, sleep=clock.sleep, clock=clock)
    agent.stub.assert_no_pending_responses()
    assert (result.week, result.status, result.uploaded, result.ingestion_job_id) == (WEEK, "ingested", 3, "JOB0000001")
    assert result.statistics == STATS and result.deleted == []
    assert clock.sleeps == [5.0, 5.0] and result.seconds == 10.0
    token = agent.starts[0]["clientToken"]
    assert len(token) == 64 and token.isalnum()

    objects = _objects(s3, target.bucket)
    assert set(objects) == {f"{PREFIX}{d.doc_id}.md{suffix}" for d in DOCS for suffix in ("", ".metadata.json")} | {
        f"{state}_published.json"}
    manifest = documents.read_manifest(lake, WEEK)
    for entry in manifest["documents"]:
        data = lake.read_bytes(documents.document_key(WEEK, entry["doc_id"]))
        assert objects[f"{PREFIX}{entry['doc_id']}.md"] == data  # bytes exactly as in the lake
        assert json.loads(objects[f"{PREFIX}{entry['doc_id']}.md.metadata.json"]) == {"metadataAttributes": {
            "snapshot_week": WEEK, "doc_id": entry["doc_id"], "doc_type": f"{entry['doc_id']}_type",
            "title": entry["title"], "sha256": hashlib.sha256(data).hexdigest()}}
    published = json.loads(objects[f"{state}_published.json"])
    assert published["documents"] == {e["doc_id"]: e["sha256"] for e in manifest["documents"]}
    assert (published["ingestion_job_id"], published["statistics"]) == ("JOB0000001", STATS)

    # Again, unchanged: no upload and no Bedrock call (the Stubber has nothing queued and would raise).
    puts, idle = _count_puts(s3), Agent()
    again = publish_week(lake, WEEK, target, s3=s3, agent=idle.client, sleep=clock.sleep, clock=clock)
    assert (again.status, again.uploaded, again.ingestion_job_id, again.statistics) == (
        "unchanged", 0, "JOB0000001", STATS)
    assert puts == [] and idle.starts == [] and _objects(s3, target.bucket) == objects


def test_a_changed_document_is_reuploaded_and_a_removed_one_deleted(env):
    lake, s3, target = env
    first = Agent()
    first.job("JOB0000001", ["STARTING", "COMPLETE"])
    publish_week(lake, WEEK, target, s3=s3, agent=first.client, sleep=lambda _: None)

    changed = _doc("weekly_summary", DOCS[0].title, "# Weekly summary\n\n12,500 customers scored.\n")
    _write(lake, [changed, DOCS[1]])  # churn_by_segment unchanged, the model card gone
    puts, second = _count_puts(s3), Agent()
    second.job("JOB0000002", ["STARTING", "IN_PROGRESS", "COMPLETE"], documents=2)
    result = publish_week(lake, WEEK, target, s3=s3, agent=second.client, sleep=lambda _: None)
    second.stub.assert_no_pending_responses()
    assert (result.status, result.uploaded, result.ingestion_job_id) == ("ingested", 1, "JOB0000002")
    assert result.deleted == [f"{PREFIX}model_card_churn_model.md", f"{PREFIX}model_card_churn_model.md.metadata.json"]
    # The record marked pending, the changed document and its sidecar (its sha256 changed), the record: no more.
    assert puts == [f"{STATE}_published.json", f"{PREFIX}weekly_summary.md", f"{PREFIX}weekly_summary.md.metadata.json",
                    f"{STATE}_published.json"]
    assert second.starts[0]["clientToken"] != first.starts[0]["clientToken"]
    objects = _objects(s3, target.bucket)
    assert objects[f"{PREFIX}weekly_summary.md"] == changed.render().encode()
    assert not any("model_card_churn_model" in k for k in objects)
    assert set(json.loads(objects[f"{STATE}_published.json"])["documents"]) == {"weekly_summary", "churn_by_segment"}


def test_a_failed_job_names_its_reason_and_a_rerun_starts_a_new_job(env):
    lake, s3, target = env
    failing = Agent()
    reason = "Access denied: the data source role cannot read s3://bucket/kb/"
    failing.job("JOB0000001", ["STARTING", "IN_PROGRESS", "FAILED"], statistics={**STATS, "numberOfDocumentsFailed": 3},
                reasons=[reason])
    with pytest.raises(IngestionFailed) as info:
        publish_week(lake, WEEK, target, s3=s3, agent=failing.client, sleep=lambda _: None)
    error = info.value
    assert "JOB0000001" in str(error) and "ended FAILED" in str(error) and reason in str(error)
    assert '"numberOfDocumentsFailed": 3' in str(error) and "publish the week again" in str(error)
    assert (error.job_id, error.status, error.failure_reasons) == ("JOB0000001", "FAILED", [reason])
    objects = _objects(s3, target.bucket)
    assert f"{STATE}_published.json" not in objects
    assert json.loads(objects[f"{STATE}_failed.json"])["failure_reasons"] == [reason]

    retry = Agent()  # the same documents, but a new clientToken: Bedrock must not hand back the failed job
    retry.job("JOB0000002", ["STARTING", "COMPLETE"])
    result = publish_week(lake, WEEK, target, s3=s3, agent=retry.client, sleep=lambda _: None)
    assert (result.status, result.uploaded, result.ingestion_job_id) == ("ingested", 0, "JOB0000002")
    assert retry.starts[0]["clientToken"] != failing.starts[0]["clientToken"]
    objects = _objects(s3, target.bucket)
    assert f"{STATE}_failed.json" not in objects and f"{STATE}_published.json" in objects


def test_a_week_that_goes_back_after_a_failed_change_is_published_again(env):
    """A published; B uploaded but its job FAILED; the lake back at A. The record must not call the
    week unchanged: S3 holds B's bytes. A's bytes go back up and a new job runs."""
    lake, s3, target = env
    first = Agent()
    first.job("JOB0000001", ["STARTING", "COMPLETE"])
    publish_week(lake, WEEK, target, s3=s3, agent=first.client, sleep=lambda _: None)
    original = _objects(s3, target.bucket)

    _write(lake, [_doc("weekly_summary", DOCS[0].title, "# Weekly summary\n\nrevised.\n"), *DOCS[1:]])
    failing = Agent()
    failing.job("JOB0000002", ["STARTING", "FAILED"], reasons=["throttled"])
    with pytest.raises(IngestionFailed, match="throttled"):
        publish_week(lake, WEEK, target, s3=s3, agent=failing.client, sleep=lambda _: None)
    assert json.loads(_objects(s3, target.bucket)[f"{STATE}_published.json"])["documents"] is None  # pending

    _write(lake, DOCS)
    back = Agent()
    back.job("JOB0000003", ["STARTING", "COMPLETE"])
    result = publish_week(lake, WEEK, target, s3=s3, agent=back.client, sleep=lambda _: None)
    assert (result.status, result.uploaded, result.ingestion_job_id) == ("ingested", 1, "JOB0000003")
    tokens = {a.starts[0]["clientToken"] for a in (first, failing, back)}
    assert len(tokens) == 3  # A after A's job is not A the first time: a new job
    objects = _objects(s3, target.bucket)
    assert {k: v for k, v in objects.items() if k.startswith(PREFIX)} == {
        k: v for k, v in original.items() if k.startswith(PREFIX)}


def test_a_job_past_the_timeout_is_reported_and_a_rerun_waits_on_the_same_job(env):
    lake, s3, target = env
    slow, clock = Agent(), Clock()
    slow.job("JOB0000001", ["STARTING", "IN_PROGRESS", "IN_PROGRESS", "IN_PROGRESS"])
    with pytest.raises(IngestionFailed) as info:
        publish_week(lake, WEEK, target, s3=s3, agent=slow.client, poll_seconds=4, timeout_seconds=12,
                     sleep=clock.sleep, clock=clock)
    assert "ingestion job JOB0000001" in str(info.value) and "still IN_PROGRESS after 12 s" in str(info.value)
    assert (info.value.job_id, info.value.status) == ("JOB0000001", "IN_PROGRESS")
    assert clock.sleeps == [4, 4, 4]

    # A re-run sends the same clientToken (checked exactly), so Bedrock returns the running job.
    token = slow.starts[0]["clientToken"]
    resumed = Agent()
    resumed.job("JOB0000001", ["IN_PROGRESS", "COMPLETE"], token=token)
    result = publish_week(lake, WEEK, target, s3=s3, agent=resumed.client, sleep=clock.sleep, clock=clock)
    resumed.stub.assert_no_pending_responses()
    assert (result.status, result.uploaded, result.ingestion_job_id) == ("ingested", 0, "JOB0000001")


def test_a_start_refused_by_bedrock_is_explained(env):
    lake, s3, target = env
    agent = Agent()
    agent.stub.add_client_error("start_ingestion_job", service_error_code="ConflictException",
                                service_message="An ingestion job is already running", http_status_code=409)
    with pytest.raises(IngestionFailed, match=r"ConflictException: An ingestion job is already running; another"):
        publish_week(lake, WEEK, target, s3=s3, agent=agent.client, sleep=lambda _: None)


def test_a_missing_week_or_a_document_that_no_longer_matches_its_manifest_is_refused(env, tmp_path):
    lake, s3, target = env
    with pytest.raises(FileNotFoundError, match="build knowledge_base/kb_documents first"):
        publish_week(lake, "2026-11-16", target, s3=s3, agent=Agent().client)
    lake.write_bytes(documents.document_key(WEEK, "weekly_summary"), b"---\nrewritten\n")
    with pytest.raises(ValueError, match="no longer matches the sha256 in its manifest"):
        publish_week(lake, WEEK, target, s3=s3, agent=Agent().client)


def test_target_from_settings():
    target = target_from_settings({"ENGAGEMENT_KB_BUCKET": "eng-kb", "ENGAGEMENT_KB_ID": KB_ID,
                                   "ENGAGEMENT_KB_DATA_SOURCE_ID": DS_ID, "AWS_REGION": "eu-west-1"})
    assert target == BedrockKnowledgeBase("eng-kb", "kb/", KB_ID, DS_ID, "eu-west-1", "state/")
    assert target.week_prefix(WEEK) == PREFIX and target.state_key(WEEK, "_published.json") == f"{STATE}_published.json"
    with pytest.raises(ValueError) as info:
        target_from_settings({"ENGAGEMENT_KB_ID": KB_ID})
    assert "ENGAGEMENT_KB_BUCKET" in str(info.value) and "ENGAGEMENT_KB_DATA_SOURCE_ID" in str(info.value)


# --- retrieval


@pytest.fixture
def runtime(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("bedrock-agent-runtime", region_name="us-east-1")
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


def test_retrieve_filters_on_the_week_and_maps_passages(runtime):
    client, stub = runtime
    target = BedrockKnowledgeBase("bucket", "kb/", KB_ID, DS_ID)
    question = "Which segment churns most?"
    stub.add_response("retrieve", {"retrievalResults": [
        {"content": {"type": "TEXT", "text": "| a | 0.5 |"}, "score": 0.81,
         "location": {"type": "S3", "s3Location": {"uri": f"s3://bucket/kb/snapshot_week={WEEK}/churn_by_segment.md"}},
         "metadata": {"doc_id": "churn_by_segment", "title": "Churn by segment", "snapshot_week": WEEK,
                      "x-amz-bedrock-kb-chunk-id": "1%3A0%3AabcDEF"}},
        {"content": {"text": "12,000 customers scored."}, "score": 0.42,
         "metadata": {"doc_id": "weekly_summary", "title": "Weekly summary", "snapshot_week": WEEK}},
        {"content": {"text": "AUC 0.87."},  # no sidecar: the id comes from the file name
         "location": {"type": "S3", "s3Location": {"uri": f"s3://bucket/kb/snapshot_week={WEEK}/model_card_x.md"}}},
    ]}, {"knowledgeBaseId": KB_ID, "retrievalQuery": {"text": question}, "retrievalConfiguration": {
        "vectorSearchConfiguration": {"numberOfResults": 3,
                                      "filter": {"equals": {"key": "snapshot_week", "value": WEEK}}}}})
    assert retrieve(target, WEEK, question, k=3, client=client) == [
        Passage("churn_by_segment", "1%3A0%3AabcDEF", "| a | 0.5 |", 0.81, "Churn by segment"),
        Passage("weekly_summary", "weekly_summary#bedrock-1", "12,000 customers scored.", 0.42, "Weekly summary"),
        Passage("model_card_x", "model_card_x#bedrock-2", "AUC 0.87.", 0.0, "model_card_x"),
    ]


def test_retrieve_errors(runtime):
    client, stub = runtime
    target = BedrockKnowledgeBase("bucket", "kb/", KB_ID, DS_ID)
    stub.add_client_error("retrieve", service_error_code="ResourceNotFoundException",
                          service_message="Knowledge base not found", http_status_code=404)
    with pytest.raises(KnowledgeBaseError, match=rf"knowledge base {KB_ID} .*ResourceNotFoundException"):
        retrieve(target, WEEK, "anything", client=client)
    with pytest.raises(ValueError, match="between 1 and 100"):
        retrieve(target, WEEK, "anything", k=101, client=client)


# --- the kb_index asset on AWS: the week published to the knowledge base, visible in its metadata


def test_the_kb_index_asset_publishes_the_week_to_bedrock_on_aws(aws_endpoint, monkeypatch):
    import functools

    import dagster as dg

    from engagement_dagster.core.kb import bedrock
    from engagement_dagster.defs.kb import assets as kb_assets
    from engagement_dagster.defs.resources.lake import S3Lake

    s3 = boto3.client("s3", endpoint_url=aws_endpoint)
    lake_bucket, kb_bucket = f"lake-{uuid.uuid4().hex[:12]}", f"kb-{uuid.uuid4().hex[:12]}"
    for name in (lake_bucket, kb_bucket):
        s3.create_bucket(Bucket=name)
    lake = S3Lake(bucket=lake_bucket, prefix="engagement")
    _write(lake, DOCS)
    for name, value in {"ENGAGEMENT_ENV": "aws", "ENGAGEMENT_KB_BUCKET": kb_bucket, "ENGAGEMENT_KB_ID": KB_ID,
                        "ENGAGEMENT_KB_DATA_SOURCE_ID": DS_ID, "ENGAGEMENT_KB_EMBEDDINGS": "off"}.items():
        monkeypatch.setenv(name, value)
    agent = Agent()
    agent.job("JOB0000009", ["STARTING", "COMPLETE"])
    # The asset calls publish_week(lake, week, target): hand it the stubbed Bedrock client, no real waiting.
    monkeypatch.setattr(kb_assets.bedrock, "publish_week", functools.partial(
        bedrock.publish_week, agent=agent.client, sleep=lambda _: None))

    result = dg.materialize([kb_assets.kb_index], partition_key=WEEK,
                            resources={"lake": lake, "writer_lease": WriterLease(lake=lake),
                                       "kb_embeddings": KbEmbeddings()})
    agent.stub.assert_no_pending_responses()
    event = next(e for e in result.get_asset_materialization_events() if e.asset_key == kb_assets.KB_INDEX)
    meta = {k: v.value for k, v in event.event_specific_data.materialization.metadata.items()}
    assert (meta["bedrock_status"], meta["bedrock_ingestion_job"], meta["bedrock_uploaded"]) == (
        "ingested", "JOB0000009", 3)
    assert meta["backend"].startswith("bm25 (lexical only") and meta["embedding_model"] == "none (lexical only)"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=kb_bucket)["Contents"]}
    assert f"{PREFIX}weekly_summary.md" in keys and f"{STATE}_published.json" in keys
    # the local (lexical) index is in the lake too: the offline answerer works on AWS without Bedrock
    assert lake.exists(f"kb/index/snapshot_week={WEEK}/index_manifest.json")
