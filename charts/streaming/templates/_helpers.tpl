{{/*
The chart name (app.kubernetes.io/name).
*/}}
{{- define "streaming.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: the release name (charts/README.md: <release>-<component>),
or fullnameOverride.
*/}}
{{- define "streaming.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Chart name and version (helm.sh/chart).
*/}}
{{- define "streaming.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels. Call with (dict "ctx" $ "component" "kafka").
*/}}
{{- define "streaming.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streaming.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
All labels. Call with (dict "ctx" $ "component" "kafka").
*/}}
{{- define "streaming.labels" -}}
{{ include "streaming.selectorLabels" . }}
app.kubernetes.io/part-of: weir
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
helm.sh/chart: {{ include "streaming.chart" .ctx }}
{{- end }}

{{/*
Object names.
*/}}
{{- define "streaming.kafka" -}}
{{- printf "%s-kafka" (include "streaming.fullname" .) }}
{{- end }}

{{- define "streaming.kafkaHeadless" -}}
{{- printf "%s-kafka-headless" (include "streaming.fullname" .) }}
{{- end }}

{{- define "streaming.registry" -}}
{{- printf "%s-registry" (include "streaming.fullname" .) }}
{{- end }}

{{/*
The Kafka bootstrap address other charts use: <release>-kafka:9092.
*/}}
{{- define "streaming.bootstrap" -}}
{{- printf "%s:9092" (include "streaming.kafka" .) }}
{{- end }}

{{/*
The schema registry URL: http://<release>-registry:8081 when registry.enabled, else
registry.external.url. Fails when neither or both are set.
*/}}
{{- define "streaming.registryUrl" -}}
{{- if and .Values.registry.enabled .Values.registry.external.url }}
{{- fail "streaming: registry.external.url is set but registry.enabled is true; set registry.enabled=false to use the external registry, or clear registry.external.url" }}
{{- else if .Values.registry.enabled }}
{{- printf "http://%s:8081" (include "streaming.registry" .) }}
{{- else if .Values.registry.external.url }}
{{- .Values.registry.external.url | trimSuffix "/" }}
{{- else }}
{{- fail "streaming: no schema registry: set registry.enabled=true, or registry.external.url with registry.enabled=false" }}
{{- end }}
{{- end }}

{{/*
Kafka replication: factor min(3, replicas); min.insync.replicas 1 below 3 replicas, else 2.
*/}}
{{- define "streaming.replicationFactor" -}}
{{- min 3 (int .Values.kafka.replicas) }}
{{- end }}

{{- define "streaming.minInsync" -}}
{{- if lt (int .Values.kafka.replicas) 3 }}1{{ else }}2{{ end }}
{{- end }}

{{/*
The controller quorum: 0@<release>-kafka-0.<headless>.<ns>.svc.<clusterDomain>:9093,...
*/}}
{{- define "streaming.quorumVoters" -}}
{{- $kafka := include "streaming.kafka" . }}
{{- $headless := include "streaming.kafkaHeadless" . }}
{{- $voters := list }}
{{- range $i := until (int .Values.kafka.replicas) }}
{{- $voters = append $voters (printf "%d@%s-%d.%s.%s.svc.%s:9093" $i $kafka $i $headless $.Release.Namespace $.Values.clusterDomain) }}
{{- end }}
{{- join "," $voters }}
{{- end }}

{{/*
The registry's database URL (no password) and password Secret.
*/}}
{{- define "streaming.databaseUrl" -}}
{{- default (printf "postgresql://weir@%s-postgres:5432/weir" .Values.storage.release) .Values.registry.database.url }}
{{- end }}

{{- define "streaming.passwordSecret" -}}
{{- default (printf "%s-postgres" .Values.storage.release) .Values.registry.database.passwordSecret.name }}
{{- end }}

{{/*
Image references.
*/}}
{{- define "streaming.kafkaImage" -}}
{{- printf "%s:%s" .Values.kafka.image.repository .Values.kafka.image.tag }}
{{- end }}

{{- define "streaming.weirImage" -}}
{{- /* [registry/]repository, then @digest, else :tag (default the appVersion). */ -}}
{{- $i := .Values.weirImage -}}
{{- $repository := ternary (printf "%s/%s" $i.registry $i.repository) $i.repository (ne $i.registry "") -}}
{{- if $i.digest -}}
{{- printf "%s@%s" $repository $i.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository ($i.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end }}

{{/*
A server.properties value: whole numbers without an exponent (YAML numbers are floats).
*/}}
{{- define "streaming.propertyValue" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) }}
{{- int64 . }}
{{- else }}
{{- . }}
{{- end }}
{{- end }}

{{/*
NetworkPolicies (networkPolicy.enabled). A peer: the pods of release `release` with
component `component` (their app.kubernetes.io/instance and component labels), in the
namespaces of networkPolicy.namespaceSelector when it is set and the release is another.
Call with (dict "root" $ "release" RELEASE "component" COMPONENT); fromYaml the result.
*/}}
{{- define "streaming.networkPolicyPeer" -}}
{{- $peer := dict "podSelector" (dict "matchLabels" (dict "app.kubernetes.io/instance" .release "app.kubernetes.io/component" .component)) -}}
{{- if and .root.Values.networkPolicy.namespaceSelector (ne .release .root.Release.Name) -}}
{{- $_ := set $peer "namespaceSelector" .root.Values.networkPolicy.namespaceSelector -}}
{{- end -}}
{{- toYaml $peer -}}
{{- end -}}

{{/*
The spec of the NetworkPolicy of this release's pods of one component: only the ingress
and egress rules given, DNS (networkPolicy.dns, port 53) and networkPolicy.extraIngress /
extraEgress. Call with (dict "root" $ "component" COMPONENT "ingress" RULES "egress" RULES).
*/}}
{{- define "streaming.networkPolicySpec" -}}
{{- $np := .root.Values.networkPolicy -}}
{{- $dns := dict "to" $np.dns "ports" (list (dict "protocol" "UDP" "port" 53) (dict "protocol" "TCP" "port" 53)) -}}
podSelector:
  matchLabels:
    app.kubernetes.io/instance: {{ .root.Release.Name }}
    app.kubernetes.io/component: {{ .component }}
policyTypes: [Ingress, Egress]
{{- $ingress := concat .ingress $np.extraIngress }}
{{- if $ingress }}
ingress:
  {{- toYaml $ingress | nindent 2 }}
{{- else }}
ingress: []
{{- end }}
egress:
  {{- toYaml (concat .egress (list $dns) $np.extraEgress) | nindent 2 }}
{{- end -}}

{{/* TCP ports of a NetworkPolicy rule. Call with a list of numbers; fromYamlArray the result. */}}
{{- define "streaming.networkPolicyPorts" -}}
{{- $ports := list -}}
{{- range . }}{{ $ports = append $ports (dict "protocol" "TCP" "port" (int .)) }}{{ end -}}
{{- toYaml $ports -}}
{{- end -}}
