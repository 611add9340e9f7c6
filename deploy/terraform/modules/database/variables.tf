variable "name_prefix" {
  type = string
}

variable "partition" {
  type = string
}

variable "private_subnet_ids" {
  type = list(string)
}

variable "vpc_id" {
  type = string
}

variable "tasks_security_group_id" {
  description = "Security group of the Dagster tasks: the only source allowed to connect."
  type        = string
}

variable "kms_key_arn" {
  type = string
}

variable "instance_class" {
  type = string
}

variable "postgres_major_version" {
  type = string
}

variable "allocated_storage_gib" {
  type = number
}

variable "max_allocated_storage" {
  type = number
}

variable "multi_az" {
  type = bool
}

variable "backup_retention_days" {
  type = number

  validation {
    condition     = var.backup_retention_days >= 7 && var.backup_retention_days <= 35
    error_message = "Keep 7 to 35 days of automated backups."
  }
}

variable "log_retention_days" {
  type = number
}

variable "db_name" {
  type    = string
  default = "dagster"
}

variable "username" {
  type    = string
  default = "dagster"
}
