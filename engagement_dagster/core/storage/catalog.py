"""Glue tables and weekly partitions over the lake's Parquet, as plain Python (no Dagster): what
lets Athena find `raw/customers/` and `predictions/` by table name. The Dagster resources in
`engagement_dagster.defs.resources.catalog` are thin wrappers.

After a week's files are written, the table is registered (created on first use, its columns
widened when the Parquet schema gains one) and the week's partition (`snapshot_week=…`,
idempotent). No crawler: the schema is the Parquet schema just written, known exactly, and each
run costs a few API calls instead of a crawl.
"""

from __future__ import annotations

import boto3
import pyarrow as pa

PARQUET_STORAGE = {
    "InputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
    "OutputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
    "SerdeInfo": {"SerializationLibrary": "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe",
                  "Parameters": {"serialization.format": "1"}},
}


def glue_type(arrow_type: pa.DataType) -> str:
    """The Hive/Glue type Athena reads an Arrow (Parquet) column as."""
    if pa.types.is_dictionary(arrow_type):
        return glue_type(arrow_type.value_type)
    checks = [
        (pa.types.is_boolean, "boolean"), (pa.types.is_int8, "tinyint"), (pa.types.is_int16, "smallint"),
        (pa.types.is_int32, "int"), (pa.types.is_int64, "bigint"), (pa.types.is_float32, "float"),
        (pa.types.is_float64, "double"), (pa.types.is_string, "string"), (pa.types.is_large_string, "string"),
        (pa.types.is_date32, "date"), (pa.types.is_timestamp, "timestamp"),
    ]
    for check, name in checks:
        if check(arrow_type):
            return name
    if pa.types.is_decimal(arrow_type):
        return f"decimal({arrow_type.precision},{arrow_type.scale})"
    raise TypeError(f"no Glue type for Parquet column type {arrow_type}")


def glue_columns(schema: pa.Schema) -> list[dict]:
    return [{"Name": field.name, "Type": glue_type(field.type)} for field in schema]


class GlueTables:
    """The Glue database of the lake's tables (the dbt source `lake`); ``endpoint_url``: a custom
    endpoint, e.g. a local moto server."""

    def __init__(self, database: str, region_name: str | None = None, endpoint_url: str | None = None):
        self.database, self.region_name, self.endpoint_url = database, region_name, endpoint_url

    def register_partition(self, table: str, table_uri: str, schema: pa.Schema, snapshot_week: str) -> None:
        glue = boto3.client("glue", region_name=self.region_name, endpoint_url=self.endpoint_url)
        root = table_uri.rstrip("/") + "/"
        columns = glue_columns(schema)
        self._ensure_database(glue)
        self._ensure_table(glue, table, root, columns)
        storage = {**PARQUET_STORAGE, "Columns": columns, "Location": f"{root}snapshot_week={snapshot_week}/"}
        partition = {"Values": [snapshot_week], "StorageDescriptor": storage}
        try:
            glue.create_partition(DatabaseName=self.database, TableName=table, PartitionInput=partition)
        except glue.exceptions.AlreadyExistsException:  # a re-run of the week: same place, newest columns
            glue.update_partition(DatabaseName=self.database, TableName=table, PartitionValueList=[snapshot_week],
                                  PartitionInput=partition)

    def _ensure_database(self, glue) -> None:
        try:
            glue.create_database(DatabaseInput={"Name": self.database})
        except glue.exceptions.AlreadyExistsException:
            pass

    def _ensure_table(self, glue, table: str, root: str, columns: list[dict]) -> None:
        try:
            existing = glue.get_table(DatabaseName=self.database, Name=table)["Table"]
        except glue.exceptions.EntityNotFoundException:
            existing = None
        if existing is not None:
            known = existing["StorageDescriptor"]["Columns"]
            names = {c["Name"] for c in known}
            added = [c for c in columns if c["Name"] not in names]
            if not added and existing["StorageDescriptor"].get("Location") == root:
                return
            # Columns are only ever added: older partitions keep reading (as null) what they lack.
            columns = [{"Name": c["Name"], "Type": c["Type"]} for c in known] + added
        table_input = {
            "Name": table, "TableType": "EXTERNAL_TABLE",
            "Parameters": {"classification": "parquet", "EXTERNAL": "TRUE"},
            "PartitionKeys": [{"Name": "snapshot_week", "Type": "string"}],
            "StorageDescriptor": {**PARQUET_STORAGE, "Columns": columns, "Location": root},
        }
        if existing is None:
            glue.create_table(DatabaseName=self.database, TableInput=table_input)
        else:
            glue.update_table(DatabaseName=self.database, TableInput=table_input)
