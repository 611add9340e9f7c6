# One customer managed key for the project: lake and Athena results objects, Athena results,
# the knowledge base's documents and vectors, ECR images, CloudWatch log groups, the SNS topic, the database, its Performance Insights and
# the master user secret. IAM policies of the project's roles grant its use key by key ARN.

resource "aws_kms_key" "this" {
  description             = "${var.name_prefix}: data, logs, images, topic and database"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.key.json
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name_prefix}"
  target_key_id = aws_kms_key.this.key_id
}

# A key policy is attached to one key: its Resource "*" means "this key", and AWS requires it.
data "aws_iam_policy_document" "key" {
  #checkov:skip=CKV_AWS_109:Key policy: Resource "*" is this key; the account root administers it (AWS's default key policy)
  #checkov:skip=CKV_AWS_111:Key policy: Resource "*" is this key; its use is delegated to IAM policies that name the key ARN
  #checkov:skip=CKV_AWS_356:Key policy: Resource "*" is this key, the only resource a key policy can name
  # Resource "*": key policy (this key only). The account administers the key and delegates
  # its use to IAM policies, which name the key ARN.
  statement {
    sid       = "AccountAdministersKey"
    effect    = "Allow"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${var.partition}:iam::${var.account_id}:root"]
    }
  }

  # Resource "*": key policy (this key only). CloudWatch Logs encrypts only the project's log groups.
  statement {
    sid    = "CloudWatchLogsProjectLogGroups"
    effect = "Allow"
    actions = [
      "kms:Encrypt*",
      "kms:Decrypt*",
      "kms:ReEncrypt*",
      "kms:GenerateDataKey*",
      "kms:Describe*",
    ]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values = [
        "arn:${var.partition}:logs:${var.region}:${var.account_id}:log-group:/${var.name_prefix}/*",
        "arn:${var.partition}:logs:${var.region}:${var.account_id}:log-group:/aws/vendedlogs/states/${var.name_prefix}-*",
        "arn:${var.partition}:logs:${var.region}:${var.account_id}:log-group:/aws/rds/instance/${var.name_prefix}-*",
      ]
    }
  }

  # Resource "*": key policy (this key only). S3 Vectors' indexing service maintains the indexes of
  # the project's vector buckets (the knowledge base's embeddings) in the background and must
  # decrypt with the bucket's key; only for this account's <name_prefix>-* vector buckets.
  statement {
    sid       = "S3VectorsIndexingProjectVectorBuckets"
    effect    = "Allow"
    actions   = ["kms:Decrypt"]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["indexing.s3vectors.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [var.account_id]
    }

    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${var.partition}:s3vectors:${var.region}:${var.account_id}:bucket/${var.name_prefix}-*"]
    }

    condition {
      test     = "ForAnyValue:StringEquals"
      variable = "kms:EncryptionContextKeys"
      values   = ["aws:s3vectors:arn", "aws:s3vectors:resource-id"]
    }
  }

  # Resource "*": key policy (this key only). EventBridge publishes timed-out or aborted weekly
  # refreshes to the encrypted failure topic; only on behalf of this account.
  statement {
    sid       = "EventBridgePublishesToEncryptedTopic"
    effect    = "Allow"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey*"]
    resources = ["*"]

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
