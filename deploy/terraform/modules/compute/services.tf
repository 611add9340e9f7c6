# Three services in private subnets, without public IPs. The code server and webserver register
# in the private DNS namespace (code-server.<ns>:4000, webserver.<ns>:3000). The daemon must
# never run twice: it is replaced stop-first.

resource "aws_ecs_service" "code_server" {
  name                    = "${var.name_prefix}-code-server"
  cluster                 = aws_ecs_cluster.this.id
  task_definition         = aws_ecs_task_definition.code_server.arn
  desired_count           = 1
  launch_type             = "FARGATE"
  platform_version        = "LATEST"
  propagate_tags          = "SERVICE"
  enable_ecs_managed_tags = true
  enable_execute_command  = false

  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.tasks.id]
    assign_public_ip = false
  }

  service_registries {
    registry_arn = aws_service_discovery_service.code_server.arn
  }
}

resource "aws_ecs_service" "webserver" {
  name                    = "${var.name_prefix}-webserver"
  cluster                 = aws_ecs_cluster.this.id
  task_definition         = aws_ecs_task_definition.webserver.arn
  desired_count           = 1
  launch_type             = "FARGATE"
  platform_version        = "LATEST"
  propagate_tags          = "SERVICE"
  enable_ecs_managed_tags = true
  enable_execute_command  = false

  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.tasks.id, aws_security_group.webserver.id]
    assign_public_ip = false
  }

  service_registries {
    registry_arn = aws_service_discovery_service.webserver.arn
  }

  depends_on = [aws_ecs_service.code_server]
}

resource "aws_ecs_service" "daemon" {
  name                    = "${var.name_prefix}-daemon"
  cluster                 = aws_ecs_cluster.this.id
  task_definition         = aws_ecs_task_definition.daemon.arn
  desired_count           = var.run_daemon ? 1 : 0
  launch_type             = "FARGATE"
  platform_version        = "LATEST"
  propagate_tags          = "SERVICE"
  enable_ecs_managed_tags = true
  enable_execute_command  = false

  # One daemon at a time: stop the old task before starting the new one.
  deployment_minimum_healthy_percent = 0
  deployment_maximum_percent         = 100

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.tasks.id]
    assign_public_ip = false
  }

  depends_on = [aws_ecs_service.code_server]
}
