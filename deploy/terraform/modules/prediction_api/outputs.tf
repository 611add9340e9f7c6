output "invoke_url" {
  description = "The stage's URL: POST <invoke_url>/predict with the header x-api-key."
  value       = aws_api_gateway_stage.this.invoke_url
}

output "api_key_ids" {
  description = "API key ids by name; the value: aws apigateway get-api-key --api-key <id> --include-value."
  value       = { for name, key in aws_api_gateway_api_key.client : name => key.id }
}

output "api_keys_secret_arn" {
  description = "Secrets Manager secret holding the accepted keys (ENGAGEMENT_API_KEYS_SECRET_ARN)."
  value       = aws_secretsmanager_secret.api_keys.arn
}

output "cache_table" {
  description = "DynamoDB table of the prediction cache (ENGAGEMENT_API_CACHE_TABLE)."
  value       = aws_dynamodb_table.cache.name
}

output "function_name" {
  value = aws_lambda_function.api.function_name
}

output "repository_url" {
  description = "ECR repository of the API image (containers/api.Dockerfile); tag it like the Dagster image."
  value       = aws_ecr_repository.api.repository_url
}

output "rest_api_id" {
  value = aws_api_gateway_rest_api.this.id
}

output "environment" {
  description = "The function's environment (no secret in it)."
  value       = local.environment
}
