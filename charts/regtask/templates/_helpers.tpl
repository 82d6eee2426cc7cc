{{/* Names ------------------------------------------------------------------------------- */}}

{{- define "regtask.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* "regtask" for a release named regtask (the names manifests/ and the docs use). */}}
{{- define "regtask.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains (include "regtask.name" .) .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "regtask.name" .) | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "regtask.operator.fullname" -}}{{ include "regtask.fullname" . }}-operator{{- end -}}
{{- define "regtask.shim.fullname" -}}{{ include "regtask.fullname" . }}-shim{{- end -}}
{{- define "regtask.gateway.fullname" -}}{{ include "regtask.fullname" . }}-gateway{{- end -}}

{{/* Labels ------------------------------------------------------------------------------ */}}

{{- define "regtask.labels" -}}
app.kubernetes.io/part-of: regtask
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- if .Values.helmLabels }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Selector labels of one component: (dict "root" $ "component" "gateway").
The name is fixed (regtask-<component>), not the release's: the operator's tenant NetworkPolicy
selects the gateway by app.kubernetes.io/name=regtask-gateway.
*/}}
{{- define "regtask.selectorLabels" -}}
app.kubernetes.io/name: regtask-{{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "regtask.componentLabels" -}}
{{ include "regtask.labels" .root }}
app.kubernetes.io/name: regtask-{{ .component }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
CEL: the Namespace in the given expression is a tenant namespace of the operator (name prefix
regtask.naming.TENANT_NAMESPACE_PREFIX + "-", label managed-by=regtask.naming.MANAGED_BY).
*/}}
{{- define "regtask.tenantNamespaceCel" -}}
{{ . }} != null && {{ . }}.metadata.name.startsWith('rt-') && {{ . }}.metadata.?labels[?'app.kubernetes.io/managed-by'].orValue('') == 'regtask-operator'
{{- end -}}

{{/* Images ------------------------------------------------------------------------------ */}}

{{/* (dict "root" $ "image" .Values.images.shim) -> repository:tag or repository@digest */}}
{{- define "regtask.image" -}}
{{- $image := .image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default (default .root.Chart.AppVersion .root.Values.images.tag) $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Secrets ----------------------------------------------------------------------------- */}}

{{- define "regtask.llmSecretName" -}}
{{- default (printf "%s-llm" (include "regtask.fullname" .)) .Values.llm.apiKey.existingSecret -}}
{{- end -}}

{{- define "regtask.serviceTokenSecretName" -}}
{{- default (printf "%s-shim-service-token" (include "regtask.fullname" .)) .Values.shim.auth.serviceToken.existingSecret -}}
{{- end -}}

{{- define "regtask.hasLlmKey" -}}
{{- if or .Values.llm.apiKey.existingSecret .Values.llm.apiKey.value }}true{{ end -}}
{{- end -}}

{{- define "regtask.hasServiceToken" -}}
{{- if or .Values.shim.auth.serviceToken.existingSecret .Values.shim.auth.serviceToken.value }}true{{ end -}}
{{- end -}}

{{- define "regtask.firebaseCredentials" -}}
{{- if and .Values.firestore.enabled .Values.firestore.credentials.existingSecret }}true{{ end -}}
{{- end -}}

{{- define "regtask.gatewayUrl" -}}
{{- default (printf "http://%s.%s.svc:%d" (include "regtask.gateway.fullname" .) .Release.Namespace (int .Values.gateway.port)) .Values.operator.gatewayUrl -}}
{{- end -}}

{{/* Pods -------------------------------------------------------------------------------- */}}

{{/* Restricted Pod Security Standard; uid 10001 is the images' user (and the Jobs' runAsUser). */}}
{{- define "regtask.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "regtask.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Scheduling knobs of one component's values (.Values.operator, .Values.shim, ...). */}}
{{- define "regtask.scheduling" -}}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "regtask.imagePullSecrets" -}}
{{- with .Values.images.pullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
Environment every process reads (common/regtask/settings.py): (dict "root" $ "component" "shim").
REDIS_URL is the component's own (its Redis ACL user, redis.components.<component>) when set,
else the shared one.
*/}}
{{- define "regtask.sharedEnv" -}}
{{- $root := .root -}}
{{- $own := get $root.Values.redis.components .component -}}
- name: REDIS_URL
{{- if $own.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ $own.existingSecret }}
      key: {{ $own.existingSecretKey }}
{{- else if $root.Values.redis.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.redis.existingSecret }}
      key: {{ $root.Values.redis.existingSecretKey }}
{{- else }}
  value: {{ $root.Values.redis.url | quote }}
{{- end }}
- name: UNIFIED_REGISTRY_ENABLED
  value: {{ $root.Values.config.unifiedRegistryEnabled | quote }}
- name: REGISTRY_DEBUG
  value: {{ $root.Values.config.registryDebug | quote }}
- name: TASK_HISTORY_LIMIT
  value: {{ $root.Values.config.taskHistoryLimit | int64 | quote }}
- name: REGTASK_NAMESPACE
  value: {{ $root.Release.Namespace | quote }}
{{- end -}}

{{/* Firestore mirror and Firebase settings (operator and shim; the gateway has no use for them). */}}
{{- define "regtask.firestoreEnv" -}}
{{- if .Values.firestore.enabled }}
- name: FIRESTORE_PROJECT_ID
  value: {{ .Values.firestore.projectId | quote }}
- name: FIRESTORE_TASKS_COLLECTION
  value: {{ .Values.firestore.tasksCollection | quote }}
- name: FIRESTORE_PRESENCE_COLLECTION
  value: {{ .Values.firestore.presenceCollection | quote }}
{{- with .Values.firestore.emulatorHost }}
- name: FIRESTORE_EMULATOR_HOST
  value: {{ . | quote }}
{{- end }}
{{- if include "regtask.firebaseCredentials" . }}
- name: GOOGLE_APPLICATION_CREDENTIALS
  value: /var/run/secrets/regtask/firebase/{{ .Values.firestore.credentials.key }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "regtask.tmpVolumeMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "regtask.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- end -}}

{{- define "regtask.firebaseVolumeMount" -}}
{{- if include "regtask.firebaseCredentials" . }}
- name: firebase-credentials
  mountPath: /var/run/secrets/regtask/firebase
  readOnly: true
{{- end }}
{{- end -}}

{{- define "regtask.firebaseVolume" -}}
{{- if include "regtask.firebaseCredentials" . }}
- name: firebase-credentials
  secret:
    secretName: {{ .Values.firestore.credentials.existingSecret }}
    items:
      - key: {{ .Values.firestore.credentials.key }}
        path: {{ .Values.firestore.credentials.key }}
{{- end }}
{{- end -}}

{{/* Cross-field rules the JSON schema cannot say clearly. */}}
{{- define "regtask.validate" -}}
{{- if and (gt (int .Values.operator.replicas) 1) (not .Values.operator.peering.enabled) -}}
{{- fail "operator.replicas > 1 needs operator.peering.enabled=true: without Kopf peering several operators would admit tasks at once" -}}
{{- end -}}
{{- if and .Values.firestore.enabled (not .Values.firestore.projectId) -}}
{{- fail "firestore.enabled=true needs firestore.projectId" -}}
{{- end -}}
{{- if eq (int .Values.gateway.metricsPort) (int .Values.gateway.port) -}}
{{- fail "gateway.metricsPort must differ from gateway.port: runners reach gateway.port, and must not read the metrics" -}}
{{- end -}}
{{- if and .Values.llm.apiKey.existingSecret .Values.llm.apiKey.value -}}
{{- fail "set llm.apiKey.existingSecret or llm.apiKey.value, not both" -}}
{{- end -}}
{{- if and .Values.shim.auth.serviceToken.existingSecret .Values.shim.auth.serviceToken.value -}}
{{- fail "set shim.auth.serviceToken.existingSecret or shim.auth.serviceToken.value, not both" -}}
{{- end -}}
{{- end -}}

{{/*
The control namespaces (JSON list): the release namespace, or with operator.shards > 1 each
shard's "<release namespace>-shard-<i>" (regtask.shards.control_namespace).
*/}}
{{- define "regtask.controlNamespaces" -}}
{{- $shards := int .Values.operator.shards }}
{{- $namespaces := list .Release.Namespace }}
{{- if gt $shards 1 }}
{{- $namespaces = list }}
{{- range $shard := until $shards }}
{{- $namespaces = append $namespaces (printf "%s-shard-%d" $.Release.Namespace $shard) }}
{{- end }}
{{- end }}
{{- toJson $namespaces }}
{{- end -}}
