{{/*
Names, labels and the addresses of the other releases. Every object is
<release>-<component> (charts/README.md); this chart's component is "ingest".
*/}}

{{/* The chart name (label app.kubernetes.io/name). */}}
{{- define "ingestion.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The component of every object of this chart. */}}
{{- define "ingestion.component" -}}
ingest
{{- end -}}

{{/* <release>-ingest: the Deployment (simulate, a live feed) or Job (replay). */}}
{{- define "ingestion.fullname" -}}
{{- printf "%s-%s" .Release.Name (include "ingestion.component" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The ConfigMap holding the replay file (replay.data). */}}
{{- define "ingestion.replayConfigMap" -}}
{{- .Values.replay.existingConfigMap.name | default (printf "%s-replay" (include "ingestion.fullname" .)) -}}
{{- end -}}

{{/* The key of the replay file in that ConfigMap. */}}
{{- define "ingestion.replayKey" -}}
{{- if .Values.replay.existingConfigMap.name -}}{{ .Values.replay.existingConfigMap.key }}{{- else -}}{{ .Values.replay.fileName }}{{- end -}}
{{- end -}}

{{/* Where the replay ConfigMap is mounted. */}}
{{- define "ingestion.replayDir" -}}/var/lib/weir/replay{{- end -}}

{{/* Chart label. */}}
{{- define "ingestion.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: name, instance, component. */}}
{{- define "ingestion.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ingestion.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ include "ingestion.component" . }}
{{- end -}}

{{/* All labels. */}}
{{- define "ingestion.labels" -}}
{{ include "ingestion.selectorLabels" . }}
app.kubernetes.io/part-of: weir
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ include "ingestion.chart" . }}
{{- end -}}

{{/* The weir image. */}}
{{- define "ingestion.image" -}}
{{- /* [registry/]repository, then @digest, else :tag (default the appVersion). */ -}}
{{- $i := .Values.image -}}
{{- $repository := ternary (printf "%s/%s" $i.registry $i.repository) $i.repository (ne $i.registry "") -}}
{{- if $i.digest -}}
{{- printf "%s@%s" $repository $i.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository ($i.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* Kafka bootstrap servers: kafka.brokers, else <streaming.release>-kafka:9092. */}}
{{- define "ingestion.kafkaBrokers" -}}
{{- .Values.kafka.brokers | default (printf "%s-kafka:9092" .Values.streaming.release) -}}
{{- end -}}

{{/* Schema registry: registry.url, else http://<streaming.release>-registry:8081. */}}
{{- define "ingestion.registryUrl" -}}
{{- .Values.registry.url | default (printf "http://%s-registry:8081" .Values.streaming.release) -}}
{{- end -}}

{{/* Where the TLS Secrets are mounted: <dir>/kafka, <dir>/registry. */}}
{{- define "ingestion.tlsDir" -}}/etc/weir/tls{{- end -}}

{{/* The librdkafka properties file holding the SASL password, written by the init container. */}}
{{- define "ingestion.kafkaConfigDir" -}}/run/weir/kafka{{- end -}}
{{- define "ingestion.kafkaConfigFile" -}}{{ include "ingestion.kafkaConfigDir" . }}/client.properties{{- end -}}

{{/*
What kafka.tls and kafka.sasl make of librdkafka properties (security.protocol,
ssl.ca.location, sasl.mechanism, sasl.username), as the processing chart renders them; the
SASL password goes in the --kafka-config file.
*/}}
{{- define "ingestion.kafkaProperties" -}}
{{- $p := dict -}}
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
{{- $_ := set $p "ssl.ca.location" (printf "%s/kafka/ca.crt" (include "ingestion.tlsDir" .)) -}}
{{- end -}}
{{- if $sasl -}}
{{- if not .Values.kafka.sasl.passwordSecret.name -}}
{{- fail "ingestion: kafka.sasl.passwordSecret.name is required with kafka.sasl.mechanism" -}}
{{- end -}}
{{- $_ := set $p "sasl.mechanism" $sasl -}}
{{- $_ := set $p "sasl.username" .Values.kafka.sasl.username -}}
{{- end -}}
{{- toYaml $p -}}
{{- end -}}

{{/* The TLS Secrets to mount, by what they are for (kafka, registry). */}}
{{- define "ingestion.tlsSecrets" -}}
{{- $s := dict -}}
{{- if .Values.kafka.tls.enabled }}{{ with .Values.kafka.tls.caSecret }}{{ $_ := set $s "kafka" . }}{{ end }}{{ end -}}
{{- with .Values.registry.caSecret }}{{ $_ := set $s "registry" . }}{{ end -}}
{{- toYaml $s -}}
{{- end -}}

{{/* A number as text for an argument (no exponent, no trailing .0 noise). */}}
{{- define "ingestion.num" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}{{ $v }}{{- else if eq (float64 $v) (floor $v) -}}{{ int64 $v }}{{- else -}}{{ $v }}{{- end -}}
{{- end -}}

{{/* Whether the source is a live feed (yahoo, coinbase). */}}
{{- define "ingestion.isFeed" -}}
{{- if has .Values.source (list "yahoo" "coinbase") }}true{{ end -}}
{{- end -}}

{{/* The container's args: `ingest simulate …`, `ingest yahoo|coinbase …` or `ingest replay FILE …`. */}}
{{- define "ingestion.args" -}}
{{- $args := list "ingest" .Values.source -}}
{{- if include "ingestion.isFeed" . -}}
{{- $f := .Values.feed -}}
{{- if eq .Values.source "yahoo" }}{{ $args = concat $args (list "--symbols" (join "," $f.symbols)) }}{{ end -}}
{{- if and (eq .Values.source "coinbase") $f.products }}{{ $args = concat $args (list "--products" (join "," $f.products)) }}{{ end -}}
{{- with $f.url }}{{ $args = concat $args (list "--url" .) }}{{ end -}}
{{- $args = concat $args (list "--stale-after" $f.staleAfter "--http" (printf "0.0.0.0:%d" (int $f.metricsPort)) "--partitions" (.Values.partitions | int | toString)) -}}
{{- else -}}
{{- if eq .Values.source "replay" -}}
{{- $args = append $args (printf "%s/%s" (include "ingestion.replayDir" .) (include "ingestion.replayKey" .)) -}}
{{- with .Values.replay.topic }}{{ $args = concat $args (list "--topic" .) }}{{ end -}}
{{- with .Values.replay.format }}{{ $args = concat $args (list "--format" .) }}{{ end -}}
{{- end -}}
{{- $args = concat $args (list "--rate" (include "ingestion.num" .Values.rate) "--partitions" (.Values.partitions | int | toString)) -}}
{{- if eq .Values.source "simulate" -}}
{{- with .Values.stocks }}{{ $args = concat $args (list "--stocks" (join "," .)) }}{{ end -}}
{{- with .Values.crypto }}{{ $args = concat $args (list "--crypto" (join "," .)) }}{{ end -}}
{{- with .Values.currency }}{{ $args = concat $args (list "--currency" (join "," .)) }}{{ end -}}
{{- $args = concat $args (list "--late-fraction" (include "ingestion.num" .Values.lateFraction) "--late-by" .Values.lateBy "--duplicate-fraction" (include "ingestion.num" .Values.duplicateFraction)) -}}
{{- if not (kindIs "invalid" .Values.seed) }}{{ $args = concat $args (list "--seed" (include "ingestion.num" .Values.seed)) }}{{ end -}}
{{- with .Values.startTime }}{{ $args = concat $args (list "--start-time" .) }}{{ end -}}
{{- if .Values.options.enabled -}}
{{- if has "none" .Values.stocks }}{{ fail "ingestion: options.enabled needs stocks to list options on, and stocks is [none]: set options.enabled false, or name stocks" }}{{ end -}}
{{- $args = concat $args (list "--options" "--option-share" (include "ingestion.num" .Values.options.share)) -}}
{{- if not (kindIs "invalid" .Values.options.riskFreeRate) }}{{ $args = concat $args (list "--risk-free-rate" (include "ingestion.num" .Values.options.riskFreeRate)) }}{{ end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $k, $v := (include "ingestion.kafkaProperties" . | fromYaml) }}{{ $args = concat $args (list "-X" (printf "%s=%s" $k $v)) }}{{ end -}}
{{- if .Values.kafka.sasl.mechanism }}{{ $args = concat $args (list "--kafka-config" (include "ingestion.kafkaConfigFile" .)) }}{{ end -}}
{{- toJson $args -}}
{{- end -}}

{{/* The pod spec shared by the Deployment and the Job. Call with (dict "root" $ "restartPolicy" POLICY). */}}
{{- define "ingestion.podSpec" -}}
{{- $root := .root -}}
{{- with $root -}}
serviceAccountName: {{ include "ingestion.fullname" . }}
automountServiceAccountToken: false
enableServiceLinks: false
restartPolicy: {{ $.restartPolicy }}
terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  seccompProfile:
    type: RuntimeDefault
{{- if .Values.kafka.sasl.mechanism }}
initContainers:
  # Writes the SASL password from the Secret into the --kafka-config file (memory-backed,
  # readable by the pod's user only), so it is in no argument and no ConfigMap.
  - name: kafka-config
    image: {{ include "ingestion.image" . | quote }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    command:
      - /bin/sh
      - -c
      - umask 077 && printf 'sasl.password=%s\n' "$KAFKA_SASL_PASSWORD" > {{ include "ingestion.kafkaConfigFile" . }}
    env:
      - name: KAFKA_SASL_PASSWORD
        valueFrom:
          secretKeyRef:
            name: {{ .Values.kafka.sasl.passwordSecret.name }}
            key: {{ .Values.kafka.sasl.passwordSecret.key }}
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      runAsNonRoot: true
      capabilities:
        drop: ["ALL"]
    resources:
      {{- toYaml .Values.resources | nindent 6 }}
    volumeMounts:
      - name: kafka-config
        mountPath: {{ include "ingestion.kafkaConfigDir" . }}
{{- end }}
containers:
  - name: ingest
    image: {{ include "ingestion.image" . | quote }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    command: ["weir"]
    args: {{ include "ingestion.args" . }}
    env:
      - name: KAFKA_BROKERS
        value: {{ include "ingestion.kafkaBrokers" . | quote }}
      - name: SCHEMA_REGISTRY_URL
        value: {{ include "ingestion.registryUrl" . | quote }}
      {{- if .Values.registry.caSecret }}
      - name: SCHEMA_REGISTRY_CA
        value: {{ include "ingestion.tlsDir" . }}/registry/ca.crt
      {{- end }}
      {{- with .Values.registry.basicAuthSecret }}
      {{- if .name }}
      - name: SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO
        valueFrom:
          secretKeyRef:
            name: {{ .name }}
            key: {{ .key }}
      {{- end }}
      {{- end }}
      - name: WEIR_LOG
        value: {{ .Values.logLevel | quote }}
      - name: WEIR_LOG_FORMAT
        value: json
      {{- with .Values.extraEnv }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    {{- if include "ingestion.isFeed" . }}
    ports:
      - name: metrics
        containerPort: {{ .Values.feed.metricsPort }}
        protocol: TCP
    # /healthz answers while the process is up; a feed that cannot be read is reconnected
    # inside it (weir_ingest_seconds_since_last_message shows a silent one).
    readinessProbe:
      httpGet:
        path: /healthz
        port: metrics
      periodSeconds: 10
    livenessProbe:
      httpGet:
        path: /healthz
        port: metrics
      periodSeconds: 20
      failureThreshold: 3
    {{- else }}
    # No probes: the simulator and replay serve no HTTP, and exit (and are restarted) when
    # they cannot produce.
    {{- end }}
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      runAsNonRoot: true
      capabilities:
        drop: ["ALL"]
    resources:
      {{- toYaml .Values.resources | nindent 6 }}
    volumeMounts:
      - name: tmp
        mountPath: /tmp
      {{- if eq .Values.source "replay" }}
      - name: replay
        mountPath: {{ include "ingestion.replayDir" . }}
        readOnly: true
      {{- end }}
      {{- if .Values.kafka.sasl.mechanism }}
      - name: kafka-config
        mountPath: {{ include "ingestion.kafkaConfigDir" . }}
        readOnly: true
      {{- end }}
      {{- range $what, $secret := (include "ingestion.tlsSecrets" . | fromYaml) }}
      - name: tls-{{ $what }}
        mountPath: {{ include "ingestion.tlsDir" $ }}/{{ $what }}
        readOnly: true
      {{- end }}
volumes:
  - name: tmp
    emptyDir:
      sizeLimit: {{ .Values.tmpSizeLimit }}
  {{- if .Values.kafka.sasl.mechanism }}
  - name: kafka-config
    emptyDir:
      medium: Memory
      sizeLimit: 1Mi
  {{- end }}
  {{- range $what, $secret := (include "ingestion.tlsSecrets" . | fromYaml) }}
  - name: tls-{{ $what }}
    secret:
      secretName: {{ $secret }}
      defaultMode: 0440
  {{- end }}
  {{- if eq .Values.source "replay" }}
  - name: replay
    configMap:
      name: {{ include "ingestion.replayConfigMap" . }}
      items:
        - key: {{ include "ingestion.replayKey" . }}
          path: {{ include "ingestion.replayKey" . }}
  {{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .Values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- range .Values.topologySpreadConstraints }}
  {{- $c := deepCopy . }}
  {{- if not (hasKey $c "labelSelector") }}
  {{- $_ := set $c "labelSelector" (dict "matchLabels" (include "ingestion.selectorLabels" $root | fromYaml)) }}
  {{- end }}
  - {{ toYaml $c | nindent 4 | trim }}
  {{- end }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* The pod template's metadata. */}}
{{- define "ingestion.podMetadata" -}}
labels:
  {{- include "ingestion.labels" . | nindent 2 }}
  {{- with .Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- $annotations := .Values.podAnnotations | default dict }}
{{- if include "ingestion.isFeed" . }}
{{- $annotations = merge (dict "prometheus.io/scrape" "true" "prometheus.io/port" (toString .Values.feed.metricsPort) "prometheus.io/path" "/metrics") $annotations }}
{{- end }}
{{- with $annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
NetworkPolicies (networkPolicy.enabled). A peer: the pods of release `release` with
component `component` (their app.kubernetes.io/instance and component labels), in the
namespaces of networkPolicy.namespaceSelector when it is set and the release is another.
Call with (dict "root" $ "release" RELEASE "component" COMPONENT); fromYaml the result.
*/}}
{{- define "ingestion.networkPolicyPeer" -}}
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
{{- define "ingestion.networkPolicySpec" -}}
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
{{- define "ingestion.networkPolicyPorts" -}}
{{- $ports := list -}}
{{- range . }}{{ $ports = append $ports (dict "protocol" "TCP" "port" (int .)) }}{{ end -}}
{{- toYaml $ports -}}
{{- end -}}
