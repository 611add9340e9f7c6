output "knowledge_base_id" {
  value = aws_bedrockagent_knowledge_base.this.id
}

output "knowledge_base_arn" {
  value = aws_bedrockagent_knowledge_base.this.arn
}

output "data_source_id" {
  value = aws_bedrockagent_data_source.documents.data_source_id
}

output "kb_bucket" {
  value = aws_s3_bucket.documents.bucket
}

output "kb_bucket_arn" {
  value = aws_s3_bucket.documents.arn
}

output "documents_prefix" {
  description = "The only prefix the data source ingests."
  value       = local.documents_prefix
}

output "vector_bucket_name" {
  value = aws_s3vectors_vector_bucket.this.vector_bucket_name
}

output "vector_index_arn" {
  value = aws_s3vectors_index.this.index_arn
}

output "knowledge_base_role_arn" {
  value = aws_iam_role.knowledge_base.arn
}
