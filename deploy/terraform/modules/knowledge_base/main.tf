# The Bedrock knowledge base: the documents bucket the application publishes to, an S3 Vectors
# bucket and index Bedrock writes the embeddings to, the knowledge base (Titan Text Embeddings V2,
# 1024 float32 dimensions, cosine) with its S3 data source, the role Bedrock works as, and what
# the application's task role needs to publish, sync, retrieve and call the agent's model.
#
# Bucket layout the application must keep (the data source reads only kb/):
#   kb/snapshot_week=YYYY-MM-DD/<doc_id>.md                  one document
#   kb/snapshot_week=YYYY-MM-DD/<doc_id>.md.metadata.json    its attributes (Bedrock reads the
#                                                            sidecar itself; keep it small: the
#                                                            attributes become filterable metadata)
#   state/...                                                anything that is not a document (the
#                                                            week's _published.json, manifests)
# An S3 data source has no exclusion pattern (only bucket_arn, bucket_owner_account_id and one
# inclusion prefix), so every object under kb/ is scanned by every sync. A JSON file that is no
# document's sidecar is not a supported document format: at best it is skipped, at worst counted
# among the job's failed documents; Terraform cannot filter it out. Keep state files out of kb/.

locals {
  documents_bucket   = "${var.name_prefix}-kb-${var.account_id}-${var.region}"
  documents_prefix   = "kb/"
  # Vector bucket names are unique per account and region (not global like S3 bucket names).
  vector_bucket_name = "${var.name_prefix}-kb-vectors"

  # Titan Text Embeddings V2 at its largest size. The index's dimension must equal the model's:
  # both read this one local. Changing it replaces the index (and re-embeds everything).
  embedding_model_id   = "amazon.titan-embed-text-v2:0"
  embedding_model_arn  = "arn:${var.partition}:bedrock:${var.region}::foundation-model/${local.embedding_model_id}"
  embedding_dimensions = 1024
  index_name           = "kb-titan-v2-${local.embedding_dimensions}"

  # Chunks of 300 tokens overlapping by 20%, like the lexical index (engagement_dagster/core/kb/index.py).
  chunk_max_tokens         = 300
  chunk_overlap_percentage = 20

  knowledge_base_arn_pattern = "arn:${var.partition}:bedrock:${var.region}:${var.account_id}:knowledge-base/*"
}

# ---------------------------------------------------------------------------------------------
# Documents bucket: the storage module's pattern (KMS, versioning, no public access, no ACLs,
# TLS 1.2+ only, access logs, lifecycle).
# ---------------------------------------------------------------------------------------------

resource "aws_s3_bucket" "documents" {
  #checkov:skip=CKV_AWS_144:The documents are regenerated every week from the lake, which holds their sources; versioning keeps overwritten and deleted ones for 90 days
  #checkov:skip=CKV2_AWS_62:The application starts the ingestion job itself once a week is published; nothing reacts to new objects
  bucket = local.documents_bucket
}

resource "aws_s3_bucket_versioning" "documents" {
  bucket = aws_s3_bucket.documents.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "documents" {
  bucket = aws_s3_bucket.documents.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "documents" {
  bucket                  = aws_s3_bucket.documents.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "documents" {
  bucket = aws_s3_bucket.documents.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_logging" "documents" {
  bucket        = aws_s3_bucket.documents.id
  target_bucket = var.access_logs_bucket
  target_prefix = "kb/"
}

resource "aws_s3_bucket_lifecycle_configuration" "documents" {
  bucket = aws_s3_bucket.documents.id

  rule {
    id     = "abort-uploads-and-expire-old-versions"
    status = "Enabled"

    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_retention_days
    }
  }

  depends_on = [aws_s3_bucket_versioning.documents]
}

resource "aws_s3_bucket_policy" "documents" {
  bucket = aws_s3_bucket.documents.id
  policy = data.aws_iam_policy_document.documents.json

  depends_on = [aws_s3_bucket_public_access_block.documents]
}

data "aws_iam_policy_document" "documents" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.documents.arn, "${aws_s3_bucket.documents.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  statement {
    sid       = "DenyTlsOlderThan12"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.documents.arn, "${aws_s3_bucket.documents.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "NumericLessThan"
      variable = "s3:TlsVersion"
      values   = ["1.2"]
    }
  }
}

# ---------------------------------------------------------------------------------------------
# S3 Vectors: where Bedrock keeps the chunks' embeddings. Encrypted with the project key (the key
# policy lets S3 Vectors' indexing service decrypt for the project's vector buckets only).
# ---------------------------------------------------------------------------------------------

resource "aws_s3vectors_vector_bucket" "this" {
  vector_bucket_name = local.vector_bucket_name

  encryption_configuration {
    sse_type    = "aws:kms"
    kms_key_arn = var.kms_key_arn
  }
}

# Dimension, metric and the non-filterable keys are fixed at creation (changing one replaces the
# index). Bedrock stores each chunk's text and its own bookkeeping in AMAZON_BEDROCK_TEXT and
# AMAZON_BEDROCK_METADATA: they exceed the 2 KB of filterable metadata a vector may carry, so they
# must be non-filterable. The documents' own attributes (snapshot_week, doc_id, doc_type from the
# .metadata.json sidecars) stay filterable: retrieval filters by week and document.
resource "aws_s3vectors_index" "this" {
  index_name         = local.index_name
  vector_bucket_name = aws_s3vectors_vector_bucket.this.vector_bucket_name

  data_type       = "float32"
  dimension       = local.embedding_dimensions
  distance_metric = "cosine"

  metadata_configuration {
    non_filterable_metadata_keys = ["AMAZON_BEDROCK_TEXT", "AMAZON_BEDROCK_METADATA"]
  }
}
