{{/*
Names. Kubernetes names are at most 63 characters (DNS labels), hence every `trunc 63 | trimSuffix "-"`.
*/}}

{{/* The chart name, unless nameOverride. */}}
{{- define "llm-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name: fullnameOverride, else the release name when it already
contains the chart name, else "<release>-<chart name>".
*/}}
{{- define "llm-gateway.fullname" -}}
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

{{/* The name of one component's resources: (list $ "proxy") -> "<fullname>-proxy". */}}
{{- define "llm-gateway.componentName" -}}
{{- $ctx := index . 0 }}
{{- printf "%s-%s" (include "llm-gateway.fullname" $ctx) (index . 1) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "llm-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "llm-gateway.labels" -}}
helm.sh/chart: {{ include "llm-gateway.chart" . }}
{{ include "llm-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: llm-gateway
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The labels that select this release's pods; they never change across upgrades. */}}
{{- define "llm-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llm-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component's resources: (list $ "proxy"). */}}
{{- define "llm-gateway.componentLabels" -}}
{{ include "llm-gateway.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Selector labels of one component's pods: (list $ "proxy"). */}}
{{- define "llm-gateway.componentSelectorLabels" -}}
{{ include "llm-gateway.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* The ServiceAccount the pods run as. */}}
{{- define "llm-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llm-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference: (list $ .Values.proxy.image) -> "<registry>/<repository>:<tag>[@<digest>]".
The tag falls back to image.tag, then to the chart's appVersion.
*/}}
{{- define "llm-gateway.image" -}}
{{- $ctx := index . 0 }}
{{- $image := index . 1 }}
{{- $registry := $image.registry | default $ctx.Values.image.registry }}
{{- $tag := $image.tag | default $ctx.Values.image.tag | default $ctx.Chart.AppVersion | toString }}
{{- $ref := printf "%s:%s" $image.repository $tag }}
{{- if $registry }}
{{- $ref = printf "%s/%s" $registry $ref }}
{{- end }}
{{- if $image.digest }}
{{- $ref = printf "%s@%s" $ref $image.digest }}
{{- end }}
{{- $ref }}
{{- end }}

{{/*
A number as an environment variable's text. Helm reads values as float64, which prints large
integers in exponent form (1e+06); whole numbers are printed as integers.
*/}}
{{- define "llm-gateway.number" -}}
{{- $value := float64 . }}
{{- if eq $value (float64 (int64 $value)) }}
{{- int64 $value }}
{{- else }}
{{- $value }}
{{- end }}
{{- end }}

{{/* "host:port" for a service's *_LISTEN_ADDR: (list $ port). */}}
{{- define "llm-gateway.listenAddr" -}}
{{- printf "%s:%d" (index . 0).Values.listenHost (int64 (index . 1)) }}
{{- end }}

{{/* The name of the development-only Secret (dev.createSecrets). */}}
{{- define "llm-gateway.devSecretName" -}}
{{- include "llm-gateway.componentName" (list . "dev") }}
{{- end }}

{{/*
Where a secret value comes from: (list $ existingSecret key devValue devKey) renders a
secretKeyRef body (name, key), or nothing when neither an existing Secret nor (with
dev.createSecrets) a development value is given.
*/}}
{{- define "llm-gateway.secretKeyRef" -}}
{{- $ctx := index . 0 }}
{{- $existingSecret := index . 1 }}
{{- if $existingSecret }}
name: {{ $existingSecret | quote }}
key: {{ index . 2 | quote }}
{{- else if and $ctx.Values.dev.createSecrets (index . 3) }}
name: {{ include "llm-gateway.devSecretName" $ctx | quote }}
key: {{ index . 4 | quote }}
{{- end }}
{{- end }}

{{/* The secret references, by what they hold. */}}
{{- define "llm-gateway.upstreamApiKeyRef" -}}
{{- include "llm-gateway.secretKeyRef" (list . .Values.proxy.upstream.existingSecret .Values.proxy.upstream.existingSecretKey .Values.dev.secrets.upstreamApiKey "upstream-api-key") }}
{{- end }}

{{- define "llm-gateway.databaseUrlRef" -}}
{{- include "llm-gateway.secretKeyRef" (list . .Values.collector.postgres.existingSecret .Values.collector.postgres.existingSecretKey .Values.dev.secrets.databaseUrl "database-url") }}
{{- end }}

{{- define "llm-gateway.dispatcherApiKeyRef" -}}
{{- include "llm-gateway.secretKeyRef" (list . .Values.dispatcher.existingSecret .Values.dispatcher.existingSecretKey .Values.dev.secrets.dispatcherApiKey "dispatcher-api-key") }}
{{- end }}

{{- define "llm-gateway.managementTokenRef" -}}
{{- include "llm-gateway.secretKeyRef" (list . .Values.proxy.auth.managementToken.existingSecret .Values.proxy.auth.managementToken.key .Values.dev.secrets.managementToken "management-token") }}
{{- end }}

{{/*
Where the proxy reads the keys file (KEYS_FILE): the one key of proxy.auth.keysFile.existingSecret,
mounted read-only as a file of this directory.
*/}}
{{- define "llm-gateway.keysFileDir" -}}
/etc/llm-gateway/keys
{{- end }}

{{- define "llm-gateway.keysFilePath" -}}
{{- printf "%s/keys.json" (include "llm-gateway.keysFileDir" .) }}
{{- end }}

{{/*
Where the proxy reads the model table (MODELS_FILE): proxy.models as YAML, the one key of the
<fullname>-proxy-models ConfigMap, mounted read-only as a file of this directory.
*/}}
{{- define "llm-gateway.modelsFileDir" -}}
/etc/llm-gateway/models
{{- end }}

{{- define "llm-gateway.modelsFilePath" -}}
{{- printf "%s/models.yaml" (include "llm-gateway.modelsFileDir" .) }}
{{- end }}

{{- define "llm-gateway.pricesFileDir" -}}
/etc/llm-gateway/prices
{{- end }}

{{- define "llm-gateway.pricesFilePath" -}}
{{- printf "%s/prices.yaml" (include "llm-gateway.pricesFileDir" .) }}
{{- end }}

{{/* True (non-empty) when some Redis is configured. */}}
{{- define "llm-gateway.redisConfigured" -}}
{{- if or .Values.redis.host .Values.redis.existingSecretUrlKey .Values.redis.dev.enabled }}true{{ end }}
{{- end }}

{{/*
REDIS_URL, and REDIS_PASSWORD before it when the password comes from a Secret: Kubernetes expands
$(REDIS_PASSWORD) in a later variable's value. With redis.existingSecretUrlKey the whole URL comes
from the Secret.
*/}}
{{- define "llm-gateway.redisEnv" -}}
{{- $redis := .Values.redis }}
{{- if $redis.existingSecretUrlKey }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $redis.existingSecret | quote }}
      key: {{ $redis.existingSecretUrlKey | quote }}
{{- else }}
{{- $host := $redis.host }}
{{- $port := $redis.port }}
{{- if $redis.dev.enabled }}
{{- $host = include "llm-gateway.componentName" (list . "redis") }}
{{- $port = 6379 }}
{{- end }}
{{- $credentials := "" }}
{{- if $redis.existingSecret }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $redis.existingSecret | quote }}
      key: {{ $redis.existingSecretPasswordKey | quote }}
{{- $credentials = printf "%s:$(REDIS_PASSWORD)@" $redis.username }}
{{- else if $redis.username }}
{{- $credentials = printf "%s@" $redis.username }}
{{- end }}
- name: REDIS_URL
  value: {{ printf "%s://%s%s:%d/%d" (ternary "rediss" "redis" $redis.tls) $credentials $host (int64 $port) (int64 $redis.database) | quote }}
{{- end }}
{{- end }}

{{/*
Annotations that roll a component's pods when its configuration changes: (list $ "proxy").
Secrets made by dev.createSecrets are covered too; Secrets the chart only references are not
(restart the Deployments after rotating them, or use a reloader).
*/}}
{{- define "llm-gateway.checksumAnnotations" -}}
{{- $ctx := index . 0 }}
checksum/config: {{ include (printf "%s/%s/configmap.yaml" $ctx.Template.BasePath (index . 1)) $ctx | sha256sum }}
{{- if $ctx.Values.dev.createSecrets }}
checksum/dev-secrets: {{ include (print $ctx.Template.BasePath "/dev-secrets.yaml") $ctx | sha256sum }}
{{- end }}
{{- end }}

{{/* HTTP probes on the named port "http": (list probeValues path). */}}
{{- define "llm-gateway.httpProbe" -}}
{{- $probe := index . 0 }}
httpGet:
  path: {{ index . 1 }}
  port: http
periodSeconds: {{ int64 $probe.periodSeconds }}
timeoutSeconds: {{ int64 $probe.timeoutSeconds }}
failureThreshold: {{ int64 $probe.failureThreshold }}
{{- end }}

{{/*
The three probes of a service on its /live and /ready: (list componentValues). A readiness check
that waits on Redis and then on the sink gets 2 x redisTimeout + 2 s when its timeout is null.
*/}}
{{- define "llm-gateway.probes" -}}
{{- $values := index . 0 }}
{{- $readiness := deepCopy $values.probes.readiness }}
{{- if kindIs "invalid" $readiness.timeoutSeconds }}
{{- $_ := set $readiness "timeoutSeconds" (add 2 (ceil (mulf 2 $values.redisTimeout))) }}
{{- end }}
startupProbe:
  {{- include "llm-gateway.httpProbe" (list $values.probes.startup "/live") | trim | nindent 2 }}
livenessProbe:
  {{- include "llm-gateway.httpProbe" (list $values.probes.liveness "/live") | trim | nindent 2 }}
readinessProbe:
  {{- include "llm-gateway.httpProbe" (list $readiness "/ready") | trim | nindent 2 }}
{{- end }}

{{/* Pod-level settings shared by every Deployment: (list $ componentValues). */}}
{{- define "llm-gateway.podSettings" -}}
{{- $ctx := index . 0 }}
{{- $values := index . 1 }}
serviceAccountName: {{ include "llm-gateway.serviceAccountName" $ctx }}
automountServiceAccountToken: {{ $ctx.Values.serviceAccount.automountServiceAccountToken }}
{{- /* The services read only the variables the chart sets: no *_SERVICE_HOST for every Service. */}}
enableServiceLinks: false
{{- with $ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $ctx.Values.podSecurityContext | nindent 2 }}
{{- with $values.priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with $values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Pod labels of a component: (list $ "proxy" componentValues). */}}
{{- define "llm-gateway.podLabels" -}}
{{ include "llm-gateway.componentLabels" (list (index . 0) (index . 1)) }}
{{- with (index . 2).podLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The writable /tmp every container gets (the root filesystem is read-only). */}}
{{- define "llm-gateway.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{- define "llm-gateway.tmpVolumeMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* A Kubernetes IntOrString: a count as an integer, a percentage ("50%") quoted. */}}
{{- define "llm-gateway.intOrString" -}}
{{- if kindIs "string" . }}{{ . | quote }}{{ else }}{{ int64 . }}{{ end }}
{{- end }}
