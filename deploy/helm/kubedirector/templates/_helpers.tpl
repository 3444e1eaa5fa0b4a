{{/* Names and labels shared by every template. */}}
{{- define "kubedirector.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubedirector.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kubedirector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubedirector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kubedirector.labels" -}}
{{ include "kubedirector.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "kubedirector.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubedirector.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kubedirector.kubeconfigSecret" -}}
{{- default (printf "%s-kubeconfig" (include "kubedirector.fullname" .)) .Values.multiCluster.existingSecret -}}
{{- end -}}

{{- define "kubedirector.webhookService" -}}
{{- printf "%s-webhook" (include "kubedirector.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubedirector.webhookSecret" -}}
{{- printf "%s-webhook-tls" (include "kubedirector.fullname" .) -}}
{{- end -}}
