"""Checks the deploy/ objects that no offline Kubernetes schema covers.

Run by `cargo xtask test` (xtask/src/deploy/objects.rs) with PyYAML, jsonschema
and helm-python-sdk (the real Helm engine, v4 SDK, bundled in a PyPI wheel) on
PYTHONPATH. It renders the Helm chart for several value sets into OUT_DIR, for
kubernetes-validate to check next, and asserts:

- the chart's default output is the plain manifests of deploy/kubernetes, pod
  spec for pod spec, in both security profiles;
- the Prometheus Operator's objects are made only when the cluster serves
  monitoring.coreos.com/v1 (`helm template --api-versions`);
- every value of values.yaml is set by some variant, documented in
  deploy/README.md, and reaches the objects; values.schema.json is strict
  (a misspelt key is refused) and refuses bad values;
- no monitor lets the agent pod's namespace/pod/container reach a series;
- ServiceMonitor and PrometheusRule objects match minimal schemas written
  here (no offline copy of the Prometheus Operator CRDs is available): the
  fields gostray uses, with their types, and nothing unknown;
- the PrometheusRule objects carry exactly deploy/prometheus/rules.yaml, and
  every alert has a severity, a `for`, and a runbook anchor that exists.

Prints one line per check and ends with "objects: N passed, M failed".
"""

import copy
import pathlib
import re
import sys
import traceback

import json

import helm_python as helm
import jsonschema
import yaml
from helm_python import _native

from variants import NONE, OPERATOR, REFUSED, RUNBOOK_PLACEHOLDER, VARIANTS, value_paths

DEPLOY = pathlib.Path(__file__).resolve().parent.parent
CHART = DEPLOY / "helm" / "gostray"
KUBE = DEPLOY / "kubernetes"
RULES = DEPLOY / "prometheus" / "rules.yaml"
RUNBOOK = DEPLOY / "RUNBOOK.md"
README = DEPLOY / "README.md"
GRAFANA = DEPLOY / "grafana"

DURATION = r"^([0-9]+(ms|s|m|h|d|w|y))+$"
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                   "labels": STRING_MAP, "annotations": STRING_MAP},
    "additionalProperties": False,
}

RELABELINGS = {
    "type": "array",
    "items": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "sourceLabels": {"type": "array", "items": {"type": "string"}},
            "separator": {"type": "string"},
            "targetLabel": {"type": "string"},
            "action": {"enum": ["replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep",
                                "lowercase", "uppercase", "keepequal", "dropequal"]},
            "regex": {"type": "string"},
            "modulus": {"type": "integer"},
            "replacement": {"type": "string"},
        },
    },
}

# Minimal schema of monitoring.coreos.com/v1 ServiceMonitor: what we use.
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object",
                    "required": ["matchLabels"],
                    "properties": {"matchLabels": STRING_MAP},
                    "additionalProperties": False,
                },
                "namespaceSelector": {
                    "type": "object",
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}},
                                   "any": {"type": "boolean"}},
                    "additionalProperties": False,
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": DURATION},
                            "honorLabels": {"type": "boolean"},
                            "relabelings": RELABELINGS,
                            "metricRelabelings": RELABELINGS,
                        },
                    },
                },
            },
        },
    },
}

# Minimal schema of monitoring.coreos.com/v1 PodMonitor: the ServiceMonitor's
# with podMetricsEndpoints for endpoints.
POD_MONITOR = copy.deepcopy(SERVICE_MONITOR)
POD_MONITOR["properties"]["kind"] = {"const": "PodMonitor"}
_spec = POD_MONITOR["properties"]["spec"]
_spec["properties"]["podMetricsEndpoints"] = _spec["properties"].pop("endpoints")
_spec["required"] = ["selector", "podMetricsEndpoints"]

RULE = {
    "type": "object",
    "required": ["expr"],
    "additionalProperties": False,
    "properties": {
        "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        "record": {"type": "string", "pattern": "^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
        "expr": {"type": "string", "minLength": 1},
        "for": {"type": "string", "pattern": DURATION},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    },
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
}

# Minimal schema of monitoring.coreos.com/v1 PrometheusRule.
PROMETHEUS_RULE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string"},
                            "interval": {"type": "string", "pattern": DURATION},
                            "rules": {"type": "array", "minItems": 1, "items": RULE},
                        },
                    },
                },
            },
        },
    },
}

CRD_SCHEMAS = {"ServiceMonitor": SERVICE_MONITOR, "PodMonitor": POD_MONITOR, "PrometheusRule": PROMETHEUS_RULE}

results = []


def check(name):
    def wrap(fn):
        try:
            fn()
            results.append(True)
            print(f"check {name} ... ok")
        except Exception as e:  # noqa: BLE001 - every failure is reported
            results.append(False)
            # A bare assert says nothing: name its line.
            line = traceback.extract_tb(e.__traceback__)[-1]
            print(f"check {name} ... FAILED: {e} ({pathlib.Path(line.filename).name}:{line.lineno}: {line.line})")
        return fn
    return wrap


def load_all(path):
    return [d for d in yaml.safe_load_all(pathlib.Path(path).read_text()) if d]


def render_files(values, api_versions=OPERATOR):
    """The chart rendered as `helm template --api-versions …` would: template
    path → text. helm-python-sdk's Chart.render does not expose the API
    versions, its native call does (the same Helm engine)."""
    opts = {"name": "gostray", "namespace": "gostray", "api_versions": api_versions}
    with helm.Chart.load(str(CHART)) as chart:
        return json.loads(_native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(opts)))


def render(values, api_versions=OPERATOR):
    docs = []
    for name, text in sorted(render_files(values, api_versions).items()):
        if name.endswith(".yaml"):
            docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def notes(values, api_versions=OPERATOR):
    return render_files(values, api_versions)["gostray/templates/NOTES.txt"]


def by_kind(docs, kind):
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def kinds(docs):
    return sorted(d["kind"] for d in docs)


def pod_spec(daemonset):
    spec = copy.deepcopy(daemonset["spec"]["template"]["spec"])
    for c in spec["containers"]:
        c.pop("image")
    return spec


def rules_spec():
    return yaml.safe_load(RULES.read_text())


def main():
    out_dir = pathlib.Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    helm.disable_logging()
    rendered = {}

    @check("helm lint finds no error")
    def _():
        report = helm.lint(str(CHART))
        assert not report["errors"], report["errors"]
        bad = [m for m in report["messages"] if m["severity"] > 1]
        assert not bad, bad

    for variant, (values, api_versions) in VARIANTS.items():
        @check(f"chart renders ({variant}, API versions {api_versions or 'built-in only'})")
        def _():
            docs = render(values, api_versions)
            rendered[variant] = docs
            (out_dir / f"chart-{variant}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))

    static = {p.name: load_all(p) for p in sorted(KUBE.glob("*.yaml"))}
    default = rendered.get("default", [])

    @check("chart default = deploy/kubernetes, least-privilege pod spec")
    def _():
        assert pod_spec(by_kind(default, "DaemonSet")) == pod_spec(static["daemonset.yaml"][0])

    @check("chart privileged = deploy/kubernetes/daemonset-privileged.yaml pod spec")
    def _():
        got = pod_spec(by_kind(rendered["privileged"], "DaemonSet"))
        assert got == pod_spec(static["daemonset-privileged.yaml"][0])
        assert got["containers"][0]["securityContext"]["privileged"] is True

    @check("chart and manifests make the same kinds")
    def _():
        plain = [d for name, docs in static.items() if name not in ("namespace.yaml", "daemonset-privileged.yaml", "podmonitor.yaml") for d in docs]
        assert kinds(default) == kinds(plain), (kinds(default), kinds(plain))

    @check("RBAC is read-only pods, nothing else")
    def _():
        for docs in (default, static["rbac.yaml"]):
            role = by_kind(docs, "ClusterRole")
            assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}], role["rules"]

    @check("DaemonSet essentials (hostPID, NODE_NAME, listen, probes, read-only, rolling 1)")
    def _():
        for ds in (by_kind(default, "DaemonSet"), static["daemonset.yaml"][0], static["daemonset-privileged.yaml"][0]):
            spec = ds["spec"]["template"]["spec"]
            c = spec["containers"][0]
            env = {e["name"]: e for e in c["env"]}
            assert spec["hostPID"] is True
            assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
            assert env["GOSTRAY_LISTEN"]["value"] == "0.0.0.0:9981"
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert {"requests", "limits"} <= set(c["resources"])
            assert spec["tolerations"] == [{"operator": "Exists"}]
            assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1
            mount = {m["name"]: m for m in c["volumeMounts"]}["cgroup"]
            assert mount["mountPath"] == "/sys/fs/cgroup" and mount["readOnly"] is True
            assert c["args"][0] == "run" and not {"--pid", "--binary"} & set(c["args"])

    @check("least-privilege drops ALL and adds only the proven set")
    def _():
        ctx = static["daemonset.yaml"][0]["spec"]["template"]["spec"]["containers"][0]["securityContext"]
        assert ctx["capabilities"]["drop"] == ["ALL"]
        assert ctx["capabilities"]["add"] == ["SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"]
        assert ctx["privileged"] is False and ctx["allowPrivilegeEscalation"] is False

    @check("values switch monitors off")
    def _():
        assert "ServiceMonitor" not in kinds(rendered["bare"])
        assert "PrometheusRule" not in kinds(rendered["bare"])
        assert "ServiceMonitor" in kinds(default) and "PrometheusRule" in kinds(default)

    @check("values reach the objects (selection, --leak-after, labels, image, capabilities, runbook)")
    def _():
        docs = rendered["tuned"]
        values = VARIANTS["tuned"][0]
        for d in docs:
            assert d["metadata"]["labels"].get("team") == "sre", d["kind"]
        c = by_kind(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
        assert c["args"] == ["run", "--binary", "/usr/local/bin/api", "--leak-after=10m"], c["args"]
        assert c["image"] == "registry.example/gostray:9.9.9"
        assert c["securityContext"]["capabilities"]["add"] == values["capabilities"]
        assert by_kind(docs, "ServiceMonitor")["metadata"]["labels"]["release"] == "prom"
        urls = {r["annotations"]["runbook_url"] for g in by_kind(docs, "PrometheusRule")["spec"]["groups"]
                for r in g["rules"] if "alert" in r}
        assert urls and all(u.startswith("https://wiki.example/gostray#") for u in urls), urls

    @check("values.schema.json is strict: refuses misspelt keys at every depth and bad values")
    def _():
        for bad in REFUSED:
            try:
                render(bad)
            except helm.HelmError:
                continue
            raise AssertionError(f"accepted {bad}")

    import chart_checks
    chart_checks.run(check, rendered, static, render, notes)

    crd_objects = [(f"chart-{v}", d) for v, docs in rendered.items() for d in docs] + \
                  [(name, d) for name, docs in static.items() for d in docs]

    @check("ServiceMonitor and PrometheusRule objects match their minimal schemas")
    def _():
        seen = 0
        for where, d in crd_objects:
            if d["kind"] in CRD_SCHEMAS:
                try:
                    jsonschema.validate(d, CRD_SCHEMAS[d["kind"]])
                except jsonschema.ValidationError as e:
                    raise AssertionError(f"{where} {d['kind']}: {e.message} at {list(e.absolute_path)}") from None
                seen += 1
        assert seen >= 10, f"only {seen} CRD objects checked"

    @check("the minimal schemas do refuse unknown fields")
    def _():
        monitor = copy.deepcopy(by_kind(default, "ServiceMonitor"))
        monitor["spec"]["endpoints"][0]["honourLabels"] = True
        rule = copy.deepcopy(by_kind(default, "PrometheusRule"))
        rule["spec"]["groups"][0]["rules"][0]["for"] = "ten minutes"
        for d in (monitor, rule):
            try:
                jsonschema.validate(d, CRD_SCHEMAS[d["kind"]])
            except jsonschema.ValidationError:
                continue
            raise AssertionError(f"{d['kind']} with a bad field passed")

    @check("PrometheusRule objects carry rules.yaml unchanged")
    def _():
        want = rules_spec()
        assert by_kind(default, "PrometheusRule")["spec"] == want, "the default chart changed rules.yaml"
        assert static["prometheusrule.yaml"][0]["spec"] == want, \
            "deploy/kubernetes/prometheusrule.yaml is out of date: its spec must equal deploy/prometheus/rules.yaml"

    @check("every alert has severity, for, summary, description and a runbook anchor that exists")
    def _():
        anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
                   for h in re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), re.M)}
        alerts = [r for g in rules_spec()["groups"] for r in g["rules"] if "alert" in r]
        assert len(alerts) >= 8
        for r in alerts:
            assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
            assert "for" in r, r["alert"]
            assert {"summary", "description", "runbook_url"} <= set(r["annotations"]), r["alert"]
            anchor = r["annotations"]["runbook_url"].split("#", 1)[1]
            assert anchor == r["alert"].lower(), f"{r['alert']}: anchor {anchor}"
            assert anchor in anchors, f"{r['alert']}: no heading '{anchor}' in RUNBOOK.md"
        assert {r["labels"]["severity"] for r in alerts} == {"warning", "critical"}

    passed, failed = results.count(True), results.count(False)
    print(f"objects: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
