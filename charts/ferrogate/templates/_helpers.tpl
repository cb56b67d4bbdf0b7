{{/*
Names. Everything is prefixed with the release's full name, so two
releases in one namespace do not collide.
*/}}
{{- define "ferrogate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ferrogate.fullname" -}}
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

{{- define "ferrogate.controller.fullname" -}}
{{- printf "%s-controller" (include "ferrogate.fullname" .) }}
{{- end }}

{{- define "ferrogate.dataplane.fullname" -}}
{{- printf "%s-dataplane" (include "ferrogate.fullname" .) }}
{{- end }}

{{- define "ferrogate.certgen.fullname" -}}
{{- printf "%s-certgen" (include "ferrogate.fullname" .) }}
{{- end }}

{{/* Prefix of the Secrets `ferrogate certgen` writes: PREFIX-ca, -server, -client. */}}
{{- define "ferrogate.streamSecretPrefix" -}}
{{- printf "%s-stream" (include "ferrogate.fullname" .) }}
{{- end }}

{{/* The controller's snapshot stream, as dataplanes reach it. */}}
{{- define "ferrogate.streamURL" -}}
{{- printf "https://%s.%s.svc:%d" (include "ferrogate.controller.fullname" .) .Release.Namespace (int .Values.controller.stream.port) }}
{{- end }}

{{- define "ferrogate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ferrogate.labels" -}}
helm.sh/chart: {{ include "ferrogate.chart" . }}
app.kubernetes.io/name: {{ include "ferrogate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ferrogate
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: pass (dict "ctx" $ "component" "controller"). */}}
{{- define "ferrogate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ferrogate.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "ferrogate.componentLabels" -}}
{{ include "ferrogate.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "ferrogate.controller.serviceAccountName" -}}
{{- if .Values.controller.serviceAccount.create }}
{{- default (include "ferrogate.controller.fullname" .) .Values.controller.serviceAccount.name }}
{{- else }}
{{- required "controller.serviceAccount.name is required when controller.serviceAccount.create is false" .Values.controller.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ferrogate.dataplane.serviceAccountName" -}}
{{- if .Values.dataplane.serviceAccount.create }}
{{- default (include "ferrogate.dataplane.fullname" .) .Values.dataplane.serviceAccount.name }}
{{- else }}
{{- required "dataplane.serviceAccount.name is required when dataplane.serviceAccount.create is false" .Values.dataplane.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: a digest wins over a tag; the tag defaults to appVersion. */}}
{{- define "ferrogate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
API versions that changed between the oldest and the newest supported
Kubernetes: pick what the cluster serves (helm install/upgrade see the
cluster; helm template uses --kube-version/--api-versions).
*/}}
{{- define "ferrogate.hpa.apiVersion" -}}
{{- if .Capabilities.APIVersions.Has "autoscaling/v2" -}}
autoscaling/v2
{{- else -}}
autoscaling/v2beta2
{{- end }}
{{- end }}

{{- define "ferrogate.pdb.apiVersion" -}}
{{- if .Capabilities.APIVersions.Has "policy/v1" -}}
policy/v1
{{- else -}}
policy/v1beta1
{{- end }}
{{- end }}

{{/* Pod-level security settings shared by every pod of the chart. */}}
{{- define "ferrogate.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{- define "ferrogate.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end }}

{{- define "ferrogate.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
