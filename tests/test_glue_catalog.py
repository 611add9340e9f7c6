"""On AWS, each week's raw and prediction files are registered in the Glue catalog Athena reads
(a real AWS API server: moto), with the Parquet schema the asset wrote."""

import io

import boto3
import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engagement_dagster.core.data.snapshot import RAW_TABLE, raw_key
from engagement_dagster.defs.ingest.assets import raw_customers
from engagement_dagster.defs.resources import build_resources
from engagement_dagster.defs.resources.catalog import GlueCatalog, glue_columns, glue_type

WEEK_1, WEEK_2 = "2026-11-02", "2026-11-09"


@pytest.fixture
def aws(aws_endpoint, monkeypatch):
    monkeypatch.setenv("ENGAGEMENT_LAKE_BUCKET", "catalog-lake")
    monkeypatch.setenv("ENGAGEMENT_LAKE_PREFIX", "prod")
    monkeypatch.setenv("ENGAGEMENT_GLUE_RAW_DATABASE", "catalog_raw")
    monkeypatch.setenv("ENGAGEMENT_GLUE_DATABASE", "catalog")
    monkeypatch.setenv("ENGAGEMENT_ATHENA_WORKGROUP", "primary")
    monkeypatch.setenv("ENGAGEMENT_ATHENA_STAGING", "s3://catalog-lake/athena/")
    monkeypatch.setenv("ENGAGEMENT_ATHENA_DATA", "s3://catalog-lake/warehouse/")
    boto3.client("s3").create_bucket(Bucket="catalog-lake")
    return boto3.client("glue")


def ingest(week):
    resources = build_resources("aws")
    result = dg.materialize([raw_customers], partition_key=week, resources=resources,
                            run_config={"ops": {"ingest__raw_customers": {"config": {"n_customers": 500}}}})
    assert result.success
    return resources["lake"]


def test_raw_customers_registers_its_table_and_week_in_glue(aws):
    lake = ingest(WEEK_1)
    ingest(WEEK_2)
    ingest(WEEK_1)  # a re-run of a week changes nothing in the catalog

    table = aws.get_table(DatabaseName="catalog_raw", Name=RAW_TABLE)["Table"]
    written = pq.read_schema(io.BytesIO(lake.read_bytes(raw_key(WEEK_1))))
    assert table["StorageDescriptor"]["Columns"] == glue_columns(written)
    assert table["StorageDescriptor"]["Location"] == "s3://catalog-lake/prod/raw/customers/"
    assert table["PartitionKeys"] == [{"Name": "snapshot_week", "Type": "string"}]
    assert "ParquetHiveSerDe" in table["StorageDescriptor"]["SerdeInfo"]["SerializationLibrary"]

    partitions = aws.get_partitions(DatabaseName="catalog_raw", TableName=RAW_TABLE)["Partitions"]
    assert sorted((p["Values"][0], p["StorageDescriptor"]["Location"]) for p in partitions) == [
        (WEEK_1, f"s3://catalog-lake/prod/raw/customers/snapshot_week={WEEK_1}/"),
        (WEEK_2, f"s3://catalog-lake/prod/raw/customers/snapshot_week={WEEK_2}/")]


def test_a_new_column_widens_the_table_and_old_columns_stay(aws):
    catalog = GlueCatalog(database="catalog_raw")
    old = pa.Schema.from_pandas(pd.DataFrame({"customer_id": ["a"], "churn_probability": [0.2]}), preserve_index=False)
    new = pa.Schema.from_pandas(pd.DataFrame({"customer_id": ["a"], "segment_id": pd.Series([1], dtype="int32"),
                                              "churn_probability": [0.2]}), preserve_index=False)
    catalog.register_partition("customer_predictions", "s3://catalog-lake/prod/predictions", old, WEEK_1)
    catalog.register_partition("customer_predictions", "s3://catalog-lake/prod/predictions", new, WEEK_2)
    table = aws.get_table(DatabaseName="catalog_raw", Name="customer_predictions")["Table"]
    columns = table["StorageDescriptor"]["Columns"]
    assert [(c["Name"], c["Type"]) for c in columns] == [
        ("customer_id", "string"), ("churn_probability", "double"), ("segment_id", "int")]
    partitions = aws.get_partitions(DatabaseName="catalog_raw", TableName="customer_predictions")["Partitions"]
    assert {p["Values"][0] for p in partitions} == {WEEK_1, WEEK_2}


def test_glue_types_of_the_lake_columns():
    assert [glue_type(t) for t in (pa.large_string(), pa.int64(), pa.float32(), pa.bool_(), pa.timestamp("ms"),
                                   pa.dictionary(pa.int8(), pa.string()))] == [
        "string", "bigint", "float", "boolean", "timestamp", "string"]
    with pytest.raises(TypeError, match="no Glue type"):
        glue_type(pa.list_(pa.int64()))
