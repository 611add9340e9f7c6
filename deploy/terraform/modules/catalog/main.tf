# Glue databases and the Athena workgroup. The lake's own tables (raw_customers,
# customer_predictions) are registered by the code in the raw database; dbt builds its tables in
# the other. The workgroup's settings are enforced: clients cannot turn off result encryption,
# change the results location or lift the per-query scan limit.

resource "aws_glue_catalog_database" "raw" {
  name        = var.glue_raw_database
  description = "${var.name_prefix}: lake tables (raw_customers, customer_predictions)"
}

resource "aws_glue_catalog_database" "dbt" {
  name        = var.glue_database
  description = "${var.name_prefix}: tables dbt builds"
}

locals {
  athena_staging = "s3://${var.athena_results_bucket}/athena/"
}

resource "aws_athena_workgroup" "this" {
  name        = var.name_prefix
  description = "${var.name_prefix}: dbt and the lake's queries"
  state       = "ENABLED"

  configuration {
    enforce_workgroup_configuration    = true
    publish_cloudwatch_metrics_enabled = true
    bytes_scanned_cutoff_per_query     = var.bytes_scanned_cutoff_per_query
    requester_pays_enabled             = false

    engine_version {
      selected_engine_version = "Athena engine version 3"
    }

    result_configuration {
      output_location = local.athena_staging

      encryption_configuration {
        encryption_option = "SSE_KMS"
        kms_key_arn       = var.kms_key_arn
      }
    }
  }
}
