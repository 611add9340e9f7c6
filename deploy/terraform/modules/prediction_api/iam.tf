# The function's role: read the model registry, use the cache table, read the API keys' secret,
# decrypt with the project key, write its logs and traces. Nothing else (no Glue, no Athena, no
# writes to the lake). Resource "*" only for X-Ray, which has no resource-level permissions.

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [var.account_id]
    }
  }
}

resource "aws_iam_role" "function" {
  name               = "${var.name_prefix}-prediction-api"
  description        = "${var.name_prefix} prediction API function: model registry, cache table, API keys secret"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
}

resource "aws_iam_role_policy" "function" {
  name   = "${var.name_prefix}-prediction-api"
  role   = aws_iam_role.function.id
  policy = data.aws_iam_policy_document.function.json
}

# Network interfaces in the VPC, only when the function runs in one (AWS's managed policy for it).
resource "aws_iam_role_policy_attachment" "vpc_access" {
  count = local.in_vpc ? 1 : 0

  role       = aws_iam_role.function.name
  policy_arn = "arn:${var.partition}:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
}

data "aws_iam_policy_document" "function" {
  # The registry lists a model's versions and checks that files exist (ListObjectsV2 under models/).
  statement {
    sid       = "ListModelRegistry"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [var.lake_bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.registry_prefix}*"]
    }
  }

  statement {
    sid       = "ReadModelRegistry"
    effect    = "Allow"
    actions   = ["s3:GetObject"]
    resources = ["${var.lake_bucket_arn}/${local.registry_prefix}*"]
  }

  statement {
    sid    = "UsePredictionCache"
    effect = "Allow"
    actions = [
      "dynamodb:BatchGetItem",
      "dynamodb:BatchWriteItem",
      "dynamodb:GetItem",
      "dynamodb:PutItem",
    ]
    resources = [aws_dynamodb_table.cache.arn]
  }

  statement {
    sid       = "ReadApiKeys"
    effect    = "Allow"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.api_keys.arn]
  }

  # The lake's objects (SSE-KMS), the secret, the cache table and the function's environment are
  # encrypted with the project key; reading any of them is a Decrypt with the caller's permissions.
  statement {
    sid       = "DecryptWithProjectKey"
    effect    = "Allow"
    actions   = ["kms:Decrypt"]
    resources = [var.kms_key_arn]
  }

  statement {
    sid       = "WriteFunctionLogs"
    effect    = "Allow"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.function.arn}:*"]
  }

  # Resource "*": X-Ray's trace and sampling actions have no resource-level permissions; AWS requires "*".
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
