"""The generated KubeRay manifests against the ray.io/v1 CRD schema subset kept in the repo
(configs/kuberay/schema/), GCS fault tolerance included; and the check has teeth."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from rayfin import kuberay
from rayfin.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def docs() -> dict[str, dict]:
    return {n: yaml.safe_load((ROOT / "configs" / "kuberay" / n).read_text())
            for n in ("raycluster.yaml", "rayservice.yaml")}


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayservice.yaml"])
def test_generated_manifests_match_the_kuberay_crd_schema(name):
    assert kuberay.validate(docs()[name]) == []


@pytest.mark.parametrize("config", ["local.yaml", "test.yaml"])
def test_every_config_generates_valid_manifests(config):
    cfg = load_config(ROOT / "configs" / config)
    assert kuberay.validate(kuberay.raycluster(cfg)) == [] and kuberay.validate(kuberay.rayservice(cfg)) == []


def test_gcs_fault_tolerance_is_on_in_redis():
    rc, rs = docs()["raycluster.yaml"], docs()["rayservice.yaml"]
    ft = rc["spec"]["gcsFaultToleranceOptions"]
    assert ft["redisAddress"] == kuberay.GCS_REDIS_ADDRESS
    assert ft["redisPassword"] == {"valueFrom": {"secretKeyRef": {"name": "rayfin-gcs-redis", "key": "password"}}}
    assert ft["externalStorageNamespace"] == "rayfin-local"         # its own keys in a shared Redis
    # a RayService's upgrade starts a new cluster: KubeRay then names the storage by cluster UID
    assert "externalStorageNamespace" not in rs["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]


def _set(doc: dict, path: str, value) -> dict:
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = doc
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    if value is _DROP:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return doc


_DROP = object()


@pytest.mark.parametrize("path, value, where", [
    ("spec.gcsFaultToleranceOptions.redisAddress", _DROP, "spec.gcsFaultToleranceOptions"),
    ("spec.gcsFaultToleranceOptions.redisPassword", {"secretKeyRef": {"name": "x", "key": "p"}},
     "spec.gcsFaultToleranceOptions.redisPassword"),                 # valueFrom forgotten
    ("spec.gcsFaultToleranceOption", {"redisAddress": "r:6379"}, "spec"),          # misspelt: pruned silently
    ("spec.headGroupSpec.rayStartParams.num-gpus", 0, "spec.headGroupSpec.rayStartParams.num-gpus"),
    ("spec.workerGroupSpecs.0.replicas", "1", "spec.workerGroupSpecs.0.replicas"),
    ("spec.workerGroupSpecs.0.minReplicas", _DROP, "spec.workerGroupSpecs.0"),
    ("spec.workerGroupSpecs.0.template.spec.containers.0.resources.limits.nvidia.com/gpu", "4 GPUs", None),
    ("spec.headGroupSpec.template.spec.containers.0.imagePullPolicy", "Sometimes",
     "spec.headGroupSpec.template.spec.containers.0.imagePullPolicy"),
    ("spec.headGroupSpec.serviceType", "Internal", "spec.headGroupSpec.serviceType"),
    ("metadata.name", "Rayfin_Local", "metadata.name"),
])
def test_schema_catches_what_kuberay_would_refuse_or_drop(path, value, where):
    doc = docs()["raycluster.yaml"]
    if path.endswith("nvidia.com/gpu"):       # a key with dots in it
        bad = copy.deepcopy(doc)
        bad["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"][
            "nvidia.com/gpu"] = value
        where = "spec.workerGroupSpecs.0.template.spec.containers.0.resources.limits.nvidia.com/gpu"
    else:
        bad = _set(doc, path, value)
    errors = kuberay.validate(bad)
    assert errors and any(e.startswith(where + ":") for e in errors), errors


def test_schema_records_the_crd_it_was_checked_against():
    src = yaml.safe_load(kuberay.SCHEMA.read_text())["source"]
    assert src["repo"] == "ray-project/kuberay" and src["path"].endswith("ray.io_rayclusters.yaml")
    assert len(src["commit"]) == 40 and int(src["commit"], 16) >= 0
    assert "spec.gcsFaultToleranceOptions" in src["checked"]


def test_gcs_options_the_released_crd_allows_pass():
    """redisUsername and the EnvVarSource members the CRD defines (fileKeyRef,
    resourceFieldRef) are valid, not refused by a subset that forgot them."""
    doc = docs()["raycluster.yaml"]
    doc = _set(doc, "spec.gcsFaultToleranceOptions.redisUsername", {"value": "rayfin"})
    doc = _set(doc, "spec.gcsFaultToleranceOptions.redisPassword",
               {"valueFrom": {"fileKeyRef": {"volumeName": "redis", "path": "pw", "key": "password"}}})
    assert kuberay.validate(doc) == []
    bad = _set(doc, "spec.gcsFaultToleranceOptions.redisPassword", {"valueFrom": {"fileKeyRef": {"key": "password"}}})
    assert any(e.startswith("spec.gcsFaultToleranceOptions.redisPassword") for e in kuberay.validate(bad))


@pytest.mark.parametrize("path, value, where", [
    ("spec.rayClusterConfig.gcsFaultToleranceOptions.redisAddress", _DROP,
     "spec.rayClusterConfig.gcsFaultToleranceOptions"),
    ("spec.rayClusterConfig.gcsFaultToleranceOptions.redisPassword.valueFrom.secretKeyRef.key", _DROP,
     "spec.rayClusterConfig.gcsFaultToleranceOptions.redisPassword.valueFrom.secretKeyRef"),
    ("spec.rayClusterConfig.workerGroupSpecs.0.rayStartParams", _DROP, "spec.rayClusterConfig.workerGroupSpecs.0"),
    ("spec.rayClusterConfig.headGroupSpec", _DROP, "spec.rayClusterConfig"),
    ("spec.serviceUnhealthySecondThreshold", "60s", "spec.serviceUnhealthySecondThreshold"),
    ("spec.serveConfigV2", {"applications": []}, "spec.serveConfigV2"),   # KubeRay wants the YAML text
    ("spec.serveConfig", "applications: []", "spec"),                      # misspelt: pruned silently
    ("spec.managedBy", "me", "spec.managedBy"),
])
def test_rayservice_schema_catches_what_kuberay_would_refuse_or_drop(path, value, where):
    bad = _set(docs()["rayservice.yaml"], path, value)
    errors = kuberay.validate(bad)
    assert errors and any(e.startswith(where + ":") for e in errors), errors


def test_schema_records_the_rayservice_crd_it_was_checked_against():
    src = yaml.safe_load(kuberay.SCHEMA.read_text())["source_rayservice"]
    assert src["path"].endswith("ray.io_rayservices.yaml") and len(src["commit"]) == 40
    assert "spec.rayClusterConfig.gcsFaultToleranceOptions" in src["checked"]


# ---- serve.edge: haproxy on KubeRay: the edge HAProxy as a sidecar of the head pod ----------------

def _edge_config(config: str = "local.yaml", **runtime):
    cfg = load_config(ROOT / "configs" / config)
    serve = cfg.serve.model_dump()
    serve.update(edge="haproxy", ingress="haproxy",
                 edge_runtime=runtime or {"admin": "unix@/var/run/rayfin-edge/admin.sock",
                                          "map_path": "/var/run/rayfin-edge/rates.map"})
    return cfg.model_copy(update={"serve": type(cfg.serve).model_validate(serve)})


def _pod(doc):
    spec = doc["spec"].get("rayClusterConfig", doc["spec"])
    return spec["headGroupSpec"]["template"]["spec"]


@pytest.mark.parametrize("runtime", [{}, {"admin": "ipv4@127.0.0.1:9999", "map_path": "/run/edge/rates.map"}])
def test_edge_sidecar_in_the_head_pod_at_the_configured_address(runtime):
    cfg = _edge_config(**runtime)
    rt = cfg.serve.edge_runtime
    for doc in (kuberay.raycluster(cfg), kuberay.rayservice(cfg)):
        assert kuberay.validate(doc) == []
        pod = _pod(doc)
        head, sup, edge = pod["containers"]
        assert edge["name"] == "rayfin-edge" and edge["ports"] == [{"name": "edge", "containerPort": kuberay.EDGE_PORT}]
        cmd = edge["command"]
        assert cmd[:3] == ["python", "-m", "serve_apps.haproxy_sidecar"]
        assert cmd[cmd.index("--backend") + 1] == f"127.0.0.1:{kuberay.PORTS['serve']}"     # Serve in this pod
        assert cmd[cmd.index("--config") + 1] == f"{kuberay.CONFIG_MOUNT}/config.yaml"      # the same config
        folder = rt.map_path.rsplit("/", 1)[0]
        # the broker's side (the head container, where it is placed) and the sidecar share one volume
        for c in (head, edge):
            assert {"name": kuberay.EDGE_VOLUME, "mountPath": folder} in c["volumeMounts"]
        assert {"name": kuberay.EDGE_VOLUME, "emptyDir": {}} in pod["volumes"]
        assert not any(e["name"] == "RAY_AUTH_TOKEN" for e in edge["env"])                # not a Ray process
        assert all(kuberay.EDGE_VOLUME not in str(w) for w in doc["spec"].get(
            "rayClusterConfig", doc["spec"])["workerGroupSpecs"])                           # the head only


def test_edge_on_kuberay_needs_an_address_the_broker_can_reach():
    from rayfin.errors import ConfigError

    cfg = load_config(ROOT / "configs" / "local.yaml")
    serve = dict(cfg.serve.model_dump(), edge="haproxy", ingress="haproxy")
    no_runtime = cfg.model_copy(update={"serve": type(cfg.serve).model_validate(serve)})
    with pytest.raises(ConfigError) as e:
        kuberay.raycluster(no_runtime)
    assert e.value.path == "serve.edge_runtime"
    with pytest.raises(ConfigError) as e:
        kuberay.raycluster(_edge_config(admin="unix@/elsewhere/admin.sock", map_path="/run/edge/rates.map"))
    assert e.value.path == "serve.edge_runtime.admin"
    with pytest.raises(ConfigError) as e:
        kuberay.raycluster(_edge_config(admin="ipv4@10.0.0.5:9999", map_path="/run/edge/rates.map"))
    assert e.value.path == "serve.edge_runtime.admin"           # admin level: loopback only
    assert "rayfin-edge" not in str(kuberay.raycluster(cfg))      # edge 'python': no sidecar
