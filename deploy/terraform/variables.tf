# Root inputs. Required: aws_region, vpc_id, private_subnet_ids, image_tag. Everything else has a default.

variable "aws_region" {
  description = "AWS region to deploy into, e.g. eu-west-1."
  type        = string
}

variable "name_prefix" {
  description = "Prefix of every resource name. Buckets add the account id and region, so no name is global. Also the ECS cluster name; the run task family is <name_prefix>-run."
  type        = string
  default     = "engagement-dagster"

  validation {
    # Buckets are <prefix>-athena-<12-digit account>-<region>: at most 63 characters with the longest region names.
    condition     = can(regex("^[a-z][a-z0-9-]{1,26}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix: 3-28 lower-case letters, digits or hyphens, starting with a letter."
  }
}

variable "tags" {
  description = "Extra tags for every resource."
  type        = map(string)
  default     = {}
}

variable "vpc_id" {
  description = "VPC that holds the private subnets."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets (at least two availability zones) for the ECS tasks and the database. They need a NAT gateway or VPC endpoints (ECR, S3, logs, Secrets Manager, ECS, Athena, Glue, KMS)."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) >= 2
    error_message = "Give at least two private subnets in different availability zones (RDS needs two)."
  }
}

variable "image_tag" {
  description = "Tag of the code location image in the project's ECR repository (tags are immutable: use the git sha)."
  type        = string
}

variable "lake_prefix" {
  description = "Key prefix inside the lake bucket (ENGAGEMENT_LAKE_PREFIX); empty puts raw/, oracle/, ... at the bucket root."
  type        = string
  default     = ""
}

variable "glue_raw_database" {
  description = "Glue database of the lake tables (raw_customers, customer_predictions)."
  type        = string
  default     = "engagement_raw"
}

variable "glue_database" {
  description = "Glue database dbt builds its tables in."
  type        = string
  default     = "engagement"
}

variable "athena_bytes_scanned_cutoff_per_query" {
  description = "Athena cancels any query of the workgroup that scans more than this many bytes (default 100 GiB)."
  type        = number
  default     = 107374182400
}

variable "athena_results_retention_days" {
  description = "Days Athena query results are kept."
  type        = number
  default     = 30
}

variable "access_log_retention_days" {
  description = "Days S3 server access logs are kept."
  type        = number
  default     = 365
}

variable "log_retention_days" {
  description = "CloudWatch Logs retention for the ECS tasks, the state machine and the database."
  type        = number
  default     = 365
}

variable "db_instance_class" {
  description = "RDS instance class of Dagster's run/event/schedule storage."
  type        = string
  default     = "db.t4g.medium"
}

variable "db_postgres_major_version" {
  description = "PostgreSQL major version (also picks the parameter group family)."
  type        = string
  default     = "16"
}

variable "db_allocated_storage_gib" {
  description = "Initial database storage; it grows automatically up to db_max_allocated_storage_gib."
  type        = number
  default     = 50
}

variable "db_max_allocated_storage_gib" {
  description = "Upper bound of storage autoscaling."
  type        = number
  default     = 500
}

variable "db_multi_az" {
  description = "Standby replica in a second availability zone."
  type        = bool
  default     = true
}

variable "db_backup_retention_days" {
  description = "Days of automated backups (point-in-time recovery)."
  type        = number
  default     = 14
}

variable "webserver_ingress_cidr_blocks" {
  description = "Private CIDR blocks (VPN, bastion) allowed to reach the Dagster UI on port 3000. Empty: no one outside the tasks."
  type        = list(string)
  default     = []

  validation {
    condition     = !contains(var.webserver_ingress_cidr_blocks, "0.0.0.0/0")
    error_message = "The Dagster UI has no authentication: never open it to 0.0.0.0/0."
  }
}

variable "schedule_expression" {
  description = "EventBridge schedule of the weekly refresh state machine."
  type        = string
  default     = "cron(0 6 ? * MON *)"
}

variable "state_machine_definition_path" {
  description = "Amazon States Language file of the weekly refresh (a templatefile). Null: deploy/step_functions/weekly_refresh.asl.json."
  type        = string
  default     = null
}

variable "alert_emails" {
  description = "E-mail addresses subscribed to the failure topic (each must confirm)."
  type        = list(string)
  default     = []
}

variable "source_uri" {
  description = "The week's customer file for the runs (ENGAGEMENT_SOURCE_URI), e.g. s3://acme-exports/customers_{snapshot_week}.csv.gz; empty: the built-in synthetic generator."
  type        = string
  default     = ""
}

variable "source_object_arns" {
  description = "S3 object ARNs the runs may read the customer file from, e.g. [\"arn:aws:s3:::acme-exports/customers_*\"] (read-only)."
  type        = list(string)
  default     = []
}

variable "orchestrator" {
  description = "Who runs the weekly refresh: \"dagster\" (the daemon's schedule and run queue on ECS) or \"step_functions\" (the exported state machine on its EventBridge rule; the daemon is scaled to 0 so its run monitoring does not mark the state machine's runs as failed). Never both: two refreshes of one week would collide."
  type        = string
  default     = "dagster"
  validation {
    condition     = contains(["dagster", "step_functions"], var.orchestrator)
    error_message = "orchestrator must be \"dagster\" or \"step_functions\"."
  }
}

variable "knowledge_base" {
  description = "Deploy the Bedrock knowledge base (documents bucket, S3 Vectors index, knowledge base and data source) and the agent's Bedrock grants; the containers then get ENGAGEMENT_KB_* and ENGAGEMENT_LLM_BACKEND=bedrock. false leaves it all out."
  type        = bool
  default     = true
}

# Claude 3.5 Haiku: fast and cheap for an agent that mostly reads retrieved passages. Its
# foundation model id is invoked on demand only in some regions (us-west-2); elsewhere use a
# geographic inference profile (e.g. "us.anthropic.claude-3-5-haiku-20241022-v1:0" or a newer
# Claude, "eu.anthropic.claude-..." in Europe) and list its destination regions in
# agent_model_regions. The model must be enabled once per account in the Bedrock console (Anthropic
# asks for a use case); the task role gets no Marketplace permissions.
variable "agent_model_id" {
  description = "Claude model the agent calls (InvokeModel / Converse): a Bedrock foundation model id or a geographic inference profile id. ENGAGEMENT_BEDROCK_MODEL_ID."
  type        = string
  default     = "anthropic.claude-3-5-haiku-20241022-v1:0"

  validation {
    condition     = can(regex("^((us|us-gov|eu|apac|jp|au|ca)\\.)?anthropic\\.claude-[a-z0-9.-]+:[0-9]+$", var.agent_model_id))
    error_message = "agent_model_id: an Anthropic Claude model id on Bedrock (anthropic.claude-...:N), optionally with a geographic inference profile prefix (us., eu., apac., ...)."
  }
}

variable "agent_model_regions" {
  description = "Regions agent_model_id's inference profile routes to (IAM must allow the foundation model in each); empty for a foundation model id (this region)."
  type        = list(string)
  default     = []
}

variable "prediction_api" {
  description = "Deploy the real-time prediction API: API Gateway (REST, API keys, usage plan), the Lambda function from the API image (<name_prefix>-api repository) and the DynamoDB prediction cache. false leaves it all out."
  type        = bool
  default     = true
}

variable "prediction_api_image_tag" {
  description = "Tag of the API image (containers/api.Dockerfile) in the <name_prefix>-api repository. Null: image_tag (build and push both images of a release under one tag)."
  type        = string
  default     = null
}

variable "prediction_api_key_names" {
  description = "One API key per client of the prediction API (add a name, hand out its key, remove the old name to rotate)."
  type        = list(string)
  default     = ["default"]
}

variable "prediction_api_in_vpc" {
  description = "Run the prediction API's function in private_subnet_ids (they then need routes to S3, DynamoDB, Secrets Manager and X-Ray: NAT or VPC endpoints). false: outside the VPC, calling only AWS APIs."
  type        = bool
  default     = false
}
