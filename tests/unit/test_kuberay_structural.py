"""rayfin.kuberay_schema: Kubernetes structural schemas (CRD openAPIV3Schema) checked with
jsonschema, the Kubernetes extensions included; and the generated manifests' GCS fault-tolerance
options against the structural form of that part of KubeRay's CRD."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rayfin import kuberay
from rayfin.config import load_config
from rayfin.kuberay_schema import cel_rules, check, main, served_schema, to_json_schema

ROOT = Path(__file__).resolve().parents[2]

# Structural schemas as CRDs write them (controller-gen's layout, no descriptions).
QUANTITY = """
anyOf: [{type: integer}, {type: string}]
pattern: ^(\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))))?$
x-kubernetes-int-or-string: true
"""
SCHEMA = yaml.safe_load("""
type: object
properties:
  apiVersion: {type: string}
  kind: {type: string}
  metadata: {type: object}
  spec:
    type: object
    required: [template]
    x-kubernetes-validations:
    - {rule: "self.replicas <= 10", message: too many}
    properties:
      replicas: {type: integer, format: int32}
      port:
        anyOf: [{type: integer}, {type: string}]
        x-kubernetes-int-or-string: true
      limits: {type: object}
      mode: {type: string, enum: [a, b], nullable: true}
      free:
        type: object
        x-kubernetes-preserve-unknown-fields: true
        properties: {known: {type: string}}
      embedded:
        type: object
        x-kubernetes-embedded-resource: true
        x-kubernetes-preserve-unknown-fields: true
      tags:
        type: array
        items: {type: string}
        x-kubernetes-list-type: set
      ports:
        type: array
        x-kubernetes-list-type: map
        x-kubernetes-list-map-keys: [port, protocol]
        items:
          type: object
          required: [port]
          properties:
            port: {type: integer, format: int32}
            protocol: {type: string, default: TCP}
      template:
        type: object
        x-kubernetes-map-type: atomic
        properties: {name: {type: string}}
""")
SCHEMA["properties"]["spec"]["properties"]["limits"]["additionalProperties"] = yaml.safe_load(QUANTITY)


def _doc(**spec):
    return {"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n"}, "spec": {"template": {}, **spec}}


def test_a_valid_resource_passes():
    assert check(_doc(replicas=3, port="http", limits={"cpu": "500m", "nvidia.com/gpu": 4}, mode=None,
                      free={"known": "x", "anything": {"goes": 1}}, embedded={"apiVersion": "v1", "kind": "Pod"},
                      tags=["a", "b"], ports=[{"port": 80}, {"port": 80, "protocol": "UDP"}]), SCHEMA) == []


@pytest.mark.parametrize("spec, where", [
    ({"replicas": 2 ** 31}, "spec.replicas"),                         # format int32
    ({"replicas": "3"}, "spec.replicas"),
    ({"port": 1.5}, "spec.port"),                                     # int-or-string: neither
    ({"limits": {"cpu": "lots"}}, "spec.limits.cpu"),                 # a quantity's pattern
    ({"mode": "c"}, "spec.mode"),
    ({"replica": 3}, "spec"),                                         # misspelt: would be pruned
    ({"template": {"nme": "x"}}, "spec.template"),
    ({"tags": ["a", "a"]}, "spec.tags"),                              # list-type set
    ({"ports": [{"port": 80, "protocol": "TCP"}, {"port": 80, "protocol": "TCP"}]}, "spec.ports.1"),
    ({"ports": [{"protocol": "TCP"}]}, "spec.ports.0"),
])
def test_what_the_api_server_refuses_or_prunes_is_an_error(spec, where):
    errors = check(_doc(**spec), SCHEMA)
    assert any(e.startswith(where + ":") for e in errors), errors


def test_not_strict_lets_unknown_fields_through_as_pruning_does():
    assert check(_doc(replica=3), SCHEMA, strict=False) == []
    assert to_json_schema(SCHEMA)["properties"]["spec"]["additionalProperties"] is False


def test_cel_rules_are_listed_not_evaluated():
    assert cel_rules(SCHEMA) == [("spec", "self.replicas <= 10")]
    assert check(_doc(replicas=11), SCHEMA) == []


def test_served_version_is_picked_and_the_cli_checks_a_manifest(tmp_path, capsys):
    crd = {"metadata": {"name": "ks.x"}, "spec": {"names": {"kind": "K"}, "versions": [
        {"name": "v1alpha1", "served": False, "storage": False, "schema": {"openAPIV3Schema": {"type": "object"}}},
        {"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": SCHEMA}}]}}
    assert served_schema(crd) is SCHEMA and served_schema(crd, "v1alpha1") == {"type": "object"}
    (tmp_path / "crd.yaml").write_text(yaml.safe_dump(crd))
    (tmp_path / "m.yaml").write_text(yaml.safe_dump_all([_doc(), _doc(replicas="x")]))
    assert main([str(tmp_path / "crd.yaml"), str(tmp_path / "m.yaml")]) == 1
    out = capsys.readouterr().out
    assert "K n: valid" in out and "spec.replicas" in out and "1 CEL rules not evaluated" in out


# gcsFaultToleranceOptions as KubeRay's v1 CRD declares it (ray-project/kuberay,
# helm-chart/kuberay-operator/crds/ray.io_rayclusters.yaml at the commit configs/kuberay/schema/
# records), structural form; the EnvVarSource members other than secretKeyRef left open.
GCS_FT = yaml.safe_load("""
type: object
properties:
  externalStorageNamespace: {type: string}
  redisAddress: {type: string}
  redisPassword:
    type: object
    properties:
      value: {type: string}
      valueFrom:
        type: object
        properties:
          secretKeyRef:
            type: object
            required: [key]
            x-kubernetes-map-type: atomic
            properties:
              key: {type: string}
              name: {type: string, default: ""}
              optional: {type: boolean}
          configMapKeyRef: {type: object, x-kubernetes-preserve-unknown-fields: true}
          fieldRef: {type: object, x-kubernetes-preserve-unknown-fields: true}
          fileKeyRef: {type: object, x-kubernetes-preserve-unknown-fields: true}
          resourceFieldRef: {type: object, x-kubernetes-preserve-unknown-fields: true}
  redisUsername: {type: object, x-kubernetes-preserve-unknown-fields: true}
required: [redisAddress]
""")


@pytest.mark.parametrize("config", ["local.yaml", "test.yaml"])
def test_generated_gcs_fault_tolerance_options_pass_the_structural_schema(config):
    cfg = load_config(ROOT / "configs" / config)
    for ft in (kuberay.raycluster(cfg)["spec"]["gcsFaultToleranceOptions"],
               kuberay.rayservice(cfg)["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]):
        assert check(ft, GCS_FT) == []
    bad = dict(kuberay.raycluster(cfg)["spec"]["gcsFaultToleranceOptions"], redisPasword={"value": "x"})
    assert any(e.startswith("(root):") and "redisPasword" in e for e in check(bad, GCS_FT))


def test_every_pod_runs_haproxy_with_one_thread_per_cpu_it_is_given():
    cfg = load_config(ROOT / "configs" / "local.yaml")
    spec = kuberay.raycluster(cfg)["spec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        c = group["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in c["env"]}
        cpus = int(c["resources"]["limits"]["cpu"])
        assert env["RAY_SERVE_HAPROXY_NBTHREAD"] == str(min(4, cpus))
        assert env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] == "1"          # serve.haproxy_request_metrics
    off = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"haproxy_request_metrics": False})})
    spec = kuberay.raycluster(off)["spec"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        env = {e["name"]: e.get("value") for e in group["template"]["spec"]["containers"][0]["env"]}
        assert env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] == "0"
