"""configs/grafana and configs/kuberay: they parse, are up to date with their generators, and
query or carry only what rayfin exports and configures."""
import json
import re
from pathlib import Path

import pytest
import yaml

from placement.topology import Topology, island_resource, pool_resource
from rayfin import kuberay
from rayfin.config import load_config
from rayfin.telemetry import grafana
from rayfin.telemetry.metrics import METRICS, prometheus_names

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "configs" / "grafana" / "rayfin-dashboard.json"
KUBERAY = ROOT / "configs" / "kuberay"
OTLP = "http://otel-collector.observability:4318/v1/traces"
_DECL = re.compile(r"""(?:Gauge|Counter|Histogram|_gauge|_counter|_histogram)\(\s*["'](rayfin_[a-z0-9_]+)["']""")


def other_exported_names() -> set[str]:
    """Metrics declared outside rayfin.telemetry (the autoscaler seam beside the controller, forecaster, serve apps), read from
    their source: ray.util.metrics names, as Prometheus sees them."""
    names: set[str] = set()
    for folder in ("rayfin/controller", "rayfin/autoscale", "rayfin/forecast", "serve_apps"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            for m in _DECL.finditer(text):
                kind = text[m.start():m.start() + 12]
                base = "ray_" + m.group(1)
                if "Counter" in kind or "_counter" in kind:
                    names |= {base, base + "_total"}
                elif "Histogram" in kind or "_histogram" in kind:
                    names |= {base + "_bucket", base + "_sum", base + "_count"}
                else:
                    names.add(base)
    return names


def exported() -> set[str]:
    return prometheus_names(METRICS) | other_exported_names()


def exprs(dashboard):
    for p in dashboard["panels"]:
        for t in p.get("targets", []):
            yield p["title"], t["expr"]
    for v in dashboard["templating"]["list"]:
        q = v.get("query")
        if isinstance(q, dict):
            yield "variable " + v["name"], q["query"]


@pytest.fixture(scope="module")
def dashboard():
    return json.loads(DASHBOARD.read_text())


def test_dashboard_is_the_generated_one(dashboard):
    assert DASHBOARD.read_text() == grafana.render(), \
        "regenerate: python -m rayfin.telemetry.grafana > configs/grafana/rayfin-dashboard.json"


def test_dashboard_shape(dashboard):
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["desk"]["multi"] and variables["desk"]["includeAll"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"]
    assert any(p.get("repeat") == "desk" for p in dashboard["panels"]), "a panel per desk"


def test_every_queried_metric_is_one_rayfin_exports(dashboard):
    known = exported()
    unknown = {(title, name) for title, expr in exprs(dashboard)
               for name in re.findall(r"\bray_[a-zA-Z0-9_]+", expr) if name not in known}
    assert not unknown, f"dashboard queries metrics nobody exports: {sorted(unknown)}"


def test_dashboard_covers_what_the_issue_asks(dashboard):
    queried = {name for _, expr in exprs(dashboard) for name in re.findall(r"\bray_[a-zA-Z0-9_]+", expr)}
    for needed in ("ray_rayfin_gpus_nominal", "ray_rayfin_gpus_in_use", "ray_rayfin_gpus_borrowed",
                   "ray_rayfin_gpus_lent", "ray_rayfin_queue_depth", "ray_rayfin_queue_oldest_wait_seconds",
                   "ray_rayfin_admissions_total", "ray_rayfin_refusals_total", "ray_rayfin_preemptions_total",
                   "ray_rayfin_job_duration_seconds_bucket", "ray_rayfin_serve_requests_total",
                   "ray_rayfin_controller_cycle_ms_bucket"):
        assert needed in queried, needed
    assert any("forecast" in n for n in queried) and any("request_rate" in n for n in queried)


def test_histogram_quantiles_group_by_le(dashboard):
    for title, expr in exprs(dashboard):
        if "histogram_quantile" in expr:
            assert "_bucket" in expr and re.search(r"by \(le\b", expr), title


# ------------------------------------------------------------------------------------ KubeRay
def _docs():
    return {name: yaml.safe_load((KUBERAY / name).read_text()) for name in ("raycluster.yaml", "rayservice.yaml")}


def _resources(param: str) -> dict:
    return json.loads(param.strip('"').replace('\\"', '"'))


def test_kuberay_manifests_are_the_generated_ones(tmp_path):
    kuberay.write(str(ROOT / "configs" / "local.yaml"), str(tmp_path), otlp_endpoint=OTLP)
    for name in ("raycluster.yaml", "rayservice.yaml"):
        body = lambda p: p.read_text().split("\n", 1)[1]  # noqa: E731 - the first line names the command
        assert body(tmp_path / name) == body(KUBERAY / name), \
            f"regenerate: python -m rayfin.kuberay configs/local.yaml configs/kuberay/ --otlp-endpoint {OTLP}"


def test_worker_groups_match_the_config_islands():
    cfg = load_config(ROOT / "configs" / "local.yaml")
    islands = {i.id: i for i in Topology.from_config(cfg.cluster).islands}
    rc = _docs()["raycluster.yaml"]
    assert (rc["apiVersion"], rc["kind"]) == ("ray.io/v1", "RayCluster")
    groups = rc["spec"]["workerGroupSpecs"]
    assert sorted(g["groupName"] for g in groups) == sorted(islands)              # one pod per NVLink island
    for g in groups:
        isl = islands[g["groupName"]]
        params = g["rayStartParams"]
        assert g["replicas"] == g["minReplicas"] == g["maxReplicas"] == 1
        assert int(params["num-gpus"]) == isl.gpus
        assert _resources(params["resources"]) == {island_resource(isl.id): isl.gpus, pool_resource(isl.pool): isl.gpus}
        ray_labels = dict(kv.split("=", 1) for kv in params["labels"].split(","))
        pod_labels = g["template"]["metadata"]["labels"]
        for labels in (ray_labels, pod_labels):
            assert labels["rayfin.io/pool"] == isl.pool and labels["rayfin.io/island"] == isl.id
            assert labels["rayfin.io/node"] == isl.node and labels["rayfin.io/rack"] == isl.rack
        (container,) = g["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == isl.gpus
        assert g["template"]["spec"]["nodeSelector"]["rayfin.io/node"] == isl.node
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["RAY_AUTH_MODE"] == "token" and env["OTEL_TRACES_EXPORTER"] == "otlp"
        assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"                 # serve.ingress: haproxy (the default)
        assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"            # and Ray's high-throughput mode with it
    # every desk's pools have worker groups
    pools = {islands[g["groupName"]].pool for g in groups}
    assert all(set(d.pools) <= pools for d in cfg.desks)
    head = rc["spec"]["headGroupSpec"]["rayStartParams"]
    assert head["num-gpus"] == "0" and head["tracing-startup-hook"] == "rayfin.telemetry.tracing:setup_tracing"
    assert head["metrics-export-port"] == "8080"


def test_rayservice_runs_every_configured_model_and_the_gateway():
    cfg = load_config(ROOT / "configs" / "local.yaml")
    docs = _docs()
    rs = docs["rayservice.yaml"]
    assert (rs["apiVersion"], rs["kind"]) == ("ray.io/v1", "RayService")
    serve_cfg = yaml.safe_load(rs["spec"]["serveConfigV2"])
    apps = {a["name"]: a for a in serve_cfg["applications"]}
    assert set(apps) == {"gateway", "rayfin-api"} | {f"model-{m.name}" for m in cfg.serve.models}
    assert apps["gateway"]["route_prefix"] == "/"
    # the same cluster; a RayService leaves the GCS storage namespace to KubeRay (see gcs_fault_tolerance)
    cluster = dict(docs["raycluster.yaml"]["spec"])
    cluster["gcsFaultToleranceOptions"] = {k: v for k, v in cluster["gcsFaultToleranceOptions"].items()
                                           if k != "externalStorageNamespace"}
    assert rs["spec"]["rayClusterConfig"] == cluster
    assert apps["rayfin-api"]["route_prefix"] == "/api"
    assert apps["rayfin-api"]["import_path"] == "serve_apps.api_app:rayservice_api_app"


def test_head_pod_runs_the_controller_supervisor():
    head = _docs()["raycluster.yaml"]["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    (sup,) = [c for c in head if c["name"] == "rayfin-supervisor"]
    assert sup["command"][:2] == ["rayfin", "supervise"] and "127.0.0.1:6379" in sup["command"]


def test_generator_follows_a_different_config(tmp_path):
    cfg = load_config(ROOT / "configs" / "test.yaml")
    rc = kuberay.raycluster(cfg)
    assert [g["groupName"] for g in rc["spec"]["workerGroupSpecs"]] == ["n0-i0", "n0-i1", "n1-i0", "n1-i1"]
    assert "tracing-startup-hook" not in rc["spec"]["headGroupSpec"]["rayStartParams"]   # exporter none


def test_docs_list_every_metric():
    doc = (ROOT / "docs" / "observability.md").read_text()
    missing = [s.prometheus_names()[0] for s in METRICS.values() if s.prometheus_names()[0] not in doc]
    assert not missing, f"docs/observability.md does not list {missing}"
