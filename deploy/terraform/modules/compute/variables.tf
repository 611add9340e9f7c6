variable "name_prefix" {
  description = "Cluster name; task families are <name_prefix>-code-server, -webserver, -daemon and -run."
  type        = string
}

variable "account_id" {
  type = string
}

variable "partition" {
  type = string
}

variable "region" {
  type = string
}

variable "kms_key_arn" {
  type = string
}

variable "image_tag" {
  type = string
}

variable "container_name" {
  description = "Container name of the code server and run task definitions (dagster.yaml run_launcher.container_name, the state machine's container override)."
  type        = string
  default     = "engagement-dagster"
}

variable "code_location_name" {
  type    = string
  default = "engagement_dagster"
}

variable "dagster_home" {
  description = "DAGSTER_HOME inside the image: the directory holding deploy/dagster.yaml (Postgres storage, EcsRunLauncher)."
  type        = string
  default     = "/opt/engagement-dagster/deploy"
}

variable "private_subnet_ids" {
  type = list(string)
}

variable "vpc_id" {
  type = string
}

variable "webserver_ingress_cidr_blocks" {
  description = "Private CIDR blocks allowed to reach the UI on port 3000."
  type        = list(string)
}

variable "database_security_group_id" {
  description = "The database's security group (the tasks may open PostgreSQL connections to it)."
  type        = string
}

variable "log_retention_days" {
  type = number
}

variable "lake_bucket" {
  type = string
}

variable "lake_bucket_arn" {
  type = string
}

variable "lake_prefix" {
  type = string
}

variable "athena_results_bucket" {
  type = string
}

variable "athena_results_arn" {
  type = string
}

variable "glue_raw_database" {
  type = string
}

variable "glue_database" {
  type = string
}

variable "athena_workgroup" {
  type = string
}

variable "athena_workgroup_arn" {
  type = string
}

variable "athena_staging" {
  type = string
}

variable "db_address" {
  type = string
}

variable "db_port" {
  type = number
}

variable "db_name" {
  type = string
}

variable "db_username" {
  type = string
}

variable "db_master_secret_arn" {
  type = string
}

# Long-running services. Fargate pairs: 1 vCPU with 2-8 GB, 2 vCPU with 4-16 GB.
variable "code_server_cpu" {
  description = "The code server imports dagster-dbt and loads the dbt manifest; it also evaluates schedules and sensors."
  type        = number
  default     = 2048
}

variable "code_server_memory" {
  type    = number
  default = 8192
}

variable "webserver_cpu" {
  type    = number
  default = 1024
}

variable "webserver_memory" {
  type    = number
  default = 4096
}

variable "daemon_cpu" {
  type    = number
  default = 1024
}

variable "daemon_memory" {
  type    = number
  default = 4096
}

variable "run_ephemeral_storage_gib" {
  description = "Task storage of a run (the lake's weekly files pass through it); Fargate allows 21-200 GiB."
  type        = number
  default     = 100

  validation {
    condition     = var.run_ephemeral_storage_gib >= 21 && var.run_ephemeral_storage_gib <= 200
    error_message = "Fargate ephemeral storage is 21-200 GiB."
  }
}

variable "source_uri" {
  description = "ENGAGEMENT_SOURCE_URI of the runs; empty: the synthetic generator."
  type        = string
  default     = ""
}

variable "source_object_arns" {
  description = "S3 object ARNs the runs may read the customer file from."
  type        = list(string)
  default     = []
}

variable "run_daemon" {
  description = "Run the Dagster daemon (schedules, run queue, run monitoring); false when the exported state machine orchestrates."
  type        = bool
  default     = true
}

variable "knowledge_base" {
  description = "The knowledge_base module is deployed: set ENGAGEMENT_KB_* and the Bedrock LLM settings on every container."
  type        = bool
  default     = false
}

variable "kb_bucket" {
  description = "ENGAGEMENT_KB_BUCKET: the knowledge base's documents bucket."
  type        = string
  default     = ""
}

variable "kb_id" {
  description = "ENGAGEMENT_KB_ID: the Bedrock knowledge base id."
  type        = string
  default     = ""
}

variable "kb_data_source_id" {
  description = "ENGAGEMENT_KB_DATA_SOURCE_ID: the knowledge base's S3 data source id (StartIngestionJob)."
  type        = string
  default     = ""
}

variable "bedrock_model_id" {
  description = "ENGAGEMENT_BEDROCK_MODEL_ID: the Claude model (or inference profile) id the agent calls."
  type        = string
  default     = ""
}
