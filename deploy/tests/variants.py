"""The value sets objects.py renders the Helm chart with, and the value paths
they set: together they set every value of values.yaml at least once (checked
there), each rendered output is validated against the Kubernetes schemas.

A variant is (values, API versions the cluster serves): OPERATOR for a
cluster with the Prometheus Operator's CRDs (`helm template --api-versions
monitoring.coreos.com/v1`), NONE for an ordinary cluster.
"""

OPERATOR = ["monitoring.coreos.com/v1"]
NONE = []

RUNBOOK_PLACEHOLDER = "https://runbooks.example/gostray/RUNBOOK.md"

DIGEST = "sha256:" + "ab" * 32
LIFETIME_BUCKETS = {"action": "drop", "sourceLabels": ["__name__"],
                    "regex": "gostray_goroutine_lifetime_seconds_bucket"}
CLUSTER_LABEL = {"targetLabel": "cluster", "replacement": "prod-eu"}
USER_NODE_AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
    "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["general"]}]}]}}}

VARIANTS = {
    "default": ({}, OPERATOR),
    # An ordinary cluster: no ServiceMonitor, PodMonitor or PrometheusRule.
    "no-operator": ({}, NONE),
    "privileged": ({"securityProfile": "privileged"}, OPERATOR),
    "bare": ({"serviceMonitor": {"enabled": False}, "prometheusRule": {"enabled": False},
              "serviceAccount": {"create": False, "name": "existing"}}, OPERATOR),
    "tuned": ({
        "selection": ["--binary", "/usr/local/bin/api"],
        "leakAfter": "10m",
        "extraLabels": {"team": "sre"},
        "image": {"repository": "registry.example/gostray", "tag": "9.9.9"},
        "capabilities": ["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"],
        "architectures": ["arm64"],
        "prometheusRule": {"runbookUrl": "https://wiki.example/gostray"},
        "serviceMonitor": {"labels": {"release": "prom"}, "interval": "15s", "scrapeTimeout": "5s",
                           "relabelings": [CLUSTER_LABEL], "metricRelabelings": [LIFETIME_BUCKETS]},
    }, OPERATOR),
    # Every other value, changed from its default.
    "everything": ({
        "nameOverride": "stray",
        "fullnameOverride": "gostray-agent",
        "namespaceOverride": "observability",
        "image": {"repository": "registry.example/gostray", "tag": "9.9.9", "digest": DIGEST,
                  "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "seccompProfile": "Unconfined",
        "appArmorProfile": "RuntimeDefault",
        "extraArgs": ["--max-processes", "64"],
        "env": [{"name": "GOSTRAY_MAX_SERIES", "value": "2000"}],
        "logFormat": "text",
        "port": 9982,
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}, "periodSeconds": 20},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 7},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "observability",
                         "effect": "NoSchedule"}],
        "nodeSelector": {"kubernetes.io/os": "linux", "pool": "general"},
        "affinity": USER_NODE_AFFINITY,
        "priorityClassName": "system-node-critical",
        "terminationGracePeriodSeconds": 30,
        "podLabels": {"cost-centre": "platform"},
        "podAnnotations": {"example.com/owner": "sre"},
        "extraVolumes": [{"name": "ca", "configMap": {"name": "ca-bundle"}}],
        "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/extra", "readOnly": True}],
        "serviceAccount": {"create": True, "name": "gostray-sa",
                           "annotations": {"iam.example/role": "gostray"}},
        "rbac": {"create": False},
        "serviceMonitor": {"enabled": False},
        "podMonitor": {"enabled": True, "interval": "15s", "scrapeTimeout": "5s", "labels": {"release": "kps"},
                       "relabelings": [CLUSTER_LABEL], "metricRelabelings": [LIFETIME_BUCKETS]},
        "prometheusRule": {"labels": {"release": "kps"}, "runbookUrl": "https://wiki.example/gostray/"},
        "dashboards": {"enabled": True, "labels": {"grafana_dashboard": "1"},
                       "annotations": {"grafana_folder": "gostray"}, "namespace": "grafana"},
    }, OPERATOR),
}

# Values a strict schema must refuse: misspelt keys at each depth, bad values.
REFUSED = [
    {"securityProfile": "root"},
    {"leakAfter": "ten minutes"},
    {"imagee": {"repository": "x"}},
    {"podAnotations": {"a": "b"}},
    {"serviceMonitor": {"enable": True}},
    {"prometheusRule": {"runbookURL": "https://x.example"}},
    {"prometheusRule": {"runbookUrl": "wiki/RUNBOOK.md"}},
    {"image": {"digest": "latest"}},
    {"livenessProbe": {"httpget": {"path": "/healthz"}}},
    {"architectures": ["s390x"]},
]


# Values that are groups of values; any other value (a probe, resources, a
# map of labels, a list) is one value, set whole.
GROUPS = {"image", "serviceAccount", "rbac", "serviceMonitor", "podMonitor", "prometheusRule", "dashboards"}


def value_paths(values):
    """Dotted paths of the values in `values` (`image.tag`, `port`)."""
    out = set()
    for key, value in values.items():
        if key in GROUPS:
            out |= {f"{key}.{sub}" for sub in value}
        else:
            out.add(key)
    return out
