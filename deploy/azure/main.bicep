// The Azure side of an rfleet fleet on AKS: the cluster (KEDA add-on, OIDC issuer, workload
// identity), the registry its nodes pull model images from, a Service Bus namespace with a
// queue per model and per model version, Log Analytics and Application Insights, and the
// identities the Helm chart's pods and KEDA sign in with. Deploy it into a resource group:
//   az deployment group create -g <rg> -f main.bicep -p main.parameters.json
// README.md beside this file says what the outputs feed in the chart, and what was checked
// offline (tests/deploy/check_bicep.py) and what only Azure can check.

// ---------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------

@description('Azure region of every resource; the resource group\'s by default.')
param location string = resourceGroup().location

@description('Prefix of every resource name: lowercase letters, digits and hyphens, starting with a letter.')
@minLength(3)
@maxLength(16)
param namePrefix string = 'rfleet'

@description('Tags put on every resource.')
param tags object = {}

@description('Kubernetes version of the cluster, e.g. 1.34 (az aks get-versions -l <location>); empty for the region\'s default version.')
param kubernetesVersion string = ''

@description('AKS pricing tier: Standard carries the uptime SLA a production fleet wants; Free for trials.')
@allowed([
  'Free'
  'Standard'
  'Premium'
])
param aksSkuTier string = 'Standard'

@description('VM size of the system node pool (cluster add-ons only: it is tainted CriticalAddonsOnly).')
param systemNodeVmSize string = 'Standard_D4ds_v5'

@description('Node count of the system node pool.')
@minValue(1)
param systemNodeCount int = 2

@description('VM size of the node pool the dispatcher and the workers run on. Each R host wants a core: a worker pod asks for one CPU per host.')
param workloadNodeVmSize string = 'Standard_D8ds_v5'

@description('Node count the workload pool starts with (the cluster autoscaler moves it between the minimum and the maximum).')
@minValue(0)
param workloadNodeCount int = 1

@description('Fewest nodes of the workload pool. At least 1, for the dispatcher; the workers scale to zero on their own.')
@minValue(0)
param workloadNodeMinCount int = 1

@description('Most nodes of the workload pool: the ceiling of what KEDA\'s scale-out can get.')
@minValue(1)
param workloadNodeMaxCount int = 10

@description('OS disk size of the nodes, in GiB. The disks are ephemeral (on the VM\'s local disk): the size has to fit the VM size\'s cache or temporary disk.')
param nodeOsDiskSizeGB int = 128

@description('Availability zones of the node pools; empty in a region without zones.')
param availabilityZones array = [
  '1'
  '2'
  '3'
]

@description('Encrypt the nodes\' temporary disks and caches at the host. Needs the subscription feature Microsoft.Compute/EncryptionAtHost registered (README.md).')
param enableEncryptionAtHost bool = true

@description('Public IP ranges (CIDR) allowed to reach the Kubernetes API server; empty allows any (the API still wants an Entra ID sign-in).')
param apiServerAuthorizedIpRanges array = []

@description('Object ids of Entra ID groups made cluster admins (aadProfile.adminGroupObjectIDs).')
param aksAdminGroupObjectIds array = []

@description('Object ids of users or groups given "Azure Kubernetes Service RBAC Cluster Admin" on the cluster, e.g. whoever runs helm install.')
param clusterAdminPrincipalIds array = []

@description('Principal type of clusterAdminPrincipalIds.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param clusterAdminPrincipalType string = 'User'

@description('Container registry SKU. Premium has zone redundancy, retention of untagged manifests and private endpoints; Standard is cheaper and enough for a trial.')
@allowed([
  'Basic'
  'Standard'
  'Premium'
])
param acrSku string = 'Premium'

@description('Service Bus SKU. Standard for queues on shared capacity; Premium for dedicated capacity, zone redundancy and private endpoints.')
@allowed([
  'Standard'
  'Premium'
])
param serviceBusSku string = 'Standard'

@description('Messaging units of a Premium namespace (ignored for Standard).')
@allowed([
  1
  2
  4
  8
  16
])
param serviceBusPremiumCapacity int = 1

@description('Allow shared access signature (SAS) keys on the Service Bus namespace. Off: clients sign in with Entra ID (the workload identity).')
param serviceBusAllowLocalAuth bool = false

@description('Helm release name of the rfleet chart.')
param releaseName string = 'rfleet'

@description('Kubernetes namespace the chart is installed into.')
param kubernetesNamespace string = 'rfleet'

// The chart runs the dispatcher and the workers under one ServiceAccount named like its
// other objects (rfleet.fullname: the release name when it holds "rfleet", else
// <release>-rfleet); give these the chart's serviceAccount.name if you set it.
@description('Service account of the chart\'s worker pods.')
param workerServiceAccount string = contains(releaseName, 'rfleet') ? releaseName : '${releaseName}-rfleet'

@description('Service account of the chart\'s dispatcher pods.')
param dispatcherServiceAccount string = contains(releaseName, 'rfleet') ? releaseName : '${releaseName}-rfleet'

@description('The model versions to create Service Bus queues for: [{name, version}], the same models as the chart\'s .Values.models.')
param models array = []

@description('Queue name prefix: bus.queue_prefix of rfleet\'s configuration.')
param queuePrefix string = 'rfleet.model.'

@description('The session-enabled queue the dispatchers receive their replies on (one session per dispatcher).')
param replyQueue string = 'rfleet.replies'

@description('The queue workers announce the models they serve on.')
param catalogQueue string = 'rfleet.catalog'

@description('How long a worker holds a request before Service Bus gives it to another (ISO 8601, at most PT5M): longer than the longest scoring call.')
param queueLockDuration string = 'PT1M'

@description('Deliveries of one request before Service Bus dead-letters it: above the two R host crashes after which rfleet dead-letters a request itself.')
@minValue(1)
param queueMaxDeliveryCount int = 5

@description('Time to live of a request that no worker takes (ISO 8601); rfleet sets a shorter one from the request\'s deadline.')
param queueDefaultMessageTimeToLive string = 'PT1H'

@description('Days Log Analytics keeps logs.')
@minValue(30)
param logRetentionDays int = 30

@description('Also create an Azure Monitor workspace and collect the cluster\'s metrics with managed Prometheus.')
param enableManagedPrometheus bool = false

// ---------------------------------------------------------------------------------------
// Names and the queue mapping
// ---------------------------------------------------------------------------------------

var suffix = uniqueString(resourceGroup().id, namePrefix)
var aksName = '${namePrefix}-aks'
// Registry names are 5-50 letters and digits, globally unique.
var acrName = take(toLower(replace('${namePrefix}${suffix}', '-', '')), 50)
// Service Bus namespace names are 6-50 letters, digits and hyphens, globally unique.
var serviceBusName = take('${namePrefix}-${suffix}', 50)

// Queue names on Service Bus. On RabbitMQ the queue of version v of model m is
// <prefix><m>@<v> and the name queue is <prefix><m> (shared/bus/src/amqp: queue_name).
// Service Bus entity names may hold only letters, digits, '.', '-', '_' and '/', so on
// Service Bus the '@' becomes '/':
//   version queue  <prefix><m>/<v>      e.g. rfleet.model.mtcars/2
//   name queue     <prefix><m>          e.g. rfleet.model.mtcars
// '.', '-' and '_' are common in names and versions, so '/' is the one separator left; the
// mapping is unambiguous as long as names and versions hold only letters, digits, '.', '-'
// and '_' (tests/deploy/check_bicep.py requires it of the parameter file; rfleet itself
// refuses only '@' in names today, so the Service Bus transport of issue 12 has to refuse
// the rest as the worker refuses '@'). That transport uses the same mapping.
var versionQueues = [for m in models: '${queuePrefix}${m.name}/${m.version}']
var nameQueuesOfEachVersion = [for m in models: '${queuePrefix}${m.name}']
// union() keeps one of each value, so a model with two versions has one name queue, and a
// version queue (with its '/') never equals a name queue.
var queues = union(versionQueues, nameQueuesOfEachVersion)

var roleIds = {
  acrPull: '7f951dda-4ed3-4680-a7ca-43fe172d538d'
  serviceBusDataSender: '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39'
  serviceBusDataReceiver: '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0'
  serviceBusDataOwner: '090c5cfd-751d-490a-894a-3ce6f1109419'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
  aksRbacClusterAdmin: 'b1ff04bb-8a4e-4dc4-8eb5-8693973ce19b'
}

var workloadServiceBusRoleIds = [
  roleIds.serviceBusDataSender
  roleIds.serviceBusDataReceiver
]

// The chart's service accounts whose pods sign in to Azure as the workload identity, one
// federated credential each (union: one, when the worker's and the dispatcher's are the
// same). KEDA's operator has an identity of its own (kedaIdentity).
var chartServiceAccounts = union([
  workerServiceAccount
], [
  dispatcherServiceAccount
])

// ---------------------------------------------------------------------------------------
// Monitoring
// ---------------------------------------------------------------------------------------

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: '${namePrefix}-logs'
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: logRetentionDays
    features: {
      // Reads go through Azure RBAC on the resource, not workspace-wide permissions.
      enableLogAccessUsingOnlyResourcePermissions: true
    }
  }
}

// Workspace-based Application Insights: its telemetry lands in the Log Analytics
// workspace above. Local auth (the instrumentation key alone) is off, so ingestion needs
// an Entra ID token of an identity with Monitoring Metrics Publisher (the workload one).
resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: '${namePrefix}-appi'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    IngestionMode: 'LogAnalytics'
    DisableLocalAuth: true
    publicNetworkAccessForIngestion: 'Enabled'
    publicNetworkAccessForQuery: 'Enabled'
  }
}

// ---------------------------------------------------------------------------------------
// Container registry
// ---------------------------------------------------------------------------------------

resource acr 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  name: acrName
  location: location
  tags: tags
  sku: {
    name: acrSku
  }
  properties: {
    // Pulls go through the kubelet identity (AcrPull below), pushes through az acr login.
    adminUserEnabled: false
    anonymousPullEnabled: false
    dataEndpointEnabled: acrSku == 'Premium'
    publicNetworkAccess: 'Enabled'
    networkRuleBypassOptions: 'AzureServices'
    zoneRedundancy: acrSku == 'Premium' ? 'Enabled' : 'Disabled'
    // Untagged manifests (superseded pushes of a tag) go after 30 days; Premium only.
    policies: acrSku == 'Premium' ? {
      retentionPolicy: {
        status: 'enabled'
        days: 30
      }
    } : {}
  }
}

// ---------------------------------------------------------------------------------------
// Service Bus
// ---------------------------------------------------------------------------------------

resource serviceBus 'Microsoft.ServiceBus/namespaces@2024-01-01' = {
  name: serviceBusName
  location: location
  tags: tags
  sku: {
    name: serviceBusSku
    tier: serviceBusSku
    capacity: serviceBusSku == 'Premium' ? serviceBusPremiumCapacity : null
  }
  properties: {
    disableLocalAuth: !serviceBusAllowLocalAuth
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
    zoneRedundant: serviceBusSku == 'Premium'
  }
}

// One queue per entry of `queues` (the mapping above). ARM reserves '/' in resource names:
// Service Bus takes '~' in an ARM name for the '/' of the entity's path, so the resource
// named rfleet.model.mtcars~2 is the queue rfleet.model.mtcars/2 that clients address.
resource serviceBusQueues 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = [for queue in queues: {
  parent: serviceBus
  name: replace(queue, '/', '~')
  properties: {
    lockDuration: queueLockDuration
    maxDeliveryCount: queueMaxDeliveryCount
    defaultMessageTimeToLive: queueDefaultMessageTimeToLive
    // A request nobody took before its deadline goes to the queue's dead-letter
    // subqueue, as RabbitMQ dead-letters an expired request to rfleet.dead.
    deadLetteringOnMessageExpiration: true
    // Off: delivery is at least once and the dispatcher already matches replies by
    // correlation id and drops the ones it no longer waits for (docs/protocol.md); a
    // detection window would add a lookup per send, and it cannot be turned off later.
    requiresDuplicateDetection: false
    // Off: any worker takes any request; sessions would pin them to one consumer.
    requiresSession: false
    enablePartitioning: false
    enableBatchedOperations: true
    maxSizeInMegabytes: 1024
  }
}]

// The dispatchers' replies: one session-enabled queue for them all, each dispatcher
// receiving the session of its own id, so replies reach the dispatcher that waits on them
// (on RabbitMQ each dispatcher has a private reply queue instead). A reply nobody took
// before it expired is dropped, not dead-lettered: its caller has stopped waiting.
resource serviceBusReplyQueue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: serviceBus
  name: replyQueue
  properties: {
    requiresSession: true
    lockDuration: 'PT30S'
    maxDeliveryCount: queueMaxDeliveryCount
    defaultMessageTimeToLive: 'PT5M'
    deadLetteringOnMessageExpiration: false
    enablePartitioning: false
    enableBatchedOperations: true
    maxSizeInMegabytes: 1024
  }
}

// The workers' announcements of the models they serve (RabbitMQ's fanout exchange
// rfleet.catalog). An announcement is current only until the next, so a stale one is
// dropped, not dead-lettered.
resource serviceBusCatalogQueue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: serviceBus
  name: catalogQueue
  properties: {
    requiresSession: false
    lockDuration: 'PT30S'
    maxDeliveryCount: queueMaxDeliveryCount
    defaultMessageTimeToLive: 'PT5M'
    deadLetteringOnMessageExpiration: false
    enablePartitioning: false
    enableBatchedOperations: true
    maxSizeInMegabytes: 1024
  }
}

// ---------------------------------------------------------------------------------------
// Identities
// ---------------------------------------------------------------------------------------

// What the chart's dispatcher and workers sign in as (Service Bus, Application Insights).
resource workloadIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${namePrefix}-workload'
  location: location
  tags: tags
}

// What KEDA's operator (the add-on's kube-system/keda-operator) signs in as to read queue
// lengths, for the chart's Service Bus triggers. Apart from the workload identity so the
// pods do not get the Manage right that reading queue properties takes.
resource kedaIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${namePrefix}-keda'
  location: location
  tags: tags
}

// Federated credentials of one identity may not be written concurrently: one at a time.
@batchSize(1)
resource workloadFederation 'Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials@2023-01-31' = [for sa in chartServiceAccounts: {
  parent: workloadIdentity
  name: sa
  properties: {
    issuer: aks.properties.oidcIssuerProfile.issuerURL
    subject: 'system:serviceaccount:${kubernetesNamespace}:${sa}'
    audiences: [
      'api://AzureADTokenExchange'
    ]
  }
}]

resource kedaFederation 'Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials@2023-01-31' = {
  parent: kedaIdentity
  name: 'keda-operator'
  properties: {
    issuer: aks.properties.oidcIssuerProfile.issuerURL
    subject: 'system:serviceaccount:kube-system:keda-operator'
    audiences: [
      'api://AzureADTokenExchange'
    ]
  }
}

// ---------------------------------------------------------------------------------------
// AKS
// ---------------------------------------------------------------------------------------

resource aks 'Microsoft.ContainerService/managedClusters@2024-09-01' = {
  name: aksName
  location: location
  tags: tags
  sku: {
    name: 'Base'
    tier: aksSkuTier
  }
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    kubernetesVersion: empty(kubernetesVersion) ? null : kubernetesVersion
    dnsPrefix: aksName
    enableRBAC: true
    // Sign-in through Entra ID only, authorized by Azure RBAC; no local admin kubeconfig.
    aadProfile: {
      managed: true
      enableAzureRBAC: true
      adminGroupObjectIDs: aksAdminGroupObjectIds
    }
    disableLocalAccounts: true
    apiServerAccessProfile: {
      authorizedIPRanges: apiServerAuthorizedIpRanges
    }
    // The issuer the federated credentials trust, and the webhook that hands pods their
    // tokens: what the chart's azure.workload.identity/use label asks for.
    oidcIssuerProfile: {
      enabled: true
    }
    securityProfile: {
      workloadIdentity: {
        enabled: true
      }
      imageCleaner: {
        enabled: true
        intervalHours: 48
      }
    }
    // The KEDA add-on: the chart's ScaledObjects scale the workers on their queues.
    workloadAutoScalerProfile: {
      keda: {
        enabled: true
      }
    }
    networkProfile: {
      networkPlugin: 'azure'
      networkPluginMode: 'overlay'
      networkDataplane: 'cilium'
      networkPolicy: 'cilium'
      podCidr: '10.244.0.0/16'
      serviceCidr: '10.0.0.0/16'
      dnsServiceIP: '10.0.0.10'
      loadBalancerSku: 'standard'
      outboundType: 'loadBalancer'
    }
    autoUpgradeProfile: {
      upgradeChannel: 'patch'
      nodeOSUpgradeChannel: 'NodeImage'
    }
    addonProfiles: {
      azurepolicy: {
        enabled: true
      }
      // Container insights into the Log Analytics workspace, signing in with the add-on's
      // managed identity (the data collection rule below says what it collects).
      omsagent: {
        enabled: true
        config: {
          logAnalyticsWorkspaceResourceID: logAnalytics.id
          useAADAuth: 'true'
        }
      }
    }
    azureMonitorProfile: {
      metrics: {
        enabled: enableManagedPrometheus
      }
    }
    agentPoolProfiles: [
      {
        name: 'system'
        mode: 'System'
        vmSize: systemNodeVmSize
        count: systemNodeCount
        availabilityZones: empty(availabilityZones) ? null : availabilityZones
        osType: 'Linux'
        osSKU: 'AzureLinux'
        osDiskType: 'Ephemeral'
        osDiskSizeGB: nodeOsDiskSizeGB
        maxPods: 110
        enableEncryptionAtHost: enableEncryptionAtHost
        // Only cluster add-ons here: rfleet's pods go to the workload pool.
        nodeTaints: [
          'CriticalAddonsOnly=true:NoSchedule'
        ]
        upgradeSettings: {
          maxSurge: '33%'
        }
      }
      {
        name: 'workload'
        mode: 'User'
        vmSize: workloadNodeVmSize
        count: workloadNodeCount
        enableAutoScaling: true
        minCount: workloadNodeMinCount
        maxCount: workloadNodeMaxCount
        availabilityZones: empty(availabilityZones) ? null : availabilityZones
        osType: 'Linux'
        osSKU: 'AzureLinux'
        osDiskType: 'Ephemeral'
        osDiskSizeGB: nodeOsDiskSizeGB
        maxPods: 110
        enableEncryptionAtHost: enableEncryptionAtHost
        upgradeSettings: {
          maxSurge: '33%'
        }
      }
    ]
  }
}

// Container insights' data collection rule, bound to the cluster.
resource containerInsightsRule 'Microsoft.Insights/dataCollectionRules@2023-03-11' = {
  name: 'MSCI-${location}-${aksName}'
  location: location
  tags: tags
  kind: 'Linux'
  properties: {
    dataSources: {
      extensions: [
        {
          name: 'ContainerInsightsExtension'
          extensionName: 'ContainerInsights'
          streams: [
            'Microsoft-ContainerInsights-Group-Default'
          ]
          extensionSettings: {
            dataCollectionSettings: {
              interval: '1m'
              namespaceFilteringMode: 'Off'
              enableContainerLogV2: true
            }
          }
        }
      ]
    }
    destinations: {
      logAnalytics: [
        {
          name: 'ciworkspace'
          workspaceResourceId: logAnalytics.id
        }
      ]
    }
    dataFlows: [
      {
        streams: [
          'Microsoft-ContainerInsights-Group-Default'
        ]
        destinations: [
          'ciworkspace'
        ]
      }
    ]
  }
}

resource containerInsightsAssociation 'Microsoft.Insights/dataCollectionRuleAssociations@2023-03-11' = {
  name: 'ContainerInsightsExtension'
  scope: aks
  properties: {
    dataCollectionRuleId: containerInsightsRule.id
  }
}

// ---------------------------------------------------------------------------------------
// Managed Prometheus (optional): an Azure Monitor workspace, and the rule that sends the
// cluster's metrics there.
// ---------------------------------------------------------------------------------------

resource monitorWorkspace 'Microsoft.Monitor/accounts@2023-04-03' = if (enableManagedPrometheus) {
  name: '${namePrefix}-prometheus'
  location: location
  tags: tags
}

resource prometheusEndpoint 'Microsoft.Insights/dataCollectionEndpoints@2023-03-11' = if (enableManagedPrometheus) {
  name: 'MSProm-${location}-${aksName}'
  location: location
  tags: tags
  kind: 'Linux'
  properties: {}
}

resource prometheusRule 'Microsoft.Insights/dataCollectionRules@2023-03-11' = if (enableManagedPrometheus) {
  name: 'MSProm-${location}-${aksName}'
  location: location
  tags: tags
  kind: 'Linux'
  properties: {
    dataCollectionEndpointId: prometheusEndpoint.id
    dataSources: {
      prometheusForwarder: [
        {
          name: 'PrometheusDataSource'
          streams: [
            'Microsoft-PrometheusMetrics'
          ]
          labelIncludeFilter: {}
        }
      ]
    }
    destinations: {
      monitoringAccounts: [
        {
          name: 'MonitoringAccount1'
          accountResourceId: monitorWorkspace.id
        }
      ]
    }
    dataFlows: [
      {
        streams: [
          'Microsoft-PrometheusMetrics'
        ]
        destinations: [
          'MonitoringAccount1'
        ]
      }
    ]
  }
}

resource prometheusAssociation 'Microsoft.Insights/dataCollectionRuleAssociations@2023-03-11' = if (enableManagedPrometheus) {
  name: 'MSProm-${location}-${aksName}'
  scope: aks
  properties: {
    dataCollectionRuleId: prometheusRule.id
  }
}

// ---------------------------------------------------------------------------------------
// Role assignments
// ---------------------------------------------------------------------------------------

// The nodes pull images from the registry as the kubelet identity AKS made for the cluster.
resource kubeletAcrPull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(acr.id, aks.id, roleIds.acrPull)
  scope: acr
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.acrPull)
    principalId: aks.properties.identityProfile.kubeletidentity.objectId
    principalType: 'ServicePrincipal'
  }
}

// The dispatcher sends requests and receives replies; workers receive requests and send
// replies: both roles on the namespace, for the one workload identity.
resource workloadServiceBusRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for role in workloadServiceBusRoleIds: {
  name: guid(serviceBus.id, workloadIdentity.id, role)
  scope: serviceBus
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
    principalId: workloadIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}]

// KEDA's Service Bus scaler reads a queue's message counts through the management
// endpoint, which takes the Manage right: only Data Owner has it.
resource kedaServiceBusOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(serviceBus.id, kedaIdentity.id, roleIds.serviceBusDataOwner)
  scope: serviceBus
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.serviceBusDataOwner)
    principalId: kedaIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Telemetry ingestion with Entra ID (local auth is off on Application Insights).
resource workloadTelemetryPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, workloadIdentity.id, roleIds.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.monitoringMetricsPublisher)
    principalId: workloadIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource clusterAdmins 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for principalId in clusterAdminPrincipalIds: {
  name: guid(aks.id, principalId, roleIds.aksRbacClusterAdmin)
  scope: aks
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.aksRbacClusterAdmin)
    principalId: principalId
    principalType: clusterAdminPrincipalType
  }
}]

// ---------------------------------------------------------------------------------------
// Diagnostic settings: resource logs and metrics into Log Analytics
// ---------------------------------------------------------------------------------------

resource aksDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: aks
  properties: {
    workspaceId: logAnalytics.id
    // The audit log without reads (kube-audit-admin) keeps the volume, and the bill, down.
    logs: [
      {
        category: 'kube-audit-admin'
        enabled: true
      }
      {
        category: 'guard'
        enabled: true
      }
      {
        category: 'cluster-autoscaler'
        enabled: true
      }
      {
        category: 'kube-apiserver'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

resource acrDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: acr
  properties: {
    workspaceId: logAnalytics.id
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

resource serviceBusDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: serviceBus
  properties: {
    workspaceId: logAnalytics.id
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

// ---------------------------------------------------------------------------------------
// Outputs: what the Helm chart's values and `az aks get-credentials` need
// ---------------------------------------------------------------------------------------

output resourceGroupName string = resourceGroup().name
output aksClusterName string = aks.name
output oidcIssuerUrl string = aks.properties.oidcIssuerProfile.issuerURL
output acrName string = acr.name
output acrLoginServer string = acr.properties.loginServer
output tenantId string = tenant().tenantId
output workloadIdentityClientId string = workloadIdentity.properties.clientId
output kedaIdentityClientId string = kedaIdentity.properties.clientId
// The host name alone (no scheme, no port), e.g. rfleet-abc.servicebus.windows.net.
output serviceBusNamespaceFqdn string = replace(split(serviceBus.properties.serviceBusEndpoint, '/')[2], ':443', '')
output serviceBusQueueNames array = queues
output logAnalyticsWorkspaceResourceId string = logAnalytics.id
output logAnalyticsWorkspaceId string = logAnalytics.properties.customerId
// Not a secret: the connection string names the Application Insights resource and its
// ingestion endpoint, and its instrumentation key is an identifier, not a credential
// (Microsoft documents it so). With local auth off, sending telemetry also takes an
// Entra ID token of an identity holding Monitoring Metrics Publisher, so the string alone
// grants nothing. It goes in a plain environment variable (APPLICATIONINSIGHTS_CONNECTION_STRING
// through the chart's dispatcher.env / worker.env) for an OpenTelemetry exporter, not in a
// Secret; rfleet itself logs JSON lines to stdout, which Container insights collects.
#disable-next-line outputs-should-not-contain-secrets
output appInsightsConnectionString string = appInsights.properties.ConnectionString
output prometheusWorkspaceId string = enableManagedPrometheus ? monitorWorkspace.id : ''
