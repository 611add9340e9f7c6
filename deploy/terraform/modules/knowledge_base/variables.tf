variable "name_prefix" {
  type = string
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
  description = "The project key: the documents bucket, the vector bucket and the ingestion's transient data."
  type        = string
}

variable "access_logs_bucket" {
  description = "The storage module's server access log bucket (it must admit this module's documents bucket as a source)."
  type        = string
}

variable "task_role_name" {
  description = "The role every Dagster task runs as (compute module): it gets the agent's permissions."
  type        = string
}

variable "agent_model_id" {
  description = "Claude model the agent calls through Bedrock (InvokeModel / Converse): a foundation model id, or a geographic inference profile id (us., eu., apac., ...)."
  type        = string
}

variable "agent_model_regions" {
  description = "Regions an inference profile routes requests to (each needs the foundation model's InvokeModel grant); empty: this region only."
  type        = list(string)
  default     = []
}

variable "noncurrent_version_retention_days" {
  description = "Days an overwritten or deleted document stays recoverable."
  type        = number
  default     = 90
}
