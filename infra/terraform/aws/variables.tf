variable "region" {
  description = "AWS region (STOWAGE_AWS_REGION)."
  type        = string
  default     = "us-east-1"
}

variable "bucket_name" {
  description = "Globally unique S3 bucket name (STOWAGE_AWS_BUCKET). Containers are the first segment of each key."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be a valid S3 bucket name."
  }
}

variable "audit_anchor_bucket_name" {
  description = "Globally unique name of the S3 bucket with Object Lock that anchors the audit log (STOWAGE_AUDIT_ANCHOR=s3://<name>)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.audit_anchor_bucket_name)) && var.audit_anchor_bucket_name != var.bucket_name
    error_message = "audit_anchor_bucket_name must be a valid S3 bucket name, other than bucket_name."
  }
}

variable "audit_anchor_retention_days" {
  description = "Days every anchored audit checkpoint is locked (Object Lock COMPLIANCE: nobody, not even the account root, can delete it or shorten this before then). Verify logs against the anchor within this period."
  type        = number
  default     = 365

  validation {
    condition     = var.audit_anchor_retention_days >= 1
    error_message = "audit_anchor_retention_days must be at least 1."
  }
}

variable "table_prefix" {
  description = "DynamoDB table names are this prefix + the logical table name (STOWAGE_AWS_TABLE_PREFIX). Must not be empty: the app reads an empty value as its default, \"stowage-\"."
  type        = string
  default     = "stowage-"

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]{1,200}$", var.table_prefix))
    error_message = "table_prefix must be 1-200 of A-Z a-z 0-9 _ . -"
  }
}

variable "queue_prefix" {
  description = "SQS queue names are this prefix + the logical queue name (STOWAGE_AWS_QUEUE_PREFIX)."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{0,50}$", var.queue_prefix))
    error_message = "queue_prefix must be at most 50 of A-Z a-z 0-9 _ -"
  }
}

variable "backup_cool_after_days" {
  description = "Days after creation before a backup object moves to STANDARD_IA (S3 requires at least 30)."
  type        = number
  default     = 30

  validation {
    condition     = var.backup_cool_after_days >= 30
    error_message = "backup_cool_after_days must be at least 30 (S3 minimum for STANDARD_IA)."
  }
}

variable "backup_retention_days" {
  description = "Days after creation before a backup object expires."
  type        = number
  default     = 365

  validation {
    condition     = var.backup_retention_days > var.backup_cool_after_days
    error_message = "backup_retention_days must exceed backup_cool_after_days."
  }
}

variable "noncurrent_version_retention_days" {
  description = "Days a replaced (noncurrent) object version is kept."
  type        = number
  default     = 30
}

variable "queue_visibility_timeout_seconds" {
  description = "How long a received message stays hidden before another receive may get it."
  type        = number
  default     = 300
}

variable "queue_message_retention_seconds" {
  description = "How long SQS keeps an unprocessed message (max 14 days)."
  type        = number
  default     = 1209600
}

variable "deletion_protection" {
  description = "Protect the DynamoDB tables from deletion."
  type        = bool
  default     = true
}

variable "attach_to_role_names" {
  description = "Existing IAM roles that get the app policy."
  type        = list(string)
  default     = []
}

variable "attach_to_group_names" {
  description = "Existing IAM groups that get the app policy (e.g. the group of the user whose access key the function app uses)."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
  default = {
    app = "stowage"
  }
}
