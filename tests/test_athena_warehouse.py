"""Athena reads on a real AWS API server (moto): results typed by Athena's own column metadata."""

import json
import urllib.request

import boto3
import pandas as pd

from engagement_dagster.defs.resources.warehouse import AthenaWarehouse

COLUMNS = [("customer_id", "varchar"), ("churn_probability", "double"), ("segment_id", "integer"),
           ("is_anomaly", "boolean"), ("snapshot_week", "date"), ("segment", "varchar")]
ROWS = [["00042", "0.73", "2", "true", "2026-11-09", "Casual"],
        ["7e3c-1", "0.05", "", "false", "2026-11-09", ""]]


def test_athena_results_keep_their_types(aws_endpoint):
    """What moto's Athena will answer is registered through its API (it runs no SQL); the
    warehouse then asks, polls, reads the result's ColumnInfo and CSV from S3, and types it."""
    boto3.client("s3").create_bucket(Bucket="athena-results")
    results = {"results": [{
        "rows": [{"Data": [{"VarCharValue": v} for v in row]} for row in [[n for n, _ in COLUMNS], *ROWS]],
        "column_info": [{"Name": n, "Type": t, "CatalogName": "hive", "SchemaName": "", "TableName": "",
                         "Label": n, "Nullable": "UNKNOWN", "CaseSensitive": False} for n, t in COLUMNS],
    }]}
    request = urllib.request.Request(f"{aws_endpoint}/moto-api/static/athena/query-results",
                                     data=json.dumps(results).encode(), headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request).close()

    warehouse = AthenaWarehouse(database="engagement", output_location="s3://athena-results/staging/",
                                poll_seconds=0.01)
    frame = warehouse.read_table("predictions_final")
    assert list(frame["customer_id"]) == ["00042", "7e3c-1"]  # an id never becomes a number
    assert frame["churn_probability"].dtype == "float64" and frame["churn_probability"][0] == 0.73
    assert str(frame["segment_id"].dtype) == "Int64" and pd.isna(frame["segment_id"][1])
    assert list(frame["is_anomaly"]) == [True, False]
    assert frame["snapshot_week"][0] == pd.Timestamp("2026-11-09")
