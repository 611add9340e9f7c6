# Task definitions: three long-running services and the run family. Every container gets the
# same environment (the EcsRunLauncher copies the env_vars dagster.yaml lists from the
# launching process, so the daemon and webserver need them too) and the database password from
# the Secrets Manager secret RDS manages, never as plain text.

locals {
  image = "${aws_ecr_repository.this.repository_url}:${var.image_tag}"

  families = {
    code_server = "${var.name_prefix}-code-server"
    webserver   = "${var.name_prefix}-webserver"
    daemon      = "${var.name_prefix}-daemon"
    run         = "${var.name_prefix}-run"
  }

  # Step stdout/stderr (dagster.yaml's S3ComputeLogManager) go to the lake bucket, beside the lake.
  compute_log_prefix = var.lake_prefix == "" ? "dagster/compute-logs" : "${trim(var.lake_prefix, "/")}/dagster/compute-logs"

  # Where dbt writes its Athena tables: the lake bucket, beside the lake.
  athena_data = var.lake_prefix == "" ? "s3://${var.lake_bucket}/warehouse/" : "s3://${var.lake_bucket}/${trim(var.lake_prefix, "/")}/warehouse/"

  code_server_host = "${aws_service_discovery_service.code_server.name}.${aws_service_discovery_private_dns_namespace.this.name}"

  environment_map = {
    ENGAGEMENT_ENV               = "aws"
    ENGAGEMENT_LAKE_BUCKET       = var.lake_bucket
    ENGAGEMENT_LAKE_PREFIX       = var.lake_prefix
    ENGAGEMENT_GLUE_RAW_DATABASE = var.glue_raw_database
    ENGAGEMENT_GLUE_DATABASE     = var.glue_database
    ENGAGEMENT_ATHENA_WORKGROUP  = var.athena_workgroup
    ENGAGEMENT_ATHENA_STAGING    = var.athena_staging
    ENGAGEMENT_ATHENA_DATA       = local.athena_data
    DAGSTER_HOME                 = var.dagster_home
    DAGSTER_PG_HOST              = var.db_address
    DAGSTER_PG_PORT              = tostring(var.db_port)
    DAGSTER_PG_DB                = var.db_name
    DAGSTER_PG_USERNAME          = var.db_username
    DAGSTER_CURRENT_IMAGE        = local.image
    DAGSTER_COMPUTE_LOG_BUCKET   = var.lake_bucket
    DAGSTER_COMPUTE_LOG_PREFIX   = local.compute_log_prefix
    DAGSTER_CODE_SERVER_HOST     = local.code_server_host
    DAGSTER_CODE_SERVER_PORT     = "4000"
    DAGSTER_CODE_LOCATION_NAME   = var.code_location_name
    AWS_REGION                   = var.region
    AWS_DEFAULT_REGION           = var.region
  }

  # Sorted by name: ECS returns them sorted, so an unsorted list would show a diff on every plan.
  # The weekly customer file, when the runs read one (raw_customers falls back to the generator).
  source_environment = var.source_uri == "" ? {} : { ENGAGEMENT_SOURCE_URI = var.source_uri }
  # The Bedrock knowledge base and the agent's model, when the knowledge_base module is deployed
  # (its grants to the task role come with it; without it the application keeps its local backend).
  knowledge_base_environment = !var.knowledge_base ? {} : {
    ENGAGEMENT_KB_BUCKET         = var.kb_bucket
    ENGAGEMENT_KB_ID             = var.kb_id
    ENGAGEMENT_KB_DATA_SOURCE_ID = var.kb_data_source_id
    ENGAGEMENT_LLM_BACKEND       = "bedrock"
    ENGAGEMENT_BEDROCK_MODEL_ID  = var.bedrock_model_id
  }
  all_environment = merge(local.environment_map, local.source_environment, local.knowledge_base_environment)
  # ECS drops empty values (an empty ENGAGEMENT_LAKE_PREFIX is the default): leave them out, or every
  # plan shows a diff and re-registers the task definitions.
  environment = [for name in sort(keys(local.all_environment)) : { name = name, value = local.all_environment[name] }
  if local.all_environment[name] != ""]

  # RDS keeps {"username": ..., "password": ...} in the secret; ECS injects one JSON key.
  secrets = [
    { name = "DAGSTER_PG_PASSWORD", valueFrom = "${var.db_master_secret_arn}:password::" },
  ]

  # The image's entrypoint (containers/entrypoint.sh) chooses the role; the webserver and daemon
  # load the code location over gRPC through the image's deploy/workspace.yaml, whose host, port
  # and location name come from DAGSTER_CODE_SERVER_HOST/PORT and DAGSTER_CODE_LOCATION_NAME above.
  entrypoint = ["engagement-dagster-entrypoint"]

  log_configuration = {
    for service in keys(local.families) : service => {
      logDriver = "awslogs"
      options = {
        "awslogs-group"         = aws_cloudwatch_log_group.ecs.name
        "awslogs-region"        = var.region
        "awslogs-stream-prefix" = replace(service, "_", "-")
      }
    }
  }
}

resource "aws_ecs_task_definition" "code_server" {
  #checkov:skip=CKV_AWS_336:Dagster writes DAGSTER_HOME/storage and dbt writes target/ and logs/ inside the image's project directory; the root filesystem is per-task ephemeral storage
  family                   = local.families.code_server
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = tostring(var.code_server_cpu)
  memory                   = tostring(var.code_server_memory)
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  container_definitions = jsonencode([
    {
      name      = var.container_name
      image     = local.image
      essential = true
      # Entry point and role are explicit, whatever the image's ENTRYPOINT/CMD: `dagster code-server
      # start -m engagement_dagster.definitions` on port 4000 (DAGSTER_CODE_SERVER_PORT).
      entryPoint = local.entrypoint
      command    = ["code-server"]
      portMappings = [{ containerPort = 4000, protocol = "tcp", name = "grpc" }]
      environment  = local.environment
      secrets      = local.secrets
      healthCheck = {
        command     = ["CMD", "dagster", "api", "grpc-health-check", "-p", "4000"]
        interval    = 30
        timeout     = 10
        retries     = 3
        startPeriod = 300
      }
      logConfiguration = local.log_configuration.code_server
      stopTimeout      = 30
    },
  ])
}

resource "aws_ecs_task_definition" "webserver" {
  #checkov:skip=CKV_AWS_336:Dagster writes DAGSTER_HOME/storage; the root filesystem is per-task ephemeral storage
  family                   = local.families.webserver
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = tostring(var.webserver_cpu)
  memory                   = tostring(var.webserver_memory)
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  container_definitions = jsonencode([
    {
      name      = "dagster-webserver"
      image     = local.image
      essential = true
      entryPoint = local.entrypoint
      command    = ["webserver"]
      portMappings = [{ containerPort = 3000, protocol = "tcp", name = "http" }]
      environment  = local.environment
      secrets      = local.secrets
      healthCheck = {
        command = [
          "CMD", "python", "-c",
          "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/server_info', timeout=5)",
        ]
        interval    = 30
        timeout     = 10
        retries     = 3
        startPeriod = 120
      }
      logConfiguration = local.log_configuration.webserver
      stopTimeout      = 30
    },
  ])
}

resource "aws_ecs_task_definition" "daemon" {
  #checkov:skip=CKV_AWS_336:Dagster writes DAGSTER_HOME/storage; the root filesystem is per-task ephemeral storage
  family                   = local.families.daemon
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = tostring(var.daemon_cpu)
  memory                   = tostring(var.daemon_memory)
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  container_definitions = jsonencode([
    {
      name      = "dagster-daemon"
      image     = local.image
      essential = true
      # The EcsRunLauncher builds run tasks from this container definition (environment, secrets,
      # logs), with the code location's image, a new command and no entry point.
      entryPoint = local.entrypoint
      command    = ["daemon"]
      environment = local.environment
      secrets     = local.secrets
      healthCheck = {
        command     = ["CMD", "dagster-daemon", "liveness-check"]
        interval    = 60
        timeout     = 30
        retries     = 3
        startPeriod = 300
      }
      logConfiguration = local.log_configuration.daemon
      stopTimeout      = 30
    },
  ])
}

# The run family: what the weekly state machine starts (ecs:runTask.sync with a command override),
# sized for the heavy runs: 16 vCPU / 64 GB (training and scoring of 60M customers fit in one
# task). The EcsRunLauncher, as deploy/dagster.yaml configures it (use_current_ecs_task_config),
# registers its own run_* families from the daemon's container definition and sizes them with
# run_resources and the ecs/cpu, ecs/memory run tags; naming this family in its task_definition
# would make it launch from this one instead.
resource "aws_ecs_task_definition" "run" {
  #checkov:skip=CKV_AWS_336:dbt writes target/ and logs/ and the lake stages files on the task's ephemeral storage; the root filesystem is per-task
  family                   = local.families.run
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = "16384"
  memory                   = "65536"
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  ephemeral_storage {
    size_in_gib = var.run_ephemeral_storage_gib
  }

  container_definitions = jsonencode([
    {
      name             = var.container_name
      image            = local.image
      essential        = true
      environment      = local.environment
      secrets          = local.secrets
      logConfiguration = local.log_configuration.run
      # Fargate's maximum: a stopped run gets two minutes to report its failure.
      stopTimeout = 120
    },
  ])
}
