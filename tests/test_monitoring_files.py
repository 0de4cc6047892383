"""The monitoring and deployment files, checked offline with the tools their servers use:
promtool (Debian's prometheus package) for the scrape config and the alert rules (syntax
and unit tests of when each alert fires), Grafana's own dashboard types (grafana-foundation-sdk,
generated from Grafana's schema) for the dashboard, the Kubernetes schemas
(kubernetes-validate) and KEDA's CRD types (cloudcoil-models-keda) for the manifests."""
from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

MONITORING = REPO / "monitoring"
PROMETHEUS_DIR = MONITORING / "prometheus"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "chronox.json"
KUBERNETES = REPO / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"
TOP_ROW = {"Symbols by status": "status", "Outbox pending": "", "Queue depth": "queue"}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_top_row() -> list[tuple[str, str, str]]:
    """(title, PromQL, the label telling its series apart) of the top row's panels, the
    figures `chronox status` prints."""
    row = [p for p in dashboard()["panels"] if p["type"] != "row" and p["gridPos"]["y"] == 0]
    assert [p["title"] for p in row] == list(TOP_ROW)
    return [(p["title"], p["targets"][0]["expr"], TOP_ROW[p["title"]]) for p in row]


def promtool(*args: str, cwd: Path = REPO) -> str:
    binary = shutil.which("promtool")
    assert binary, "promtool is not installed: scripts/test.sh installs Debian's prometheus package"
    result = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


# -- Prometheus --------------------------------------------------------------------------

def test_alert_rules_pass_promtool_and_each_alert_fires_when_it_should():
    assert "SUCCESS: 7 rules found" in promtool("check", "rules", str(PROMETHEUS_DIR / "alerts.yml"))
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml", cwd=PROMETHEUS_DIR)
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"][0]["rules"]
    tested = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
    fired = {case["alertname"] for test in tested for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert fired == {rule["alert"] for rule in rules}  # every alert has a case where it fires


def test_promtool_rejects_a_broken_rule(tmp_path):
    broken = tmp_path / "alerts.yml"
    broken.write_text((PROMETHEUS_DIR / "alerts.yml").read_text().replace("max(market_data_outbox_pending) > 0",
                                                                          "max(market_data_outbox_pending > 0"))
    result = subprocess.run([shutil.which("promtool") or "promtool", "check", "rules", str(broken)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "parse error" in (result.stdout + result.stderr)


def test_the_scrape_config_covers_every_process_flower_and_redis():
    promtool("check", "config", "--syntax-only", str(PROMETHEUS_DIR / "prometheus.yml"))
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"chronox-worker", "chronox-beat", "chronox-stream", "chronox-flower", "redis"}
    assert jobs["chronox-worker"]["dns_sd_configs"][0]["names"] == ["worker"]  # every scaled replica
    assert jobs["chronox-beat"]["static_configs"][0]["targets"] == ["beat:8000"]
    assert jobs["chronox-stream"]["static_configs"][0]["targets"] == ["stream:8000"]
    assert jobs["chronox-flower"]["basic_auth"]["password_file"]  # never a literal password
    assert jobs["redis"]["static_configs"][0]["targets"] == ["redis-exporter:9121"]
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]


def exported_metric_names() -> set[str]:
    """Every series name chronox.metrics can export, and Prometheus's own `up`."""
    from prometheus_client import CollectorRegistry

    from chronox.metrics import _Metrics

    names = {"up"}
    for collector in vars(_Metrics(CollectorRegistry())).values():
        for family in collector.describe():
            names.add(family.name)
            names.update(family.name + suffix for suffix in ("_total", "_bucket", "_sum", "_count"))
    return names


def all_queries() -> dict[str, str]:
    """Every PromQL of the dashboard's panels and the alert rules, by where it is."""
    queries = {f"panel {p['title']} {t['refId']}": t["expr"]
               for p in dashboard()["panels"] for t in p.get("targets", [])}
    for rule in yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"][0]["rules"]:
        queries[f"alert {rule['alert']}"] = rule["expr"]
    return queries


def test_every_query_parses_and_names_only_metrics_chronox_exports(tmp_path):
    queries = all_queries()
    exported = exported_metric_names()
    for where, expr in queries.items():
        used = set(re.findall(r"\b((?:market_data|service)_[a-z_]+|up)\b", expr))
        assert used and used <= exported, (where, used - exported)
    # promtool parses each query as a recording rule ($__rate_interval is Grafana's).
    rules = {"groups": [{"name": "queries", "rules": [
        {"record": f"chronox:query_{i}", "expr": expr.replace("$__rate_interval", "1m")}
        for i, expr in enumerate(queries.values())]}]}
    (tmp_path / "queries.yml").write_text(yaml.safe_dump(rules))
    assert f"SUCCESS: {len(queries)} rules found" in promtool("check", "rules", str(tmp_path / "queries.yml"))


# -- Grafana -----------------------------------------------------------------------------

def grafana_round_trip(data: dict[str, Any]) -> list[str]:
    """What Grafana's dashboard types (panels, Prometheus queries and panel options
    included) do not know in `data`: keys dropped or values changed by a load and dump."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()
    again = json.loads(JSONEncoder(sort_keys=True).encode(Dashboard.from_json(data)))
    problems: list[str] = []

    def compare(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict):
            for key, item in a.items():
                if not isinstance(b, dict) or key not in b:
                    problems.append(f"{path}/{key}: not in Grafana's dashboard schema")
                else:
                    compare(item, b[key], f"{path}/{key}")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                compare(x, y, f"{path}[{i}]")
        elif a != b:
            problems.append(f"{path}: {a!r} became {b!r}")

    compare(data, again, "")
    return problems


def test_the_dashboard_is_grafana_dashboard_json():
    data = dashboard()
    assert grafana_round_trip(data) == []
    misspelt = copy.deepcopy(data)
    misspelt["panels"][0]["options"]["textMod"] = "value"
    misspelt["panels"][4]["targets"][0]["legendFormt"] = "{{source}}"
    assert grafana_round_trip(misspelt) == ["/panels[0]/options/textMod: not in Grafana's dashboard schema",
                                            "/panels[4]/targets[0]/legendFormt: not in Grafana's dashboard schema"]


def test_the_dashboard_has_the_panels_operators_need():
    data = dashboard()
    assert (data["uid"], data["title"]) == ("chronox", "ChronoX")
    titles = {p["title"] for p in data["panels"]}
    assert {"Bars/s by source and market", "Errors by phase", "Provider requests and 429s", "Rate-limit wait",
            "Stream lag", "Stream backlog", "Queue depth per queue", "Outbox pending", "Symbols by status",
            "Phase durations (p50, p95)"} <= titles
    assert [title for title, _, _ in dashboard_top_row()] == list(TOP_ROW)
    datasource = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    [source] = datasource["datasources"]
    assert (source["type"], source["url"]) == ("prometheus", "http://prometheus:9090")
    for panel in data["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel["title"]
    # Panels do not overlap on Grafana's 24-column grid.
    cells: set[tuple[int, int]] = set()
    for panel in data["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not area & cells, panel["title"]
        cells |= area


# -- Kubernetes --------------------------------------------------------------------------

def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def test_the_manifests_validate_against_the_kubernetes_schemas():
    from kubernetes_validate.utils import ValidationError, validate

    docs = manifests()
    assert set(docs) == {("ConfigMap", "chronox-config"), ("Job", "chronox-migrate"),
                         ("Deployment", "chronox-worker"), ("Deployment", "chronox-beat"),
                         ("Deployment", "chronox-stream"), ("Deployment", "chronox-flower"),
                         ("Service", "chronox-flower"), ("ScaledObject", "chronox-worker")}
    for (kind, _name), doc in docs.items():
        if kind != "ScaledObject":
            validate(doc, KUBERNETES_VERSION, strict=True)
    wrong = copy.deepcopy(docs[("Deployment", "chronox-worker")])
    wrong["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/healthz"
    with pytest.raises(ValidationError):
        validate(wrong, KUBERNETES_VERSION, strict=True)


def test_the_scaled_object_is_a_valid_keda_object_scaling_the_workers_on_every_queue():
    from cloudcoil.models.keda.v1alpha1 import ScaledObject

    from chronox.tasks.config import QUEUES

    doc = manifests()[("ScaledObject", "chronox-worker")]
    # KEDA's CRD types keep every field they know: a round trip drops nothing we wrote.
    assert ScaledObject.model_validate(doc).model_dump(by_alias=True, exclude_none=True, mode="json") == doc
    spec = doc["spec"]
    assert spec["scaleTargetRef"]["name"] == "chronox-worker"
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    assert {t["type"] for t in spec["triggers"]} == {"redis"}
    assert sorted(t["metadata"]["listName"] for t in spec["triggers"]) == sorted(QUEUES)
    broker = manifests()[("ConfigMap", "chronox-config")]["data"]["CHRONOX_BROKER_URL"]
    for trigger in spec["triggers"]:
        address, database = trigger["metadata"]["address"], trigger["metadata"]["databaseIndex"]
        assert broker == f"redis://{address}/{database}"


def test_probes_grace_periods_and_replicas():
    from chronox.settings import ENVIRONMENT, Settings
    from chronox.tasks.config import celery_config

    docs = manifests()
    limits = celery_config(Settings())
    for name in ("chronox-worker", "chronox-beat", "chronox-stream"):
        pod = docs[("Deployment", name)]["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}, name
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}, name
        assert container["ports"] == [{"name": "metrics", "containerPort": 8000, "protocol": "TCP"}], name
    worker = docs[("Deployment", "chronox-worker")]["spec"]["template"]["spec"]
    command = worker["containers"][0]["command"]
    assert sorted(command[command.index("-Q") + 1].split(",")) == sorted(limits["task_queues"][i].name
                                                                       for i in range(len(limits["task_queues"])))
    # A running task may finish (or hit its own hard limit) before SIGKILL.
    assert worker["terminationGracePeriodSeconds"] > limits["task_time_limit"] > limits["task_soft_time_limit"]
    for name in ("chronox-beat", "chronox-stream"):
        spec = docs[("Deployment", name)]["spec"]
        assert (spec["replicas"], spec["strategy"]) == (1, {"type": "Recreate"}), name
    job = docs[("Job", "chronox-migrate")]["spec"]["template"]["spec"]
    assert job["containers"][0]["command"] == ["chronox", "db", "upgrade"]
    known = {v.name for v in ENVIRONMENT}
    assert set(docs[("ConfigMap", "chronox-config")]["data"]) <= known
