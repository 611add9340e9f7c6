# The weekly refresh exported from the asset graph: a Step Functions state machine (its ASL is
# deploy/step_functions/weekly_refresh.asl.json, rendered with templatefile) that runs the
# graph's steps as ecs:runTask.sync tasks of the run family (the scoring stage as a Distributed
# Map over groups of shards, one child execution per group), a weekly EventBridge schedule, and an
# encrypted SNS topic for failures.

locals {
  state_machine_name = "${var.name_prefix}-weekly-refresh"
  state_machine_arn  = "arn:${var.partition}:states:${var.region}:${var.account_id}:stateMachine:${local.state_machine_name}"

  # The lake's keys start with its prefix, if any ("team/lake/"); the scoring plans live under it.
  lake_key_prefix = var.lake_prefix == "" ? "" : "${trim(var.lake_prefix, "/")}/"

  # Variables the ASL template may use (${name}); a file without placeholders renders unchanged.
  definition_vars = {
    region                  = var.region
    cluster_name            = var.cluster_name
    cluster_arn             = var.cluster_arn
    task_definition_family  = var.run_task_family
    task_definition_arn     = var.run_task_definition_arn_unrevised
    container_name          = var.container_name
    subnet_ids_json         = jsonencode(var.private_subnet_ids)
    security_group_ids_json = jsonencode([var.tasks_security_group_id])
    sns_topic_arn           = aws_sns_topic.failures.arn
    lake_bucket             = var.lake_bucket
    lake_key_prefix         = local.lake_key_prefix
    # How many groups of shards score at once (Fargate tasks of 4 vCPU / 8 GB).
    scoring_max_concurrency_json = jsonencode(var.scoring_max_concurrency)
  }
}

# ---------------------------------------------------------------------------------------------
# Failure topic
# ---------------------------------------------------------------------------------------------

resource "aws_sns_topic" "failures" {
  name              = "${var.name_prefix}-weekly-refresh-failures"
  kms_master_key_id = var.kms_key_arn
}

resource "aws_sns_topic_subscription" "email" {
  for_each = toset(var.alert_emails)

  topic_arn = aws_sns_topic.failures.arn
  protocol  = "email"
  endpoint  = each.value
}

resource "aws_sns_topic_policy" "failures" {
  arn    = aws_sns_topic.failures.arn
  policy = data.aws_iam_policy_document.topic.json
}

data "aws_iam_policy_document" "topic" {
  statement {
    sid       = "AccountPrincipalsWithIamPermission"
    effect    = "Allow"
    actions   = ["sns:Publish", "sns:Subscribe", "sns:GetTopicAttributes"]
    resources = [aws_sns_topic.failures.arn]

    principals {
      type        = "AWS"
      identifiers = ["arn:${var.partition}:iam::${var.account_id}:root"]
    }
  }

  # Executions that time out or are aborted never reach the ASL's own failure branch.
  statement {
    sid       = "EventBridgeExecutionStatus"
    effect    = "Allow"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.failures.arn]

    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }

    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_cloudwatch_event_rule.execution_not_finished.arn]
    }
  }
}

# ---------------------------------------------------------------------------------------------
# State machine
# ---------------------------------------------------------------------------------------------

resource "aws_cloudwatch_log_group" "state_machine" {
  name              = "/aws/vendedlogs/states/${local.state_machine_name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

resource "aws_sfn_state_machine" "weekly_refresh" {
  name       = local.state_machine_name
  type       = "STANDARD"
  role_arn   = aws_iam_role.state_machine.arn
  definition = templatefile(var.definition_path, local.definition_vars)

  logging_configuration {
    log_destination        = "${aws_cloudwatch_log_group.state_machine.arn}:*"
    include_execution_data = true
    level                  = "ERROR"
  }

  tracing_configuration {
    enabled = true
  }

  encryption_configuration {
    type                              = "CUSTOMER_MANAGED_KMS_KEY"
    kms_key_id                        = var.kms_key_arn
    kms_data_key_reuse_period_seconds = 300
  }
}

resource "aws_iam_role" "state_machine" {
  name               = "${local.state_machine_name}-sfn"
  description        = "Runs the weekly refresh's ECS tasks and publishes its failures"
  assume_role_policy = data.aws_iam_policy_document.state_machine_assume.json
}

data "aws_iam_policy_document" "state_machine_assume" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["states.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [var.account_id]
    }
  }
}

resource "aws_iam_role_policy" "state_machine" {
  name   = "${local.state_machine_name}-sfn"
  role   = aws_iam_role.state_machine.id
  policy = data.aws_iam_policy_document.state_machine.json
}

data "aws_iam_policy_document" "state_machine" {
  statement {
    sid       = "RunRefreshTasksOnProjectCluster"
    effect    = "Allow"
    actions   = ["ecs:RunTask"]
    resources = [var.run_task_definition_arn_unrevised, "${var.run_task_definition_arn_unrevised}:*"]

    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [var.cluster_arn]
    }
  }

  statement {
    sid       = "WatchAndStopRefreshTasks"
    effect    = "Allow"
    actions   = ["ecs:DescribeTasks", "ecs:StopTask"]
    resources = ["arn:${var.partition}:ecs:${var.region}:${var.account_id}:task/${var.cluster_name}/*"]
  }

  statement {
    sid       = "TagRefreshTasksAtLaunch"
    effect    = "Allow"
    actions   = ["ecs:TagResource"]
    resources = ["arn:${var.partition}:ecs:${var.region}:${var.account_id}:task/${var.cluster_name}/*"]

    condition {
      test     = "StringEquals"
      variable = "ecs:CreateAction"
      values   = ["RunTask"]
    }
  }

  # ecs:runTask.sync waits on this Step Functions managed rule.
  statement {
    sid     = "SyncIntegrationManagedRule"
    effect  = "Allow"
    actions = ["events:DescribeRule", "events:PutRule", "events:PutTargets"]
    resources = [
      "arn:${var.partition}:events:${var.region}:${var.account_id}:rule/StepFunctionsGetEventsForECSTaskRule",
    ]
  }

  statement {
    sid       = "PassRunRolesToEcsTasks"
    effect    = "Allow"
    actions   = ["iam:PassRole"]
    resources = [var.task_role_arn, var.execution_role_arn]

    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }

  # The scoring stage's Distributed Map reads its items (the groups of shards) from the week's plan.
  statement {
    sid       = "ReadScoringMapItems"
    effect    = "Allow"
    actions   = ["s3:GetObject"]
    resources = ["arn:${var.partition}:s3:::${var.lake_bucket}/${local.lake_key_prefix}scoring/plans/*/items.json"]
  }

  # A Distributed Map runs each group as a child execution of this state machine.
  statement {
    sid       = "StartMapChildExecutions"
    effect    = "Allow"
    actions   = ["states:StartExecution"]
    resources = [local.state_machine_arn]
  }

  statement {
    sid     = "WatchAndStopMapChildExecutions"
    effect  = "Allow"
    actions = ["states:DescribeExecution", "states:StopExecution"]
    resources = [
      "arn:${var.partition}:states:${var.region}:${var.account_id}:execution:${local.state_machine_name}/*",
    ]
  }

  statement {
    sid       = "PublishFailures"
    effect    = "Allow"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.failures.arn]
  }

  # The topic, the execution data and the logs are encrypted with the project key.
  statement {
    sid       = "UseProjectKey"
    effect    = "Allow"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]
  }

  # Resource "*": CloudWatch Logs' log-delivery actions (execution history to the log group) have
  # no resource-level permissions, so AWS requires "*".
  statement {
    sid    = "ExecutionLogDeliveryRequiresWildcard"
    effect = "Allow"
    actions = [
      "logs:CreateLogDelivery",
      "logs:DeleteLogDelivery",
      "logs:DescribeLogGroups",
      "logs:DescribeResourcePolicies",
      "logs:GetLogDelivery",
      "logs:ListLogDeliveries",
      "logs:PutResourcePolicy",
      "logs:UpdateLogDelivery",
    ]
    resources = ["*"]
  }

  # Resource "*": X-Ray trace and sampling actions have no resource-level permissions; AWS requires "*".
  statement {
    sid    = "TracingRequiresWildcard"
    effect = "Allow"
    actions = [
      "xray:GetSamplingRules",
      "xray:GetSamplingTargets",
      "xray:PutTelemetryRecords",
      "xray:PutTraceSegments",
    ]
    resources = ["*"]
  }
}

# ---------------------------------------------------------------------------------------------
# Weekly schedule
# ---------------------------------------------------------------------------------------------

resource "aws_cloudwatch_event_rule" "weekly" {
  name                = "${local.state_machine_name}-schedule"
  description         = "Starts the weekly refresh"
  schedule_expression = var.schedule_expression
  state               = var.schedule_enabled ? "ENABLED" : "DISABLED"
}

resource "aws_cloudwatch_event_target" "weekly" {
  rule     = aws_cloudwatch_event_rule.weekly.name
  arn      = aws_sfn_state_machine.weekly_refresh.arn
  role_arn = aws_iam_role.events.arn

  # The execution input: the scheduled time and where to run tasks (shaped as the ECS
  # integration's NetworkConfiguration), so the ASL needs no account-specific value.
  input_transformer {
    input_paths = {
      time = "$.time"
    }
    input_template = <<-EOT
      {
        "time": <time>,
        "ecs": {
          "cluster": "${var.cluster_arn}",
          "taskDefinition": "${var.run_task_family}",
          "container": "${var.container_name}",
          "networkConfiguration": {
            "AwsvpcConfiguration": {
              "Subnets": ${jsonencode(var.private_subnet_ids)},
              "SecurityGroups": ${jsonencode([var.tasks_security_group_id])},
              "AssignPublicIp": "DISABLED"
            }
          }
        },
        "snsTopicArn": "${aws_sns_topic.failures.arn}"
      }
    EOT
  }

  retry_policy {
    maximum_event_age_in_seconds = 3600
    maximum_retry_attempts       = 3
  }
}

resource "aws_iam_role" "events" {
  name               = "${local.state_machine_name}-events"
  description        = "EventBridge starts the weekly refresh"
  assume_role_policy = data.aws_iam_policy_document.events_assume.json
}

data "aws_iam_policy_document" "events_assume" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [var.account_id]
    }
  }
}

resource "aws_iam_role_policy" "events" {
  name   = "${local.state_machine_name}-events"
  role   = aws_iam_role.events.id
  policy = data.aws_iam_policy_document.events.json
}

data "aws_iam_policy_document" "events" {
  statement {
    sid       = "StartWeeklyRefresh"
    effect    = "Allow"
    actions   = ["states:StartExecution"]
    resources = [aws_sfn_state_machine.weekly_refresh.arn]
  }

  # Executions carry data encrypted with the project key.
  statement {
    sid       = "UseProjectKey"
    effect    = "Allow"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = [var.kms_key_arn]
  }
}

# Executions that time out or are aborted cannot run their own failure branch: tell the topic.
resource "aws_cloudwatch_event_rule" "execution_not_finished" {
  name        = "${local.state_machine_name}-timed-out-or-aborted"
  description = "Weekly refresh executions that timed out or were aborted"

  event_pattern = jsonencode({
    source        = ["aws.states"]
    "detail-type" = ["Step Functions Execution Status Change"]
    detail = {
      stateMachineArn = [aws_sfn_state_machine.weekly_refresh.arn]
      status          = ["TIMED_OUT", "ABORTED"]
    }
  })
}

resource "aws_cloudwatch_event_target" "execution_not_finished" {
  rule = aws_cloudwatch_event_rule.execution_not_finished.name
  arn  = aws_sns_topic.failures.arn
}
