{{/* Names: "<release>-operator" and "<release>-gateway", shortened to 63 characters. */}}
{{- define "shoal.fullname" -}}
{{- if contains "shoal" .Release.Name -}}{{ .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-shoal" .Release.Name | trunc 50 | trimSuffix "-" }}{{- end -}}
{{- end -}}
{{- define "shoal.operator.name" -}}{{ include "shoal.fullname" . }}-operator{{- end -}}
{{- define "shoal.gateway.name" -}}{{ include "shoal.fullname" . }}-gateway{{- end -}}

{{- define "shoal.labels" -}}
app.kubernetes.io/part-of: shoal
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "shoal.operator.selector" -}}
app.kubernetes.io/name: shoal-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "shoal.gateway.selector" -}}
app.kubernetes.io/name: shoal-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The image operator and gateway run. */}}
{{- define "shoal.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{/* The runtime image for ModelServices that name none (default: the same image). */}}
{{- define "shoal.runtimeImage" -}}
{{- if .Values.operator.runtimeImage.repository -}}
{{ .Values.operator.runtimeImage.repository }}:{{ .Values.operator.runtimeImage.tag | default .Chart.AppVersion }}
{{- else -}}{{ include "shoal.image" . }}{{- end -}}
{{- end -}}

{{/* Namespaces the operator watches: the listed ones, or the release namespace. */}}
{{- define "shoal.watchNamespaces" -}}
{{- if .Values.operator.watchNamespaces -}}{{ join "," .Values.operator.watchNamespaces }}
{{- else -}}{{ .Release.Namespace }}{{- end -}}
{{- end -}}

{{- define "shoal.gateway.secretName" -}}
{{- .Values.gateway.auth.existingSecret | default (printf "%s-tokens" (include "shoal.gateway.name" .)) -}}
{{- end -}}

{{/* The headless Service of the gateways' metrics port, and the autoscaler's dns+ entry for
it: the name resolves to every ready gateway pod, each is scraped and the held requests summed. */}}
{{- define "shoal.gateway.metricsName" -}}{{ include "shoal.gateway.name" . }}-metrics{{- end -}}
{{- define "shoal.gateway.metricsDiscovery" -}}
dns+http://{{ include "shoal.gateway.metricsName" . }}.{{ .Release.Namespace }}.svc.{{ .Values.operator.clusterDomain }}:{{ .Values.gateway.metricsPort }}/metrics
{{- end -}}
{{- define "shoal.gateway.url" -}}
http://{{ include "shoal.gateway.name" . }}.{{ .Release.Namespace }}.svc.{{ .Values.operator.clusterDomain }}:{{ .Values.gateway.service.port }}
{{- end -}}

{{/* The pod and container security settings every workload of the chart runs with. */}}
{{- define "shoal.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsUser }}
fsGroup: {{ .Values.securityContext.runAsUser }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}
{{- define "shoal.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsUser }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
