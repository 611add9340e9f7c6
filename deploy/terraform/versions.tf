terraform {
  required_version = ">= 1.6.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 6.24 adds aws_s3vectors_*; 6.26 their index encryption and metadata_configuration; 6.27 the
      # Bedrock knowledge base's S3_VECTORS storage (modules/knowledge_base).
      version = ">= 6.27, < 7.0"
    }
  }
}

provider "aws" {
  region = var.aws_region

  default_tags {
    tags = local.tags
  }
}
