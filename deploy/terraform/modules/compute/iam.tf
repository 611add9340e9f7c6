# Two roles for every Dagster task (code server, webserver, daemon, runs):
#   execution role: what ECS itself needs to start a container (pull the image, write logs,
#                   read the database password);
#   task role:      what Dagster and the assets do: the project's buckets, Glue databases and
#                   Athena workgroup, and launching runs (EcsRunLauncher) on this cluster only.
# Resource "*" appears only for actions AWS offers no resource-level permission for; each such
# statement says so above it.

locals {
  arn_prefix_ecs  = "arn:${var.partition}:ecs:${var.region}:${var.account_id}"
  arn_prefix_glue = "arn:${var.partition}:glue:${var.region}:${var.account_id}"

  # Families the task role may run: ours (<prefix>-*), and run_* the EcsRunLauncher registers
  # under its default task_definition_prefix when dagster.yaml names no task_definition.
  runnable_task_definitions = [
    # The run family and the EcsRunLauncher's run_* families only: never a second daemon or webserver.
    "${local.arn_prefix_ecs}:task-definition/${var.name_prefix}-run:*",
    "${local.arn_prefix_ecs}:task-definition/run_*",
  ]
}

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [var.account_id]
    }
  }
}

# ---------------------------------------------------------------------------------------------
# Execution role
# ---------------------------------------------------------------------------------------------

resource "aws_iam_role" "execution" {
  name               = "${var.name_prefix}-ecs-execution"
  description        = "ECS starts ${var.name_prefix} containers: image pull, logs, database secret"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

resource "aws_iam_role_policy" "execution" {
  name   = "${var.name_prefix}-ecs-execution"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

data "aws_iam_policy_document" "execution" {
  # Resource "*": ecr:GetAuthorizationToken has no resource-level permissions (AWS requires "*");
  # the token alone reads nothing: pulls are limited to this repository below.
  statement {
    sid       = "EcrLoginRequiresWildcard"
    effect    = "Allow"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid    = "PullProjectImage"
    effect = "Allow"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:GetDownloadUrlForLayer",
    ]
    resources = [aws_ecr_repository.this.arn]
  }

  statement {
    sid       = "WriteProjectLogs"
    effect    = "Allow"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.ecs.arn}:*"]
  }

  statement {
    sid       = "ReadDatabaseSecret"
    effect    = "Allow"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [var.db_master_secret_arn]
  }

  statement {
    sid       = "DecryptWithProjectKey"
    effect    = "Allow"
    actions   = ["kms:Decrypt"]
    resources = [var.kms_key_arn]
  }
}

# ---------------------------------------------------------------------------------------------
# Task role
# ---------------------------------------------------------------------------------------------

resource "aws_iam_role" "task" {
  name               = "${var.name_prefix}-ecs-task"
  description        = "${var.name_prefix} Dagster tasks: lake, Glue, Athena, launching runs on its cluster"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

resource "aws_iam_role_policy" "task" {
  name   = "${var.name_prefix}-ecs-task"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task.json
}

data "aws_iam_policy_document" "task" {
  # Read-only access to the customer file the runs ingest (var.source_uri), when it is outside the lake.
  dynamic "statement" {
    for_each = length(var.source_object_arns) > 0 ? [var.source_object_arns] : []
    content {
      sid       = "ReadCustomerSource"
      effect    = "Allow"
      actions   = ["s3:GetObject"]
      resources = statement.value
    }
  }

  statement {
    sid    = "ListProjectBuckets"
    effect = "Allow"
    actions = [
      "s3:GetBucketLocation",
      "s3:ListBucket",
      "s3:ListBucketMultipartUploads",
    ]
    resources = [var.lake_bucket_arn, var.athena_results_arn]
  }

  statement {
    sid    = "ReadWriteProjectObjects"
    effect = "Allow"
    actions = [
      "s3:AbortMultipartUpload",
      "s3:DeleteObject",
      "s3:GetObject",
      "s3:ListMultipartUploadParts",
      "s3:PutObject",
    ]
    resources = ["${var.lake_bucket_arn}/*", "${var.athena_results_arn}/*"]
  }

  statement {
    sid    = "UseProjectKey"
    effect = "Allow"
    actions = [
      "kms:Decrypt",
      "kms:DescribeKey",
      "kms:Encrypt",
      "kms:GenerateDataKey",
    ]
    resources = [var.kms_key_arn]
  }

  statement {
    sid    = "ProjectGlueDatabases"
    effect = "Allow"
    actions = [
      "glue:BatchCreatePartition",
      "glue:BatchDeletePartition",
      "glue:BatchDeleteTable",
      "glue:BatchGetPartition",
      "glue:BatchUpdatePartition",
      "glue:CreatePartition",
      "glue:CreateTable",
      "glue:DeletePartition",
      "glue:DeleteTable",
      "glue:GetDatabase",
      "glue:GetDatabases",
      "glue:GetPartition",
      "glue:GetPartitions",
      "glue:GetTable",
      "glue:GetTables",
      "glue:GetTableVersion",
      "glue:GetTableVersions",
      "glue:UpdatePartition",
      "glue:UpdateTable",
    ]
    resources = [
      "${local.arn_prefix_glue}:catalog",
      "${local.arn_prefix_glue}:database/${var.glue_raw_database}",
      "${local.arn_prefix_glue}:database/${var.glue_database}",
      "${local.arn_prefix_glue}:table/${var.glue_raw_database}/*",
      "${local.arn_prefix_glue}:table/${var.glue_database}/*",
    ]
  }

  statement {
    sid    = "ProjectAthenaWorkgroup"
    effect = "Allow"
    actions = [
      "athena:BatchGetQueryExecution",
      "athena:GetQueryExecution",
      "athena:GetQueryResults",
      "athena:GetQueryRuntimeStatistics",
      "athena:GetWorkGroup",
      "athena:ListQueryExecutions",
      "athena:StartQueryExecution",
      "athena:StopQueryExecution",
    ]
    resources = [var.athena_workgroup_arn]
  }

  statement {
    sid    = "AthenaGlueDataCatalog"
    effect = "Allow"
    actions = [
      "athena:GetDataCatalog",
      "athena:GetDatabase",
      "athena:GetTableMetadata",
      "athena:ListDatabases",
      "athena:ListTableMetadata",
    ]
    resources = ["arn:${var.partition}:athena:${var.region}:${var.account_id}:datacatalog/AwsDataCatalog"]
  }

  # EcsRunLauncher: start a run as a task of this cluster only.
  statement {
    sid       = "RunProjectTasksOnProjectCluster"
    effect    = "Allow"
    actions   = ["ecs:RunTask"]
    resources = local.runnable_task_definitions

    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.this.arn]
    }
  }

  statement {
    sid    = "TagProjectTasksAtLaunch"
    effect = "Allow"
    actions = ["ecs:TagResource"]
    resources = concat(
      ["${local.arn_prefix_ecs}:task/${aws_ecs_cluster.this.name}/*"],
      local.runnable_task_definitions,
    )

    condition {
      test     = "StringEquals"
      variable = "ecs:CreateAction"
      values   = ["RunTask", "RegisterTaskDefinition"]
    }
  }

  # Run monitoring and termination.
  statement {
    sid       = "ManageProjectTasks"
    effect    = "Allow"
    actions   = ["ecs:DescribeTasks", "ecs:StopTask"]
    resources = ["${local.arn_prefix_ecs}:task/${aws_ecs_cluster.this.name}/*"]
  }

  # A launched run gets this role and the execution role, nothing else.
  statement {
    sid       = "PassOwnRolesToEcsTasks"
    effect    = "Allow"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.task.arn, aws_iam_role.execution.arn]

    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }

  # The webserver shows a failed run's task logs.
  statement {
    sid    = "ReadProjectLogs"
    effect = "Allow"
    actions = [
      "logs:DescribeLogStreams",
      "logs:FilterLogEvents",
      "logs:GetLogEvents",
    ]
    resources = [aws_cloudwatch_log_group.ecs.arn, "${aws_cloudwatch_log_group.ecs.arn}:*"]
  }

  # Resource "*": AWS offers no resource-level permissions for these actions, so "*" is required:
  #   ecs:DescribeTaskDefinition, ecs:RegisterTaskDefinition: the EcsRunLauncher reads the current
  #     task's definition and registers run definitions (RunTask above stays limited to the
  #     project's families on the project's cluster, PassRole to the project's roles);
  #   ec2:DescribeNetworkInterfaces: use_current_ecs_task_config copies subnets and security groups.
  # (dagster.yaml sets secrets_tag: null, so the launcher needs no secretsmanager:ListSecrets.)
  statement {
    sid    = "EcsRunLauncherRequiresWildcard"
    effect = "Allow"
    actions = [
      "ec2:DescribeNetworkInterfaces",
      "ecs:DescribeTaskDefinition",
      "ecs:RegisterTaskDefinition",
    ]
    resources = ["*"]
  }
}
