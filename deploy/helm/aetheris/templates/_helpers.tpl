{{/*
Names, labels and the shared pieces of the server, worker and migration pods.
*/}}

{{- define "aetheris.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "aetheris.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "aetheris.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "aetheris.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component (server, worker, migrate): call with (list . "server"). */}}
{{- define "aetheris.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "aetheris.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "aetheris.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "aetheris.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "aetheris.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the database URL, and its item. */}}
{{- define "aetheris.databaseSecretName" -}}
{{- if .Values.database.url -}}
{{- printf "%s-database" (include "aetheris.fullname" .) -}}
{{- else -}}
{{- required "database.existingSecret (a Secret holding the PostgreSQL URL) or database.url is required" .Values.database.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "aetheris.databaseSecretKey" -}}
{{- if .Values.database.url -}}url{{- else -}}{{ required "database.existingSecretKey is required" .Values.database.existingSecretKey }}{{- end -}}
{{- end -}}

{{/* The Secret holding the key files. */}}
{{- define "aetheris.keysSecretName" -}}
{{- if .Values.keys.files -}}
{{- printf "%s-keys" (include "aetheris.fullname" .) -}}
{{- else -}}
{{- required "keys.existingSecret (a Secret holding the key files) or keys.files is required" .Values.keys.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* Whether the server needs the keys Secret at all. */}}
{{- define "aetheris.needsKeys" -}}
{{- if or .Values.auth.hs256SecretFiles .Values.auth.ed25519PublicKeyFiles .Values.evidence.signingKeyFile -}}true{{- end -}}
{{- end -}}

{{/* [database] no_migrate: true unless the processes apply migrations at start. */}}
{{- define "aetheris.noMigrate" -}}
{{- if and (not .Values.migrations.hook.enabled) .Values.migrations.applyOnStart -}}false{{- else -}}true{{- end -}}
{{- end -}}

{{/*
aetheris.toml, shared by servers and workers (each command reads the keys it uses and
checks all of them). Strings are written with toJson: a JSON string is a valid TOML basic
string, whatever it holds. The database URL is not here: it is AETHERIS_DATABASE_URL,
from the database Secret.
*/}}
{{- define "aetheris.config" -}}
# aetheris.toml made by the aetheris chart from its values; every key: docs/configuration.md.
[database]
pool_size = {{ int .Values.database.poolSize }}
no_migrate = {{ include "aetheris.noMigrate" . }}

[gateway]
bind = "0.0.0.0:7420"
max_connections = {{ int64 .Values.server.maxConnections }}
body_timeout_ms = {{ int64 .Values.server.bodyTimeoutMs }}
with_worker = {{ .Values.server.withWorker }}

[auth]
{{- if .Values.auth.hs256SecretFiles }}
hs256_secret_files = [{{ range $i, $f := .Values.auth.hs256SecretFiles }}{{ if $i }}, {{ end }}{{ printf "/etc/aetheris/keys/%s" $f | toJson }}{{ end }}]
{{- end }}
{{- if .Values.auth.ed25519PublicKeyFiles }}
ed25519_public_key_files = [{{ range $i, $f := .Values.auth.ed25519PublicKeyFiles }}{{ if $i }}, {{ end }}{{ printf "/etc/aetheris/keys/%s" $f | toJson }}{{ end }}]
{{- end }}
{{- if .Values.auth.audience }}
audience = {{ .Values.auth.audience | toJson }}
{{- end }}
insecure_no_auth = {{ .Values.auth.insecureNoAuth }}
{{- if .Values.evidence.signingKeyFile }}

[evidence]
signing_key_file = {{ printf "/etc/aetheris/keys/%s" .Values.evidence.signingKeyFile | toJson }}
{{- end }}

[worker]
lease_ttl_ms = {{ int64 .Values.worker.leaseTtlMs }}
heartbeat_ms = {{ int64 .Values.worker.heartbeatMs }}
max_jobs = {{ int64 .Values.worker.maxJobs }}
snapshot_every = {{ int64 .Values.worker.snapshotEvery }}
drain_grace_ms = {{ int64 .Values.worker.drainGraceMs }}
admin_bind = {{ printf "0.0.0.0:%d" (int .Values.worker.metricsPort) | toJson }}
{{- if .Values.limits }}

[limits]
file = "/etc/aetheris/limits.json"
{{- end }}
{{- if .Values.llm.providers }}

[llm]
providers_file = "/etc/aetheris/llm.json"
{{- end }}

[retention]
default = {{ .Values.retention.default | toJson }}
batch_size = {{ int64 .Values.retention.batchSize }}
interval_ms = {{ int64 .Values.retention.intervalMs }}
{{- if .Values.retention.archiveDir }}
archive_dir = {{ .Values.retention.archiveDir | toJson }}
{{- end }}
{{- if .Values.tracing.otlpEndpoint }}

[tracing]
otlp_endpoint = {{ .Values.tracing.otlpEndpoint | toJson }}
{{- end }}

[log]
filter = {{ .Values.log.filter | toJson }}
{{- end -}}

{{/* Environment of every aetheris container: the config file and the database URL. */}}
{{- define "aetheris.env" -}}
- name: AETHERIS_CONFIG
  value: /etc/aetheris/aetheris.toml
- name: AETHERIS_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "aetheris.databaseSecretName" . }}
      key: {{ include "aetheris.databaseSecretKey" . }}
{{- end -}}

{{/* Pod annotations that roll the pods when their configuration changes. */}}
{{- define "aetheris.checksums" -}}
checksum/config: {{ include "aetheris.config" . | sha256sum }}
checksum/limits: {{ toJson .Values.limits | sha256sum }}
checksum/llm: {{ toJson .Values.llm | sha256sum }}
{{- if .Values.keys.files }}
checksum/keys: {{ toJson .Values.keys.files | sha256sum }}
{{- end }}
{{- end -}}

{{/* Probes on a named port: startup and liveness = /healthz, readiness = /readyz. */}}
{{- define "aetheris.probes" -}}
{{- $port := index . 0 -}}
{{- $p := index . 1 -}}
startupProbe:
  httpGet: {path: /healthz, port: {{ $port }}}
  periodSeconds: {{ $p.startup.periodSeconds }}
  failureThreshold: {{ $p.startup.failureThreshold }}
  timeoutSeconds: {{ $p.startup.timeoutSeconds }}
livenessProbe:
  httpGet: {path: /healthz, port: {{ $port }}}
  periodSeconds: {{ $p.liveness.periodSeconds }}
  failureThreshold: {{ $p.liveness.failureThreshold }}
  timeoutSeconds: {{ $p.liveness.timeoutSeconds }}
readinessProbe:
  httpGet: {path: /readyz, port: {{ $port }}}
  periodSeconds: {{ $p.readiness.periodSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
  timeoutSeconds: {{ $p.readiness.timeoutSeconds }}
{{- end -}}

{{/*
The runnable jobs a worker would claim, for KEDA: jobs that are claimable (queued,
running, or waiting with a pending signal, cancel or confirmation, or with a timer a
claim has swept) plus waiting jobs whose timer is due but not yet swept. Both counts walk
a partial index (jobs_claimable, jobs_due). docs/deployment.md shows the same query.
*/}}
{{- define "aetheris.runnableJobsQuery" -}}
SELECT (SELECT count(*) FROM jobs WHERE claimable) + (SELECT count(*) FROM jobs WHERE status = 'waiting' AND wake_at IS NOT NULL AND NOT wake_due AND wake_at <= (extract(epoch FROM clock_timestamp()) * 1000)::bigint)
{{- end -}}
