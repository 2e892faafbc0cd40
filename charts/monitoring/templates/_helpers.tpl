{{/*
The chart name (app.kubernetes.io/name).
*/}}
{{- define "monitoring.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release-wide name prefix: the release name. Objects are named
`<release>-<component>` (charts/README.md).
*/}}
{{- define "monitoring.fullname" -}}
{{- .Release.Name | trunc 53 | trimSuffix "-" -}}
{{- end -}}

{{/*
The name of one component's objects: `<release>-<component>`.
Usage: include "monitoring.componentName" (dict "root" $ "component" "grafana")
*/}}
{{- define "monitoring.componentName" -}}
{{- printf "%s-%s" (include "monitoring.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
helm.sh/chart label value.
*/}}
{{- define "monitoring.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Selector labels of one component: name, instance, component.
Usage: include "monitoring.selectorLabels" (dict "root" $ "component" "grafana")
*/}}
{{- define "monitoring.selectorLabels" -}}
app.kubernetes.io/name: {{ include "monitoring.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
All labels of one component's objects.
Usage: include "monitoring.labels" (dict "root" $ "component" "grafana")
*/}}
{{- define "monitoring.labels" -}}
{{ include "monitoring.selectorLabels" . }}
app.kubernetes.io/part-of: weir
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ include "monitoring.chart" .root }}
{{- end -}}

{{/*
image: repository:tag of an image block.
*/}}
{{- define "monitoring.image" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{/*
Pod securityContext from a component's securityContext values.
*/}}
{{- define "monitoring.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .runAsUser }}
runAsGroup: {{ .runAsGroup }}
fsGroup: {{ .fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
Container securityContext, the same for every container.
*/}}
{{- define "monitoring.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
{{- end -}}

{{/*
Container resources from a component's resources values.
*/}}
{{- define "monitoring.resources" -}}
requests:
  cpu: {{ .requests.cpu | quote }}
  memory: {{ .requests.memory | quote }}
limits:
  cpu: {{ .limits.cpu | quote }}
  memory: {{ .limits.memory | quote }}
{{- end -}}

{{/*
Kafka bootstrap servers of AKHQ's `weir` connection.
*/}}
{{- define "monitoring.akhq.brokers" -}}
{{- default (printf "%s-kafka:9092" .Values.streaming.release) .Values.akhq.kafka.brokers -}}
{{- end -}}

{{/*
Schema registry URL of AKHQ's `weir` connection.
*/}}
{{- define "monitoring.akhq.registryUrl" -}}
{{- default (printf "http://%s-registry:8081" .Values.streaming.release) .Values.akhq.schemaRegistry.url -}}
{{- end -}}

{{/*
Static scrape targets: the explicit list, or `<processing.release>-weir:9464`.
*/}}
{{- define "monitoring.prometheus.staticTargets" -}}
{{- if .Values.prometheus.scrape.static.targets -}}
{{- toJson .Values.prometheus.scrape.static.targets -}}
{{- else -}}
{{- list (printf "%s-weir:9464" .Values.processing.release) | toJson -}}
{{- end -}}
{{- end -}}

{{/*
URL of Grafana's Prometheus data source.
*/}}
{{- define "monitoring.grafana.prometheusUrl" -}}
{{- default (printf "http://%s:9090" (include "monitoring.componentName" (dict "root" . "component" "prometheus"))) .Values.grafana.prometheusUrl -}}
{{- end -}}

{{/*
Name of the Secret holding Grafana's admin password.
*/}}
{{- define "monitoring.grafana.secretName" -}}
{{- default (include "monitoring.componentName" (dict "root" . "component" "grafana")) .Values.grafana.existingSecret -}}
{{- end -}}

{{/*
Key of Grafana's admin password in that Secret.
*/}}
{{- define "monitoring.grafana.secretKey" -}}
{{- if .Values.grafana.existingSecret -}}
{{- .Values.grafana.existingSecretKey -}}
{{- else -}}
admin-password
{{- end -}}
{{- end -}}

{{/*
NetworkPolicies (networkPolicy.enabled). A peer: the pods of release `release` with
component `component` (their app.kubernetes.io/instance and component labels), in the
namespaces of networkPolicy.namespaceSelector when it is set and the release is another.
Call with (dict "root" $ "release" RELEASE "component" COMPONENT); fromYaml the result.
*/}}
{{- define "monitoring.networkPolicyPeer" -}}
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
{{- define "monitoring.networkPolicySpec" -}}
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
{{- define "monitoring.networkPolicyPorts" -}}
{{- $ports := list -}}
{{- range . }}{{ $ports = append $ports (dict "protocol" "TCP" "port" (int .)) }}{{ end -}}
{{- toYaml $ports -}}
{{- end -}}

{{/*
host:port of Grafana's PostgreSQL data source: grafana.postgres.host, or
`<storage.release>-postgres:5432`.
*/}}
{{- define "monitoring.grafana.postgresHost" -}}
{{- default (printf "%s-postgres:5432" .Values.storage.release) .Values.grafana.postgres.host -}}
{{- end -}}

{{/*
Name of the Secret holding the password of Grafana's PostgreSQL data source.
*/}}
{{- define "monitoring.grafana.postgresSecret" -}}
{{- default (printf "%s-postgres" .Values.storage.release) .Values.grafana.postgres.passwordSecret.name -}}
{{- end -}}
