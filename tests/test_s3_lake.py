"""The S3 lake against a real AWS API server (moto) over HTTP."""

import boto3
import pandas as pd
import pytest

from engagement_dagster.lake import S3Lake


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
