"""The Helm chart: lint, render with several value sets (each checked against the schema and,
on the local control plane, by a server-side dry run), RBAC rendered from the operator's own
rules, secure pods everywhere, and the optional parts rendered only when asked for."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.cluster import Cluster
from shoal import metric_names
from shoal.operator import rbac, resources
from shoal.operator.autoscaler import settings as autoscaler_settings
from shoal.operator.autoscaler.discovery import GatewayTargets
from shoal.operator.settings import DEFAULT_IMAGE, OperatorSettings
from tests.install import chart
from tests.install.chart import VALUE_SETS, by_kind, documents, template, values_file

POD_KINDS = {"Deployment"}


def rendered(tmp_path: Path, name: str, ns: str = "shoal") -> list[dict[str, Any]]:
    return documents(template("-f", str(values_file(tmp_path, name, ns)), namespace=ns))


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_passes_with_each_value_set(name: str, tmp_path: Path) -> None:
    out = chart.helm(
        "lint", "--strict", str(chart.CHART), "-f", str(values_file(tmp_path, name, "x"))
    )
    assert "0 chart(s) failed" in out


def test_the_chart_version_image_and_uid_are_the_operators() -> None:
    meta = yaml.safe_load((chart.CHART / "Chart.yaml").read_text())
    pyproject = (chart.ROOT / "pyproject.toml").read_text()
    assert f'version = "{meta["appVersion"]}"' in pyproject
    values = yaml.safe_load((chart.CHART / "values.yaml").read_text())
    assert f"{values['image']['repository']}:{meta['appVersion']}" == DEFAULT_IMAGE
    assert values["operator"]["runAsUser"] == OperatorSettings().run_as_user
    assert values["securityContext"]["runAsUser"] == OperatorSettings().run_as_user


def test_rbac_rules_file_is_generated_from_the_operators_rules() -> None:
    out = subprocess.run(
        [sys.executable, str(chart.ROOT / "scripts" / "chart-rbac"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr


def _grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """A rule list as the set of (group, resource, verb, name) it allows: equal sets are equal
    permissions, however the rules are grouped."""
    return {
        (g, r, v, n)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
        for n in rule.get("resourceNames") or ["*"]
    }


def _operators_cluster_rules() -> list[dict[str, Any]]:
    (role,) = [d for d in rbac.manifests() if d["kind"] == "ClusterRole"]
    rules: list[dict[str, Any]] = role["rules"]
    return rules


CLUSTER_SCOPED = {"clusterkopfpeerings"}


def test_cluster_scope_grants_exactly_the_operators_rules(tmp_path: Path) -> None:
    docs = rendered(tmp_path, "defaults")
    (role,) = by_kind(docs, "ClusterRole")
    assert _grants(role["rules"]) == _grants(_operators_cluster_rules())
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    (sa,) = [
        d for d in by_kind(docs, "ServiceAccount") if d["metadata"]["name"].endswith("operator")
    ]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "shoal"}
    ]
    assert by_kind(docs, "ClusterKopfPeering")
    op = _deployment(docs, "operator")
    env = {
        e["name"]: e.get("value") for e in op["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert "SHOAL_OPERATOR_NAMESPACES" not in env


def test_namespaced_scope_is_a_role_per_watched_namespace_without_cluster_rules(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v.yaml"
    path.write_text(
        yaml.safe_dump({"operator": {"scope": "namespaced", "watchNamespaces": ["a", "b"]}})
    )
    docs = documents(template("-f", str(path)))
    assert not by_kind(docs, "ClusterRole")
    assert not by_kind(docs, "ClusterRoleBinding")
    assert not by_kind(docs, "ClusterKopfPeering")
    roles = [d for d in by_kind(docs, "Role") if d["metadata"]["name"].endswith("operator")]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["a", "b"]
    expected = {g for g in _grants(_operators_cluster_rules()) if g[1] not in CLUSTER_SCOPED}
    assert all(_grants(r["rules"]) == expected for r in roles)
    assert sorted(p["metadata"]["namespace"] for p in by_kind(docs, "KopfPeering")) == ["a", "b"]
    op = _deployment(docs, "operator")
    env = {
        e["name"]: e.get("value") for e in op["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["SHOAL_OPERATOR_NAMESPACES"] == "a,b"


def _deployment(docs: list[dict[str, Any]], part: str) -> dict[str, Any]:
    (d,) = [x for x in by_kind(docs, "Deployment") if x["metadata"]["name"].endswith(part)]
    return d


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_pod_is_non_root_read_only_and_without_privileges(name: str, tmp_path: Path) -> None:
    docs = rendered(tmp_path, name)
    pods = [d for d in docs if d["kind"] in POD_KINDS]
    assert len(pods) == 2
    for d in pods:
        spec = d["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["runAsUser"] == OperatorSettings().run_as_user
            assert c["resources"]["limits"]
            assert c["resources"]["requests"]
            assert c["livenessProbe"]
            assert c["readinessProbe"]


def test_gateway_reads_its_tokens_secret_by_name_only(tmp_path: Path) -> None:
    docs = rendered(tmp_path, "everything")
    (secret,) = by_kind(docs, "Secret")
    import base64

    tokens = yaml.safe_load(base64.b64decode(secret["data"]["tokens"]))
    assert tokens == {"tokens": {"t0ken-for-iris": ["iris"], "t0ken-for-all": "*"}}
    (role,) = [d for d in by_kind(docs, "Role") if d["metadata"]["name"].endswith("gateway")]
    secrets_rule = [r for r in role["rules"] if "secrets" in r["resources"]]
    assert secrets_rule == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": [secret["metadata"]["name"]],
            "verbs": ["list", "watch"],
        }
    ]
    args = _deployment(docs, "gateway")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--tokens-secret={secret['metadata']['name']}" in args


@pytest.mark.parametrize("name", ["defaults", "everything"])
def test_the_operator_runs_the_image_entrypoint_without_a_shell(name: str, tmp_path: Path) -> None:
    """No /bin/sh wrapper: the image's `shoal` entrypoint gets the arguments, and the peering
    priority comes from the operator itself (oldest highest), not from a shell's arithmetic."""
    docs = rendered(tmp_path, name)
    (c,) = _deployment(docs, "operator")["spec"]["template"]["spec"]["containers"]
    assert "command" not in c
    assert c["args"][:2] == ["operator", "--peering"]
    assert c["args"][2] == "shoal-operator-shoal"  # cluster scope: the release namespace added
    assert not any("priority" in a or "$" in a for a in c["args"])


def test_without_tokens_one_random_token_is_made(tmp_path: Path) -> None:
    import base64

    (secret,) = by_kind(rendered(tmp_path, "defaults"), "Secret")
    tokens = yaml.safe_load(base64.b64decode(secret["data"]["tokens"]))["tokens"]
    ((token, models),) = tokens.items()
    assert models == "*"
    assert re.fullmatch(r"[A-Za-z0-9]{40}", token)


def test_ingress_takes_class_host_tls_and_annotations(tmp_path: Path) -> None:
    (ing,) = by_kind(rendered(tmp_path, "everything"), "Ingress")
    assert ing["spec"]["ingressClassName"] == "traefik"
    assert ing["spec"]["tls"] == [{"secretName": "models-tls", "hosts": ["models.example.com"]}]
    assert ing["metadata"]["annotations"] == VALUE_SETS["everything"]["ingress"]["annotations"]
    (rule,) = ing["spec"]["rules"]
    assert rule["host"] == "models.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "shoal-gateway", "port": {"name": "http"}}


def test_optional_parts_render_only_when_enabled(tmp_path: Path) -> None:
    plain = {d["kind"] for d in rendered(tmp_path, "defaults")}
    rich = {d["kind"] for d in rendered(tmp_path, "everything")}
    assert {"HorizontalPodAutoscaler", "NetworkPolicy", "ConfigMap"} <= rich - plain
    assert "ServiceMonitor" not in rich
    off = {d["kind"] for d in rendered(tmp_path, "no-auth-no-ingress")}
    assert {"Ingress", "Secret", "PodDisruptionBudget"}.isdisjoint(off)


def test_service_monitor_needs_the_prometheus_operator_api(tmp_path: Path) -> None:
    path = tmp_path / "v.yaml"
    path.write_text(
        yaml.safe_dump({"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}})
    )
    assert not by_kind(documents(template("-f", str(path))), "ServiceMonitor")
    api = "monitoring.coreos.com/v1/ServiceMonitor"
    monitors = by_kind(
        documents(template("-f", str(path), "--api-versions", api)), "ServiceMonitor"
    )
    assert len(monitors) == 2
    assert all(m["metadata"]["labels"]["release"] == "prom" for m in monitors)


def _env(deployment: dict[str, Any]) -> dict[str, str]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in c.get("env") or []}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_the_autoscaler_discovers_every_gateway_through_a_headless_service(
    name: str, tmp_path: Path
) -> None:
    """The gateway serves /metrics without a token on its `metrics` port; a headless Service
    for that port resolves to every ready gateway pod, and the operator's autoscaler is given
    its name as a dns+ entry (so the held requests are summed over all pods, not one)."""
    docs = rendered(tmp_path, name, ns="models")
    gw = _deployment(docs, "-gateway")
    (c,) = gw["spec"]["template"]["spec"]["containers"]
    assert "--metrics-port=9090" in c["args"]
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in c["ports"]
    assert c["readinessProbe"]["httpGet"]["port"] == "metrics", "health there needs no token"
    (svc,) = [
        d for d in by_kind(docs, "Service") if d["metadata"]["name"] == "shoal-gateway-metrics"
    ]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    pod_labels = gw["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    urls = _env(_deployment(docs, "-operator"))["SHOAL_OPERATOR_AUTOSCALER_GATEWAY_METRICS_URLS"]
    assert urls == "dns+http://shoal-gateway-metrics.models.svc.cluster.local:9090/metrics"
    settings = autoscaler_settings.from_env(
        {"SHOAL_OPERATOR_AUTOSCALER_GATEWAY_METRICS_URLS": urls}
    )
    (entry,) = GatewayTargets(settings.gateway_metrics_urls).dns
    assert (entry.host, entry.port, entry.path) == (
        "shoal-gateway-metrics.models.svc.cluster.local",
        9090,
        "/metrics",
    )


def test_the_gateway_service_monitor_scrapes_the_metrics_port(tmp_path: Path) -> None:
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump({"serviceMonitor": {"enabled": True}}))
    docs = documents(
        template("-f", str(path), "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor")
    )
    (mon,) = [
        m for m in by_kind(docs, "ServiceMonitor") if m["metadata"]["name"] == "shoal-gateway"
    ]
    assert [e["port"] for e in mon["spec"]["endpoints"]] == ["metrics"]
    wanted = mon["spec"]["selector"]["matchLabels"].items()
    selected = [
        d["metadata"]["name"]
        for d in by_kind(docs, "Service")
        if wanted <= d["metadata"]["labels"].items()
    ]
    assert selected == ["shoal-gateway-metrics"], "only the Service with the tokenless port"


def test_only_the_operator_and_the_scraper_reach_the_gateways_metrics_port(
    tmp_path: Path,
) -> None:
    docs = rendered(tmp_path, "everything")
    (pol,) = [d for d in by_kind(docs, "NetworkPolicy") if d["metadata"]["name"] == "shoal-gateway"]
    rules = pol["spec"]["ingress"]
    assert {"ports": [{"port": "http", "protocol": "TCP"}]} in rules, "HTTP from anywhere"
    (metrics,) = [r for r in rules if r["ports"] == [{"port": "metrics", "protocol": "TCP"}]]
    operator = _deployment(docs, "-operator")["spec"]["template"]["metadata"]["labels"]
    (own, scraper) = metrics["from"]
    assert own["podSelector"]["matchLabels"].items() <= operator.items()
    assert own["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "shoal"}}
    assert scraper == VALUE_SETS["everything"]["networkPolicy"]["metricsFrom"][0]


def test_the_scraper_reaches_the_replicas_metrics_port_and_nothing_else(tmp_path: Path) -> None:
    """networkPolicy.metricsFrom opens the replicas' metrics port (GET /metrics only) and not
    their inference port, which stays the gateway's and the operator's; the replicas'
    ServiceMonitor scrapes that port, which the operator declares on every replica."""
    docs = rendered(tmp_path, "everything")
    (pol,) = [
        d for d in by_kind(docs, "NetworkPolicy") if d["metadata"]["name"].endswith("-replicas")
    ]
    scraper = VALUE_SETS["everything"]["networkPolicy"]["metricsFrom"][0]
    (anyport, metrics) = pol["spec"]["ingress"]
    assert "ports" not in anyport
    assert scraper not in anyport["from"]
    assert metrics == {"ports": [{"port": "metrics", "protocol": "TCP"}], "from": [scraper]}
    without = rendered(tmp_path, "namespaced")  # networkPolicy off: nothing rendered
    assert not by_kind(without, "NetworkPolicy")
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump({"serviceMonitor": {"enabled": True}}))
    monitors = documents(
        template("-f", str(path), "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor")
    )
    (mon,) = [
        m
        for m in by_kind(monitors, "ServiceMonitor")
        if m["metadata"]["name"].endswith("-replicas")
    ]
    assert [e["port"] for e in mon["spec"]["endpoints"]] == [resources.METRICS_PORT_NAME]
    owner = resources.Owner("iris", "ml", "uid-1")
    ports = resources.service(owner, OperatorSettings())["spec"]["ports"]
    assert resources.METRICS_PORT_NAME in [p["name"] for p in ports]


def test_without_metrics_from_the_replicas_take_only_the_gateway_and_operator(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump({"networkPolicy": {"enabled": True}}))
    docs = documents(template("-f", str(path)))
    (pol,) = [
        d for d in by_kind(docs, "NetworkPolicy") if d["metadata"]["name"].endswith("-replicas")
    ]
    (only,) = pol["spec"]["ingress"]
    assert len(only["from"]) == 2  # the gateway's pods and the operator's


def test_the_metrics_port_must_differ_from_the_http_port(tmp_path: Path) -> None:
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump({"gateway": {"metricsPort": 8080}}))
    out = chart.helm("template", "x", str(chart.CHART), "-f", str(path), check=False)
    assert "gateway.metricsPort must differ from gateway.containerPort" in out


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"operatr": {}}, "operatr"),
        ({"operator": {"replicas": "two"}}, "replicas"),
        ({"operator": {"scope": "galaxy"}}, "scope"),
        ({"gateway": {"auth": {"tokens": {"t": 3}}}}, "tokens"),
        ({"ingress": {"tls": {"secretName": 5}}}, "secretName"),
        ({"image": {"tag": "1", "colour": "blue"}}, "colour"),
        ({"gateway": {"metricsPort": 0}}, "metricsPort"),
        ({"networkPolicy": {"metricsFrom": "everyone"}}, "metricsFrom"),
    ],
)
def test_the_schema_refuses_unknown_keys_and_wrong_types(
    values: dict[str, Any], message: str, tmp_path: Path
) -> None:
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump(values))
    out = chart.helm("template", "x", str(chart.CHART), "-f", str(path), check=False)
    assert "values don't meet the specifications of the schema" in out
    assert message in out


def test_every_value_is_documented() -> None:
    """Each key in values.yaml has a `# --` comment block right above it."""
    lines = (chart.CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^\s*([A-Za-z][A-Za-z0-9]*):", line)
        if not m:
            continue
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#") and "# --" not in lines[j]:
            j -= 1
        if j < 0 or "# --" not in lines[j]:
            undocumented.append(m.group(1))
    assert undocumented == []


def test_the_dashboard_uses_only_shoals_metric_names() -> None:
    board = json.loads((chart.CHART / "files" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bshoal_[a-z_]+", e)}
    known = {v for k, v in vars(metric_names).items() if k.isupper() and isinstance(v, str)}
    suffixes = ("_bucket", "_sum", "_count")
    bases = {next((u[: -len(s)] for s in suffixes if u.endswith(s)), u) for u in used}
    assert bases <= known, bases - known
    assert {metric_names.QUEUE_DEPTH, metric_names.GATEWAY_HELD_REQUESTS} <= bases


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_each_value_set_passes_a_server_side_dry_run(
    name: str, k8s_cluster: Cluster, k8s_namespace: str, tmp_path: Path
) -> None:
    k8s_cluster.kubectl("apply", "--server-side", "-f", str(chart.CHART / "crds"))
    text = template("-f", str(values_file(tmp_path, name, k8s_namespace)), namespace=k8s_namespace)
    out = k8s_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=text, check=False)
    assert out.returncode == 0, f"{name}:\n{out.stderr}"
    assert len(out.stdout.strip().splitlines()) == len(documents(text))


def test_checkov_finds_nothing_beyond_the_reasoned_skips(tmp_path: Path) -> None:
    """checkov (its own venv: scripts/checkov) over every value set's manifests; the findings
    kept are in helm/checkov.yaml, each with its reason."""
    out_dir = tmp_path / "rendered"
    out_dir.mkdir()
    for name in VALUE_SETS:
        text = template("-f", str(values_file(tmp_path, name, "shoal")))
        (out_dir / f"{name}.yaml").write_text(text)
    proc = subprocess.run(
        [str(chart.ROOT / "scripts" / "checkov"), str(out_dir), "--output", "json"],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    report = json.loads(proc.stdout)
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert summary["failed"] == 0, failed
    assert summary["passed"] > 100  # it did scan the manifests
    skips = (chart.ROOT / "helm" / "checkov.yaml").read_text()
    for check in yaml.safe_load(skips)["skip-check"]:
        before = skips[: skips.index(f"- {check}")].rstrip().splitlines()[-1]
        assert before.strip().startswith("#"), f"{check} is skipped without a reason"
