# Security groups and private DNS of the Dagster tasks. Every task (code server, webserver,
# daemon, runs) shares the "tasks" group; the UI is reachable only from the CIDR blocks given
# (VPN, bastion). Nothing here has or needs a public IP.

resource "aws_security_group" "tasks" {
  name        = "${var.name_prefix}-tasks"
  description = "Dagster ECS tasks: code server, webserver, daemon and runs"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "tasks_grpc_from_tasks" {
  security_group_id            = aws_security_group.tasks.id
  description                  = "gRPC code server (4000) from the webserver, daemon and runs"
  referenced_security_group_id = aws_security_group.tasks.id
  ip_protocol                  = "tcp"
  from_port                    = 4000
  to_port                      = 4000
}

resource "aws_vpc_security_group_egress_rule" "tasks_grpc_to_tasks" {
  security_group_id            = aws_security_group.tasks.id
  description                  = "gRPC to the code server"
  referenced_security_group_id = aws_security_group.tasks.id
  ip_protocol                  = "tcp"
  from_port                    = 4000
  to_port                      = 4000
}

resource "aws_vpc_security_group_egress_rule" "tasks_https" {
  security_group_id = aws_security_group.tasks.id
  description       = "HTTPS to AWS APIs (ECR, S3, Athena, Glue, ECS, Secrets Manager, logs) via NAT or VPC endpoints"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "tasks_postgres" {
  security_group_id            = aws_security_group.tasks.id
  description                  = "PostgreSQL to Dagster's storage database"
  referenced_security_group_id = var.database_security_group_id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}

resource "aws_security_group" "webserver" {
  name        = "${var.name_prefix}-webserver"
  description = "Dagster UI (3000) from the private CIDR blocks allowed to use it"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "webserver_ui" {
  for_each = toset(var.webserver_ingress_cidr_blocks)

  security_group_id = aws_security_group.webserver.id
  description       = "Dagster UI from ${each.value}"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 3000
  to_port           = 3000
}

# The webserver and daemon find the code server at code-server.<namespace>:4000.
resource "aws_service_discovery_private_dns_namespace" "this" {
  name        = "${var.name_prefix}.internal"
  description = "Private DNS of the Dagster services"
  vpc         = var.vpc_id
}
