output "cluster_name" {
  value = aws_ecs_cluster.this.name
}

output "cluster_arn" {
  value = aws_ecs_cluster.this.arn
}

output "container_name" {
  value = var.container_name
}

output "task_families" {
  value = local.families
}

output "run_task_family" {
  value = aws_ecs_task_definition.run.family
}

output "run_task_definition_arn_without_revision" {
  description = "Runs start from the newest revision of the family."
  value       = aws_ecs_task_definition.run.arn_without_revision
}

output "ecr_repository_url" {
  value = aws_ecr_repository.this.repository_url
}

output "image" {
  value = local.image
}

output "code_server_address" {
  value = "${local.code_server_host}:4000"
}

output "task_role_arn" {
  value = aws_iam_role.task.arn
}

output "task_role_name" {
  value = aws_iam_role.task.name
}

output "execution_role_arn" {
  value = aws_iam_role.execution.arn
}

output "log_group_name" {
  value = aws_cloudwatch_log_group.ecs.name
}

output "environment" {
  description = "What every container gets (empty values left out, as ECS drops them)."
  value       = { for item in local.environment : item.name => item.value }
}

output "tasks_security_group_id" {
  value = aws_security_group.tasks.id
}
