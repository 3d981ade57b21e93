{{/*
Helpers of the usher chart. Every helper takes the root context (.) unless
its comment says otherwise.
*/}}

{{/* The chart name. */}}
{{- define "usher.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every object name. */}}
{{- define "usher.fullname" -}}
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

{{/* Object names, each at most 63 characters. */}}
{{- define "usher.balancer.fullname" -}}
{{- printf "%s-balancer" (include "usher.fullname" . | trunc 54 | trimSuffix "-") -}}
{{- end -}}
{{- define "usher.autoscaler.fullname" -}}
{{- printf "%s-autoscaler" (include "usher.fullname" . | trunc 52 | trimSuffix "-") -}}
{{- end -}}

{{/* chart label value. */}}
{{- define "usher.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Labels every object carries. app.kubernetes.io/name is always "usher": the
autoscaler's default metricsSource.pods selector is
{app.kubernetes.io/name: usher, app.kubernetes.io/component: balancer}.
*/}}
{{- define "usher.labels" -}}
helm.sh/chart: {{ include "usher.chart" . }}
app.kubernetes.io/name: usher
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: usher
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of the balancer pods. */}}
{{- define "usher.balancer.selectorLabels" -}}
app.kubernetes.io/name: usher
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: balancer
{{- end -}}

{{/* Selector labels of the autoscaler pods. */}}
{{- define "usher.autoscaler.selectorLabels" -}}
app.kubernetes.io/name: usher
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: autoscaler
{{- end -}}

{{- define "usher.balancer.serviceAccountName" -}}
{{- if .Values.balancer.serviceAccount.create -}}
{{- default (include "usher.balancer.fullname" .) .Values.balancer.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.balancer.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "usher.autoscaler.serviceAccountName" -}}
{{- if .Values.autoscaler.serviceAccount.create -}}
{{- default (include "usher.autoscaler.fullname" .) .Values.autoscaler.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.autoscaler.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The balancer image reference. */}}
{{- define "usher.balancer.image" -}}
{{- printf "%s:%s" .Values.balancer.image.repository (default .Chart.AppVersion .Values.balancer.image.tag) -}}
{{- end -}}

{{/* The autoscaler image reference. */}}
{{- define "usher.autoscaler.image" -}}
{{- printf "%s:%s" .Values.autoscaler.image.repository (default .Chart.AppVersion .Values.autoscaler.image.tag) -}}
{{- end -}}

{{/*
The port of an "ip:port" bind address (the argument is the string), e.g.
"0.0.0.0:8080" and "[::]:8080" give 8080.
*/}}
{{- define "usher.bindPort" -}}
{{- $port := regexFind "[0-9]+$" . -}}
{{- if not $port -}}
{{- fail (printf "bind address %q has no port" .) -}}
{{- end -}}
{{- $port -}}
{{- end -}}

{{/* The balancer's admin port, from balancer.config.admin.bind. */}}
{{- define "usher.balancer.adminPort" -}}
{{- $admin := .Values.balancer.config.admin | default dict -}}
{{- $bind := required "balancer.config.admin.bind is needed: the probes, the autoscaler, Prometheus and the helm test use the admin listener" $admin.bind -}}
{{- include "usher.bindPort" $bind -}}
{{- end -}}

{{/*
The Secret holding the sticky-session secret that the balancer pods mount
at /etc/usher/sticky: balancer.stickySecret.existingSecret, else the
generated `<balancer fullname>-sticky` when stickySecret.create, else empty
(nothing mounted).
*/}}
{{- define "usher.balancer.stickySecretName" -}}
{{- $sticky := .Values.balancer.stickySecret -}}
{{- if $sticky.existingSecret -}}
{{- $sticky.existingSecret -}}
{{- else if $sticky.create -}}
{{- /* Secret names may be 253 characters long: no truncation. */ -}}
{{- printf "%s-sticky" (include "usher.balancer.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Where the balancer pods mount the sticky-session Secret. */}}
{{- define "usher.balancer.stickyDir" -}}
/etc/usher/sticky
{{- end -}}

{{/*
The balancer's config as YAML: balancer.config with the release namespace
filled into every endpoints.kubernetes that names none (the balancer itself
would read `default`), and, while a sticky-session Secret is mounted, its
file as the secretFile of every pool with stickySessions that sets neither
secret nor secretFile (so every replica signs cookies with the same secret).
*/}}
{{- define "usher.balancer.config" -}}
{{- $config := deepCopy .Values.balancer.config -}}
{{- $stickySecret := include "usher.balancer.stickySecretName" . -}}
{{- $stickyFile := printf "%s/%s" (include "usher.balancer.stickyDir" .) .Values.balancer.stickySecret.key -}}
{{- range $name, $pool := $config.pools -}}
{{- if kindIs "map" $pool -}}
{{- $endpoints := $pool.endpoints | default dict -}}
{{- if and (kindIs "map" $endpoints) (kindIs "map" $endpoints.kubernetes) -}}
{{- if not $endpoints.kubernetes.namespace -}}
{{- $_ := set $endpoints.kubernetes "namespace" $.Release.Namespace -}}
{{- end -}}
{{- end -}}
{{- if and $stickySecret (kindIs "map" $pool.stickySessions) -}}
{{- if not (or (hasKey $pool.stickySessions "secret") (hasKey $pool.stickySessions "secretFile")) -}}
{{- $_ := set $pool.stickySessions "secretFile" $stickyFile -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/*
Preferred or required anti-affinity by hostname. The argument is a dict:
mode (soft, hard or none) and labels (the selector labels as YAML).
*/}}
{{- define "usher.antiAffinity" -}}
{{- if eq .mode "soft" }}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- .labels | nindent 12 }}
{{- else if eq .mode "hard" }}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- .labels | nindent 10 }}
{{- end }}
{{- end -}}

{{/*
A ScalingPolicy spec from values: the argument is a dict with root (.) and
spec. Fills metricsSource with this release's balancer pods when absent and
checks that the pool exists.
*/}}
{{- define "usher.policySpec" -}}
{{- $root := .root -}}
{{- $spec := deepCopy .spec -}}
{{- if $root.Values.balancer.enabled -}}
{{- $pools := $root.Values.balancer.config.pools | default dict -}}
{{- if not (hasKey $pools (toString $spec.pool)) -}}
{{- fail (printf "policy %s: pool %q is not a pool of balancer.config (pools: %s)" .name (toString $spec.pool) (keys $pools | sortAlpha | join ", ")) -}}
{{- end -}}
{{- if not (hasKey $spec "metricsSource") -}}
{{- $selector := include "usher.balancer.selectorLabels" $root | fromYaml -}}
{{- $port := include "usher.balancer.adminPort" $root | int -}}
{{- $_ := set $spec "metricsSource" (dict "pods" (dict "selector" $selector "port" $port)) -}}
{{- end -}}
{{- end -}}
{{- toYaml $spec -}}
{{- end -}}
