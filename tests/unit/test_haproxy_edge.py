"""HAProxy edge rules, rate map and runtime updates: pure text, checked against Ray's template."""
from __future__ import annotations

import hashlib

import pytest

from serve_apps.haproxy_edge import (ANCHOR, MAP_ENV, SOCKET_ENV, DeskRate, EdgeCounts, EdgeCountsPoller,
                                     admin_sockets, apply_rates, apply_rates_here, count_deltas,
                                     credential_key, edge_counts, record_edge_counts,
                                     frontend_rules, map_commands, parse_show_map, parse_show_table,
                                     patch_template, rate_map, table_backend)


def test_limit_never_below_what_the_bucket_allows():
    # burst 5 + 5/s x 10 s = 55 per window; x slack 2 = 110
    assert DeskRate(5, 5).limit(10, 2.0) == 110
    assert DeskRate(0.5, 1).limit(10, 1.0) == 6          # ceil(1 + 5)


def test_map_holds_hashes_not_tokens():
    k = credential_key("fx-secret")
    assert k == hashlib.sha256(b"fx-secret").hexdigest()
    text = rate_map({k: DeskRate(5, 5), credential_key("risk"): DeskRate(1, 2)}, 10, 2)
    assert "fx-secret" not in text
    # each credential: its window's limit, and 2 x (5 + 5/s x 1 s) = 20 a second
    assert f"{k} 110\n{k}_1s 20\n" in text and text.count("\n") == 4
    assert rate_map({k: DeskRate(5, 5)}, 1, 2) == f"{k} 20\n"         # a 1 s window: no second entry


def test_quota_change_becomes_runtime_commands():
    a, b, c = (credential_key(t) for t in ("a", "b", "c"))
    old = {a: DeskRate(5, 5), b: DeskRate(1, 1)}
    new = {a: DeskRate(10, 5), c: DeskRate(1, 1)}
    cmds = map_commands(old, new, "/m.map", 10, 2)
    # a: 2 x (5 + 100) = 210 (was 110) and 2 x (5 + 10) = 30 a second (was 20): set; b removed:
    # del both; c new: add 2 x (1 + 10) = 22 and 2 x (1 + 1) = 4
    assert sorted(cmds[:2]) == [f"del map /m.map {b}", f"del map /m.map {b}_1s"]
    assert sorted(cmds[2:]) == sorted([f"set map /m.map {a} 210", f"set map /m.map {a}_1s 30",
                                       f"add map /m.map {c} 22", f"add map /m.map {c}_1s 4"])
    assert map_commands(new, new, "/m.map") == []


def test_rules_go_into_serves_frontend_ahead_of_its_routing():
    from ray.serve._private.haproxy_templates import HAPROXY_CONFIG_TEMPLATE

    assert ANCHOR in HAPROXY_CONFIG_TEMPLATE          # Ray 2.60's layout, pinned
    out = patch_template(HAPROXY_CONFIG_TEMPLATE, "/x/rates.map")
    front = out.index("frontend http_frontend")
    rules = out.index("acl rf_predict")
    routing = out.index("use_backend {{")                 # Serve's own routing, not the storm's
    assert front < rules < out.index(ANCHOR) < routing
    assert "backend rf_desk_passed" in out and "gpc0_rate(10s)" in out


def test_template_without_the_anchor_fails_loudly():
    with pytest.raises(RuntimeError, match="ANCHOR"):
        patch_template("frontend x\n", "/m.map")


@pytest.mark.parametrize("kw, field", [({"window_s": 0.5}, "window_s"), ({"retry_after_s": 0}, "retry_after_s"),
                                       ({"storm_factor": 0}, "storm_factor"),
                                       ({"storm_cap_per_s": 0}, "storm_cap_per_s"),
                                       ({"hold_s": 31}, "hold_s"), ({"hold_s": -1}, "hold_s")])
def test_bad_rule_settings_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        frontend_rules("/m.map", **kw)


def test_slack_below_one_is_refused():
    with pytest.raises(ValueError, match="slack"):
        rate_map({}, 10, 0.5)


# ---- runtime updates: what `apply_rates` sends a running HAProxy ---------------------------------

def test_show_map_answer_is_read_back_as_limits():
    a, b = credential_key("a"), credential_key("b")
    answer = f"0x55d5e0d8a0f0 {a} 110\n0x55d5e0d8a1a0 {b} 22\n\n"
    assert parse_show_map(answer) == {a: 110, b: 22}
    assert parse_show_map("Unknown map identifier. Please use #<id> or <file>.\n") == {}


def test_show_table_answer_gives_passed_and_refused_per_credential():
    a, b = credential_key("a"), credential_key("b")
    answer = ("# table: rf_desk_passed, type: string, size:10000, used:2\n"
              f"0x55d0c8: key={a} use=0 exp=29000 shard=0 gpc0=110 gpc0_rate(10000)=110 gpc1=290\n"
              f"0x55d0d0: key={b} use=1 exp=28000 shard=0 gpc0=7 gpc0_rate(10000)=7 gpc1=0\n\n")
    assert parse_show_table(answer) == {a: EdgeCounts(110, 290), b: EdgeCounts(7, 0)}
    # Summed over the HAProxies of several nodes.
    per_socket = {"/n1": answer, "/n2": f"0x1: key={a} use=0 exp=1 shard=0 gpc0=5 gpc0_rate(10000)=5 gpc1=10\n"}
    seen = []
    counts = edge_counts(["/n1", "/n2"], call=lambda sock, cmd: seen.append(cmd) or per_socket[sock])
    assert counts[a] == EdgeCounts(115, 300) and counts[b] == EdgeCounts(7, 0)
    assert seen == ["show table rf_desk_passed"] * 2


def test_a_stale_socket_does_not_hide_the_others_when_asked():
    a = credential_key("a")

    def call(sock, cmd):
        if sock == "/gone":
            raise ConnectionRefusedError("no HAProxy here")
        return f"0x1: key={a} use=0 exp=1 shard=0 gpc0=3 gpc0_rate(10000)=3 gpc1=4\n"

    failed: dict = {}
    assert edge_counts(["/gone", "/n1"], call=call, failed=failed) == {a: EdgeCounts(3, 4)}
    assert "ConnectionRefusedError" in failed["/gone"]
    with pytest.raises(ConnectionRefusedError):
        edge_counts(["/gone", "/n1"], call=call)


def test_counter_deltas_survive_an_entry_that_expired_and_came_back():
    a, b = credential_key("a"), credential_key("b")
    before = {a: EdgeCounts(100, 900), b: EdgeCounts(5, 0)}
    now = {a: EdgeCounts(110, 1200), b: EdgeCounts(2, 7)}        # b expired, then 2 passed and 7 refused
    assert count_deltas(before, now) == {a: EdgeCounts(10, 300), b: EdgeCounts(2, 7)}
    assert count_deltas(now, now) == {}                         # nothing new: nothing to record


def test_poller_takes_its_first_read_as_the_baseline():
    a = credential_key("a")
    reads = iter([{a: EdgeCounts(50, 500)}, {a: EdgeCounts(60, 800)}, {}])
    poller = EdgeCountsPoller(lambda: next(reads))
    assert poller.poll() == {}                                  # counted by an earlier broker, if any
    assert poller.poll() == {a: EdgeCounts(10, 300)}
    assert poller.poll() == {}                                  # the entry expired


def test_edge_counts_become_desk_metrics():
    from rayfin.telemetry.metrics import MemoryMetrics

    a, stranger = credential_key("a"), credential_key("x")
    sink = MemoryMetrics()
    record_edge_counts({a: EdgeCounts(10, 300), stranger: EdgeCounts(1, 1)}, {a: "fx"}, sink)
    record_edge_counts({a: EdgeCounts(0, 5)}, {a: "fx"}, sink)
    assert sink.get("rayfin_serve_edge_requests", desk="fx", outcome="refused") == 305
    assert sink.get("rayfin_serve_edge_requests", desk="fx", outcome="passed") == 10
    assert len(sink.series("rayfin_serve_edge_requests")) == 2  # the unknown credential is not a desk


def test_refusals_are_counted_and_kept_out_of_the_log():
    rules = frontend_rules("/m", 10, 1)
    lines = [x.strip() for x in rules.splitlines()]
    refuse = next(i for i, x in enumerate(lines) if x.startswith("http-request return status 429"))
    assert "http-request sc-inc-gpc1(0) if rf_predict rf_known rf_over" in lines[:refuse]
    assert "http-request set-log-level silent if rf_predict rf_known rf_over" in lines[:refuse]
    assert "gpc1" in table_backend(10)


def test_a_storm_is_held_with_the_same_answer_passes_included():
    from serve_apps.haproxy_edge import HOLDS, edge_backends, storm_backends

    lines = [x.strip() for x in frontend_rules("/m", 10, 2, storm_factor=3, storm_cap_per_s=50, hold_s=4).splitlines()]
    refuse = next(x for x in lines if x.startswith("http-request return status 429"))
    # a storm is not refused at once; read off the one decision (another HAProxy thread may move
    # the counters between two rules, and rf_storm read twice could then answer neither way)
    assert refuse.endswith("if rf_predict rf_known rf_over !{ var(txn.rf_hold) -m bool }")
    held = "{ var(txn.rf_hold) -m bool }"
    count_pass = f"http-request sc-inc-gpc0(0) if rf_predict rf_known !rf_over !{held}"
    assert count_pass in lines                                          # nor counted as passed
    route = next(x for x in lines if x.startswith("use_backend"))
    assert route == f"use_backend rf_hold_%[rand({HOLDS})] if {{ var(txn.rf_hold) -m bool }}"
    # whether to hold is decided before a passed request is counted (use_backend runs after every
    # http-request rule, when a request that just passed may already read as over the limit)
    # While it storms, a request under the limit is held too (the penalty box), counted as refused
    # and not logged: the decision reads the storm alone, not rf_over.
    decide = ("http-request set-var(txn.rf_hold) bool(1) if rf_predict rf_known rf_storm || "
              "rf_predict rf_known rf_storm_cap rf_beyond")
    assert lines.index(decide) < lines.index(count_pass)
    assert lines.index(decide) < lines.index(f"http-request sc-inc-gpc1(0) if rf_predict rf_known !rf_over {held}")
    assert f"http-request set-log-level silent if rf_predict rf_known !rf_over {held}" in lines
    assert "http-request set-var(txn.rf_storm) var(txn.rf_limit),mul(3) if rf_predict rf_known" in lines
    assert "acl rf_storm_cap sc_gpc1_rate(0) gt 500" in lines          # 50/s over a 10 s window,
    assert "acl rf_beyond sc_gpc1_rate(0),sub(txn.rf_limit) gt 0" in lines    # and past the desk's limit
    assert lines.index("http-request sc-inc-gpc1(0) if rf_predict rf_known rf_over") < lines.index(refuse)
    # each hold backend answers what the frontend would have, after 2 to 6 s (mean 4 s)
    held = storm_backends(2, 4)
    assert held.count("backend rf_hold_") == HOLDS
    tarpits = [x.strip() for x in held.splitlines() if "tarpit deny_status" in x]
    assert {t.removeprefix("http-request tarpit deny_status 429") for t in tarpits} == \
        {refuse.removeprefix("http-request return status 429").removesuffix(
            " if rf_predict rf_known rf_over !{ var(txn.rf_hold) -m bool }")}
    holds = [int(x.split()[-1]) for x in held.splitlines() if "timeout tarpit" in x]
    assert min(holds) == 2000 and max(holds) == 6000 and sum(holds) / len(holds) == 4000
    assert "gpc1_rate(10s)" in table_backend(10) and "backend rf_hold_0" in edge_backends(10, 2, 4)
    # hold_s 0: no holding at all
    assert not any("rf_storm" in x or "use_backend" in x for x in frontend_rules("/m", 10, 1, hold_s=0).splitlines())
    assert storm_backends(1, 0) == "" and edge_backends(10, 1, 0) == table_backend(10)


def test_with_serves_ingress_request_router_a_storm_is_refused_at_once(tmp_path):
    """A held refusal runs on through Serve's later rules, which with a router include a Lua call
    to Serve's Python router: so with one in the rendered config nothing is held."""
    from serve_apps.haproxy_edge import ROUTER_ACTION, patch_config_file

    plain, routed = tmp_path / "plain.cfg", tmp_path / "routed.cfg"
    plain.write_text(f"frontend http_frontend\n{ANCHOR}\n")
    routed.write_text(f"frontend http_frontend\n{ANCHOR}\n    http-request {ROUTER_ACTION} if METH_POST\n")
    assert patch_config_file(str(plain), "/m.map") and patch_config_file(str(routed), "/m.map")
    assert "rf_hold_" in plain.read_text()
    assert "rf_hold_" not in routed.read_text() and "acl rf_predict" in routed.read_text()


class FakeHAProxy:
    """An admin socket's answers: `show map` lists what it holds, map commands change it."""

    def __init__(self, held: dict[str, int]) -> None:
        self.held = dict(held)
        self.seen: list[str] = []

    def __call__(self, sock: str, cmd: str) -> str:
        self.seen.append(cmd)
        verb, _, _, *rest = cmd.split()
        if verb == "show":
            return "".join(f"0x{i:x} {k} {v}\n" for i, (k, v) in enumerate(self.held.items()))
        if verb in ("set", "add"):
            self.held[rest[0]] = int(rest[1])
        else:
            self.held.pop(rest[0])
        return "\n"


def test_apply_rates_turns_what_haproxy_holds_into_the_new_map(tmp_path):
    a, b, c = (credential_key(t) for t in ("a", "b", "c"))
    map_path = str(tmp_path / "rates.map")
    # HAProxy holds a at 110 and b; the new quotas lower a to 1/s burst 1 and add c.
    haproxy = FakeHAProxy({a: 110, b: 22})
    new = {a: DeskRate(1, 1), c: DeskRate(5, 5)}
    update = apply_rates(map_path, new, ["/s1"], call=haproxy)
    assert update.ok
    # a: 2 x (1 + 1 x 10) = 22 and 2 x (1 + 1) = 4 a second; c: 110 and 20; b gone. HAProxy held
    # no per-second entries (a map from before them): they are added.
    assert haproxy.held == {a: 22, c: 110, f"{a}_1s": 4, f"{c}_1s": 20}
    sent = update.sent["/s1"]
    assert sent[0] == f"del map {map_path} {b}"          # deletions first, then each key once
    assert sorted(sent[1:]) == sorted([f"set map {map_path} {a} 22", f"add map {map_path} {a}_1s 4",
                                       f"add map {map_path} {c} 110", f"add map {map_path} {c}_1s 20"])
    assert open(map_path).read() == rate_map(new)          # a reload reads the same limits
    # Applied again, nothing to send: it starts from what HAProxy holds.
    assert apply_rates(map_path, new, ["/s1"], call=haproxy).sent == {"/s1": []}


def test_apply_rates_reports_a_socket_it_could_not_update(tmp_path):
    map_path = str(tmp_path / "rates.map")

    def gone(sock, cmd):
        raise ConnectionRefusedError(111, "Connection refused")

    update = apply_rates(map_path, {credential_key("a"): DeskRate(5, 5)}, ["/gone"], call=gone)
    assert not update.ok and "Connection refused" in update.failed["/gone"]
    assert open(map_path).read() == f"{credential_key('a')} 110\n{credential_key('a')}_1s 20\n"  # the file still moves


def test_apply_rates_here_finds_the_map_and_serves_per_node_sockets(tmp_path):
    # Serve puts each HAProxy's socket under its node id: <dir>/<node id>/admin.sock
    (tmp_path / "node1").mkdir()
    (tmp_path / "node1" / "admin.sock").write_text("")
    env = {MAP_ENV: str(tmp_path / "rates.map"), SOCKET_ENV: str(tmp_path / "admin.sock")}
    assert admin_sockets(env[SOCKET_ENV]) == [str(tmp_path / "node1" / "admin.sock")]
    haproxy = FakeHAProxy({})
    update = apply_rates_here({credential_key("a"): DeskRate(5, 5)}, env, call=haproxy)
    assert update is not None and list(update.sent) == [str(tmp_path / "node1" / "admin.sock")]
    assert haproxy.held == {credential_key("a"): 110, credential_key("a") + "_1s": 20}
    assert apply_rates_here({}, {}) is None                 # no HAProxy edge in this cluster


def test_passes_are_also_limited_per_second_from_the_maps_second_entry():
    from serve_apps.haproxy_edge import NO_LIMIT, SHORT_TABLE

    lines = [x.strip() for x in frontend_rules("/m", 10, 1).splitlines()]
    # the per-second limit from `<hash>_1s`, NO_LIMIT where the map has none (never refuse then)
    assert ("http-request set-var(txn.rf_limit1) var(txn.rf_key),concat(_1s),map(/m,"
            f"{NO_LIMIT}) if rf_predict rf_known") in lines
    assert f"http-request track-sc1 var(txn.rf_key) table {SHORT_TABLE} if rf_predict rf_known" in lines
    # over either limit is over (two lines of one acl are ORed), and a pass counts in both tables
    assert lines.count("acl rf_over_now sc_gpc0_rate(0),sub(txn.rf_limit) ge 0") == 1
    assert lines.count("acl rf_over_now sc_gpc0_rate(1),sub(txn.rf_limit1) ge 0") == 1
    # the counters are read once, into the decision every later rule reads
    decide = "http-request set-var(txn.rf_over) bool(1) if rf_predict rf_known rf_over_now"
    assert lines.count(decide) == 1 and "acl rf_over var(txn.rf_over) -m bool" in lines
    assert lines.index("acl rf_over_now sc_gpc0_rate(1),sub(txn.rf_limit1) ge 0") < lines.index(decide)
    assert not [x for x in lines[lines.index(decide) + 1:] if "sc_gpc0_rate" in x]
    held = "{ var(txn.rf_hold) -m bool }"
    assert f"http-request sc-inc-gpc0(1) if rf_predict rf_known !rf_over !{held}" in lines
    assert lines.index("acl rf_over_now sc_gpc0_rate(1),sub(txn.rf_limit1) ge 0") < lines.index(
        next(x for x in lines if x.startswith("http-request return status 429")))
    assert f"backend {SHORT_TABLE}" in table_backend(10) and "gpc0_rate(1s)" in table_backend(10)
    # a 1 s window is its own per-second limit: no second table or rule
    assert "rf_limit1" not in frontend_rules("/m", 1, 1) and SHORT_TABLE not in table_backend(1)
