# Same parameters as infra/bicep/main.bicep (snake_case here).

variable "subscription_id" {
  description = "Azure subscription id; null reads ARM_SUBSCRIPTION_ID."
  type        = string
  default     = null
}

variable "resource_group_name" {
  description = "Resource group to create for every resource."
  type        = string
  default     = "rg-stowage"
}

variable "location" {
  description = "Azure region for every resource (must offer Flex Consumption)."
  type        = string
}

variable "base_name" {
  description = "Short prefix for resource names."
  type        = string
  default     = "stowage"

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{2,11}$", var.base_name))
    error_message = "base_name must be 3-12 lowercase letters and digits, starting with a letter."
  }
}

variable "storage_account_name" {
  description = "Globally unique storage account name (3-24 lowercase letters and digits); null derives one."
  type        = string
  default     = null

  validation {
    condition     = var.storage_account_name == null || can(regex("^[a-z0-9]{3,24}$", var.storage_account_name))
    error_message = "storage_account_name must be 3-24 lowercase letters and digits."
  }
}

variable "storage_replication_type" {
  description = "Storage redundancy. Geo-redundant by default so backups survive a regional outage."
  type        = string
  default     = "GRS"

  validation {
    condition     = contains(["LRS", "ZRS", "GRS", "GZRS", "RAGRS", "RAGZRS"], var.storage_replication_type)
    error_message = "storage_replication_type must be one of LRS, ZRS, GRS, GZRS, RAGRS, RAGZRS."
  }
}

variable "function_app_name" {
  description = "Globally unique function app name (at most 32 characters); null derives one."
  type        = string
  default     = null

  validation {
    condition     = var.function_app_name == null || try(length(var.function_app_name) <= 32, false)
    error_message = "function_app_name must be at most 32 characters."
  }
}

variable "instance_memory_mb" {
  description = "Memory of each Flex Consumption instance, in MB."
  type        = number
  default     = 2048

  validation {
    condition     = contains([2048, 4096], var.instance_memory_mb)
    error_message = "instance_memory_mb must be 2048 or 4096."
  }
}

variable "maximum_instance_count" {
  description = "Upper bound of the Flex Consumption scale-out."
  type        = number
  default     = 100

  validation {
    condition     = var.maximum_instance_count >= 1 && var.maximum_instance_count <= 1000
    error_message = "maximum_instance_count must be between 1 and 1000."
  }
}

variable "backup_cool_after_days" {
  description = "Days after its last modification before a backup blob moves to the cool tier."
  type        = number
  default     = 30

  validation {
    condition     = var.backup_cool_after_days >= 1
    error_message = "backup_cool_after_days must be at least 1."
  }
}

variable "backup_retention_days" {
  description = "Days after its last modification before a backup blob is deleted."
  type        = number
  default     = 365

  validation {
    condition     = var.backup_retention_days > var.backup_cool_after_days
    error_message = "backup_retention_days must exceed backup_cool_after_days."
  }
}

variable "noncurrent_version_retention_days" {
  description = "Days a previous version of a data blob is kept once it has been replaced."
  type        = number
  default     = 30
}

variable "audit_anchor_retention_days" {
  description = "Days each anchored audit checkpoint stays immutable (container-level WORM on the audit anchor container). Verify logs against the anchor within this period."
  type        = number
  default     = 365

  validation {
    condition     = var.audit_anchor_retention_days >= 1 && var.audit_anchor_retention_days <= 146000
    error_message = "audit_anchor_retention_days must be from 1 to 146000."
  }
}

variable "soft_delete_retention_days" {
  description = "Days a deleted blob or container stays restorable (soft delete)."
  type        = number
  default     = 14

  validation {
    condition     = var.soft_delete_retention_days >= 1 && var.soft_delete_retention_days <= 365
    error_message = "soft_delete_retention_days must be between 1 and 365."
  }
}

variable "log_retention_days" {
  description = "Log Analytics retention, in days."
  type        = number
  default     = 30
}

variable "storage_resource_logs" {
  description = "Send storage data-access logs (read/write/delete) to Log Analytics. Billed per GB ingested."
  type        = bool
  default     = true
}

variable "max_object_bytes" {
  description = "STOWAGE_MAX_OBJECT_BYTES: largest object body the API accepts."
  type        = number
  default     = 67108864
}

variable "offload_threshold_bytes" {
  description = "STOWAGE_OFFLOAD_THRESHOLD_BYTES: table properties and queue messages above this move to a blob."
  type        = number
  default     = 32768

  validation {
    condition     = var.offload_threshold_bytes >= 1 && var.offload_threshold_bytes <= 49152
    error_message = "offload_threshold_bytes must be between 1 and 49152 (queue message limit)."
  }
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
  default = {
    app = "stowage"
  }
}
