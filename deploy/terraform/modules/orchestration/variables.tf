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
  type = string
}

variable "log_retention_days" {
  type = number
}

variable "definition_path" {
  description = "Amazon States Language template of the weekly refresh (see README for its variables)."
  type        = string
}

variable "schedule_expression" {
  type = string
}

variable "schedule_enabled" {
  description = "Whether the EventBridge rule starts the state machine (the orchestrator is step_functions)."
  type        = bool
  default     = false
}

variable "alert_emails" {
  type = list(string)
}

variable "cluster_name" {
  type = string
}

variable "cluster_arn" {
  type = string
}

variable "run_task_family" {
  type = string
}

variable "run_task_definition_arn_unrevised" {
  type = string
}

variable "container_name" {
  type = string
}

variable "task_role_arn" {
  type = string
}

variable "execution_role_arn" {
  type = string
}

variable "private_subnet_ids" {
  type = list(string)
}

variable "tasks_security_group_id" {
  type = string
}

variable "lake_bucket" {
  description = "S3 bucket of the lake: the scoring stage's Map reads its items there."
  type        = string
}

variable "lake_prefix" {
  description = "Key prefix of the lake inside its bucket (\"\" for none)."
  type        = string
  default     = ""
}

variable "scoring_max_concurrency" {
  description = "Groups of shards the scoring stage scores at once (one 4 vCPU / 8 GB Fargate task each)."
  type        = number
  default     = 20

  validation {
    condition     = var.scoring_max_concurrency >= 1 && floor(var.scoring_max_concurrency) == var.scoring_max_concurrency
    error_message = "scoring_max_concurrency must be a whole number of at least 1."
  }
}
