output "resource_group_name" {
  value = azurerm_resource_group.main.name
}

output "function_app_name" {
  value = azurerm_function_app_flex_consumption.main.name
}

output "function_app_url" {
  value = "https://${azurerm_function_app_flex_consumption.main.default_hostname}"
}

output "storage_account_name" {
  description = "STOWAGE_AZURE_ACCOUNT_NAME"
  value       = azurerm_storage_account.main.name
}

output "blob_service_uri" {
  value = azurerm_storage_account.main.primary_blob_endpoint
}

output "queue_service_uri" {
  description = "STOWAGE_QUEUE_CONNECTION__queueServiceUri"
  value       = azurerm_storage_account.main.primary_queue_endpoint
}

output "table_service_uri" {
  value = azurerm_storage_account.main.primary_table_endpoint
}

output "identity_client_id" {
  description = "AZURE_CLIENT_ID and the *__clientId settings"
  value       = azurerm_user_assigned_identity.app.client_id
}

output "identity_principal_id" {
  value = azurerm_user_assigned_identity.app.principal_id
}

output "application_insights_name" {
  value = azurerm_application_insights.main.name
}

output "deployment_container_name" {
  value = azurerm_storage_container.deployment.name
}
