# The real-time prediction API: a Lambda function from the API image (containers/api.Dockerfile:
# FastAPI under Mangum, engagement_dagster/api/lambda_handler.py) behind an API Gateway REST API that
# requires an API key on every method, throttles the stage and each key (usage plan), and logs
# access to an encrypted log group; the DynamoDB table the predictions are cached in (TTL,
# point-in-time recovery, the project key); the API keys, also in a Secrets Manager secret the
# application reads them from (it checks the key too).
#
#   client --x-api-key--> API Gateway (stage <stage_name>) --AWS_PROXY--> alias "live" --> function
#                                                                          |- S3: models/ of the lake
#                                                                          |- DynamoDB: prediction cache
#                                                                          '- Secrets Manager: API keys

locals {
  function_name = "${var.name_prefix}-prediction-api"
  image         = "${aws_ecr_repository.api.repository_url}:${var.image_tag}"

  # The model registry in the lake (engagement_dagster/core/ml/registry.py): all the API reads there.
  registry_prefix = var.lake_prefix == "" ? "models/" : "${trim(var.lake_prefix, "/")}/models/"

  in_vpc = length(var.subnet_ids) > 0

  # What the application reads (engagement_dagster/api/app.py and cache.py), beside the lake's settings.
  # A request that finds the model check due reads the champion pointers from S3 (a dozen GETs): once
  # a minute per execution environment, not every 5 s (champions change weekly).
  api_environment = {
    ENGAGEMENT_ENV                     = "aws"
    ENGAGEMENT_API_CACHE               = "dynamodb"
    ENGAGEMENT_API_CACHE_TABLE         = aws_dynamodb_table.cache.name
    ENGAGEMENT_API_CACHE_TTL_SECONDS   = tostring(var.cache_ttl_seconds)
    ENGAGEMENT_API_KEYS_SECRET_ARN     = aws_secretsmanager_secret.api_keys.arn
    ENGAGEMENT_API_MODEL_CHECK_SECONDS = tostring(var.model_check_seconds)
  }
  environment = merge(var.settings_environment, local.api_environment)
}

# ---------------------------------------------------------------------------------------------
# The image repository (the compute module's pattern: immutable tags, scan on push, KMS, lifecycle)
# ---------------------------------------------------------------------------------------------

resource "aws_ecr_repository" "api" {
  name                 = "${var.name_prefix}-api"
  image_tag_mutability = "IMMUTABLE"
  force_delete         = false

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = var.kms_key_arn
  }
}

resource "aws_ecr_lifecycle_policy" "api" {
  repository = aws_ecr_repository.api.name

  policy = jsonencode({
    rules = [
      {
        rulePriority = 1
        description  = "Drop untagged layers after 7 days"
        selection = {
          tagStatus   = "untagged"
          countType   = "sinceImagePushed"
          countUnit   = "days"
          countNumber = 7
        }
        action = { type = "expire" }
      },
      {
        rulePriority = 2
        description  = "Keep the 50 most recent images"
        selection = {
          tagStatus   = "any"
          countType   = "imageCountMoreThan"
          countNumber = 50
        }
        action = { type = "expire" }
      },
    ]
  })
}

# Lambda pulls the image itself (not with the function's role): this function only.
resource "aws_ecr_repository_policy" "api" {
  repository = aws_ecr_repository.api.name
  policy     = data.aws_iam_policy_document.repository.json
}

data "aws_iam_policy_document" "repository" {
  statement {
    sid       = "LambdaPullsTheFunctionsImage"
    effect    = "Allow"
    actions   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
    resources = [aws_ecr_repository.api.arn]

    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }

    condition {
      test     = "StringLike"
      variable = "aws:sourceArn"
      values   = ["arn:${var.partition}:lambda:${var.region}:${var.account_id}:function:${local.function_name}*"]
    }
  }
}

# ---------------------------------------------------------------------------------------------
# The function
# ---------------------------------------------------------------------------------------------

# A name under /<name_prefix>/: the project key's policy lets CloudWatch Logs use it for those only.
resource "aws_cloudwatch_log_group" "function" {
  name              = "/${var.name_prefix}/prediction-api/function"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

resource "aws_security_group" "function" {
  count = local.in_vpc ? 1 : 0

  name        = "${var.name_prefix}-prediction-api"
  description = "The prediction API function: HTTPS out to AWS APIs, nothing in"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_egress_rule" "function_https" {
  count = local.in_vpc ? 1 : 0

  security_group_id = aws_security_group.function[0].id
  description       = "HTTPS to S3, DynamoDB, Secrets Manager and X-Ray (NAT or VPC endpoints)"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_lambda_function" "api" {
  #checkov:skip=CKV_AWS_116:API Gateway invokes synchronously: a failed request returns its error to the caller, there is no event to keep in a dead-letter queue
  #checkov:skip=CKV_AWS_272:Lambda code signing applies to .zip packages only; the image comes from the project's immutable-tag, scan-on-push repository
  function_name = local.function_name
  description   = "engagement-dagster prediction API (FastAPI under Mangum) behind API Gateway"
  role          = aws_iam_role.function.arn
  package_type  = "Image"
  image_uri     = local.image
  # The image is built for linux/amd64, like the Dagster image.
  architectures = ["x86_64"]

  memory_size                    = var.memory_mb
  timeout                        = var.timeout_seconds
  reserved_concurrent_executions = var.reserved_concurrency
  # A version per deployment: the alias below points at it, and provisioned concurrency needs one.
  publish = true

  # The environment is encrypted with the project key (no secret in it: the keys' secret is named).
  kms_key_arn = var.kms_key_arn

  environment {
    variables = local.environment
  }

  tracing_config {
    mode = "Active"
  }

  logging_config {
    log_format            = "JSON"
    log_group             = aws_cloudwatch_log_group.function.name
    application_log_level = "INFO"
    system_log_level      = "WARN"
  }

  dynamic "vpc_config" {
    for_each = local.in_vpc ? [1] : []
    content {
      subnet_ids         = var.subnet_ids
      security_group_ids = [aws_security_group.function[0].id]
    }
  }

  # Provisioned environments start (and read the keys) as soon as the alias has a version.
  depends_on = [
    aws_iam_role_policy.function,
    aws_ecr_repository_policy.api,
    aws_secretsmanager_secret_version.api_keys,
  ]
}

# API Gateway calls the alias: a new image publishes a version and moves the alias, with no change
# to the API (and no redeployment).
resource "aws_lambda_alias" "live" {
  name             = "live"
  description      = "The version API Gateway invokes"
  function_name    = aws_lambda_function.api.function_name
  function_version = aws_lambda_function.api.version
}

resource "aws_lambda_provisioned_concurrency_config" "live" {
  count = var.provisioned_concurrency > 0 ? 1 : 0

  function_name                     = aws_lambda_alias.live.function_name
  qualifier                         = aws_lambda_alias.live.name
  provisioned_concurrent_executions = var.provisioned_concurrency
}

# Only this API's stage may invoke the function, on any method and path.
resource "aws_lambda_permission" "api_gateway" {
  statement_id  = "AllowApiGatewayStage"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.api.function_name
  qualifier     = aws_lambda_alias.live.name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_api_gateway_rest_api.this.execution_arn}/${var.stage_name}/*/*"
}

# ---------------------------------------------------------------------------------------------
# The cache: hash key pk (S), TTL on expires_at (epoch seconds), the layout of
# engagement_dagster/api/cache.py's DynamoDBCache. DynamoDB deletes expired items lazily, so the
# application checks expires_at on read.
# ---------------------------------------------------------------------------------------------

resource "aws_dynamodb_table" "cache" {
  name         = "${var.name_prefix}-prediction-cache"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "pk"

  attribute {
    name = "pk"
    type = "S"
  }

  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = var.kms_key_arn
  }
}
