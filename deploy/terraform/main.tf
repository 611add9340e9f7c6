# Root module. Platform: kms (one project key), storage (buckets), catalog (Glue, Athena),
# database (Dagster's Postgres). Deployment: compute (ECR, cluster, the code location, webserver
# and daemon services, the run family, IAM). Export: orchestration (the weekly state machine).
# Agent: knowledge_base (Bedrock knowledge base on S3 Vectors, its documents bucket, the agent's
# grants to the task role); left out with knowledge_base = false. Serving: prediction_api (API
# Gateway, the Lambda function from the API image, the DynamoDB prediction cache); left out with
# prediction_api = false.

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  tags = merge(
    {
      project    = var.name_prefix
      managed-by = "terraform"
    },
    var.tags,
  )

  # AWS mode's settings (engagement_dagster/core/settings.py), as the Dagster containers get them:
  # the prediction API opens the same lake.
  lake_setting_names = [
    "ENGAGEMENT_LAKE_BUCKET",
    "ENGAGEMENT_LAKE_PREFIX",
    "ENGAGEMENT_GLUE_RAW_DATABASE",
    "ENGAGEMENT_GLUE_DATABASE",
    "ENGAGEMENT_ATHENA_WORKGROUP",
    "ENGAGEMENT_ATHENA_STAGING",
    "ENGAGEMENT_ATHENA_DATA",
  ]

  state_machine_definition_path = coalesce(
    var.state_machine_definition_path,
    "${path.module}/../step_functions/weekly_refresh.asl.json",
  )
}

module "kms" {
  source = "./modules/kms"

  name_prefix = var.name_prefix
  account_id  = local.account_id
  partition   = local.partition
  region      = var.aws_region
}

module "storage" {
  source = "./modules/storage"

  name_prefix                   = var.name_prefix
  account_id                    = local.account_id
  partition                     = local.partition
  region                        = var.aws_region
  kms_key_arn                   = module.kms.key_arn
  lake_prefix                   = var.lake_prefix
  athena_results_retention_days = var.athena_results_retention_days
  access_log_retention_days     = var.access_log_retention_days
  extra_logged_bucket_arns      = var.knowledge_base ? [module.knowledge_base[0].kb_bucket_arn] : []
}

module "catalog" {
  source = "./modules/catalog"

  name_prefix                    = var.name_prefix
  glue_raw_database              = var.glue_raw_database
  glue_database                  = var.glue_database
  athena_results_bucket          = module.storage.athena_results_bucket
  kms_key_arn                    = module.kms.key_arn
  bytes_scanned_cutoff_per_query = var.athena_bytes_scanned_cutoff_per_query
}

module "database" {
  source = "./modules/database"

  name_prefix            = var.name_prefix
  partition              = local.partition
  vpc_id                  = var.vpc_id
  private_subnet_ids      = var.private_subnet_ids
  tasks_security_group_id = module.compute.tasks_security_group_id
  kms_key_arn            = module.kms.key_arn
  instance_class         = var.db_instance_class
  postgres_major_version = var.db_postgres_major_version
  allocated_storage_gib  = var.db_allocated_storage_gib
  max_allocated_storage  = var.db_max_allocated_storage_gib
  multi_az               = var.db_multi_az
  backup_retention_days  = var.db_backup_retention_days
  log_retention_days     = var.log_retention_days
}

module "compute" {
  source = "./modules/compute"

  name_prefix = var.name_prefix
  account_id  = local.account_id
  partition   = local.partition
  region      = var.aws_region
  kms_key_arn = module.kms.key_arn
  image_tag   = var.image_tag

  vpc_id                        = var.vpc_id
  private_subnet_ids            = var.private_subnet_ids
  webserver_ingress_cidr_blocks = var.webserver_ingress_cidr_blocks
  database_security_group_id    = module.database.security_group_id
  log_retention_days            = var.log_retention_days

  lake_bucket           = module.storage.lake_bucket
  lake_bucket_arn       = module.storage.lake_bucket_arn
  lake_prefix           = var.lake_prefix
  athena_results_bucket = module.storage.athena_results_bucket
  athena_results_arn    = module.storage.athena_results_bucket_arn
  glue_raw_database     = module.catalog.glue_raw_database
  glue_database         = module.catalog.glue_database
  athena_workgroup      = module.catalog.athena_workgroup
  athena_workgroup_arn  = module.catalog.athena_workgroup_arn
  athena_staging        = module.catalog.athena_staging

  db_address           = module.database.address
  db_port              = module.database.port
  db_name              = module.database.db_name
  db_username          = module.database.username
  db_master_secret_arn = module.database.master_user_secret_arn

  source_uri         = var.source_uri
  source_object_arns = var.source_object_arns
  run_daemon         = var.orchestrator == "dagster"

  knowledge_base    = var.knowledge_base
  kb_bucket         = var.knowledge_base ? module.knowledge_base[0].kb_bucket : ""
  kb_id             = var.knowledge_base ? module.knowledge_base[0].knowledge_base_id : ""
  kb_data_source_id = var.knowledge_base ? module.knowledge_base[0].data_source_id : ""
  bedrock_model_id  = var.knowledge_base ? var.agent_model_id : ""
}

module "knowledge_base" {
  source = "./modules/knowledge_base"
  count  = var.knowledge_base ? 1 : 0

  name_prefix = var.name_prefix
  account_id  = local.account_id
  partition   = local.partition
  region      = var.aws_region
  kms_key_arn = module.kms.key_arn

  access_logs_bucket  = module.storage.access_logs_bucket
  task_role_name      = module.compute.task_role_name
  agent_model_id      = var.agent_model_id
  agent_model_regions = var.agent_model_regions
}

module "orchestration" {
  source = "./modules/orchestration"

  name_prefix        = var.name_prefix
  account_id         = local.account_id
  partition          = local.partition
  region             = var.aws_region
  kms_key_arn        = module.kms.key_arn
  log_retention_days = var.log_retention_days

  definition_path     = local.state_machine_definition_path
  schedule_expression = var.schedule_expression
  schedule_enabled    = var.orchestrator == "step_functions"
  alert_emails        = var.alert_emails

  cluster_name                      = module.compute.cluster_name
  cluster_arn                       = module.compute.cluster_arn
  run_task_family                   = module.compute.run_task_family
  run_task_definition_arn_unrevised = module.compute.run_task_definition_arn_without_revision
  container_name                    = module.compute.container_name
  task_role_arn                     = module.compute.task_role_arn
  execution_role_arn                = module.compute.execution_role_arn
  private_subnet_ids                = var.private_subnet_ids
  tasks_security_group_id           = module.compute.tasks_security_group_id

  # The scoring stage's Distributed Map reads the week's groups of shards from the lake.
  lake_bucket = module.storage.lake_bucket
  lake_prefix = var.lake_prefix
}

module "prediction_api" {
  source = "./modules/prediction_api"
  count  = var.prediction_api ? 1 : 0

  name_prefix        = var.name_prefix
  account_id         = local.account_id
  partition          = local.partition
  region             = var.aws_region
  kms_key_arn        = module.kms.key_arn
  log_retention_days = var.log_retention_days
  # One release, one tag: the API image is pushed to its own repository under the Dagster image's tag.
  image_tag     = coalesce(var.prediction_api_image_tag, var.image_tag)
  api_key_names = var.prediction_api_key_names

  lake_bucket_arn = module.storage.lake_bucket_arn
  lake_prefix     = var.lake_prefix

  settings_environment = {
    for name, value in module.compute.environment : name => value if contains(local.lake_setting_names, name)
  }

  subnet_ids = var.prediction_api_in_vpc ? var.private_subnet_ids : []
  vpc_id     = var.vpc_id
}
