"""The S3 lake against a real AWS API server (moto) over HTTP."""

import boto3
import pandas as pd
import pytest

from engagement_dagster.defs.resources.lake import S3Lake


@pytest.fixture
def s3_endpoint(aws_endpoint):
    return aws_endpoint


@pytest.fixture
def s3_lake(s3_endpoint):
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="engagement-lake")
    return S3Lake(bucket="engagement-lake", prefix="team/a", endpoint_url=s3_endpoint)


def test_parquet_round_trip_listing_and_uris(s3_lake, s3_endpoint):
    frame = pd.DataFrame({"customer_id": ["1", "2"], "engagement_score": [10.5, 99.0]})
    uri = s3_lake.write_parquet("raw/customers/snapshot_week=2026-11-09/customers.parquet", frame)
    assert uri == "s3://engagement-lake/team/a/raw/customers/snapshot_week=2026-11-09/customers.parquet"
    pd.testing.assert_frame_equal(
        s3_lake.read_parquet("raw/customers/snapshot_week=2026-11-09/customers.parquet"), frame)
    assert s3_lake.exists("raw/customers/snapshot_week=2026-11-09/customers.parquet")
    assert not s3_lake.exists("raw/customers/snapshot_week=2026-11-09/customers")  # a prefix is not an object
    s3_lake.write_bytes("models/churn_model/champion.json", b"{}")
    assert s3_lake.list_keys("raw/") == ["raw/customers/snapshot_week=2026-11-09/customers.parquet"]
    raw = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket="engagement-lake")
    assert {o["Key"] for o in raw["Contents"]} == {
        "team/a/raw/customers/snapshot_week=2026-11-09/customers.parquet", "team/a/models/churn_model/champion.json"}


def test_a_source_on_s3_is_ingested_and_the_snapshot_file_published(s3_lake, s3_endpoint, tmp_path):
    """A user's gzipped export read from s3:// (the weekly schedule's ENGAGEMENT_SOURCE_URI), and
    the snapshot published from its local file (boto3's upload_file: multipart above 8 MB)."""
    from engagement_dagster.core.data import snapshot
    from tests.seed_export import write_seed_export

    frame = write_seed_export(tmp_path / "export.csv", 500, seed=5)
    frame.to_csv(tmp_path / "export.csv.gz", index=False)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="customer-exports")
    s3.upload_file(str(tmp_path / "export.csv.gz"), "customer-exports", "weekly/customers_2026-11-09.csv.gz")
    uri = "s3://customer-exports/weekly/customers_2026-11-09.csv.gz"
    result = snapshot.ingest_source(uri, tmp_path / "raw.parquet")
    assert result.rows == 500

    key = "raw/customers/snapshot_week=2026-11-09/customers.parquet"
    assert s3_lake.write_file(key, tmp_path / "raw.parquet") == f"s3://engagement-lake/team/a/{key}"
    assert s3_lake.read_bytes(key) == (tmp_path / "raw.parquet").read_bytes()
    assert list(s3_lake.read_parquet(key)["customer_id"]) == list(frame["customer_id"])
