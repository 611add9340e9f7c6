# The knowledge base, its S3 data source, and the service role Bedrock assumes to read the
# documents, embed them with Titan and write and query the vectors.

data "aws_iam_policy_document" "bedrock_assume" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["bedrock.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [var.account_id]
    }

    # Only knowledge bases of this account and region (the role is created before the knowledge
    # base, so its ARN cannot be named).
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = [local.knowledge_base_arn_pattern]
    }
  }
}

resource "aws_iam_role" "knowledge_base" {
  name               = "${var.name_prefix}-bedrock-kb"
  description        = "Bedrock knowledge base ${var.name_prefix}-kb: read kb/ documents, embed with Titan V2, write and query its S3 Vectors index"
  assume_role_policy = data.aws_iam_policy_document.bedrock_assume.json
}

resource "aws_iam_role_policy" "knowledge_base" {
  name   = "${var.name_prefix}-bedrock-kb"
  role   = aws_iam_role.knowledge_base.id
  policy = data.aws_iam_policy_document.knowledge_base.json
}

data "aws_iam_policy_document" "knowledge_base" {
  statement {
    sid       = "EmbedWithTitanV2"
    effect    = "Allow"
    actions   = ["bedrock:InvokeModel"]
    resources = [local.embedding_model_arn]
  }

  statement {
    sid       = "ListDocumentsBucket"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.documents.arn]

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceAccount"
      values   = [var.account_id]
    }
  }

  statement {
    sid       = "ReadDocuments"
    effect    = "Allow"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.documents.arn}/${local.documents_prefix}*"]

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceAccount"
      values   = [var.account_id]
    }
  }

  # The documents (SSE-KMS) and the vector bucket are encrypted with the project key: Decrypt to
  # read them; GenerateDataKey to write vectors into the KMS-encrypted index and to encrypt the
  # ingestion's transient data (the data source's server_side_encryption_configuration).
  statement {
    sid       = "UseProjectKey"
    effect    = "Allow"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]
  }

  statement {
    sid    = "ReadWriteVectorIndex"
    effect = "Allow"
    actions = [
      "s3vectors:DeleteVectors",
      "s3vectors:GetIndex",
      "s3vectors:GetVectors",
      "s3vectors:PutVectors",
      "s3vectors:QueryVectors",
    ]
    resources = [aws_s3vectors_index.this.index_arn]
  }
}

resource "aws_bedrockagent_knowledge_base" "this" {
  name        = "${var.name_prefix}-kb"
  description = "Weekly engagement documents (model cards, segments, at-risk and week-over-week analyses) for the agent"
  role_arn    = aws_iam_role.knowledge_base.arn

  knowledge_base_configuration {
    type = "VECTOR"

    vector_knowledge_base_configuration {
      embedding_model_arn = local.embedding_model_arn

      embedding_model_configuration {
        bedrock_embedding_model_configuration {
          dimensions          = local.embedding_dimensions
          embedding_data_type = "FLOAT32"
        }
      }
    }
  }

  # index_arn alone: the provider's s3_vectors_configuration takes either index_arn or
  # index_name + vector_bucket_arn, not both.
  storage_configuration {
    type = "S3_VECTORS"

    s3_vectors_configuration {
      index_arn = aws_s3vectors_index.this.index_arn
    }
  }

  # Bedrock checks the role's access to the index when it creates the knowledge base.
  depends_on = [aws_iam_role_policy.knowledge_base]
}

resource "aws_bedrockagent_data_source" "documents" {
  knowledge_base_id = aws_bedrockagent_knowledge_base.this.id
  name              = "${var.name_prefix}-kb-documents"
  description       = "Markdown documents under ${local.documents_prefix} with their .metadata.json sidecars"
  # Deleting the data source (or a document, at the next sync) removes its vectors from the index.
  data_deletion_policy = "DELETE"

  data_source_configuration {
    type = "S3"

    s3_configuration {
      bucket_arn              = aws_s3_bucket.documents.arn
      bucket_owner_account_id = var.account_id
      # At most one prefix, and no exclusion patterns: keep only documents and sidecars under kb/.
      inclusion_prefixes = [local.documents_prefix]
    }
  }

  server_side_encryption_configuration {
    kms_key_arn = var.kms_key_arn
  }

  vector_ingestion_configuration {
    chunking_configuration {
      chunking_strategy = "FIXED_SIZE"

      fixed_size_chunking_configuration {
        max_tokens         = local.chunk_max_tokens
        overlap_percentage = local.chunk_overlap_percentage
      }
    }
  }

  # With DELETE, removing the data source deletes its vectors: the role must still be allowed to.
  depends_on = [aws_iam_role_policy.knowledge_base]
}
