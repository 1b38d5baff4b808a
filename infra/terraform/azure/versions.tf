terraform {
  # 1.9+: variable validations may refer to other variables.
  required_version = ">= 1.9"

  required_providers {
    azurerm = {
      source = "hashicorp/azurerm"
      # azurerm_function_app_flex_consumption, and storage_account_id (Resource Manager API) on
      # containers and queues.
      version = "~> 4.40"
    }
    azapi = {
      source  = "Azure/azapi"
      version = "~> 2.0"
    }
  }
}

provider "azurerm" {
  features {
    storage {
      # Manage the storage account through Resource Manager only (no queue_properties or
      # static_website here): nothing needs the data plane, which refuses shared keys anyway.
      data_plane_available = false
    }
  }
  # null: taken from ARM_SUBSCRIPTION_ID (see docs/deploy.md).
  subscription_id = var.subscription_id
  # Shared keys are disabled on the storage account: any data-plane call uses Entra ID.
  storage_use_azuread = true
}

provider "azapi" {}
