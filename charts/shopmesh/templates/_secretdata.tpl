{{/*
Secret data shared by the regular Secret and its migration-hook copy. Fails
rendering when a value a component needs is missing.
*/}}
{{- define "shopmesh.secretData" -}}
{{- $s := .Values.secrets }}
{{- $needRedis := false }}
{{- range $name, $svc := .Values.services }}
{{- if $svc.enabled }}
{{- $needs := $svc.needs | default dict }}
{{- if $needs.postgres }}
{{ include "shopmesh.dbUrlKey" $name }}: {{ required (printf "secrets.databaseUrls.%s is required (or set secrets.existingSecret)" $name) (index ($s.databaseUrls | default dict) $name) | quote }}
{{- end }}
{{- if $needs.redis }}{{ $needRedis = true }}{{ end }}
{{- end }}
{{- end }}
{{- if $needRedis }}
redis-url: {{ required "secrets.redisUrl is required (or set secrets.existingSecret)" $s.redisUrl | quote }}
{{- end }}
{{- if and .Values.auth.adminEmail (.Values.services.auth | default dict).enabled }}
admin-password: {{ required "secrets.adminPassword is required when auth.adminEmail is set (or set secrets.existingSecret)" $s.adminPassword | quote }}
{{- end }}
{{- end }}
