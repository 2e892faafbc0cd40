{{/*
Names, labels and the addresses of the other releases. Every object is
<release>-<component> (charts/README.md); this chart's component is "weir".
*/}}

{{/* The chart name (label app.kubernetes.io/name). */}}
{{- define "processing.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The component of every object of this chart. */}}
{{- define "processing.component" -}}
weir
{{- end -}}

{{/* <release>-weir: the Deployment, Service, PodDisruptionBudget, ServiceMonitor. */}}
{{- define "processing.fullname" -}}
{{- printf "%s-%s" .Release.Name (include "processing.component" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The ConfigMap holding weir.yaml. */}}
{{- define "processing.configName" -}}
{{- printf "%s-config" (include "processing.fullname" .) -}}
{{- end -}}

{{/* The ConfigMap holding the guest files. */}}
{{- define "processing.guestsName" -}}
{{- printf "%s-guests" (include "processing.fullname" .) -}}
{{- end -}}

{{/* The chart's admin token Secret. */}}
{{- define "processing.adminSecretName" -}}
{{- printf "%s-admin" (include "processing.fullname" .) -}}
{{- end -}}

{{/* Chart label. */}}
{{- define "processing.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: name, instance, component. */}}
{{- define "processing.selectorLabels" -}}
app.kubernetes.io/name: {{ include "processing.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ include "processing.component" . }}
{{- end -}}

{{/* All labels. */}}
{{- define "processing.labels" -}}
{{ include "processing.selectorLabels" . }}
app.kubernetes.io/part-of: weir
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ include "processing.chart" . }}
{{- end -}}

{{/* The weir image. */}}
{{- define "processing.image" -}}
{{- /* [registry/]repository, then @digest, else :tag (default the appVersion). */ -}}
{{- $i := .Values.image -}}
{{- $repository := ternary (printf "%s/%s" $i.registry $i.repository) $i.repository (ne $i.registry "") -}}
{{- if $i.digest -}}
{{- printf "%s@%s" $repository $i.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository ($i.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* Ports fixed by charts/README.md. */}}
{{- define "processing.httpPort" -}}9464{{- end -}}
{{- define "processing.adminPort" -}}9465{{- end -}}

{{/* Kafka bootstrap servers: kafka.brokers, else <streaming.release>-kafka:9092. */}}
{{- define "processing.kafkaBrokers" -}}
{{- .Values.kafka.brokers | default (printf "%s-kafka:9092" .Values.streaming.release) -}}
{{- end -}}

{{/* Schema registry: registry.url, else http://<streaming.release>-registry:8081. */}}
{{- define "processing.registryUrl" -}}
{{- .Values.registry.url | default (printf "http://%s-registry:8081" .Values.streaming.release) -}}
{{- end -}}

{{/* Postgres URL without password: database.url, else the storage release's. */}}
{{- define "processing.databaseUrl" -}}
{{- .Values.database.url | default (printf "postgresql://weir@%s-postgres:5432/weir" .Values.storage.release) -}}
{{- end -}}

{{/* The Secret holding the Postgres password. */}}
{{- define "processing.databaseSecretName" -}}
{{- .Values.database.passwordSecret.name | default (printf "%s-postgres" .Values.storage.release) -}}
{{- end -}}

{{/* The admin token Secret: admin.existingSecret.name, else the chart's. */}}
{{- define "processing.adminTokenSecret" -}}
{{- .Values.admin.existingSecret.name | default (include "processing.adminSecretName" .) -}}
{{- end -}}

{{/* The key of the admin token in that Secret. */}}
{{- define "processing.adminTokenKey" -}}
{{- if .Values.admin.existingSecret.name -}}{{ .Values.admin.existingSecret.key }}{{- else -}}token{{- end -}}
{{- end -}}

{{/* Where the guests ConfigMap is mounted, and where the image keeps its guests. */}}
{{- define "processing.guestsMount" -}}/etc/weir/guests{{- end -}}
{{- define "processing.builtinGuests" -}}/opt/weir/guests{{- end -}}

{{/* Where the admin token Secret is mounted; the token is the file "token" in it. */}}
{{- define "processing.adminTokenDir" -}}/var/run/secrets/weir/admin{{- end -}}

{{/*
The guest files of the ConfigMap: name -> base64 content, as YAML (fromYaml to use it).
A value of guests.files is either the .wasm itself (it starts with the wasm magic "\0asm";
base64-encoded here) or the base64 text of one (passed as it is); anything else fails.
*/}}
{{- define "processing.guestFiles" -}}
{{- $files := dict -}}
{{- range $name, $content := .Values.guests.files -}}
{{- $raw := $content | toString -}}
{{- if hasPrefix "\x00asm" $raw -}}
{{- $_ := set $files $name ($raw | b64enc) -}}
{{- else -}}
{{- $b64 := $raw | nospace -}}
{{- if not (and (regexMatch "^[A-Za-z0-9+/]+={0,2}$" $b64) (hasPrefix "\x00asm" (b64dec $b64))) -}}
{{- fail (printf "guests.files.%s: neither a WebAssembly module (.wasm) nor the base64 of one; set it with --set-file 'guests.files.%s=FILE' (FILE: the .wasm, or `base64 -w0` of it)" $name (replace "." "\\." $name)) -}}
{{- end -}}
{{- $_ := set $files $name $b64 -}}
{{- end -}}
{{- end -}}
{{- toYaml $files -}}
{{- end -}}

{{/*
A pipeline's guest path: as is when absolute, /etc/weir/guests/<name> when the guests
ConfigMap has the file, else the image's /opt/weir/guests/<name>.
Call with (dict "guest" NAME "root" $).
*/}}
{{- define "processing.guestPath" -}}
{{- $g := .guest | toString -}}
{{- $root := .root -}}
{{- if hasPrefix "/" $g -}}
{{- $g -}}
{{- else if hasKey $root.Values.guests.files $g -}}
{{- printf "%s/%s" (include "processing.guestsMount" $root) $g -}}
{{- else -}}
{{- printf "%s/%s" (include "processing.builtinGuests" $root) $g -}}
{{- end -}}
{{- end -}}

{{/* Where the TLS Secrets are mounted: <dir>/database, <dir>/kafka, <dir>/registry. */}}
{{- define "processing.tlsDir" -}}
/etc/weir/tls
{{- end -}}

{{/*
kafka.properties with what kafka.tls and kafka.sasl add (security.protocol, ssl.ca.location,
sasl.mechanism, sasl.username); the SASL password is added by the ConfigMap from the env.
*/}}
{{- define "processing.kafkaProperties" -}}
{{- $p := deepCopy (.Values.kafka.properties | default dict) -}}
{{- $tls := .Values.kafka.tls.enabled -}}
{{- $sasl := .Values.kafka.sasl.mechanism -}}
{{- if and $tls $sasl -}}
{{- $_ := set $p "security.protocol" "SASL_SSL" -}}
{{- else if $tls -}}
{{- $_ := set $p "security.protocol" "SSL" -}}
{{- else if $sasl -}}
{{- $_ := set $p "security.protocol" "SASL_PLAINTEXT" -}}
{{- end -}}
{{- if and $tls .Values.kafka.tls.caSecret -}}
{{- $_ := set $p "ssl.ca.location" (printf "%s/kafka/ca.crt" (include "processing.tlsDir" .)) -}}
{{- end -}}
{{- if $sasl -}}
{{- if not .Values.kafka.sasl.passwordSecret.name -}}
{{- fail "kafka.sasl.passwordSecret.name is required with kafka.sasl.mechanism" -}}
{{- end -}}
{{- $_ := set $p "sasl.mechanism" $sasl -}}
{{- $_ := set $p "sasl.username" .Values.kafka.sasl.username -}}
{{- end -}}
{{- toYaml $p -}}
{{- end -}}

{{/* The TLS Secrets to mount, by what they are for (database, kafka, registry). */}}
{{- define "processing.tlsSecrets" -}}
{{- $s := dict -}}
{{- with .Values.database.tls.secret }}{{ $_ := set $s "database" . }}{{ end -}}
{{- if .Values.kafka.tls.enabled }}{{ with .Values.kafka.tls.caSecret }}{{ $_ := set $s "kafka" . }}{{ end }}{{ end -}}
{{- with .Values.registry.caSecret }}{{ $_ := set $s "registry" . }}{{ end -}}
{{- toYaml $s -}}
{{- end -}}

{{/*
NetworkPolicies (networkPolicy.enabled). A peer: the pods of release `release` with
component `component` (their app.kubernetes.io/instance and component labels), in the
namespaces of networkPolicy.namespaceSelector when it is set and the release is another.
Call with (dict "root" $ "release" RELEASE "component" COMPONENT); fromYaml the result.
*/}}
{{- define "processing.networkPolicyPeer" -}}
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
{{- define "processing.networkPolicySpec" -}}
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
{{- define "processing.networkPolicyPorts" -}}
{{- $ports := list -}}
{{- range . }}{{ $ports = append $ports (dict "protocol" "TCP" "port" (int .)) }}{{ end -}}
{{- toYaml $ports -}}
{{- end -}}
