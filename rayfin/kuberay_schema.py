"""Kubernetes structural schemas (a CRD's `openAPIV3Schema`) as JSON Schema, to check manifests
with `jsonschema` the way the API server checks a custom resource when it stores it.

    python -m rayfin.kuberay_schema CRD.yaml MANIFEST.yaml...

extracts the served, stored version's `openAPIV3Schema` from a CustomResourceDefinition file
(KubeRay's `ray.io_rayclusters.yaml`, `ray.io_rayservices.yaml`) and checks each manifest of that
kind against it: one `path: problem` line per error, exit 1 if any.

What the conversion does with the Kubernetes extensions:

    x-kubernetes-int-or-string: true      integer or string (the pattern, if any, on strings)
    x-kubernetes-preserve-unknown-fields  the object stays open
    x-kubernetes-embedded-resource        apiVersion, kind and metadata allowed
    x-kubernetes-list-type: set           uniqueItems
    x-kubernetes-list-type: map           items unique by x-kubernetes-list-map-keys (checked after)
    x-kubernetes-map-type, -validations   not checked (CEL rules are listed by `cel_rules`)
    format int32 / int64                  the integer's range
    nullable: true                        null allowed
    default                               ignored (the API server fills it in)

`strict` (the default) closes every object that declares properties and neither
additionalProperties nor preserve-unknown-fields: the API server would drop an unknown field
there without a word (pruning), so a misspelt field is an error here instead.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Iterator, Mapping

import yaml

_COPY = ("enum", "pattern", "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems",
         "minProperties", "maxProperties", "required", "multipleOf", "uniqueItems", "title")
_RANGES = {"int32": (-(2 ** 31), 2 ** 31 - 1), "int64": (-(2 ** 63), 2 ** 63 - 1)}


def to_json_schema(node: Mapping[str, Any], *, strict: bool = True) -> dict[str, Any]:
    """One structural schema node (and everything below it) as a JSON Schema (Draft 2020-12)."""
    out: dict[str, Any] = {}
    if node.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    elif "type" in node:
        out["type"] = [node["type"], "null"] if node.get("nullable") else node["type"]
    for k in _COPY:
        if k in node:
            out[k] = node[k]
    # OpenAPI v3.0 spells exclusive bounds as booleans beside minimum/maximum
    for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if node.get(flag) is True and bound in out:
            out[flag] = out.pop(bound)
    if node.get("type") == "integer" and node.get("format") in _RANGES:
        lo, hi = _RANGES[node["format"]]
        out.setdefault("minimum", lo)
        out.setdefault("maximum", hi)
    if node.get("nullable") and "enum" in out:
        out["enum"] = [*out["enum"], None]
    props = dict(node.get("properties") or {})
    if node.get("x-kubernetes-embedded-resource"):
        for k, v in (("apiVersion", {"type": "string"}), ("kind", {"type": "string"}), ("metadata", {"type": "object"})):
            props.setdefault(k, v)
    if props:
        out["properties"] = {k: to_json_schema(v, strict=strict) for k, v in props.items()}
    extra = node.get("additionalProperties")
    if isinstance(extra, Mapping):
        out["additionalProperties"] = to_json_schema(extra, strict=strict)
    elif isinstance(extra, bool):
        out["additionalProperties"] = extra
    elif strict and props and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if "items" in node:
        out["items"] = to_json_schema(node["items"], strict=strict)
    if node.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    for k in ("allOf", "anyOf", "oneOf"):
        if k in node:
            subs = [to_json_schema(s, strict=False) for s in node[k]]   # value checks only (no pruning there)
            if k in out:
                out.setdefault("allOf", []).append({k: subs})
            else:
                out[k] = subs
    if "not" in node:
        out["not"] = to_json_schema(node["not"], strict=False)
    return out


def served_schema(crd: Mapping[str, Any], version: str | None = None) -> dict[str, Any]:
    """The `openAPIV3Schema` of a CRD's version: `version`, else the one served and stored."""
    versions = crd["spec"]["versions"]
    pick = [v for v in versions if v["name"] == version] if version else \
        [v for v in versions if v.get("served") and v.get("storage")] or [v for v in versions if v.get("served")]
    if not pick:
        raise ValueError(f"{crd['metadata']['name']}: no {'version ' + version if version else 'served version'}")
    return pick[0]["schema"]["openAPIV3Schema"]


def _list_maps(schema: Mapping[str, Any], doc: Any, path: tuple) -> Iterator[str]:
    """Items of `x-kubernetes-list-type: map` lists must be unique by their keys."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            sub = (schema.get("properties") or {}).get(k)
            if sub is None and isinstance(schema.get("additionalProperties"), Mapping):
                sub = schema["additionalProperties"]
            if sub is not None:
                yield from _list_maps(sub, v, (*path, k))
    elif isinstance(doc, list) and isinstance(schema.get("items"), Mapping):
        if schema.get("x-kubernetes-list-type") == "map":
            keys = schema.get("x-kubernetes-list-map-keys") or []
            seen: set[tuple] = set()
            for i, item in enumerate(doc):
                if isinstance(item, dict):
                    key = tuple(item.get(k) for k in keys)
                    if key in seen:
                        yield f"{'.'.join(map(str, (*path, i)))}: duplicate entry {dict(zip(keys, key))}"
                    seen.add(key)
        for i, item in enumerate(doc):
            yield from _list_maps(schema["items"], item, (*path, i))


def check(doc: Mapping[str, Any], structural: Mapping[str, Any], *, strict: bool = True) -> list[str]:
    """Where `doc` breaks the structural schema: one 'path: problem' line each (empty: valid)."""
    import jsonschema  # lazy: a dev dependency, needed only to check manifests

    validator = jsonschema.Draft202012Validator(to_json_schema(structural, strict=strict))
    errors = [f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
              for e in validator.iter_errors(doc)]
    return sorted(errors + list(_list_maps(structural, doc, ())))


def cel_rules(node: Mapping[str, Any], path: str = "") -> list[tuple[str, str]]:
    """(path, rule) of every x-kubernetes-validations CEL rule: what `check` does not evaluate."""
    found = [(path or "(root)", v.get("rule", "")) for v in node.get("x-kubernetes-validations") or []]
    for k, v in (node.get("properties") or {}).items():
        found += cel_rules(v, f"{path}.{k}" if path else k)
    for k in ("items", "additionalProperties"):
        if isinstance(node.get(k), Mapping):
            found += cel_rules(node[k], f"{path}[]" if k == "items" else f"{path}.*")
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rayfin.kuberay_schema", description=__doc__.splitlines()[0])
    ap.add_argument("crd")
    ap.add_argument("manifests", nargs="+")
    args = ap.parse_args(argv)
    with open(args.crd) as f:
        crd = yaml.safe_load(f)
    kind, schema = crd["spec"]["names"]["kind"], served_schema(crd)
    bad = 0
    for path in args.manifests:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if not doc or doc.get("kind") != kind:
                    continue
                errors = check(doc, schema)
                bad += bool(errors)
                print(f"{path}: {kind} {doc['metadata'].get('name')}: " + ("valid" if not errors else
                      f"{len(errors)} errors\n  " + "\n  ".join(errors)))
    print(f"{len(cel_rules(schema))} CEL rules not evaluated")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
