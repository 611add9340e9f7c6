output "glue_raw_database" {
  value = aws_glue_catalog_database.raw.name
}

output "glue_database" {
  value = aws_glue_catalog_database.dbt.name
}

output "athena_workgroup" {
  value = aws_athena_workgroup.this.name
}

output "athena_workgroup_arn" {
  value = aws_athena_workgroup.this.arn
}

output "athena_staging" {
  description = "s3:// prefix of query results (ENGAGEMENT_ATHENA_STAGING), the workgroup's enforced output location."
  value       = local.athena_staging
}
