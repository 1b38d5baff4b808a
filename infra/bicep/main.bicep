// Stowage on Azure Functions Flex Consumption: the function app, its user-assigned identity,
// one locked-down storage account (app data, Functions host state, deployment package) and
// monitoring. Deploy into an existing resource group (see docs/deploy.md).
//
// Container, table and queue names are those of shared/names.py, and every app setting is one
// the app reads (shared/names.py APP_SETTINGS / PLATFORM_SETTINGS): tests/test_infra.py fails
// when this file, infra/terraform/azure and shared/names.py disagree.

targetScope = 'resourceGroup'

@description('Azure region for every resource (must offer Flex Consumption).')
param location string = resourceGroup().location

@description('Short prefix for resource names.')
@minLength(3)
@maxLength(12)
param baseName string = 'stowage'

@description('Globally unique storage account name: 3-24 lowercase letters and digits.')
@minLength(3)
@maxLength(24)
param storageAccountName string = 'st${uniqueString(resourceGroup().id, baseName)}'

@description('Storage redundancy. Geo-redundant by default so backups survive a regional outage.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
param storageSku string = 'Standard_GRS'

@description('Globally unique function app name (at most 32 characters).')
@maxLength(32)
param functionAppName string = 'func-${baseName}-${uniqueString(resourceGroup().id)}'

@description('Memory of each Flex Consumption instance, in MB.')
@allowed([
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Upper bound of the Flex Consumption scale-out.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Days after its last modification before a backup blob moves to the cool tier.')
@minValue(1)
param backupCoolAfterDays int = 30

@description('Days after its last modification before a backup blob is deleted (must exceed backupCoolAfterDays).')
@minValue(2)
param backupRetentionDays int = 365

@description('Days a previous version of a data blob is kept once it has been replaced.')
@minValue(1)
param noncurrentVersionRetentionDays int = 30

@description('Days a deleted blob or container stays restorable (soft delete).')
@minValue(1)
@maxValue(365)
param softDeleteRetentionDays int = 14

@description('Days each anchored audit checkpoint stays immutable (container-level WORM on the audit anchor container).')
@minValue(1)
@maxValue(146000)
param auditAnchorRetentionDays int = 365

@description('Log Analytics retention, in days.')
@minValue(30)
@maxValue(730)
param logRetentionDays int = 30

@description('Send storage data-access logs (read/write/delete) to Log Analytics. Billed per GB ingested.')
param storageResourceLogs bool = true

@description('STOWAGE_MAX_OBJECT_BYTES: largest object body the API accepts.')
@minValue(1)
param maxObjectBytes int = 67108864

@description('STOWAGE_OFFLOAD_THRESHOLD_BYTES: table properties and queue messages above this move to a blob.')
@minValue(1)
@maxValue(49152)
param offloadThresholdBytes int = 32768

@description('Tags applied to every resource.')
param tags object = {
  app: 'stowage'
}

// ---- names (shared/names.py) -------------------------------------------------------------

var containerNames = [
  'stowage-data'
  'stowage-backups'
]
var backupContainerName = 'stowage-backups'
var dataContainerName = 'stowage-data'
var tableNames = [
  'stowageapikeys'
  'stowageobjects'
  'stowagecommands'
  'stowagememory'
  'stowagesessions'
  'stowageworkflows'
  'stowagecheckpoints'
  'stowagechanges'
  'stowageaudit'
]
// The Functions host moves a message that failed maxDequeueCount times to "<queue>-poison".
var queueNames = [
  'stowage-commands'
  'stowage-commands-poison'
]
// The audit log's anchor (STOWAGE_AUDIT_ANCHOR=container:<name>), with an immutability policy.
var auditAnchorContainerName = 'stowage-audit-anchor'
// Flex Consumption reads the deployment package from this container.
var deploymentContainerName = 'app-package'

var suffix = uniqueString(resourceGroup().id, baseName)

// Built-in role definitions: exactly these, nothing broader.
var storageRoleIds = [
  'b7e6dc6d-f1e8-4753-8033-0f276bb0955b' // Storage Blob Data Owner
  '974c5e8b-45b9-4653-ba55-5f855dd0fb88' // Storage Queue Data Contributor
  '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3' // Storage Table Data Contributor
]
var monitoringMetricsPublisherRoleId = '3913510d-42f4-4e42-8a64-420c390055eb'

// ---- identity ------------------------------------------------------------------------------

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${baseName}-${suffix}'
  location: location
  tags: tags
}

// ---- storage -------------------------------------------------------------------------------

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35:The Flex app has no VNet integration, so host and app reach storage over its public endpoint; access is Entra ID only (shared keys off). Network isolation needs a VNet, out of scope.
  // checkov:skip=CKV_AZURE_59:Same reason as CKV_AZURE_35.
  // checkov:skip=CKV_AZURE_43:The name defaults to 'st' + uniqueString() (lowercase alphanumerics, 15 chars), resolved at deploy time where checkov cannot evaluate it.
  name: storageAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: storageSku
  }
  properties: {
    accessTier: 'Hot'
    supportsHttpsTrafficOnly: true
    minimumTlsVersion: 'TLS1_2'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
        queue: {
          enabled: true
          keyType: 'Account'
        }
        table: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    isVersioningEnabled: true
    deleteRetentionPolicy: {
      enabled: true
      days: softDeleteRetentionDays
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: softDeleteRetentionDays
    }
  }
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [
  for name in containerNames: {
    parent: blobService
    name: name
    properties: {
      publicAccess: 'None'
    }
  }
]

// Every signed audit checkpoint is also written here, create-only (shared/storage/tlog.py,
// Anchoring). The container-level WORM time-based retention makes each blob immutable for
// auditAnchorRetentionDays from its creation: blobs can be created, none modified or deleted.
// Deployed unlocked (the account owner can still shorten or remove it); lock it to make it
// irreversible (docs/deploy.md).
resource auditAnchorContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: auditAnchorContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource auditAnchorImmutability 'Microsoft.Storage/storageAccounts/blobServices/containers/immutabilityPolicies@2023-05-01' = {
  parent: auditAnchorContainer
  name: 'default'
  properties: {
    immutabilityPeriodSinceCreationInDays: auditAnchorRetentionDays
    allowProtectedAppendWrites: false
    allowProtectedAppendWritesAll: false
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [
  for name in tableNames: {
    parent: tableService
    name: name
  }
]

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [
  for name in queueNames: {
    parent: queueService
    name: name
  }
]

resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'backups-cool-then-delete'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              prefixMatch: [
                '${backupContainerName}/'
              ]
            }
            actions: {
              baseBlob: {
                tierToCool: {
                  daysAfterModificationGreaterThan: backupCoolAfterDays
                }
                delete: {
                  daysAfterModificationGreaterThan: backupRetentionDays
                }
              }
              version: {
                delete: {
                  daysAfterCreationGreaterThan: backupRetentionDays
                }
              }
            }
          }
        }
        {
          name: 'data-expire-old-versions'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              prefixMatch: [
                '${dataContainerName}/'
              ]
            }
            actions: {
              version: {
                delete: {
                  daysAfterCreationGreaterThan: noncurrentVersionRetentionDays
                }
              }
            }
          }
        }
      ]
    }
  }
}

resource storageRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for roleId in storageRoleIds: {
    name: guid(storage.id, identity.id, roleId)
    scope: storage
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
      principalId: identity.properties.principalId
      principalType: 'ServicePrincipal'
    }
  }
]

// ---- monitoring ----------------------------------------------------------------------------

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-${baseName}-${suffix}'
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: logRetentionDays
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${baseName}-${suffix}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
    DisableLocalAuth: true
  }
}

// Azure Monitor resource logs for data access (reads, writes, deletes) on each storage service.
resource blobDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (storageResourceLogs) {
  name: 'storage-to-log-analytics'
  scope: blobService
  properties: {
    workspaceId: logs.id
    logs: [
      {
        category: 'StorageRead'
        enabled: true
      }
      {
        category: 'StorageWrite'
        enabled: true
      }
      {
        category: 'StorageDelete'
        enabled: true
      }
    ]
  }
}

resource queueDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (storageResourceLogs) {
  name: 'storage-to-log-analytics'
  scope: queueService
  properties: {
    workspaceId: logs.id
    logs: [
      {
        category: 'StorageRead'
        enabled: true
      }
      {
        category: 'StorageWrite'
        enabled: true
      }
      {
        category: 'StorageDelete'
        enabled: true
      }
    ]
  }
}

resource tableDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (storageResourceLogs) {
  name: 'storage-to-log-analytics'
  scope: tableService
  properties: {
    workspaceId: logs.id
    logs: [
      {
        category: 'StorageRead'
        enabled: true
      }
      {
        category: 'StorageWrite'
        enabled: true
      }
      {
        category: 'StorageDelete'
        enabled: true
      }
    ]
  }
}

resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, identity.id, monitoringMetricsPublisherRoleId)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisherRoleId)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// ---- function app --------------------------------------------------------------------------

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225:Zone redundancy on Flex Consumption bills at least two always-ready instances per function group; an opt-in left to the operator.
  name: 'plan-${baseName}-${suffix}'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222:The HTTP API is public by design (agents call it; the app checks tenant API keys). Private access needs a VNet, out of scope.
  // checkov:skip=CKV_AZURE_17:Clients authenticate with tenant API keys, not client certificates.
  // checkov:skip=CKV_AZURE_212:Flex Consumption scales from zero and the platform manages instances; a minimum instance count does not apply.
  // checkov:skip=CKV_AZURE_213:The platform health check is not supported on Flex Consumption.
  name: functionAppName
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [
        // Functions host storage: identity-based, never a connection string.
        {
          name: 'AzureWebJobsStorage__accountName'
          value: storage.name
        }
        {
          name: 'AzureWebJobsStorage__blobServiceUri'
          value: storage.properties.primaryEndpoints.blob
        }
        {
          name: 'AzureWebJobsStorage__queueServiceUri'
          value: storage.properties.primaryEndpoints.queue
        }
        {
          name: 'AzureWebJobsStorage__tableServiceUri'
          value: storage.properties.primaryEndpoints.table
        }
        {
          name: 'AzureWebJobsStorage__credential'
          value: 'managedidentity'
        }
        {
          name: 'AzureWebJobsStorage__clientId'
          value: identity.properties.clientId
        }
        // Monitoring: App Insights has local auth disabled, so telemetry is sent with the identity.
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: appInsights.properties.ConnectionString
        }
        {
          name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
          value: 'ClientId=${identity.properties.clientId};Authorization=AAD'
        }
        // Read by the app (shared/config.py).
        {
          name: 'STOWAGE_BACKEND'
          value: 'azure'
        }
        {
          name: 'STOWAGE_AZURE_ACCOUNT_NAME'
          value: storage.name
        }
        {
          name: 'AZURE_CLIENT_ID'
          value: identity.properties.clientId
        }
        {
          name: 'STOWAGE_MAX_OBJECT_BYTES'
          value: string(maxObjectBytes)
        }
        {
          name: 'STOWAGE_OFFLOAD_THRESHOLD_BYTES'
          value: string(offloadThresholdBytes)
        }
        {
          name: 'STOWAGE_AUDIT_ANCHOR'
          value: 'container:${auditAnchorContainerName}'
        }
        // The queue trigger's connection (connection="STOWAGE_QUEUE_CONNECTION"), identity-based.
        {
          name: 'STOWAGE_QUEUE_CONNECTION__queueServiceUri'
          value: storage.properties.primaryEndpoints.queue
        }
        {
          name: 'STOWAGE_QUEUE_CONNECTION__credential'
          value: 'managedidentity'
        }
        {
          name: 'STOWAGE_QUEUE_CONNECTION__clientId'
          value: identity.properties.clientId
        }
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identity.id
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
  dependsOn: [
    deploymentContainer
    containers
    auditAnchorImmutability
    tables
    queues
    storageRoles
    metricsPublisher
  ]
}

// Publishing uses Entra ID tokens (az / func); basic-auth publishing credentials stay off.
resource scmBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

// ---- outputs -------------------------------------------------------------------------------

output resourceGroupName string = resourceGroup().name
output functionAppName string = functionApp.name
output functionAppUrl string = 'https://${functionApp.properties.defaultHostName}'
output storageAccountName string = storage.name
output blobServiceUri string = storage.properties.primaryEndpoints.blob
output queueServiceUri string = storage.properties.primaryEndpoints.queue
output tableServiceUri string = storage.properties.primaryEndpoints.table
output identityClientId string = identity.properties.clientId
output identityPrincipalId string = identity.properties.principalId
output applicationInsightsName string = appInsights.name
output deploymentContainerName string = deploymentContainerName
