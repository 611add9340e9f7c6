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
  description = "The project key: the cache table, the API keys secret, the function's environment, its image repository and log groups."
  type        = string
}

variable "log_retention_days" {
  type    = number
  default = 365
}

variable "image_tag" {
  description = "Tag of the API image (containers/api.Dockerfile) in this module's repository, <name_prefix>-api."
  type        = string
}

variable "lake_bucket_arn" {
  description = "The lake bucket: the function reads the model registry (models/) in it."
  type        = string
}

variable "lake_prefix" {
  description = "Key prefix of the lake inside the bucket (ENGAGEMENT_LAKE_PREFIX); empty: the bucket root."
  type        = string
  default     = ""
}

variable "settings_environment" {
  description = "AWS mode's settings (engagement_dagster/core/settings.py) as the Dagster containers get them: ENGAGEMENT_LAKE_BUCKET and the rest."
  type        = map(string)

  validation {
    # Lambda refuses reserved names (AWS_REGION, ...) in a function's environment.
    condition     = alltrue([for name in keys(var.settings_environment) : startswith(name, "ENGAGEMENT_")])
    error_message = "settings_environment: only ENGAGEMENT_* names."
  }
}

# ---------------------------------------------------------------------------------------------
# The function
# ---------------------------------------------------------------------------------------------

variable "memory_mb" {
  description = "Function memory; Lambda gives CPU in proportion (1,769 MB is one vCPU)."
  type        = number
  default     = 2048
}

variable "timeout_seconds" {
  description = "Per invocation. API Gateway gives up after 29 s anyway."
  type        = number
  default     = 15

  validation {
    condition     = var.timeout_seconds >= 1 && var.timeout_seconds <= 29
    error_message = "timeout_seconds: 1 to 29 (API Gateway's integration timeout)."
  }
}

variable "reserved_concurrency" {
  description = "Execution environments the function may use at once (and always can): caps cost and what the cache table and the lake see."
  type        = number
  default     = 20
}

variable "provisioned_concurrency" {
  description = "Execution environments kept initialised (models loaded): no cold start for that many concurrent requests, billed while idle. 0: none."
  type        = number
  default     = 0

  validation {
    condition     = var.provisioned_concurrency >= 0 && var.provisioned_concurrency <= var.reserved_concurrency
    error_message = "provisioned_concurrency: 0 to reserved_concurrency."
  }
}

variable "subnet_ids" {
  description = "Private subnets to run the function in (they need routes to S3, DynamoDB, Secrets Manager and X-Ray: NAT or VPC endpoints). Empty: outside any VPC."
  type        = list(string)
  default     = []
}

variable "vpc_id" {
  description = "VPC of subnet_ids (for the function's security group)."
  type        = string
  default     = null
}

variable "model_check_seconds" {
  description = "How often (at most) an execution environment checks the registry for a new champion (ENGAGEMENT_API_MODEL_CHECK_SECONDS)."
  type        = number
  default     = 60
}

# ---------------------------------------------------------------------------------------------
# API Gateway
# ---------------------------------------------------------------------------------------------

variable "stage_name" {
  description = "The stage: the first path segment of the URL (https://<api>.execute-api.<region>.amazonaws.com/<stage>/predict)."
  type        = string
  default     = "v1"
}

variable "api_key_names" {
  description = "One API key per client (or per rotation step): each is bound to the usage plan and accepted by the application."
  type        = list(string)
  default     = ["default"]

  validation {
    condition     = length(var.api_key_names) > 0
    error_message = "api_key_names: at least one key."
  }
}

variable "stage_rate_limit" {
  description = "Steady requests per second the whole API accepts (all keys together); above it API Gateway answers 429."
  type        = number
  default     = 200
}

variable "stage_burst_limit" {
  description = "Requests the whole API accepts in a burst above stage_rate_limit."
  type        = number
  default     = 400
}

variable "key_rate_limit" {
  description = "Steady requests per second one API key may make (the usage plan)."
  type        = number
  default     = 100
}

variable "key_burst_limit" {
  description = "Burst one API key may make above key_rate_limit (the usage plan)."
  type        = number
  default     = 200
}

variable "key_quota_per_day" {
  description = "Requests one API key may make per day (the usage plan's quota); a batch request counts once."
  type        = number
  default     = 1000000
}

variable "manage_api_gateway_account" {
  description = "Set the region's API Gateway account setting (the CloudWatch Logs role API Gateway logs with; one per account and region). false when something else already manages it."
  type        = bool
  default     = true
}

# ---------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------

variable "cache_ttl_seconds" {
  description = "How long a cached prediction is served (ENGAGEMENT_API_CACHE_TTL_SECONDS); the model versions are part of its key, so a new champion never serves an old one."
  type        = number
  default     = 3600
}
