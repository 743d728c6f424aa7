"""KubeRay manifests from a rayfin config: the embedded default's layout on a real cluster.

    python -m rayfin.kuberay configs/local.yaml configs/kuberay/ \
        [--image IMAGE] [--otlp-endpoint URL]

writes `raycluster.yaml` (head + one worker group per NVLink island) and `rayservice.yaml`
(the same cluster running the Serve applications). The mapping is the one `rayfin.cluster`
uses locally, so placement groups, island resources and labels mean the same thing:

    one Ray worker pod per NVLink island      worker group `<node>-i<k>`, replicas 1
    GPUs of the island                        num-gpus and the pod's nvidia.com/gpu limit
    island / pool resources                   rayfin_island_<node>_i<k>, rayfin_pool_<pool>
    node labels                               rayfin.io/{rack,node,island,pool} (Ray labels,
                                              pod labels, and a nodeSelector on rayfin.io/node)
    Ray's control store (GCS)                 in Redis (`gcsFaultToleranceOptions`): a restarted
                                              head pod finds its actors, placement groups and
                                              nodes again (GCS fault tolerance)

    serve.edge 'haproxy'                      the edge HAProxy as a sidecar of the head pod
                                              (serve_apps/haproxy_sidecar.py) at the address
                                              `serve.edge_runtime` gives the quota broker

`validate(doc)` checks a manifest against the ray.io/v1 CRD schema subset kept in
configs/kuberay/schema/ (written from KubeRay's v1 API types, checked against KubeRay's CRD
at the repo, path and commit it records under `source`).

It sits above both telemetry (the tracing hook and its environment) and the Serve applications
(the ingress and edge variables every pod carries), so neither of those imports the other.
"""
from __future__ import annotations

import argparse
import json
import posixpath
import sys
from pathlib import Path
from typing import Any

import yaml

from placement.topology import Island, Topology, island_resource, pool_resource
from rayfin.config import RayfinConfig, load_config
from rayfin.errors import ConfigError
from rayfin.telemetry.config import TelemetryConfig
from rayfin.telemetry.tracing import HOOK
from serve_apps.edge_asgi import CALLBACK as EDGE_CALLBACK
from serve_apps.edge_asgi import ENV as EDGE_ENV
from serve_apps.ingress import HA_PROXY as HA_PROXY_ENV
from serve_apps.ingress import MAX_HAPROXY_THREADS, haproxy_threads
from serve_apps.ingress import NBTHREAD as NBTHREAD_ENV
from serve_apps.ingress import REQUEST_METRICS as REQUEST_METRICS_ENV
from serve_apps.ingress import THROUGHPUT as THROUGHPUT_ENV

LABEL = "rayfin.io/"
RAY_VERSION = "2.60.0"
DEFAULT_IMAGE = f"registry.internal.bank/rayfin/rayfin:0.1.0-ray{RAY_VERSION}-py311-cu124"
CONFIG_MOUNT = "/etc/rayfin"
SCHEMA = Path(__file__).resolve().parents[1] / "configs" / "kuberay" / "schema" / "ray.io-v1-subset.yaml"
# GCS fault tolerance: the Redis the head keeps Ray's control state in, and the Secret with its password.
GCS_REDIS_ADDRESS = "rayfin-gcs-redis:6379"
GCS_REDIS_SECRET = "rayfin-gcs-redis"
PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "metrics": 8080, "serve": 8000}
# serve.edge 'haproxy': the edge HAProxy beside the head (serve_apps/haproxy_sidecar.py), on this port,
# in front of Serve's ingress in the same pod; its runtime API and rate map on an emptyDir both mount.
EDGE_PORT = 8100
EDGE_VOLUME = "rayfin-edge"


def island_labels(island: Island) -> dict[str, str]:
    return {LABEL + "rack": island.rack, LABEL + "node": island.node, LABEL + "island": island.id,
            LABEL + "pool": island.pool}


def island_resources(island: Island) -> dict[str, float]:
    return {island_resource(island.id): float(island.gpus), pool_resource(island.pool): float(island.gpus)}


def _num(v: float) -> float | int:
    return int(v) if float(v).is_integer() else v


def _env(tel: TelemetryConfig, ingress: str, cpu: int = MAX_HAPROXY_THREADS,
         request_metrics: bool = True) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": "RAY_AUTH_MODE", "value": "token"},
           {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "rayfin-ray-auth", "key": "token"}}},
           {"name": "RAYFIN_CONFIG", "value": f"{CONFIG_MOUNT}/config.yaml"},
           # serve.ingress (serve_apps/ingress.py): HAProxy on every pod forwards to the replicas,
           # which serve HTTP themselves; or Serve's Python proxy. HAProxy's files and ports keep
           # Serve's defaults here, one HAProxy per pod. With HAProxy, Ray's high-throughput mode too.
           {"name": HA_PROXY_ENV, "value": "1" if ingress == "haproxy" else "0"},
           *([{"name": THROUGHPUT_ENV, "value": "1"}] if ingress == "haproxy" else []),
           # HAProxy's threads: one per CPU of the pod, at most Serve's default 4
           *([{"name": NBTHREAD_ENV, "value": str(haproxy_threads(cpu))}] if ingress == "haproxy" else []),
           # serve.haproxy_request_metrics: Serve's per-request HTTP metrics, parsed from HAProxy's log
           *([{"name": REQUEST_METRICS_ENV, "value": "1" if request_metrics else "0"}]
             if ingress == "haproxy" else []),
           # Serve's ingress (each gated replica's HTTP server, or the proxy) runs rayfin's edge
           # middleware (serve_apps/edge_asgi.py)
           {"name": EDGE_ENV, "value": EDGE_CALLBACK},
           # work that asks for no GPU gets CUDA_VISIBLE_DEVICES="" (Ray 2.60 leaves it unset: it
           # would see every GPU of its pod)
           {"name": "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "value": "1"},
           # CUDA numbers GPUs as NVML does: policing compares a worker's GPUs with NVML's list
           {"name": "CUDA_DEVICE_ORDER", "value": "PCI_BUS_ID"}]
    env += [{"name": k, "value": v} for k, v in sorted(tel.env().items())]
    return env


def _container(name: str, image: str, tel: TelemetryConfig, *, cpu: int, memory: str, gpus: int,
               ingress: str, ports: dict[str, int] | None = None, request_metrics: bool = True) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": str(cpu), "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = gpus
    c: dict[str, Any] = {"name": name, "image": image, "imagePullPolicy": "IfNotPresent", "env": _env(tel, ingress, cpu, request_metrics),
                         "resources": {"limits": limits, "requests": dict(limits)},
                         "volumeMounts": [{"name": "rayfin-config", "mountPath": CONFIG_MOUNT, "readOnly": True}]}
    if ports:
        c["ports"] = [{"name": k, "containerPort": v} for k, v in ports.items()]
    return c


def _volumes() -> list[dict[str, Any]]:
    return [{"name": "rayfin-config", "configMap": {"name": "rayfin-config"}}]


def supervisor_container(image: str, tel: TelemetryConfig, ingress: str, request_metrics: bool = True) -> dict[str, Any]:
    """Beside the head: `rayfin supervise` keeps the controller alive (brings it back from the
    ledger if code in the cluster kills it for good, and audits the kill)."""
    c = _container("rayfin-supervisor", image, tel, cpu=1, memory="1Gi", gpus=0, ingress=ingress,
                   request_metrics=request_metrics)
    c["command"] = ["rayfin", "supervise", "--config", f"{CONFIG_MOUNT}/config.yaml", "--address",
                    f"127.0.0.1:{PORTS['gcs-server']}"]
    return c


def edge_dir(config: RayfinConfig) -> str | None:
    """The folder the head container and the edge sidecar share (the rate map's, and a unix admin
    socket's), or None without an HAProxy edge. The broker reaches the edge only through
    `serve.edge_runtime`, so an HAProxy edge on KubeRay needs it (ConfigError otherwise)."""
    if config.serve.edge != "haproxy":
        return None
    rt = config.serve.edge_runtime
    if rt is None:
        raise ConfigError("serve.edge_runtime: not set, but serve.edge is 'haproxy'; on KubeRay the edge runs "
                          "beside the head and the quota broker reaches it only at a configured address. To fix: "
                          "set serve.edge_runtime {admin: unix@/var/run/rayfin-edge/admin.sock, map_path: "
                          "/var/run/rayfin-edge/rates.map}", path="serve.edge_runtime")
    folder = posixpath.dirname(rt.map_path)
    if rt.admin.startswith("unix@") and posixpath.dirname(rt.admin[len("unix@"):]) != folder:
        raise ConfigError(f"serve.edge_runtime.admin: got {rt.admin!r}; a unix socket must be in the map's folder "
                          f"{folder} (the one volume both containers mount), or use ipv4@127.0.0.1:PORT",
                          path="serve.edge_runtime.admin")
    if rt.admin.startswith("ipv4@") and not rt.admin.startswith("ipv4@127."):
        raise ConfigError(f"serve.edge_runtime.admin: got {rt.admin!r}; the runtime API is admin level: keep it "
                          "on loopback (ipv4@127.0.0.1:PORT) or a unix socket", path="serve.edge_runtime.admin")
    if not rt.broker_on_head:
        raise ConfigError("serve.edge_runtime.broker_on_head: false, but on KubeRay the edge is a sidecar of the "
                          "head pod, reachable from that pod only", path="serve.edge_runtime.broker_on_head")
    return folder


def edge_sidecar(config: RayfinConfig, image: str, tel: TelemetryConfig, folder: str) -> dict[str, Any]:
    """Beside the head: the HAProxy edge (serve_apps/haproxy_sidecar.py), from the same mounted config,
    refusing over-quota desks before Serve's ingress in this pod; the broker updates it at run time."""
    c = _container("rayfin-edge", image, tel, cpu=2, memory="1Gi", gpus=0, ingress=config.serve.ingress,
                   ports={"edge": EDGE_PORT})
    c["env"] = [{"name": "RAYFIN_CONFIG", "value": f"{CONFIG_MOUNT}/config.yaml"}]   # no Ray token: not a Ray process
    c["command"] = ["python", "-m", "serve_apps.haproxy_sidecar", "--config", f"{CONFIG_MOUNT}/config.yaml",
                    "--listen", str(EDGE_PORT), "--backend", f"127.0.0.1:{PORTS['serve']}",
                    "--cfg", f"{folder}/haproxy.cfg"]
    c["volumeMounts"].append({"name": EDGE_VOLUME, "mountPath": folder})
    return c


def head_group(config: RayfinConfig, image: str, tel: TelemetryConfig) -> dict[str, Any]:
    params = {"dashboard-host": "0.0.0.0", "num-gpus": "0", "num-cpus": str(config.cluster.head_num_cpus),
              "metrics-export-port": str(PORTS["metrics"]), "labels": f"{LABEL}role=head"}
    if tel.exporter != "none" and tel.ray_tracing:
        params["tracing-startup-hook"] = HOOK
    head = _container("ray-head", image, tel, cpu=max(2, config.cluster.head_num_cpus), memory="16Gi", gpus=0,
                      ports=PORTS, ingress=config.serve.ingress,
                      request_metrics=config.serve.haproxy_request_metrics)
    containers = [head, supervisor_container(image, tel, config.serve.ingress, config.serve.haproxy_request_metrics)]
    volumes = _volumes()
    folder = edge_dir(config)
    if folder is not None:
        head["volumeMounts"].append({"name": EDGE_VOLUME, "mountPath": folder})   # the broker's side
        containers.append(edge_sidecar(config, image, tel, folder))
        volumes.append({"name": EDGE_VOLUME, "emptyDir": {}})
    return {
        "serviceType": "ClusterIP",
        "rayStartParams": params,
        "template": {
            "metadata": {"labels": {LABEL + "role": "head"},
                         "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(PORTS["metrics"]),
                                         "prometheus.io/path": "/metrics"}},
            "spec": {"containers": containers, "volumes": volumes},
        },
    }


def worker_group(island: Island, node_cpus: int, image: str, tel: TelemetryConfig,
                 ingress: str, request_metrics: bool = True) -> dict[str, Any]:
    labels = island_labels(island)
    return {
        "groupName": island.id,
        "replicas": 1, "minReplicas": 1, "maxReplicas": 1,   # an island is one pod: its resource names are unique
        "rayStartParams": {
            "num-gpus": str(island.gpus),
            "num-cpus": str(node_cpus),
            # KubeRay passes this through to `ray start --resources`; the outer quotes are KubeRay's convention
            "resources": '"' + json.dumps({k: _num(v) for k, v in island_resources(island).items()},
                                          sort_keys=True).replace('"', '\\"') + '"',
            "labels": ",".join(f"{k}={v}" for k, v in labels.items()),
        },
        "template": {
            "metadata": {"labels": dict(labels)},
            "spec": {
                # Pods of one physical node's islands land on that node, pool nodes only.
                "nodeSelector": {LABEL + "node": island.node, LABEL + "pool": island.pool},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "containers": [_container("ray-worker", image, tel, cpu=node_cpus, memory=f"{32 * island.gpus}Gi",
                                          gpus=island.gpus, ingress=ingress, request_metrics=request_metrics)],
                "volumes": _volumes(),
            },
        },
    }


def gcs_fault_tolerance(config: RayfinConfig, *, storage_namespace: bool = True) -> dict[str, Any]:
    """KubeRay's GCS fault tolerance on Redis. The storage namespace keeps this cluster's keys
    apart from another cluster's in the same Redis; a RayService leaves it to KubeRay (the
    RayCluster's UID), since its upgrades start a new cluster that must not read the old one's."""
    ft: dict[str, Any] = {"redisAddress": GCS_REDIS_ADDRESS,
                          "redisPassword": {"valueFrom": {"secretKeyRef": {"name": GCS_REDIS_SECRET, "key": "password"}}}}
    if storage_namespace:
        ft["externalStorageNamespace"] = f"rayfin-{config.cluster.name}"
    return ft


def raycluster_spec(config: RayfinConfig, image: str, tel: TelemetryConfig, *,
                    storage_namespace: bool = True) -> dict[str, Any]:
    topo = Topology.from_config(config.cluster)
    cpus = {n.name: max(1, n.num_cpus) for n in config.cluster.nodes}
    return {"rayVersion": RAY_VERSION, "enableInTreeAutoscaling": False,
            "gcsFaultToleranceOptions": gcs_fault_tolerance(config, storage_namespace=storage_namespace),
            "headGroupSpec": head_group(config, image, tel),
            "workerGroupSpecs": [worker_group(i, cpus[i.node], image, tel, config.serve.ingress,
                                              config.serve.haproxy_request_metrics)
                             for i in topo.islands]}


def raycluster(config: RayfinConfig, *, image: str = DEFAULT_IMAGE, telemetry: TelemetryConfig | None = None,
               name: str | None = None) -> dict[str, Any]:
    tel = telemetry or config.telemetry
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster",
            "metadata": {"name": name or f"rayfin-{config.cluster.name}", "labels": {LABEL + "cluster":
                                                                                    config.cluster.name}},
            "spec": raycluster_spec(config, image, tel)}


def rayservice(config: RayfinConfig, *, image: str = DEFAULT_IMAGE, telemetry: TelemetryConfig | None = None,
               name: str | None = None) -> dict[str, Any]:
    """RayService: the same cluster plus the Serve applications (models and the gateway).

    Each application is built by `serve_apps.deploy:rayservice_app` from the mounted config.
    """
    tel = telemetry or config.telemetry
    config_path = f"{CONFIG_MOUNT}/config.yaml"
    # Each model's application serves its own predict route and
    # leases quota from the broker in the application named "gateway".
    apps = [{"name": f"model-{m.name}", "import_path": "serve_apps.deploy:rayservice_app",
             "route_prefix": f"/v1/models/{m.name}:predict",
             "args": {"config": config_path, "app": "model", "model": m.name, "gateway_app": "gateway"}}
            for m in config.serve.models]
    apps.append({"name": "gateway", "import_path": "serve_apps.deploy:rayservice_app", "route_prefix": "/",
                 "args": {"config": config_path, "app": "gateway"}})
    if config.api.enabled:   # the rayfin API: what desks and operators call, instead of Ray
        apps.append({"name": "rayfin-api", "import_path": "serve_apps.api_app:rayservice_api_app",
                     "route_prefix": config.api.route_prefix, "args": {"config": config_path}})
    for a in apps:
        if a["route_prefix"] is None:
            del a["route_prefix"]
    return {"apiVersion": "ray.io/v1", "kind": "RayService",
            "metadata": {"name": name or f"rayfin-{config.cluster.name}-serve",
                         "labels": {LABEL + "cluster": config.cluster.name}},
            "spec": {"serveConfigV2": _Block(yaml.safe_dump({"http_options": {"host": "0.0.0.0", "port": PORTS["serve"]},
                                                             "applications": apps}, sort_keys=False)),
                     "rayClusterConfig": raycluster_spec(config, image, tel, storage_namespace=False)}}


class _Block(str):
    """A multi-line string written as a YAML literal block (`|`), as KubeRay's examples do."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Block, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", str(v), style="|"))


HEADER = """# Generated by `python -m rayfin.kuberay {command}`; do not edit by hand.
# One Ray worker pod per NVLink island; see docs/observability.md ("From the embedded default to KubeRay").
# Before applying: a ConfigMap `rayfin-config` holding config.yaml, a Secret `rayfin-ray-auth` (key `token`),
# Kubernetes nodes labelled rayfin.io/node=<node> and rayfin.io/pool=<pool>; for GCS fault tolerance a
# highly available Redis at rayfin-gcs-redis:6379 and a Secret `rayfin-gcs-redis` (key `password`).
"""


def validate(doc: dict[str, Any]) -> list[str]:
    """Where `doc` breaks the KubeRay CRD schema subset: one 'path: problem' line each (empty:
    valid)."""
    import jsonschema  # lazy: a dev dependency, needed only to check manifests

    schema = yaml.safe_load(SCHEMA.read_text())
    kind = doc.get("kind")
    if kind not in schema["kinds"]:
        return [f"kind: {kind!r} is not one of {sorted(schema['kinds'])}"]
    root = {"$defs": schema["$defs"], **schema["kinds"][kind]}
    validator = jsonschema.Draft202012Validator(root)
    return sorted(f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
                  for e in validator.iter_errors(doc))


def write(config_path: str, out_dir: str, *, image: str = DEFAULT_IMAGE, otlp_endpoint: str | None = None) -> list[Path]:
    config = load_config(config_path)
    tel = config.telemetry
    if otlp_endpoint:
        tel = tel.model_copy(update={"exporter": "otlp", "otlp_endpoint": otlp_endpoint})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    command = f"{config_path} {out_dir}" + (f" --otlp-endpoint {otlp_endpoint}" if otlp_endpoint else "") + (
        f" --image {image}" if image != DEFAULT_IMAGE else "")
    head = HEADER.format(command=command)
    paths = []
    for fname, doc in (("raycluster.yaml", raycluster(config, image=image, telemetry=tel)),
                       ("rayservice.yaml", rayservice(config, image=image, telemetry=tel))):
        p = out / fname
        p.write_text(head + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=120))
        paths.append(p)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rayfin.kuberay", description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("out_dir")
    ap.add_argument("--image", default=DEFAULT_IMAGE)
    ap.add_argument("--otlp-endpoint", default=None, help="send traces to this OTLP/HTTP collector URL")
    args = ap.parse_args(argv)
    for p in write(args.config, args.out_dir, image=args.image, otlp_endpoint=args.otlp_endpoint):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
