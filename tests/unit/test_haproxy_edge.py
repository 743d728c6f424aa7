"""HAProxy edge rules, rate map and runtime updates: pure text, checked against Ray's template."""
from __future__ import annotations

import hashlib

import pytest

from serve_apps.haproxy_edge import (ANCHOR, DeskRate, credential_key, frontend_rules, map_commands,
                                     patch_template, rate_map)


def test_limit_never_below_what_the_bucket_allows():
    # burst 5 + 5/s x 10 s = 55 per window; x slack 2 = 110
    assert DeskRate(5, 5).limit(10, 2.0) == 110
    assert DeskRate(0.5, 1).limit(10, 1.0) == 6          # ceil(1 + 5)


def test_map_holds_hashes_not_tokens():
    k = credential_key("fx-secret")
    assert k == hashlib.sha256(b"fx-secret").hexdigest()
    text = rate_map({k: DeskRate(5, 5), credential_key("risk"): DeskRate(1, 2)}, 10, 2)
    assert "fx-secret" not in text
    assert f"{k} 110\n" in text and text.count("\n") == 2


def test_quota_change_becomes_runtime_commands():
    a, b, c = (credential_key(t) for t in ("a", "b", "c"))
    old = {a: DeskRate(5, 5), b: DeskRate(1, 1)}
    new = {a: DeskRate(10, 5), c: DeskRate(1, 1)}
    cmds = map_commands(old, new, "/m.map", 10, 2)
    # a: 2 x (5 + 100) = 210 (was 110): set; b removed: del; c new: add 2 x (1 + 10) = 22
    assert cmds[0] == f"del map /m.map {b}"
    assert sorted(cmds[1:]) == sorted([f"set map /m.map {a} 210", f"add map /m.map {c} 22"])
    assert map_commands(new, new, "/m.map") == []


def test_rules_go_into_serves_frontend_ahead_of_its_routing():
    from ray.serve._private.haproxy_templates import HAPROXY_CONFIG_TEMPLATE

    assert ANCHOR in HAPROXY_CONFIG_TEMPLATE          # Ray 2.60's layout, pinned
    out = patch_template(HAPROXY_CONFIG_TEMPLATE, "/x/rates.map")
    front = out.index("frontend http_frontend")
    rules = out.index("acl rf_predict")
    routing = out.index("use_backend")
    assert front < rules < routing
    assert "backend rf_desk_passed" in out and "gpc0_rate(10s)" in out


def test_template_without_the_anchor_fails_loudly():
    with pytest.raises(RuntimeError, match="ANCHOR"):
        patch_template("frontend x\n", "/m.map")


@pytest.mark.parametrize("kw, field", [({"window_s": 0.5}, "window_s"), ({"retry_after_s": 0}, "retry_after_s")])
def test_bad_rule_settings_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        frontend_rules("/m.map", **kw)


def test_slack_below_one_is_refused():
    with pytest.raises(ValueError, match="slack"):
        rate_map({}, 10, 0.5)
