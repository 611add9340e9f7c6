# PostgreSQL for Dagster's run, event-log and schedule storage, shared by the webserver, the
# daemon, the code server and every run task. Private, encrypted with the project key, TLS
# forced, reachable only from the tasks' security group; RDS generates the master password and
# keeps it in Secrets Manager (no password in Terraform state or variables).

locals {
  identifier = "${var.name_prefix}-dagster"
}

resource "aws_security_group" "this" {
  name        = local.identifier
  description = "Dagster storage database: PostgreSQL from the Dagster tasks only"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "from_tasks" {
  security_group_id            = aws_security_group.this.id
  description                  = "PostgreSQL from the Dagster tasks"
  referenced_security_group_id = var.tasks_security_group_id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}

resource "aws_db_subnet_group" "this" {
  name        = local.identifier
  description = "Private subnets of the Dagster storage database"
  subnet_ids  = var.private_subnet_ids
}

resource "aws_db_parameter_group" "this" {
  name_prefix = "${local.identifier}-pg${var.postgres_major_version}-"
  family      = "postgres${var.postgres_major_version}"
  description = "Dagster storage: TLS only, slow-query and DDL logging"

  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }

  parameter {
    name  = "log_statement"
    value = "ddl"
  }

  # Milliseconds: statements slower than a second are logged.
  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }

  lifecycle {
    create_before_destroy = true
  }
}

# Created before the instance so RDS writes into encrypted groups with a retention.
resource "aws_cloudwatch_log_group" "postgresql" {
  for_each = toset(["postgresql", "upgrade"])

  name              = "/aws/rds/instance/${local.identifier}/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

resource "aws_db_instance" "this" {
  identifier     = local.identifier
  engine         = "postgres"
  engine_version = var.postgres_major_version
  instance_class = var.instance_class
  db_name        = var.db_name
  username       = var.username
  port           = 5432

  # RDS generates the password and keeps (and rotates) it in Secrets Manager, encrypted with
  # the project key; the tasks receive it through the ECS "secrets" of their task definitions.
  manage_master_user_password         = true
  master_user_secret_kms_key_id       = var.kms_key_arn
  iam_database_authentication_enabled = true

  allocated_storage     = var.allocated_storage_gib
  max_allocated_storage = var.max_allocated_storage
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = var.kms_key_arn

  db_subnet_group_name   = aws_db_subnet_group.this.name
  vpc_security_group_ids = [aws_security_group.this.id]
  publicly_accessible    = false
  multi_az               = var.multi_az
  parameter_group_name   = aws_db_parameter_group.this.name
  ca_cert_identifier     = "rds-ca-rsa2048-g1"

  backup_retention_period   = var.backup_retention_days
  backup_window             = "03:00-04:00"
  maintenance_window        = "sun:04:30-sun:05:30"
  copy_tags_to_snapshot     = true
  deletion_protection       = true
  skip_final_snapshot       = false
  final_snapshot_identifier = "${local.identifier}-final"
  delete_automated_backups  = false

  auto_minor_version_upgrade  = true
  allow_major_version_upgrade = false

  enabled_cloudwatch_logs_exports       = ["postgresql", "upgrade"]
  performance_insights_enabled          = true
  performance_insights_kms_key_id       = var.kms_key_arn
  performance_insights_retention_period = 7
  monitoring_interval                   = 60
  monitoring_role_arn                   = aws_iam_role.monitoring.arn

  depends_on = [aws_cloudwatch_log_group.postgresql]
}

# Enhanced monitoring: RDS publishes OS metrics with this role (AWS managed policy, scoped by AWS
# to the RDSOSMetrics log group).
resource "aws_iam_role" "monitoring" {
  name               = "${local.identifier}-monitoring"
  assume_role_policy = data.aws_iam_policy_document.monitoring_assume.json
}

data "aws_iam_policy_document" "monitoring_assume" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["monitoring.rds.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy_attachment" "monitoring" {
  role       = aws_iam_role.monitoring.name
  policy_arn = "arn:${var.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}
