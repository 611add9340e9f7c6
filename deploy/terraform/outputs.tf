# What the other parts of the project must match (dagster.yaml, the state machine, CI).

output "cluster_name" {
  description = "ECS cluster the services and the runs live in."
  value       = module.compute.cluster_name
}

output "cluster_arn" {
  value = module.compute.cluster_arn
}

output "container_name" {
  description = "Container name in the code server and run task definitions (dagster.yaml run_launcher.container_name)."
  value       = module.compute.container_name
}

output "task_families" {
  description = "Task definition families: code_server, webserver, daemon and run (16 vCPU / 64 GB)."
  value       = module.compute.task_families
}

output "run_task_family" {
  value = module.compute.run_task_family
}

output "ecr_repository_url" {
  value = module.compute.ecr_repository_url
}

output "image" {
  description = "Image every task runs (DAGSTER_CURRENT_IMAGE)."
  value       = module.compute.image
}

output "code_server_address" {
  description = "host:port the webserver and daemon reach the gRPC code server at."
  value       = module.compute.code_server_address
}

output "task_role_arn" {
  value = module.compute.task_role_arn
}

output "execution_role_arn" {
  value = module.compute.execution_role_arn
}

output "tasks_security_group_id" {
  description = "Security group for any task started in the VPC (RunTask network configuration)."
  value       = module.compute.tasks_security_group_id
}

output "private_subnet_ids" {
  value = var.private_subnet_ids
}

output "container_environment" {
  description = "Environment variables every task gets (DAGSTER_PG_PASSWORD comes from Secrets Manager)."
  value       = module.compute.environment
}

output "sns_topic_arn" {
  description = "Topic the weekly refresh publishes failures to."
  value       = module.orchestration.sns_topic_arn
}

output "state_machine_arn" {
  value = module.orchestration.state_machine_arn
}

output "schedule_rule_name" {
  value = module.orchestration.schedule_rule_name
}

output "lake_bucket" {
  value = module.storage.lake_bucket
}

output "athena_results_bucket" {
  value = module.storage.athena_results_bucket
}

output "access_logs_bucket" {
  value = module.storage.access_logs_bucket
}

output "db_endpoint" {
  description = "host:port of the Dagster storage database."
  value       = module.database.endpoint
}

output "db_address" {
  value = module.database.address
}

output "db_master_user_secret_arn" {
  description = "Secrets Manager secret RDS manages for the master user (JSON with username and password)."
  value       = module.database.master_user_secret_arn
}

output "glue_raw_database" {
  value = module.catalog.glue_raw_database
}

output "glue_database" {
  value = module.catalog.glue_database
}

output "athena_workgroup" {
  value = module.catalog.athena_workgroup
}

output "athena_staging" {
  value = module.catalog.athena_staging
}

output "kms_key_arn" {
  value = module.kms.key_arn
}

output "knowledge_base_id" {
  description = "Bedrock knowledge base id (ENGAGEMENT_KB_ID); null with knowledge_base = false."
  value       = var.knowledge_base ? module.knowledge_base[0].knowledge_base_id : null
}

output "data_source_id" {
  description = "The knowledge base's S3 data source id (ENGAGEMENT_KB_DATA_SOURCE_ID)."
  value       = var.knowledge_base ? module.knowledge_base[0].data_source_id : null
}

output "kb_bucket" {
  description = "Documents bucket (ENGAGEMENT_KB_BUCKET): kb/snapshot_week=YYYY-MM-DD/<doc_id>.md and .md.metadata.json sidecars are ingested; state files go under state/."
  value       = var.knowledge_base ? module.knowledge_base[0].kb_bucket : null
}

output "prediction_api_url" {
  description = "The prediction API's stage URL (POST <url>/predict with the header x-api-key); null with prediction_api = false."
  value       = var.prediction_api ? module.prediction_api[0].invoke_url : null
}

output "prediction_api_key_ids" {
  description = "API key ids by name; the value: aws apigateway get-api-key --api-key <id> --include-value --query value --output text."
  value       = var.prediction_api ? module.prediction_api[0].api_key_ids : null
}

output "prediction_api_repository_url" {
  description = "ECR repository of the API image (push it under the release's image_tag)."
  value       = var.prediction_api ? module.prediction_api[0].repository_url : null
}

output "prediction_cache_table" {
  description = "DynamoDB table of the prediction cache (ENGAGEMENT_API_CACHE_TABLE)."
  value       = var.prediction_api ? module.prediction_api[0].cache_table : null
}

output "prediction_api_function_name" {
  value = var.prediction_api ? module.prediction_api[0].function_name : null
}
