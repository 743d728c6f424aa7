"""Demo calls against a running gateway: `demo_calls(config, base_url)` returns printable lines.

Uses the demo tokens of configs/local.yaml (the token of desk D is "D-demo-token").
"""
from __future__ import annotations

import json
import sys

import httpx

from rayfin.config import default_config_path, load_config
from serve_apps.schemas import example_body


def _token(desk: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {desk}-demo-token"}


def _line(what: str, r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        body = r.text
    extra = f" Retry-After={r.headers['retry-after']}" if "retry-after" in r.headers else ""
    shown = json.dumps(body, separators=(",", ":"))
    return f"{what:<48} -> {r.status_code}{extra} {shown[:160]}"


def demo_calls(config, base_url: str) -> list[str]:
    """A few real calls: list models, predictions within quota, a 403 and a 429 over quota."""
    models = config.serve.models
    if not models:
        return ["serve.models is empty: nothing to call"]
    public = next((m for m in models if m.public), models[0])
    private = next((m for m in models if not m.public), None)
    # The desk with the smallest burst is the quickest to push over quota.
    small = min(config.desks, key=lambda d: d.serving.burst)
    caller = next((d for d in config.desks if private is None or
                   (d.name != private.owner and private.name not in d.models)), config.desks[0])
    lines = []
    with httpx.Client(base_url=base_url, timeout=30) as c:
        lines.append(_line("GET /healthz", c.get("/healthz")))
        lines.append(_line(f"GET /v1/models as {caller.name}", c.get("/v1/models", headers=_token(caller.name))))
        url = f"/v1/models/{public.name}:predict"
        lines.append(_line(f"POST {public.name} as {caller.name}",
                           c.post(url, headers=_token(caller.name), json=example_body(public.kind, 2))))
        if private is not None:
            lines.append(_line(f"POST {private.name} as {private.owner} (owner)",
                               c.post(f"/v1/models/{private.name}:predict", headers=_token(private.owner),
                                      json=example_body(private.kind))))
            lines.append(_line(f"POST {private.name} as {caller.name} (private)",
                               c.post(f"/v1/models/{private.name}:predict", headers=_token(caller.name),
                                      json=example_body(private.kind))))
        lines.append(_line("POST with a wrong token", c.post(url, headers=_token("nobody"), json=example_body(public.kind))))
        refused = None
        sent = 0
        for _ in range(small.serving.burst + 20):
            r = c.post(url, headers=_token(small.name), json=example_body(public.kind))
            sent += 1
            if r.status_code == 429:
                refused = r
                break
        if refused is not None:
            lines.append(_line(f"POST x{sent} as {small.name} (burst {small.serving.burst})", refused))
        else:
            lines.append(f"{small.name}: {sent} calls, none refused (quota not reached)")
    return lines


if __name__ == "__main__":
    cfg = load_config(sys.argv[1] if len(sys.argv) > 1 else default_config_path())
    url = sys.argv[2] if len(sys.argv) > 2 else f"http://{cfg.serve.host}:{cfg.serve.port}"
    print("\n".join(demo_calls(cfg, url)))
