variable "name_prefix" {
  type = string
}

variable "glue_raw_database" {
  type = string
}

variable "glue_database" {
  type = string
}

variable "athena_results_bucket" {
  type = string
}

variable "kms_key_arn" {
  type = string
}

variable "bytes_scanned_cutoff_per_query" {
  type = number

  validation {
    condition     = var.bytes_scanned_cutoff_per_query >= 10485760
    error_message = "Athena's smallest per-query cutoff is 10 MB (10485760 bytes)."
  }
}
