{{/* The chart's name, or nameOverride. */}}
{{- define "gostray.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name (or fullnameOverride), shortened to a DNS label. */}}
{{- define "gostray.fullname" -}}
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

{{/* Where the namespaced objects go: namespaceOverride, else the release's. */}}
{{- define "gostray.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the agent's pods: never change across upgrades. */}}
{{- define "gostray.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gostray.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "gostray.labels" -}}
{{ include "gostray.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.extraLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "gostray.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gostray.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository@digest when a digest is set, else repository:tag. */}}
{{- define "gostray.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* Whether the Prometheus Operator's CRDs are served (or `helm template
     --api-versions monitoring.coreos.com/v1` says so). */}}
{{- define "gostray.operator" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" -}}true{{- end -}}
{{- end -}}

{{/* The agent's arguments: node-wide run plus selection and threshold flags. */}}
{{- define "gostray.args" -}}
- run
{{- range .Values.selection }}
- {{ . | quote }}
{{- end }}
{{- with .Values.leakAfter }}
- --leak-after={{ . }}
{{- end }}
{{- range .Values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}

{{/* The scrape endpoint of the ServiceMonitor or PodMonitor (`.` is its
     values block, `$` the root in .root). The relabelings keep the agent
     pod's own target labels off every series: see deploy/README.md,
     "Prometheus and labels". */}}
{{- define "gostray.endpoint" -}}
path: /metrics
interval: {{ .monitor.interval }}
scrapeTimeout: {{ .monitor.scrapeTimeout }}
honorLabels: true
relabelings:
  # Which node an agent series comes from.
  - sourceLabels: [__meta_kubernetes_pod_node_name]
    targetLabel: node
  # The agent pod itself, under names no watched process uses.
  - sourceLabels: [__meta_kubernetes_namespace]
    targetLabel: agent_namespace
  - sourceLabels: [__meta_kubernetes_pod_name]
    targetLabel: agent_pod
  # Never the agent pod's namespace/pod/container on a series: a process
  # outside any pod (kubelet, containerd), one not labelled yet, and
  # exe="_folded" have none of their own and would inherit them.
  - action: labeldrop
    regex: namespace|pod|container
{{- with .monitor.relabelings }}
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .monitor.metricRelabelings }}
metricRelabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The runbook link of an alert: the placeholder in rules.yaml replaced
     by prometheusRule.runbookUrl when it is set. */}}
{{- define "gostray.rules" -}}
{{- $rules := .Files.Get "files/rules.yaml" -}}
{{- with .Values.prometheusRule.runbookUrl -}}
{{- $rules = $rules | replace "runbook_url: https://runbooks.example/gostray/RUNBOOK.md#" (printf "runbook_url: %s#" (trimSuffix "/" .)) -}}
{{- end -}}
{{- $rules -}}
{{- end -}}
