# The REST API: every method needs an API key (header x-api-key), every path goes to the function
# (Lambda proxy integration, the app routes), the stage throttles the whole API and each key's usage
# plan throttles and caps that key. No API Gateway cache: the application caches in DynamoDB, keyed
# on the request body, which API Gateway's cache cannot key on.

resource "aws_api_gateway_rest_api" "this" {
  name           = "${var.name_prefix}-prediction-api"
  description    = "engagement-dagster real-time predictions (POST /predict, /predict/batch; GET /health)"
  api_key_source = "HEADER"

  endpoint_configuration {
    types = ["REGIONAL"]
  }

  lifecycle {
    create_before_destroy = true
  }
}

# / and /{proxy+}: the app's own routes (its 404 and 405 answer the rest).
resource "aws_api_gateway_resource" "proxy" {
  rest_api_id = aws_api_gateway_rest_api.this.id
  parent_id   = aws_api_gateway_rest_api.this.root_resource_id
  path_part   = "{proxy+}"
}

resource "aws_api_gateway_method" "root" {
  #checkov:skip=CKV2_AWS_53:A proxy method has no API Gateway model to validate against; the application validates every request against the data contract and answers 422 naming the field
  rest_api_id      = aws_api_gateway_rest_api.this.id
  resource_id      = aws_api_gateway_rest_api.this.root_resource_id
  http_method      = "ANY"
  authorization    = "NONE"
  api_key_required = true
}

resource "aws_api_gateway_method" "proxy" {
  #checkov:skip=CKV2_AWS_53:A proxy method has no API Gateway model to validate against; the application validates every request against the data contract and answers 422 naming the field
  rest_api_id      = aws_api_gateway_rest_api.this.id
  resource_id      = aws_api_gateway_resource.proxy.id
  http_method      = "ANY"
  authorization    = "NONE"
  api_key_required = true

  request_parameters = {
    "method.request.path.proxy" = true
  }
}

resource "aws_api_gateway_integration" "root" {
  rest_api_id             = aws_api_gateway_rest_api.this.id
  resource_id             = aws_api_gateway_method.root.resource_id
  http_method             = aws_api_gateway_method.root.http_method
  type                    = "AWS_PROXY"
  integration_http_method = "POST" # Lambda is always invoked with POST, whatever the client's method
  uri                     = aws_lambda_alias.live.invoke_arn
}

resource "aws_api_gateway_integration" "proxy" {
  rest_api_id             = aws_api_gateway_rest_api.this.id
  resource_id             = aws_api_gateway_method.proxy.resource_id
  http_method             = aws_api_gateway_method.proxy.http_method
  type                    = "AWS_PROXY"
  integration_http_method = "POST"
  uri                     = aws_lambda_alias.live.invoke_arn
}

# A new deployment whenever a resource, method or integration changes (the stage then points at it).
resource "aws_api_gateway_deployment" "this" {
  rest_api_id = aws_api_gateway_rest_api.this.id
  description = "Routes / and /{proxy+} to the function's live alias"

  triggers = {
    redeployment = sha1(jsonencode([
      aws_api_gateway_resource.proxy,
      aws_api_gateway_method.root,
      aws_api_gateway_method.proxy,
      aws_api_gateway_integration.root,
      aws_api_gateway_integration.proxy,
    ]))
  }

  lifecycle {
    create_before_destroy = true
  }
}

# ---------------------------------------------------------------------------------------------
# Stage: access logs (JSON, KMS-encrypted group), X-Ray, metrics, stage-wide throttling
# ---------------------------------------------------------------------------------------------

resource "aws_cloudwatch_log_group" "access" {
  name              = "/${var.name_prefix}/prediction-api/access"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

# API Gateway names its execution log group itself; made here so it has a retention.
resource "aws_cloudwatch_log_group" "execution" {
  #checkov:skip=CKV_AWS_158:API Gateway fixes this group's name (API-Gateway-Execution-Logs_<id>/<stage>), outside the /<name_prefix>/ groups the project key admits; it gets ERROR lines only, never bodies or keys (data_trace_enabled = false)
  name              = "API-Gateway-Execution-Logs_${aws_api_gateway_rest_api.this.id}/${var.stage_name}"
  retention_in_days = var.log_retention_days
}

resource "aws_api_gateway_stage" "this" {
  #checkov:skip=CKV_AWS_120:No API Gateway cache: it cannot key on a POST body; the application caches predictions in DynamoDB under the features' hash and the model versions
  #checkov:skip=CKV2_AWS_29:No WAF web ACL by default: every method needs an API key, each key is throttled and capped by its usage plan and the stage is throttled; associate a web ACL when the API is opened beyond known clients
  #checkov:skip=CKV2_AWS_51:Client certificates authenticate API Gateway to an HTTP backend; the only backend is a Lambda function invoked through IAM
  rest_api_id          = aws_api_gateway_rest_api.this.id
  deployment_id        = aws_api_gateway_deployment.this.id
  stage_name           = var.stage_name
  description          = "Requires x-api-key; throttled per stage and per key"
  xray_tracing_enabled = true

  cache_cluster_enabled = false

  access_log_settings {
    destination_arn = aws_cloudwatch_log_group.access.arn
    # The key's id, never its value ($context.identity.apiKey).
    format = jsonencode({
      requestId          = "$context.requestId"
      requestTime        = "$context.requestTime"
      sourceIp           = "$context.identity.sourceIp"
      apiKeyId           = "$context.identity.apiKeyId"
      httpMethod         = "$context.httpMethod"
      path               = "$context.path"
      status             = "$context.status"
      responseLength     = "$context.responseLength"
      responseLatency    = "$context.responseLatency"
      integrationStatus  = "$context.integration.status"
      integrationLatency = "$context.integration.latency"
      errorMessage       = "$context.error.message"
      xrayTraceId        = "$context.xrayTraceId"
    })
  }

  depends_on = [
    aws_api_gateway_account.this,
    aws_cloudwatch_log_group.execution,
  ]
}

resource "aws_api_gateway_method_settings" "all" {
  #checkov:skip=CKV_AWS_225:No API Gateway cache: it cannot key on a POST body; the application caches predictions in DynamoDB under the features' hash and the model versions
  rest_api_id = aws_api_gateway_rest_api.this.id
  stage_name  = aws_api_gateway_stage.this.stage_name
  method_path = "*/*"

  settings {
    metrics_enabled        = true
    logging_level          = "ERROR"
    data_trace_enabled     = false # would log request and response bodies: customer data
    throttling_rate_limit  = var.stage_rate_limit
    throttling_burst_limit = var.stage_burst_limit
    caching_enabled        = false
    cache_data_encrypted   = true
  }
}

# ---------------------------------------------------------------------------------------------
# API keys and the usage plan (per-key throttling and a daily quota)
# ---------------------------------------------------------------------------------------------

# The value is generated by API Gateway; the provider reads it back, so it is in the Terraform state
# (and the secret below): keep the state in an encrypted, access-controlled backend.
resource "aws_api_gateway_api_key" "client" {
  for_each = toset(var.api_key_names)

  name        = "${var.name_prefix}-prediction-api-${each.key}"
  description = "Prediction API key \"${each.key}\""
  enabled     = true
}

resource "aws_api_gateway_usage_plan" "this" {
  name        = "${var.name_prefix}-prediction-api"
  description = "Per key: ${var.key_rate_limit} requests/s (burst ${var.key_burst_limit}), ${var.key_quota_per_day} a day"

  api_stages {
    api_id = aws_api_gateway_rest_api.this.id
    stage  = aws_api_gateway_stage.this.stage_name
  }

  throttle_settings {
    rate_limit  = var.key_rate_limit
    burst_limit = var.key_burst_limit
  }

  quota_settings {
    limit  = var.key_quota_per_day
    period = "DAY"
  }
}

resource "aws_api_gateway_usage_plan_key" "client" {
  for_each = aws_api_gateway_api_key.client

  key_id        = each.value.id
  key_type      = "API_KEY"
  usage_plan_id = aws_api_gateway_usage_plan.this.id
}

# The application checks the key too (constant-time, engagement_dagster/api/app.py): it reads the
# accepted keys from this secret at start (ENGAGEMENT_API_KEYS_SECRET_ARN), as a JSON list.
resource "aws_secretsmanager_secret" "api_keys" {
  #checkov:skip=CKV2_AWS_57:API keys rotate by adding a name to api_key_names, handing the new key out and removing the old name; there is no rotation Lambda to run
  name                    = "${var.name_prefix}/prediction-api/api-keys"
  description             = "The prediction API's accepted keys (JSON list), the values of its API Gateway keys"
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "api_keys" {
  secret_id     = aws_secretsmanager_secret.api_keys.id
  secret_string = jsonencode([for name in sort(var.api_key_names) : aws_api_gateway_api_key.client[name].value])
}

# ---------------------------------------------------------------------------------------------
# The region's API Gateway account setting: the role API Gateway writes CloudWatch Logs with. One per
# account and region, shared by every REST API there (hence AWS's managed policy, which every API's
# log groups need); leave it out with manage_api_gateway_account = false if something else sets it.
# ---------------------------------------------------------------------------------------------

data "aws_iam_policy_document" "api_gateway_assume" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["apigateway.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [var.account_id]
    }
  }
}

resource "aws_iam_role" "api_gateway_logs" {
  count = var.manage_api_gateway_account ? 1 : 0

  name               = "${var.name_prefix}-api-gateway-logs"
  description        = "API Gateway (account setting, ${var.region}) writes access and execution logs"
  assume_role_policy = data.aws_iam_policy_document.api_gateway_assume.json
}

resource "aws_iam_role_policy_attachment" "api_gateway_logs" {
  count = var.manage_api_gateway_account ? 1 : 0

  role       = aws_iam_role.api_gateway_logs[0].name
  policy_arn = "arn:${var.partition}:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"
}

resource "aws_api_gateway_account" "this" {
  count = var.manage_api_gateway_account ? 1 : 0

  cloudwatch_role_arn = aws_iam_role.api_gateway_logs[0].arn
}
