output "bucket_name" {
  value = aws_s3_bucket.data.id
}

output "table_names" {
  value = [for t in aws_dynamodb_table.app : t.name]
}

output "queue_urls" {
  value = { for k, q in aws_sqs_queue.app : k => q.url }
}

output "poison_queue_urls" {
  value = { for k, q in aws_sqs_queue.poison : k => q.url }
}

output "policy_arn" {
  description = "Attach to the principal whose credentials the app uses."
  value       = aws_iam_policy.app.arn
}

# The app settings that point Stowage at these resources (every name is in shared/names.py).
output "app_settings" {
  value = {
    STOWAGE_BACKEND          = "aws"
    STOWAGE_AWS_REGION       = var.region
    STOWAGE_AWS_BUCKET       = aws_s3_bucket.data.id
    STOWAGE_AWS_TABLE_PREFIX = var.table_prefix
    STOWAGE_AWS_QUEUE_PREFIX = var.queue_prefix
    STOWAGE_AUDIT_ANCHOR     = "s3://${aws_s3_bucket.audit_anchor.id}"
  }
}
