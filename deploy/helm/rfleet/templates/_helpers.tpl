{{/*
Names, labels and the values derived from several keys (grace periods, queue names, the
KEDA target), kept here so every template and the checks agree on them.
*/}}

{{- define "rfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rfleet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "rfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "rfleet.labels" -}}
helm.sh/chart: {{ include "rfleet.chart" . }}
app.kubernetes.io/name: {{ include "rfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rfleet
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component (dispatcher, worker). */}}
{{- define "rfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rfleet.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "rfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rfleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference: repository, then @digest or :tag (the appVersion by default). */}}
{{- define "rfleet.image" -}}
{{- $image := .image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (toString (default .root.Chart.AppVersion $image.tag)) }}
{{- end }}
{{- end }}

{{/*
A DNS-safe piece of a name from a model name or version: lowercase, runs of anything but
[a-z0-9] become "-", no "-" at either end ("2024-01-31.b" -> "2024-01-31-b").
*/}}
{{- define "rfleet.dnsPart" -}}
{{- . | toString | lower | regexReplaceAll "[^a-z0-9]+" "-" | trimAll "-" }}
{{- end }}

{{/*
The worker Deployment of one model version: `<fullname>-worker-<name>-<version>`. Too long
for a DNS label (63) keeps its head and a hash of the whole, so two versions never collide.
*/}}
{{- define "rfleet.workerName" -}}
{{- $full := printf "%s-worker-%s-%s" (include "rfleet.fullname" .root) (include "rfleet.dnsPart" .model.name) (include "rfleet.dnsPart" .model.version) }}
{{- if le (len $full) 63 }}
{{- $full }}
{{- else }}
{{- printf "%s-%s" ($full | trunc 54 | trimSuffix "-") ($full | sha256sum | trunc 8) }}
{{- end }}
{{- end }}

{{/* The queue prefix every queue name starts with (rfleet.toml's bus.queue_prefix). */}}
{{- define "rfleet.queuePrefix" -}}
{{- dig "bus" "queue_prefix" "rfleet.model." .Values.config }}
{{- end }}

{{/* The bus the pods use: `amqp` (RabbitMQ) or `servicebus` (Azure Service Bus). */}}
{{- define "rfleet.busKind" -}}
{{- ternary "servicebus" "amqp" .Values.serviceBus.enabled }}
{{- end }}

{{/*
Version queue and name queue of one model version (shared/bus/src/amqp queue_name). The
only place a queue name is made: on Service Bus, whose entity names cannot hold `@`, the
version's separator is serviceBus.versionSeparator (`/`, as deploy/azure/main.bicep names
its queues).
*/}}
{{- define "rfleet.versionQueue" -}}
{{- $separator := ternary .root.Values.serviceBus.versionSeparator "@" .root.Values.serviceBus.enabled }}
{{- printf "%s%s%s%s" (include "rfleet.queuePrefix" .root) .model.name $separator (toString .model.version) }}
{{- end }}
{{- define "rfleet.nameQueue" -}}
{{- printf "%s%s" (include "rfleet.queuePrefix" .root) .model.name }}
{{- end }}

{{/* ceil(ms / 1000) */}}
{{- define "rfleet.ceilSeconds" -}}
{{- div (add (int .) 999) 1000 }}
{{- end }}

{{/* Dispatcher grace: preStop pause + HTTP drain + margin. */}}
{{- define "rfleet.dispatcherGraceSeconds" -}}
{{- $drain := include "rfleet.ceilSeconds" (dig "server" "drain_timeout_ms" 25000 .Values.config) | int }}
{{- add (int .Values.dispatcher.preStopSeconds) $drain (int .Values.dispatcher.terminationGraceMarginSeconds) }}
{{- end }}

{{/* Worker grace: preStop pause + drain notice + drain + margin. */}}
{{- define "rfleet.workerGraceSeconds" -}}
{{- $ms := add (int (dig "workers" "drain_timeout_ms" 25000 .Values.config)) (int (dig "workers" "drain_notice_ms" 1000 .Values.config)) }}
{{- add (int .Values.worker.preStopSeconds) (include "rfleet.ceilSeconds" $ms | int) (int .Values.worker.terminationGraceMarginSeconds) }}
{{- end }}

{{/* One model's KEDA settings: the chart's `keda` with the model's own `keda` over it. */}}
{{- define "rfleet.modelKeda" -}}
{{- $keda := deepCopy .root.Values.keda }}
{{- $_ := mergeOverwrite $keda (deepCopy (default dict .model.keda)) }}
{{- toYaml $keda }}
{{- end }}

{{/* KEDA's target per replica: the model's `value`, else hosts * messagesPerHost. */}}
{{- define "rfleet.kedaValue" -}}
{{- $keda := include "rfleet.modelKeda" . | fromYaml }}
{{- if $keda.value }}
{{- $keda.value | toString }}
{{- else }}
{{- mul (int .model.hosts) (int $keda.messagesPerHost) | toString }}
{{- end }}
{{- end }}

{{/* The Secret and keys the AMQP URL and management URL are read from. */}}
{{- define "rfleet.brokerSecretName" -}}
{{- if .Values.broker.url }}
{{- printf "%s-broker" (include "rfleet.fullname" .) }}
{{- else }}
{{- required "broker.existingSecret or broker.url is required (or rabbitmqCluster.enabled)" .Values.broker.existingSecret }}
{{- end }}
{{- end }}

{{- define "rfleet.rabbitmqClusterName" -}}
{{- printf "%s-rabbitmq" (include "rfleet.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}

{{/*
The broker environment of rfleet pods. With the operator, the URL is assembled from its
default-user Secret by Kubernetes' $(VAR) expansion, so the password never passes through
the chart; otherwise it is one key of a Secret.
*/}}
{{- define "rfleet.brokerEnv" -}}
{{- if .Values.serviceBus.enabled }}
{{- include "rfleet.serviceBusEnv" . }}
{{- else -}}
- name: RFLEET_BUS__KIND
  value: amqp
{{- if .Values.rabbitmqCluster.enabled }}
{{- $secret := printf "%s-default-user" (include "rfleet.rabbitmqClusterName" .) }}
{{- range $env, $key := dict "BROKER_USERNAME" "username" "BROKER_PASSWORD" "password" "BROKER_HOST" "host" "BROKER_PORT" "port" }}
- name: {{ $env }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $key }}
{{- end }}
- name: RFLEET_BUS__URL
  value: {{ printf "amqp://$(BROKER_USERNAME):$(BROKER_PASSWORD)@$(BROKER_HOST):$(BROKER_PORT)/%s" (urlquery .Values.broker.vhost) | quote }}
{{- else }}
- name: RFLEET_BUS__URL
  valueFrom:
    secretKeyRef:
      name: {{ include "rfleet.brokerSecretName" . }}
      key: {{ .Values.broker.urlKey }}
{{- end }}
{{- if .Values.broker.caSecret }}
- name: RFLEET_BUS__CA_FILE
  value: /etc/rfleet/broker-ca/ca.crt
{{- end }}
{{- end }}
{{- end }}

{{/*
The Service Bus environment: the namespace (Entra ID through workload identity: the pods
carry azure.workload.identity/use and the ServiceAccount its client-id), or a connection
string from a Secret, never from the chart's values.
*/}}
{{/* The Service Bus namespace's name as KEDA wants it (`NS`, from NS.servicebus.windows.net). */}}
{{- define "rfleet.serviceBusNamespaceName" -}}
{{- required "serviceBus.namespace is required" .Values.serviceBus.namespace | splitList "." | first }}
{{- end }}

{{- define "rfleet.serviceBusEnv" -}}
{{- $sb := .Values.serviceBus -}}
- name: RFLEET_BUS__KIND
  value: servicebus
- name: RFLEET_BUS__SERVICEBUS__DIALECT
  value: servicebus
{{- if $sb.existingSecret }}
- name: RFLEET_BUS__SERVICEBUS__CONNECTION_STRING
  valueFrom:
    secretKeyRef:
      name: {{ $sb.existingSecret }}
      key: {{ $sb.connectionStringKey }}
{{- else }}
- name: RFLEET_BUS__SERVICEBUS__NAMESPACE
  value: {{ required "serviceBus.namespace (NS.servicebus.windows.net) or serviceBus.existingSecret is required" $sb.namespace | quote }}
{{- end }}
{{- end }}

{{/* Volumes every rfleet pod has: its config, scratch /tmp, the broker CA. */}}
{{- define "rfleet.commonVolumes" -}}
- name: config
  configMap:
    name: {{ include "rfleet.fullname" . }}-config
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
{{- if .Values.broker.caSecret }}
- name: broker-ca
  secret:
    secretName: {{ .Values.broker.caSecret }}
    items:
      - {key: ca.crt, path: ca.crt}
{{- end }}
{{- end }}

{{- define "rfleet.commonVolumeMounts" -}}
- name: config
  mountPath: /etc/rfleet/rfleet.toml
  subPath: rfleet.toml
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.broker.caSecret }}
- name: broker-ca
  mountPath: /etc/rfleet/broker-ca
  readOnly: true
{{- end }}
{{- end }}

{{/* Zone and node spread for one component's pods (selector: its selector labels). */}}
{{- define "rfleet.topologySpread" -}}
{{- range $key := list "topology.kubernetes.io/zone" "kubernetes.io/hostname" }}
- maxSkew: {{ $.spread.maxSkew }}
  topologyKey: {{ $key }}
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- $.selector | nindent 6 }}
{{- end }}
{{- end }}

{{/* The NetworkPolicy peer Prometheus scrapes from: its namespace, and its pods if given. */}}
{{- define "rfleet.prometheusPeer" -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ .Values.networkPolicy.prometheusNamespace }}
  {{- with .Values.networkPolicy.prometheusPodLabels }}
  podSelector:
    matchLabels:
      {{- toYaml . | nindent 6 }}
  {{- end }}
{{- end }}

{{/* Egress rules every rfleet pod has: cluster DNS, and the broker's ports. */}}
{{- define "rfleet.egressDnsAndBroker" -}}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ .Values.networkPolicy.dnsNamespace }}
      podSelector:
        matchLabels:
          k8s-app: kube-dns
  ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
- ports:
    {{- range .Values.broker.ports }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
  {{- if .Values.rabbitmqCluster.enabled }}
  to:
    - podSelector:
        matchLabels:
          app.kubernetes.io/name: {{ include "rfleet.rabbitmqClusterName" . }}
  {{- else if .Values.networkPolicy.brokerPeers }}
  to:
    {{- toYaml .Values.networkPolicy.brokerPeers | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
rfleet.toml from .Values.config: `[section]` tables of scalar keys (and arrays). Helm's
toToml would write every YAML number as a float (25000.0), which rfleet's integer settings
refuse, so whole numbers are written as integers here.
*/}}
{{- define "rfleet.tomlValue" -}}
{{- if kindIs "float64" . }}
{{- if eq (floor .) . }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if or (kindIs "int" .) (kindIs "int64" .) (kindIs "bool" .) }}
{{- . }}
{{- else if kindIs "slice" . }}
{{- $items := list }}
{{- range . }}{{ $items = append $items (include "rfleet.tomlValue" .) }}{{ end }}
{{- printf "[%s]" (join ", " $items) }}
{{- else if kindIs "map" . }}
{{- fail "config: a setting's value cannot be a table (rfleet's sections hold scalars and arrays)" }}
{{- else }}
{{- toJson (toString .) }}
{{- end }}
{{- end }}

{{- define "rfleet.toml" -}}
{{- range $section, $keys := . }}
[{{ $section }}]
{{- range $key, $value := $keys }}
{{ $key }} = {{ include "rfleet.tomlValue" $value }}
{{- end }}
{{ end }}
{{- end }}
