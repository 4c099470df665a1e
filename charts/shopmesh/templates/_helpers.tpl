{{/* vim: set filetype=mustache: */}}

{{/* Chart name, overridable. */}}
{{- define "shopmesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name; truncated so that "<fullname>-<component>-migrate"
(the longest name built on it) still fits 63 characters.
*/}}
{{- define "shopmesh.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "name-version" for the helm.sh/chart label. */}}
{{- define "shopmesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels shared by every object of the release. */}}
{{- define "shopmesh.labels" -}}
helm.sh/chart: {{ include "shopmesh.chart" . }}
{{ include "shopmesh.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: shopmesh
{{- end }}

{{/* Labels that select every pod of the release. */}}
{{- define "shopmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shopmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Per-component labels. Call with (dict "root" $ "component" "cart" "tier" "service").
tier is one of gateway | service | migration; NetworkPolicies select on it.
*/}}
{{- define "shopmesh.componentLabels" -}}
{{ include "shopmesh.labels" .root }}
app.kubernetes.io/component: {{ .component }}
shopmesh.io/tier: {{ .tier }}
{{- end }}

{{- define "shopmesh.componentSelectorLabels" -}}
{{ include "shopmesh.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
shopmesh.io/tier: {{ .tier }}
{{- end }}

{{/* Name of a component's Deployment/Service: "<fullname>-<component>". */}}
{{- define "shopmesh.componentName" -}}
{{- printf "%s-%s" (include "shopmesh.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* ServiceAccount used by the workloads. */}}
{{- define "shopmesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "shopmesh.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Secret holding database URLs, the Redis URL and the admin password. */}}
{{- define "shopmesh.secretName" -}}
{{- default (include "shopmesh.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/*
Secret the migration Jobs read. On a fresh install the regular Secret does not
exist yet when pre-install hooks run, so the chart renders a hook copy of it
(lower hook weight than the Jobs). With existingSecret the Jobs use that.
*/}}
{{- define "shopmesh.migrationSecretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else }}
{{- printf "%s-migrate" (include "shopmesh.fullname" .) }}
{{- end }}
{{- end }}

{{- define "shopmesh.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
Effective settings of one component: .Values.defaults deep-merged under
.Values.services.<name>. Call with (dict "root" $ "name" "cart"); returns YAML.
*/}}
{{- define "shopmesh.componentValues" -}}
{{- $svc := index .root.Values.services .name | default dict }}
{{- $merged := deepCopy .root.Values.defaults }}
{{- include "shopmesh.deepMerge" (dict "dst" $merged "src" (deepCopy $svc)) }}
{{- toYaml $merged }}
{{- end }}

{{/*
Recursive merge of .src into .dst (mutated). Unlike sprig's merge and
mergeOverwrite, an explicit false / 0 / "" in .src wins.
*/}}
{{- define "shopmesh.deepMerge" -}}
{{- $dst := .dst }}
{{- range $k, $v := .src }}
{{- if and (kindIs "map" $v) (kindIs "map" (index $dst $k)) }}
{{- include "shopmesh.deepMerge" (dict "dst" (index $dst $k) "src" $v) }}
{{- else }}
{{- $_ := set $dst $k $v }}
{{- end }}
{{- end }}
{{- end }}

{{/* Secret key names (fixed; an existingSecret must provide them). */}}
{{- define "shopmesh.dbUrlKey" -}}
database-url-{{ . }}
{{- end }}

{{/* Drain time in whole seconds (SHOPMESH_SHUTDOWN_GRACE_MS rounded up). */}}
{{- define "shopmesh.graceSeconds" -}}
{{- $ms := int .Values.config.shutdownGraceMs }}
{{- div (add $ms 999) 1000 }}
{{- end }}

{{/*
Non-secret settings shared by every process (ConfigMap data; the migration
Jobs get the same pairs inline because hooks run before the ConfigMap exists).
*/}}
{{- define "shopmesh.configData" -}}
{{- $c := .Values.config }}
{{- $full := include "shopmesh.fullname" . }}
RUST_LOG: {{ $c.rustLog | quote }}
{{- with $c.logFormat }}
SHOPMESH_LOG_FORMAT: {{ . | quote }}
{{- end }}
SHOPMESH_GRPC_ADDR: {{ printf "0.0.0.0:%d" (int .Values.ports.grpc) | quote }}
SHOPMESH_HTTP_ADDR: {{ printf "0.0.0.0:%d" (int .Values.ports.http) | quote }}
SHOPMESH_SHUTDOWN_GRACE_MS: {{ int $c.shutdownGraceMs | toString | quote }}
SHOPMESH_KAFKA_BROKERS: {{ required "kafka.brokers is required" .Values.kafka.brokers | quote }}
SHOPMESH_KAFKA_TOPIC_PREFIX: {{ .Values.kafka.topicPrefix | quote }}
SHOPMESH_REDIS_KEY_PREFIX: {{ .Values.redis.keyPrefix | quote }}
SHOPMESH_JWKS_URL: {{ default (printf "http://%s-auth:%d/.well-known/jwks.json" $full (int .Values.ports.http)) $c.jwksUrl | quote }}
SHOPMESH_JWT_ISSUER: {{ $c.jwtIssuer | quote }}
SHOPMESH_JWT_AUDIENCE: {{ $c.jwtAudience | quote }}
{{- with $c.otlpEndpoint }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ . | quote }}
{{- end }}
{{- range $name, $svc := .Values.services }}
{{- if and $svc.enabled (ne $name "gateway") }}
SHOPMESH_{{ $name | upper | replace "-" "_" }}_URL: {{ printf "http://%s-%s:%d" $full $name (int $.Values.ports.grpc) | quote }}
{{- end }}
{{- end }}
{{- range $k, $v := $c.extra }}
{{ $k }}: {{ $v | toString | quote }}
{{- end }}
{{- end }}

{{/* Comma list "proto.Service=http://host:50051" for the gateway. */}}
{{- define "shopmesh.gatewayUpstreams" -}}
{{- $full := include "shopmesh.fullname" . }}
{{- $out := list }}
{{- range $name, $svc := .Values.services }}
{{- if and $svc.enabled (ne $name "gateway") }}
{{- range $svc.grpcServices }}
{{- $out = append $out (printf "%s=http://%s-%s:%d" . $full $name (int $.Values.ports.grpc)) }}
{{- end }}
{{- end }}
{{- end }}
{{- join "," $out }}
{{- end }}

{{/*
Pod-level env that comes from the Secret (and component-specific plain env).
Call with (dict "root" $ "name" "cart" "svc" $effective "secret" "<secret name>").
*/}}
{{- define "shopmesh.secretEnv" -}}
{{- $needs := .svc.needs | default dict }}
{{- if $needs.postgres }}
- name: SHOPMESH_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ include "shopmesh.dbUrlKey" .name }}
{{- end }}
{{- if $needs.redis }}
- name: SHOPMESH_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: redis-url
{{- end }}
{{- if and (eq .name "auth") .root.Values.auth.adminEmail }}
- name: SHOPMESH_ADMIN_EMAIL
  value: {{ .root.Values.auth.adminEmail | quote }}
- name: SHOPMESH_ADMIN_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: admin-password
{{- end }}
{{- if eq .name "gateway" }}
- name: SHOPMESH_GATEWAY_LISTEN
  value: {{ printf "0.0.0.0:%d" (int .root.Values.ports.gateway) | quote }}
- name: SHOPMESH_GATEWAY_UPSTREAMS
  value: {{ include "shopmesh.gatewayUpstreams" .root | quote }}
{{- end }}
{{- range $k, $v := .svc.env }}
- name: {{ $k }}
  value: {{ $v | toString | quote }}
{{- end }}
{{- end }}

{{/* Container securityContext (restricted Pod Security Standard). */}}
{{- define "shopmesh.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "shopmesh.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Ports Linkerd must not protocol-detect (Postgres, Redis, Kafka). */}}
{{- define "shopmesh.opaquePorts" -}}
{{- $ports := list (int .Values.postgres.port) (int .Values.redis.port) }}
{{- range .Values.kafka.ports }}
{{- $ports = append $ports (int .) }}
{{- end }}
{{- $ports | uniq | join "," }}
{{- end }}

{{/*
One egress rule to an external dependency: its CIDRs plus any extra peers.
Call with (dict "dep" .Values.postgres "ports" (list 5432)).
*/}}
{{- define "shopmesh.netpolEgress" -}}
- to:
    {{- range .dep.cidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
    {{- with .dep.peers }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    {{- range .ports }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
{{- end }}
