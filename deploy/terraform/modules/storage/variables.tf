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

variable "lake_prefix" {
  description = "Key prefix of the lake inside its bucket (\"\" for the root)."
  type        = string
}

variable "athena_results_retention_days" {
  type = number
}

variable "access_log_retention_days" {
  type = number
}

variable "lake_noncurrent_version_retention_days" {
  description = "Days an overwritten or deleted lake object stays recoverable."
  type        = number
  default     = 90
}

variable "extra_logged_bucket_arns" {
  description = "Other project buckets whose server access logs go to the access log bucket (the knowledge base's documents bucket)."
  type        = list(string)
  default     = []
}
