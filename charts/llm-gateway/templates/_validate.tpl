{{/*
Combinations of values that cannot work. values.schema.json checks each value's type and range;
these checks need several values at once. Every problem found is reported in one `fail`, each
message naming the values to change.
*/}}
{{- define "llm-gateway.validate" -}}
{{- $messages := list }}
{{- $messages = append $messages (include "llm-gateway.validate.redis" . | trim) }}
{{- $messages = append $messages (include "llm-gateway.validate.devSecrets" . | trim) }}
{{- $messages = append $messages (include "llm-gateway.validate.proxy" . | trim) }}
{{- $messages = append $messages (include "llm-gateway.validate.auth" . | trim) }}
{{- $messages = append $messages (include "llm-gateway.validate.providerKeys" . | trim) }}
{{- $messages = append $messages (include "llm-gateway.validate.collector" . | trim) }}
{{- $messages = append $messages (include "llm-gateway.validate.dispatcher" . | trim) }}
{{- $messages = without $messages "" }}
{{- if $messages }}
{{- printf "\n\nVALUES VALIDATION:\n%s\n" (join "\n" $messages) | fail }}
{{- end }}
{{- end }}

{{- define "llm-gateway.validate.redis" -}}
{{- $redis := .Values.redis }}
{{- if not (include "llm-gateway.redisConfigured" .) }}
{{- $readers := list }}
{{- if .Values.collector.enabled }}{{ $readers = append $readers "the collector" }}{{ end }}
{{- if .Values.dispatcher.enabled }}{{ $readers = append $readers "the dispatcher" }}{{ end }}
{{- $who := "the proxy writes usage events to it" }}
{{- if $readers }}{{ $who = printf "%s and %s %s them" $who (join " and " $readers) (ternary "reads" "read" (eq (len $readers) 1)) }}{{ end }}
llm-gateway: no Redis configured ({{ $who }}). Set redis.host to an external Redis, or redis.existingSecret with redis.existingSecretUrlKey (a full URL kept in a Secret), or redis.dev.enabled=true (development only).
{{- else if and $redis.dev.enabled (or $redis.host $redis.existingSecret) }}
llm-gateway: redis.dev.enabled=true runs a Redis without a password inside the release; leave redis.host and redis.existingSecret empty with it.
{{- else if and $redis.existingSecretUrlKey (not $redis.existingSecret) }}
llm-gateway: redis.existingSecretUrlKey names a key in redis.existingSecret; set redis.existingSecret too.
{{- else if and $redis.existingSecretUrlKey (or $redis.host $redis.username $redis.tls) }}
llm-gateway: redis.existingSecretUrlKey provides the whole Redis URL; leave redis.host, redis.username and redis.tls unset with it.
{{- else if and $redis.existingSecret (not $redis.existingSecretUrlKey) (not $redis.existingSecretPasswordKey) }}
llm-gateway: redis.existingSecret needs redis.existingSecretPasswordKey (the key holding the password) or redis.existingSecretUrlKey (the key holding the full URL).
{{- end }}
{{- end }}

{{- define "llm-gateway.validate.devSecrets" -}}
{{- $secrets := .Values.dev.secrets }}
{{- if and (not .Values.dev.createSecrets) (or $secrets.upstreamApiKey $secrets.databaseUrl $secrets.dispatcherApiKey $secrets.managementToken) }}
llm-gateway: dev.secrets are only used with dev.createSecrets=true (development only); in production reference existing Secrets (proxy.upstream.existingSecret, proxy.auth.managementToken.existingSecret, collector.postgres.existingSecret, dispatcher.existingSecret) and leave dev.secrets empty.
{{- end }}
{{- end }}

{{- define "llm-gateway.validate.proxy" -}}
{{- $proxy := .Values.proxy }}
{{- $minimum := addf $proxy.preStopSleepSeconds $proxy.shutdownGraceSeconds }}
{{- if and (not (kindIs "invalid" $proxy.terminationGracePeriodSeconds)) (le (float64 $proxy.terminationGracePeriodSeconds) $minimum) }}
llm-gateway: proxy.terminationGracePeriodSeconds ({{ $proxy.terminationGracePeriodSeconds }}) must exceed proxy.preStopSleepSeconds + proxy.shutdownGraceSeconds ({{ $minimum }}), or in-flight requests are killed before they finish; leave it null to have it computed.
{{- end }}
{{- if and $proxy.autoscaling.enabled (gt (int64 $proxy.autoscaling.minReplicas) (int64 $proxy.autoscaling.maxReplicas)) }}
llm-gateway: proxy.autoscaling.minReplicas ({{ $proxy.autoscaling.minReplicas }}) is above proxy.autoscaling.maxReplicas ({{ $proxy.autoscaling.maxReplicas }}).
{{- end }}
{{- if and $proxy.autoscaling.enabled (kindIs "invalid" $proxy.autoscaling.targetCPUUtilizationPercentage) (kindIs "invalid" $proxy.autoscaling.targetMemoryUtilizationPercentage) }}
llm-gateway: proxy.autoscaling.enabled=true needs a target: set proxy.autoscaling.targetCPUUtilizationPercentage or proxy.autoscaling.targetMemoryUtilizationPercentage.
{{- end }}
{{- if eq (int64 $proxy.containerPort) (int64 $proxy.management.containerPort) }}
llm-gateway: proxy.containerPort and proxy.management.containerPort are both {{ $proxy.containerPort }}: the API and management listeners need a port each.
{{- end }}
{{- $pdb := $proxy.podDisruptionBudget }}
{{- if and $pdb.enabled (not (kindIs "invalid" $pdb.minAvailable)) (not (kindIs "invalid" $pdb.maxUnavailable)) }}
llm-gateway: set only one of proxy.podDisruptionBudget.minAvailable and proxy.podDisruptionBudget.maxUnavailable (the other to null).
{{- else if and $pdb.enabled (kindIs "invalid" $pdb.minAvailable) (kindIs "invalid" $pdb.maxUnavailable) }}
llm-gateway: proxy.podDisruptionBudget.enabled=true needs minAvailable or maxUnavailable.
{{- end }}
{{- end }}

{{- define "llm-gateway.validate.auth" -}}
{{- $auth := .Values.proxy.auth }}
{{- if and (eq $auth.mode "keys") (not $auth.keysFile.existingSecret) (not (include "llm-gateway.managementTokenRef" .)) }}
llm-gateway: proxy.auth.mode=keys needs gateway keys to check requests against, or the proxy refuses to start: set proxy.auth.managementToken.existingSecret (a Secret whose key proxy.auth.managementToken.key ({{ $auth.managementToken.key }}) holds the management API token, to create keys) and/or proxy.auth.keysFile.existingSecret (a Secret whose key proxy.auth.keysFile.key ({{ $auth.keysFile.key }}) holds a JSON list of hashed keys); or proxy.auth.mode=none to run without authentication (local demos only).
{{- end }}
{{- end }}

{{- /* Provider keys and the model table agree: every api_key_env of proxy.models has its Secret,
and every proxy.providerKeys entry is a variable name that a provider reads and that the chart
does not already set in the proxy container (its ConfigMap's keys, its Secrets' variables). The
rest of proxy.models (references between providers and models, azure's api_version, ranges) is
the proxy's loader's to check at start-up, so its rules live in one place. */}}
{{- define "llm-gateway.validate.providerKeys" -}}
{{- $keys := .Values.proxy.providerKeys }}
{{- $read := dict }}
{{- range $provider, $settings := (.Values.proxy.models | default dict).providers }}
{{- with $settings.api_key_env }}
{{- $_ := set $read . $provider }}
{{- if not (hasKey $keys .) }}
llm-gateway: proxy.models.providers.{{ $provider }}.api_key_env is {{ . }}, but proxy.providerKeys has no {{ . }}: the proxy refuses to start without it. Add `{{ . }}: {existingSecret: <Secret>, key: <key>}` to proxy.providerKeys (provider keys are never in the file).
{{- end }}
{{- end }}
{{- end }}
{{- $config := include (print .Template.BasePath "/proxy/configmap.yaml") . | fromYaml }}
{{- $taken := concat (keys $config.data) (list "UPSTREAM_OPENAI_API_KEY" "MANAGEMENT_TOKEN" "REDIS_URL" "REDIS_PASSWORD") }}
{{- range $name, $_ := $keys }}
{{- if not (regexMatch "^[A-Za-z_][A-Za-z0-9_]*$" $name) }}
llm-gateway: proxy.providerKeys.{{ $name }}: not an environment variable name (letters, digits and _, not starting with a digit).
{{- else if has $name $taken }}
llm-gateway: proxy.providerKeys.{{ $name }}: the chart sets {{ $name }} itself; give the provider's key another variable (api_key_env), e.g. OPENAI_API_KEY.
{{- else if not (hasKey $read $name) }}
llm-gateway: proxy.providerKeys.{{ $name }} is read by no provider: no proxy.models.providers.<name>.api_key_env is {{ $name }}. Remove it, or name it in the provider that needs it.
{{- end }}
{{- end }}
{{- end }}

{{- define "llm-gateway.validate.collector" -}}
{{- $collector := .Values.collector }}
{{- if and $collector.enabled (eq $collector.sink "postgres") (not (include "llm-gateway.databaseUrlRef" .)) }}
llm-gateway: collector.sink=postgres needs DATABASE_URL: set collector.postgres.existingSecret to a Secret whose key collector.postgres.existingSecretKey ({{ $collector.postgres.existingSecretKey }}) holds postgresql://user:password@host:5432/db.
{{- end }}
{{- if and $collector.enabled .Values.dispatcher.enabled (eq $collector.group .Values.dispatcher.group) }}
llm-gateway: collector.group and dispatcher.group are both {{ $collector.group | quote }}: consumers of one group share the events, so each would get only part of them. Give them different groups.
{{- end }}
{{- end }}

{{- define "llm-gateway.validate.dispatcher" -}}
{{- $dispatcher := .Values.dispatcher }}
{{- if $dispatcher.enabled }}
{{- if and (has $dispatcher.sink (list "lunary" "helicone")) (not (include "llm-gateway.dispatcherApiKeyRef" .)) }}
llm-gateway: dispatcher.sink={{ $dispatcher.sink }} needs an API key: set dispatcher.existingSecret to a Secret whose key dispatcher.existingSecretKey ({{ $dispatcher.existingSecretKey }}) holds the {{ $dispatcher.sink | title }} key.
{{- end }}
{{- if lt (float64 $dispatcher.backoffMax) (float64 $dispatcher.backoffMin) }}
llm-gateway: dispatcher.backoffMax ({{ $dispatcher.backoffMax }}) must be at least dispatcher.backoffMin ({{ $dispatcher.backoffMin }}).
{{- end }}
{{- if eq $dispatcher.sink "file" }}
{{- if gt (int64 $dispatcher.replicaCount) 1 }}
llm-gateway: dispatcher.sink=file appends to one file on one volume: dispatcher.replicaCount must be 1.
{{- end }}
{{- $mount := trimSuffix "/" $dispatcher.persistence.mountPath }}
{{- if and $dispatcher.endpoint (not (hasPrefix (printf "%s/" $mount) $dispatcher.endpoint)) }}
llm-gateway: dispatcher.endpoint ({{ $dispatcher.endpoint }}) must be a file under dispatcher.persistence.mountPath ({{ $mount }}): the rest of the container's filesystem is read-only.
{{- end }}
{{- end }}
{{- end }}
{{- end }}
