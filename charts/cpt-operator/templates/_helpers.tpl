{{/* Names and labels shared by every template. */}}
{{- define "cpt-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cpt-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cpt-operator.labels" -}}
app.kubernetes.io/name: {{ include "cpt-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "cpt-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cpt-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* An image reference from {registry, repository, tag, digest}: (list .Values.image $).
     global.imageRegistry (a parent chart's mirror) wins over the image's registry; a digest wins
     over the tag; the tag defaults to the chart's appVersion. */}}
{{- define "cpt-operator.image" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- $registry := (($root.Values.global).imageRegistry) | default $image.registry -}}
{{- $repository := $image.repository -}}
{{- if $registry -}}
{{- $repository = printf "%s/%s" (trimSuffix "/" $registry) $repository -}}
{{- end -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository ($image.tag | default $root.Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "cpt-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cpt-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The namespaces the operator watches when it is not cluster-wide, as a JSON list: watchNamespaces, else
     the release namespace alone. clusterWide and watchNamespaces exclude each other. */}}
{{- define "cpt-operator.watchedNamespaces" -}}
{{- if and .Values.clusterWide .Values.watchNamespaces -}}
{{- fail "clusterWide: true manages every namespace; leave watchNamespaces empty (or set clusterWide: false)" -}}
{{- end -}}
{{- toJson (.Values.watchNamespaces | default (list .Release.Namespace)) -}}
{{- end -}}

{{/* The RBAC rules for CPTJobs and their children: exactly the calls the operator makes
     (cpt_operator.controller.io.kube.API_CALLS; a test keeps them in sync). */}}
{{- define "cpt-operator.rules" -}}
- apiGroups: ["cpt.dev"]
  resources: ["cptjobs"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["cpt.dev"]
  resources: ["cptjobs/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["ray.io"]
  resources: ["rayjobs"]
  verbs: ["get", "create", "delete"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "update"]
- apiGroups: [""]
  resources: ["secrets"]
  {{- if has .Values.operator.kuberayAuth (list "auto" "token-secret") }}
  # get: the Secrets a job names (preflight); create: the job's Ray token (a Secret it owns, never updated)
  verbs: ["get", "create"]
  {{- else }}
  verbs: ["get"]
  {{- end }}
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if .Values.networkPolicy.enabled }}
# The job's NetworkPolicy: created with its first attempt, updated to admit each attempt's submitter.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "update"]
{{- end }}
{{- end -}}

{{/* Reading KubeRay's RayJob CRD, this one only, to learn whether it supports authOptions (kuberayAuth: auto).
     Cluster-scoped: in a ClusterRole in both modes. */}}
{{- define "cpt-operator.crdRules" -}}
{{- if eq .Values.operator.kuberayAuth "auto" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  resourceNames: ["rayjobs.ray.io"]
  verbs: ["get"]
{{- end }}
{{- end -}}

{{/* Comma-separated names of a list of imagePullSecrets ([{name: a}, {name: b}] -> "a,b"). */}}
{{- define "cpt-operator.pullSecretNames" -}}
{{- $names := list -}}
{{- range . -}}{{- $names = append $names .name -}}{{- end -}}
{{- join "," $names -}}
{{- end }}
