{{/*
The chart name (app.kubernetes.io/name).
*/}}
{{- define "storage.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: the release name (charts/README.md: <release>-<component>),
or fullnameOverride.
*/}}
{{- define "storage.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Chart name and version (helm.sh/chart).
*/}}
{{- define "storage.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels. Call with (dict "ctx" $ "component" "postgres").
*/}}
{{- define "storage.selectorLabels" -}}
app.kubernetes.io/name: {{ include "storage.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
All labels. Call with (dict "ctx" $ "component" "postgres").
*/}}
{{- define "storage.labels" -}}
{{ include "storage.selectorLabels" . }}
app.kubernetes.io/part-of: weir
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
helm.sh/chart: {{ include "storage.chart" .ctx }}
{{- end }}

{{/*
Postgres StatefulSet / Service name.
*/}}
{{- define "storage.postgres" -}}
{{- printf "%s-postgres" (include "storage.fullname" .) }}
{{- end }}

{{/*
The Secret holding the password: auth.existingSecret or <release>-postgres.
*/}}
{{- define "storage.secretName" -}}
{{- default (include "storage.postgres" .) .Values.auth.existingSecret }}
{{- end }}

{{/*
The key of the password in that Secret.
*/}}
{{- define "storage.secretKey" -}}
{{- if .Values.auth.existingSecret }}{{ .Values.auth.secretKey }}{{ else }}password{{ end }}
{{- end }}

{{/*
The database URL without a password (the password comes as PGPASSWORD).
*/}}
{{- define "storage.databaseUrl" -}}
{{- printf "postgresql://weir@%s:5432/weir" (include "storage.postgres" .) }}
{{- end }}

{{/*
Image references.
*/}}
{{- define "storage.image" -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end }}

{{- define "storage.weirImage" -}}
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
env entry PGPASSWORD from the Secret.
*/}}
{{- define "storage.pgpasswordEnv" -}}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "storage.secretName" . }}
      key: {{ include "storage.secretKey" . }}
{{- end }}

{{/*
A setting's value: whole numbers without an exponent (YAML numbers are floats).
*/}}
{{- define "storage.settingValue" -}}
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
{{- define "storage.networkPolicyPeer" -}}
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
{{- define "storage.networkPolicySpec" -}}
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
{{- define "storage.networkPolicyPorts" -}}
{{- $ports := list -}}
{{- range . }}{{ $ports = append $ports (dict "protocol" "TCP" "port" (int .)) }}{{ end -}}
{{- toYaml $ports -}}
{{- end -}}
