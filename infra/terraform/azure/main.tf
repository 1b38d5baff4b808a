# Stowage on Azure Functions Flex Consumption: the function app, its user-assigned identity,
# one locked-down storage account (app data, Functions host state, deployment package) and
# monitoring. Equivalent to infra/bicep/main.bicep.
#
# Container, table and queue names are those of shared/names.py, and every app setting is one
# the app reads (shared/names.py APP_SETTINGS / PLATFORM_SETTINGS): tests/test_infra.py fails
# when this directory, infra/bicep and shared/names.py disagree.

data "azurerm_client_config" "current" {}

locals {
  # ---- names (shared/names.py) ----
  containers = [
    "stowage-data",
    "stowage-backups",
  ]
  backup_container = "stowage-backups"
  data_container   = "stowage-data"
  # The audit anchor's container (STOWAGE_AUDIT_ANCHOR), with an immutability policy.
  audit_anchor_container = "stowage-audit-anchor"
  tables = [
    "stowageapikeys",
    "stowageobjects",
    "stowagecommands",
    "stowagememory",
    "stowagesessions",
    "stowageworkflows",
    "stowagecheckpoints",
    "stowagechanges",
    "stowageaudit",
  ]
  # The Functions host moves a message that failed maxDequeueCount times to "<queue>-poison".
  queues = [
    "stowage-commands",
    "stowage-commands-poison",
  ]
  # Flex Consumption reads the deployment package from this container.
  deployment_container = "app-package"

  suffix               = substr(sha1("${data.azurerm_client_config.current.subscription_id}/${var.resource_group_name}/${var.base_name}"), 0, 13)
  storage_account_name = coalesce(var.storage_account_name, "st${local.suffix}")
  function_app_name    = coalesce(var.function_app_name, "func-${var.base_name}-${local.suffix}")

  # Built-in roles: exactly these, nothing broader.
  storage_roles = toset([
    "Storage Blob Data Owner",
    "Storage Queue Data Contributor",
    "Storage Table Data Contributor",
  ])
}

resource "azurerm_resource_group" "main" {
  name     = var.resource_group_name
  location = var.location
  tags     = var.tags
}

# ---- identity ----------------------------------------------------------------------------

resource "azurerm_user_assigned_identity" "app" {
  name                = "id-${var.base_name}-${local.suffix}"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
  tags                = var.tags
}

# ---- storage -----------------------------------------------------------------------------

resource "azurerm_storage_account" "main" {
  #checkov:skip=CKV_AZURE_35:The Flex app has no VNet integration, so host and app reach storage over its public endpoint; access is Entra ID only (shared keys off). Network isolation needs a VNet, out of scope.
  #checkov:skip=CKV_AZURE_59:Same reason as CKV_AZURE_35.
  #checkov:skip=CKV_AZURE_43:The name defaults to "st" + 13 hex characters, computed at plan time where checkov cannot evaluate it.
  #checkov:skip=CKV_AZURE_33:Classic Storage Analytics logging needs shared-key access, which is disabled; resource logs go to Log Analytics through diagnostic settings instead.
  #checkov:skip=CKV2_AZURE_33:Private endpoints need a VNet, out of scope.
  #checkov:skip=CKV2_AZURE_1:Customer-managed keys are left to the user's key policy; data is encrypted at rest (Microsoft-managed keys, plus infrastructure encryption).
  name                              = local.storage_account_name
  resource_group_name               = azurerm_resource_group.main.name
  location                          = azurerm_resource_group.main.location
  account_kind                      = "StorageV2"
  account_tier                      = "Standard"
  account_replication_type          = var.storage_replication_type
  access_tier                       = "Hot"
  https_traffic_only_enabled        = true
  min_tls_version                   = "TLS1_2"
  allow_nested_items_to_be_public   = false
  shared_access_key_enabled         = false
  default_to_oauth_authentication   = true
  cross_tenant_replication_enabled  = false
  infrastructure_encryption_enabled = true
  public_network_access_enabled     = true
  queue_encryption_key_type         = "Account"
  table_encryption_key_type         = "Account"

  network_rules {
    default_action = "Allow"
    bypass         = ["AzureServices"]
  }

  blob_properties {
    versioning_enabled = true

    delete_retention_policy {
      days = var.soft_delete_retention_days
    }

    container_delete_retention_policy {
      days = var.soft_delete_retention_days
    }
  }

  tags = var.tags
}

# storage_account_id: created through Resource Manager, which works with shared keys disabled.
resource "azurerm_storage_container" "app" {
  #checkov:skip=CKV2_AZURE_21:Log Analytics storage insights needs the account key, which is disabled; blob resource logs go to Log Analytics through diagnostic settings instead.
  for_each              = toset(local.containers)
  name                  = each.value
  storage_account_id    = azurerm_storage_account.main.id
  container_access_type = "private"
}

# The audit log's anchor (STOWAGE_AUDIT_ANCHOR=container:<name>): every signed audit checkpoint is
# also written here, create-only (shared/storage/tlog.py, Anchoring). A container-level WORM
# time-based retention policy makes each blob immutable for audit_anchor_retention_days from its
# creation: new blobs can be created, none modified or deleted. Deployed unlocked (it can still be
# shortened or removed by the account's owner); lock it to make it irreversible (docs/deploy.md).
resource "azurerm_storage_container" "audit_anchor" {
  #checkov:skip=CKV2_AZURE_21:Log Analytics storage insights needs the account key, which is disabled; blob resource logs go to Log Analytics through diagnostic settings instead.
  name                  = local.audit_anchor_container
  storage_account_id    = azurerm_storage_account.main.id
  container_access_type = "private"
}

resource "azurerm_storage_container_immutability_policy" "audit_anchor" {
  # With storage_account_id, a container's id is its Resource Manager id.
  storage_container_resource_manager_id = azurerm_storage_container.audit_anchor.id
  immutability_period_in_days           = var.audit_anchor_retention_days
  protected_append_writes_enabled       = false
  protected_append_writes_all_enabled   = false
}

resource "azurerm_storage_container" "deployment" {
  #checkov:skip=CKV2_AZURE_21:Log Analytics storage insights needs the account key, which is disabled; blob resource logs go to Log Analytics through diagnostic settings instead.
  name                  = local.deployment_container
  storage_account_id    = azurerm_storage_account.main.id
  container_access_type = "private"
}

resource "azurerm_storage_queue" "app" {
  for_each           = toset(local.queues)
  name               = each.value
  storage_account_id = azurerm_storage_account.main.id
}

# azurerm_storage_table still uses the table data plane with a shared key in azurerm 4.x, which
# this account refuses; the Resource Manager resource (as in the Bicep template) does not.
resource "azapi_resource" "table" {
  for_each  = toset(local.tables)
  type      = "Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01"
  name      = each.value
  parent_id = "${azurerm_storage_account.main.id}/tableServices/default"
  body      = {}
}

resource "azurerm_storage_management_policy" "main" {
  storage_account_id = azurerm_storage_account.main.id

  rule {
    name    = "backups-cool-then-delete"
    enabled = true

    filters {
      blob_types   = ["blockBlob"]
      prefix_match = ["${local.backup_container}/"]
    }

    actions {
      base_blob {
        tier_to_cool_after_days_since_modification_greater_than = var.backup_cool_after_days
        delete_after_days_since_modification_greater_than       = var.backup_retention_days
      }

      version {
        delete_after_days_since_creation = var.backup_retention_days
      }
    }
  }

  rule {
    name    = "data-expire-old-versions"
    enabled = true

    filters {
      blob_types   = ["blockBlob"]
      prefix_match = ["${local.data_container}/"]
    }

    actions {
      version {
        delete_after_days_since_creation = var.noncurrent_version_retention_days
      }
    }
  }
}

# Azure Monitor resource logs for data access (reads, writes, deletes) on each storage service.
resource "azurerm_monitor_diagnostic_setting" "storage" {
  for_each                   = var.storage_resource_logs ? toset(["blobServices", "queueServices", "tableServices"]) : toset([])
  name                       = "storage-to-log-analytics"
  target_resource_id         = "${azurerm_storage_account.main.id}/${each.value}/default"
  log_analytics_workspace_id = azurerm_log_analytics_workspace.main.id

  enabled_log {
    category = "StorageRead"
  }

  enabled_log {
    category = "StorageWrite"
  }

  enabled_log {
    category = "StorageDelete"
  }
}

resource "azurerm_role_assignment" "storage" {
  for_each             = local.storage_roles
  scope                = azurerm_storage_account.main.id
  role_definition_name = each.value
  principal_id         = azurerm_user_assigned_identity.app.principal_id
  principal_type       = "ServicePrincipal"
}

# ---- monitoring --------------------------------------------------------------------------

resource "azurerm_log_analytics_workspace" "main" {
  name                = "log-${var.base_name}-${local.suffix}"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
  sku                 = "PerGB2018"
  retention_in_days   = var.log_retention_days
  tags                = var.tags
}

resource "azurerm_application_insights" "main" {
  name                          = "appi-${var.base_name}-${local.suffix}"
  resource_group_name           = azurerm_resource_group.main.name
  location                      = azurerm_resource_group.main.location
  workspace_id                  = azurerm_log_analytics_workspace.main.id
  application_type              = "web"
  local_authentication_disabled = true
  tags                          = var.tags
}

resource "azurerm_role_assignment" "metrics_publisher" {
  scope                = azurerm_application_insights.main.id
  role_definition_name = "Monitoring Metrics Publisher"
  principal_id         = azurerm_user_assigned_identity.app.principal_id
  principal_type       = "ServicePrincipal"
}

# ---- function app ------------------------------------------------------------------------

resource "azurerm_service_plan" "main" {
  #checkov:skip=CKV_AZURE_225:Zone redundancy on Flex Consumption bills at least two always-ready instances per function group; an opt-in left to the operator.
  #checkov:skip=CKV_AZURE_212:Flex Consumption scales from zero and the platform manages instances; a minimum instance count does not apply.
  name                = "plan-${var.base_name}-${local.suffix}"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
  os_type             = "Linux"
  sku_name            = "FC1"
  tags                = var.tags
}

resource "azurerm_function_app_flex_consumption" "main" {
  name                = local.function_app_name
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
  service_plan_id     = azurerm_service_plan.main.id

  storage_container_type            = "blobContainer"
  storage_container_endpoint        = "${azurerm_storage_account.main.primary_blob_endpoint}${azurerm_storage_container.deployment.name}"
  storage_authentication_type       = "UserAssignedIdentity"
  storage_user_assigned_identity_id = azurerm_user_assigned_identity.app.id

  runtime_name           = "python"
  runtime_version        = "3.11"
  instance_memory_in_mb  = var.instance_memory_mb
  maximum_instance_count = var.maximum_instance_count

  https_only                                     = true
  client_certificate_enabled                     = false
  webdeploy_publish_basic_authentication_enabled = false

  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.app.id]
  }

  site_config {
    minimum_tls_version     = "1.2"
    scm_minimum_tls_version = "1.2"
    http2_enabled           = true
    # Becomes the APPLICATIONINSIGHTS_CONNECTION_STRING app setting.
    application_insights_connection_string = azurerm_application_insights.main.connection_string
  }

  app_settings = {
    # Functions host storage: identity-based, never a connection string.
    AzureWebJobsStorage__accountName     = azurerm_storage_account.main.name
    AzureWebJobsStorage__blobServiceUri  = azurerm_storage_account.main.primary_blob_endpoint
    AzureWebJobsStorage__queueServiceUri = azurerm_storage_account.main.primary_queue_endpoint
    AzureWebJobsStorage__tableServiceUri = azurerm_storage_account.main.primary_table_endpoint
    AzureWebJobsStorage__credential      = "managedidentity"
    AzureWebJobsStorage__clientId        = azurerm_user_assigned_identity.app.client_id
    # The provider otherwise injects an AzureWebJobsStorage connection string built from an empty
    # key (hashicorp/terraform-provider-azurerm#29149, #29693); an empty value removes it.
    AzureWebJobsStorage = ""
    # Monitoring: App Insights has local auth disabled, so telemetry is sent with the identity.
    APPLICATIONINSIGHTS_AUTHENTICATION_STRING = "ClientId=${azurerm_user_assigned_identity.app.client_id};Authorization=AAD"
    # Read by the app (shared/config.py).
    STOWAGE_BACKEND                 = "azure"
    STOWAGE_AZURE_ACCOUNT_NAME      = azurerm_storage_account.main.name
    AZURE_CLIENT_ID                 = azurerm_user_assigned_identity.app.client_id
    STOWAGE_MAX_OBJECT_BYTES        = tostring(var.max_object_bytes)
    STOWAGE_OFFLOAD_THRESHOLD_BYTES = tostring(var.offload_threshold_bytes)
    STOWAGE_AUDIT_ANCHOR            = "container:${local.audit_anchor_container}"
    # The queue trigger's connection (connection="STOWAGE_QUEUE_CONNECTION"), identity-based.
    STOWAGE_QUEUE_CONNECTION__queueServiceUri = azurerm_storage_account.main.primary_queue_endpoint
    STOWAGE_QUEUE_CONNECTION__credential      = "managedidentity"
    STOWAGE_QUEUE_CONNECTION__clientId        = azurerm_user_assigned_identity.app.client_id
  }

  tags = var.tags

  depends_on = [
    azurerm_storage_container.app,
    azurerm_storage_container_immutability_policy.audit_anchor,
    azurerm_storage_queue.app,
    azapi_resource.table,
    azurerm_role_assignment.storage,
    azurerm_role_assignment.metrics_publisher,
  ]
}
