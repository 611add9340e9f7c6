# What the application (the task role every Dagster task runs as, from the compute module) needs
# for the knowledge base: publish a week's documents, start and follow the sync, retrieve, and
# call the agent's Claude model. Attached here so the grants exist only with the knowledge base.

locals {
  # A geographic inference profile id is the model id behind a region-group prefix
  # ("us.anthropic.claude-..."). Calling one needs InvokeModel on the profile in this region and
  # on the foundation model in every region the profile routes to (agent_model_regions).
  agent_foundation_model_id = replace(var.agent_model_id, "/^(us|us-gov|eu|apac|jp|au|ca)\\./", "")
  agent_model_is_profile    = local.agent_foundation_model_id != var.agent_model_id
  agent_model_regions       = length(var.agent_model_regions) > 0 ? var.agent_model_regions : [var.region]

  agent_model_arns = concat(
    [for region in local.agent_model_regions :
    "arn:${var.partition}:bedrock:${region}::foundation-model/${local.agent_foundation_model_id}"],
    local.agent_model_is_profile ? ["arn:${var.partition}:bedrock:${var.region}:${var.account_id}:inference-profile/${var.agent_model_id}"] : [],
  )
}

resource "aws_iam_role_policy" "agent" {
  name   = "${var.name_prefix}-knowledge-base-agent"
  role   = var.task_role_name
  policy = data.aws_iam_policy_document.agent.json

  lifecycle {
    precondition {
      condition     = !local.agent_model_is_profile || length(var.agent_model_regions) > 0
      error_message = "agent_model_id is an inference profile: list the regions it routes to in agent_model_regions."
    }
  }
}

data "aws_iam_policy_document" "agent" {
  statement {
    sid       = "ListDocumentsBucket"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.documents.arn]
  }

  # Documents and sidecars under kb/, the publication state under state/ (whole bucket: it holds
  # nothing else). The project key (SSE-KMS) is already granted to the task role.
  statement {
    sid       = "PublishDocuments"
    effect    = "Allow"
    actions   = ["s3:DeleteObject", "s3:GetObject", "s3:PutObject"]
    resources = ["${aws_s3_bucket.documents.arn}/*"]
  }

  # Sync after publishing a week (one ingestion job at a time: list to find a running one).
  statement {
    sid       = "SyncKnowledgeBase"
    effect    = "Allow"
    actions   = ["bedrock:GetIngestionJob", "bedrock:ListIngestionJobs", "bedrock:StartIngestionJob"]
    resources = [aws_bedrockagent_knowledge_base.this.arn]
  }

  statement {
    sid       = "RetrieveFromKnowledgeBase"
    effect    = "Allow"
    actions   = ["bedrock:Retrieve"]
    resources = [aws_bedrockagent_knowledge_base.this.arn]
  }

  # The agent's model. Converse is authorised as bedrock:InvokeModel and ConverseStream as
  # bedrock:InvokeModelWithResponseStream (there is no bedrock:Converse action).
  statement {
    sid       = "InvokeAgentModel"
    effect    = "Allow"
    actions   = ["bedrock:InvokeModel", "bedrock:InvokeModelWithResponseStream"]
    resources = local.agent_model_arns
  }
}
