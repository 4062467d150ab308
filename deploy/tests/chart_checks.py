"""objects.py's checks of the chart's values: each documented and set by some
variant (variants.py), each reaching the objects; the Prometheus Operator's
objects only where its API is served; monitors that never let the agent pod's
own labels reach a series; runbook links; the sidecar dashboards; NOTES.txt.
"""

import json
import pathlib
import re

import helm_python as helm
import yaml

from variants import DIGEST, NONE, OPERATOR, RUNBOOK_PLACEHOLDER, VARIANTS, value_paths

DEPLOY = pathlib.Path(__file__).resolve().parent.parent
CHART = DEPLOY / "helm" / "gostray"
README = DEPLOY / "README.md"
GRAFANA = DEPLOY / "grafana"
OPERATOR_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
# Labels the agent puts on a watched process's series, which the agent pod's
# target labels must never fill in.
PROCESS_LABELS = ("namespace", "pod", "container")


def of_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind):
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def endpoints(monitor):
    return monitor["spec"].get("endpoints") or monitor["spec"]["podMetricsEndpoints"]


def runbook_urls(rule):
    return {r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}


def run(check, rendered, static, render, notes):
    default = rendered.get("default", [])
    everything = rendered.get("everything", [])

    @check("Prometheus Operator objects only where monitoring.coreos.com/v1 is served")
    def _():
        assert not OPERATOR_KINDS & {d["kind"] for d in rendered["no-operator"]}
        assert {"ServiceMonitor", "PrometheusRule"} <= {d["kind"] for d in default}
        assert "No Prometheus Operator (monitoring.coreos.com/v1) found" in notes({}, NONE)
        assert "No Prometheus Operator" not in notes({}, OPERATOR)

    @check("every value of values.yaml is set by some variant and documented in deploy/README.md")
    def _():
        defaults = yaml.safe_load((CHART / "values.yaml").read_text())
        documented = value_paths(defaults)
        set_somewhere = set().union(*(value_paths(v) for v, _ in VARIANTS.values()))
        assert not documented - set_somewhere, f"never set: {sorted(documented - set_somewhere)}"
        assert not set_somewhere - documented, f"set but not in values.yaml: {sorted(set_somewhere - documented)}"
        readme = README.read_text()
        missing = sorted(p for p in documented if f"`{p}`" not in readme)
        assert not missing, f"not in deploy/README.md's value table: {missing}"

    @check("every value reaches the objects (variant 'everything')")
    def _():
        values = VARIANTS["everything"][0]
        ds = one(everything, "DaemonSet")
        pod = ds["spec"]["template"]
        spec = pod["spec"]
        c = spec["containers"][0]
        assert ds["metadata"]["name"] == "gostray-agent"
        assert {d["metadata"].get("namespace") for d in everything} == {"observability", "grafana"}
        assert ds["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "stray"
        assert c["image"] == f"registry.example/gostray@{DIGEST}" and c["imagePullPolicy"] == "Always"
        assert spec["imagePullSecrets"] == [{"name": "regcred"}]
        ctx = c["securityContext"]
        assert ctx["seccompProfile"]["type"] == "Unconfined" and ctx["appArmorProfile"]["type"] == "RuntimeDefault"
        assert c["args"][-2:] == ["--max-processes", "64"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["GOSTRAY_MAX_SERIES"] == "2000" and env["GOSTRAY_LOG_FORMAT"] == "text"
        assert env["GOSTRAY_LISTEN"] == "0.0.0.0:9982" and c["ports"][0]["containerPort"] == 9982
        # Helm merges maps with the defaults: what was set, over them.
        assert c["livenessProbe"]["periodSeconds"] == 20 and c["readinessProbe"]["periodSeconds"] == 7
        assert c["resources"]["requests"] == values["resources"]["requests"]
        assert c["resources"]["limits"]["memory"] == "256Mi"
        assert ds["spec"]["updateStrategy"] == values["updateStrategy"]
        assert spec["tolerations"] == values["tolerations"] and spec["nodeSelector"] == values["nodeSelector"]
        assert spec["affinity"] == values["affinity"], "a nodeAffinity of the user's replaces the architectures'"
        assert spec["priorityClassName"] == "system-node-critical"
        assert spec["terminationGracePeriodSeconds"] == 30
        assert pod["metadata"]["labels"]["cost-centre"] == "platform"
        assert pod["metadata"]["annotations"] == values["podAnnotations"]
        assert {"name": "ca", "configMap": {"name": "ca-bundle"}} in spec["volumes"]
        assert values["extraVolumeMounts"][0] in c["volumeMounts"]
        sa = one(everything, "ServiceAccount")
        assert sa["metadata"]["name"] == spec["serviceAccountName"] == "gostray-sa"
        assert sa["metadata"]["annotations"] == {"iam.example/role": "gostray"}
        assert not of_kind(everything, "ClusterRole") and not of_kind(everything, "ServiceMonitor")
        monitor = one(everything, "PodMonitor")
        assert monitor["metadata"]["labels"]["release"] == "kps"
        ep = endpoints(monitor)[0]
        assert (ep["interval"], ep["scrapeTimeout"]) == ("15s", "5s")
        assert ep["relabelings"][-1] == values["podMonitor"]["relabelings"][0]
        assert ep["metricRelabelings"] == values["podMonitor"]["metricRelabelings"]
        assert one(everything, "PrometheusRule")["metadata"]["labels"]["release"] == "kps"
        tuned = one(rendered["tuned"], "ServiceMonitor")
        assert endpoints(tuned)[0]["metricRelabelings"] == VARIANTS["tuned"][0]["serviceMonitor"]["metricRelabelings"]
        assert endpoints(tuned)[0]["interval"] == "15s"
        bare = rendered["bare"]
        assert not of_kind(bare, "ServiceAccount")
        assert one(bare, "DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"] == "existing"

    @check("Linux nodes of the image's architectures only (nodeSelector, arch affinity)")
    def _():
        for docs, archs in ((default, ["amd64", "arm64"]), (rendered["tuned"], ["arm64"])):
            spec = one(docs, "DaemonSet")["spec"]["template"]["spec"]
            assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
            term = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            assert term["nodeSelectorTerms"] == [{"matchExpressions": [
                {"key": "kubernetes.io/arch", "operator": "In", "values": archs}]}]
        assert "priorityClassName" not in one(default, "DaemonSet")["spec"]["template"]["spec"]

    @check("monitors keep the agent pod's namespace/pod/container off every series")
    def _():
        monitors = [(f"chart-{v}", d) for v, docs in rendered.items() for d in docs] + \
                   [(name, d) for name, docs in static.items() for d in docs]
        monitors = [(w, d) for w, d in monitors if d["kind"] in ("ServiceMonitor", "PodMonitor")]
        assert len(monitors) >= 6, len(monitors)
        chart_relabelings = endpoints(one(default, "ServiceMonitor"))[0]["relabelings"]
        for where, m in monitors:
            for ep in endpoints(m):
                assert ep["honorLabels"] is True, where
                drops = [r["regex"] for r in ep["relabelings"] if r.get("action") == "labeldrop"]
                for label in PROCESS_LABELS:
                    assert any(re.fullmatch(rx, label) for rx in drops), f"{where}: {label} not dropped"
                moved = {r.get("targetLabel"): r.get("sourceLabels") for r in ep["relabelings"]}
                assert moved["agent_pod"] == ["__meta_kubernetes_pod_name"], where
                assert moved["agent_namespace"] == ["__meta_kubernetes_namespace"], where
                assert ep["relabelings"][:len(chart_relabelings)] == chart_relabelings, \
                    f"{where}: relabelings differ from the chart's"

    @check("runbook_url absolute: the value's base when set, a documented placeholder otherwise")
    def _():
        assert runbook_urls(one(default, "PrometheusRule")) == \
            {u for u in runbook_urls(one(default, "PrometheusRule")) if u.startswith(RUNBOOK_PLACEHOLDER + "#")}
        for variant, base in (("tuned", "https://wiki.example/gostray#"), ("everything", "https://wiki.example/gostray#")):
            urls = runbook_urls(one(rendered[variant], "PrometheusRule"))
            assert urls and all(u.startswith(base) for u in urls), urls
        assert "prometheusRule.runbookUrl is not set" in notes({})
        assert "runbookUrl" not in notes({}, NONE), "no PrometheusRule without the operator"
        assert "https://wiki.example/gostray#<alert>" in notes(VARIANTS["tuned"][0])
        assert "is not set" not in notes(VARIANTS["tuned"][0])

    @check("NOTES.txt names the release label kube-prometheus-stack selects by, and the priority class")
    def _():
        text = notes({})
        assert "serviceMonitor.labels: none" in text and "prometheusRule.labels: none" in text, text
        assert "labels.release=" in text and "No priorityClassName" in text
        text = notes(VARIANTS["everything"][0])
        assert 'podMonitor.labels: {"release":"kps"}' in text, text
        assert "No priorityClassName" not in text

    @check("dashboards: off by default; on, ConfigMaps for Grafana's sidecar carrying each dashboard unchanged")
    def _():
        assert not of_kind(default, "ConfigMap")
        maps = of_kind(everything, "ConfigMap")
        files = sorted(p.name for p in GRAFANA.glob("*.json"))
        assert sorted(k for m in maps for k in m["data"]) == files
        for m in maps:
            assert m["metadata"]["labels"]["grafana_dashboard"] == "1"
            assert m["metadata"]["annotations"] == {"grafana_folder": "gostray"}
            for name, text in m["data"].items():
                assert json.loads(text) == json.loads((GRAFANA / name).read_text()), name

    @check("a ServiceMonitor and a PodMonitor at once are refused")
    def _():
        try:
            render({"podMonitor": {"enabled": True}})
        except helm.HelmError as e:
            assert "choose one" in str(e), e
            return
        raise AssertionError("rendered both")
