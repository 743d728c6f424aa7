"""serve_apps/ingress.py: the environment each ingress needs, set before a cluster starts."""
import itertools

import pytest

from serve_apps import edge_asgi, ingress


def ports():
    counter = itertools.count(20000)
    return lambda: next(counter)


def test_haproxy_env_keeps_each_cluster_apart():
    env = ingress.ingress_env("haproxy", "/tmp/rfh-x", ports())
    assert env[ingress.HA_PROXY] == "1"
    # every HAProxy file under this cluster's own directory, its two ports free ones
    files = [v for k, v in env.items() if k.endswith(("_LOC", "_PATH", "_FILE", "_BASE"))]
    assert len(files) == 5 and all(v.startswith("/tmp/rfh-x") for v in files)
    ports_used = [env[k] for k in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT",
                                   "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT")]
    assert ports_used == ["20000", "20001", "20002", "20003"]
    assert env[ingress.DRAIN_S] == ingress.LOCAL_DRAIN_S
    assert env[ingress.THROUGHPUT] == "1"          # Ray's high-throughput mode: user code on one loop


def test_proxy_env_turns_haproxy_off():
    assert ingress.ingress_env("proxy", "", ports()) == {ingress.HA_PROXY: "0"}


def test_unknown_ingress_names_the_field_and_choices():
    with pytest.raises(ValueError, match=r"serve.ingress: got 'nginx'; one of haproxy, proxy"):
        ingress.ingress_env("nginx", "", ports())


@pytest.mark.parametrize("mode, flag", [("haproxy", "1"), ("proxy", "0")])
def test_install_sets_the_ingress_and_the_edge_middleware(mode, flag):
    env: dict = {}
    values = ingress.install(mode, env, ports())
    try:
        assert env[ingress.HA_PROXY] == flag == values[ingress.HA_PROXY]
        assert env[edge_asgi.ENV] == edge_asgi.CALLBACK
    finally:
        ingress.remove_run_dir(values)


@pytest.mark.parametrize("cpus, threads", [(1, 1), (2, 2), (3, 3), (4, 4), (64, 4), (0, 1)])
def test_haproxy_gets_one_thread_per_cpu_up_to_serves_default(cpus, threads):
    assert ingress.haproxy_threads(cpus) == threads
    assert ingress.ingress_env("haproxy", "/tmp/rfh-x", ports(), cpus=cpus)[ingress.NBTHREAD] == str(threads)
    assert ingress.NBTHREAD not in ingress.ingress_env("proxy", "", ports(), cpus=cpus)


def test_install_keeps_haproxy_threads_the_operator_set():
    env = {ingress.NBTHREAD: "8"}
    values = ingress.install("haproxy", env, ports())
    try:
        assert env[ingress.NBTHREAD] == "8" and ingress.NBTHREAD not in values
    finally:
        ingress.remove_run_dir(values)
    env = {}
    values = ingress.install("haproxy", env, ports())
    try:
        assert env[ingress.NBTHREAD] == str(ingress.haproxy_threads(ingress.usable_cpus()))
    finally:
        ingress.remove_run_dir(values)


def test_install_refuses_a_conflicting_setting_someone_else_made():
    env = {ingress.HA_PROXY: "1"}
    with pytest.raises(ValueError, match="serve.ingress is 'proxy' but the environment has"):
        ingress.install("proxy", env, ports())
    assert env == {ingress.HA_PROXY: "1"}             # untouched


def test_run_dir_is_short_enough_for_haproxy_sockets():
    """Serve puts the sockets under <dir>/<56-char node id>/; a socket path may not exceed 97."""
    d = ingress.new_run_dir()
    try:
        assert len(f"{d}/{'0' * 56}/metrics.sock") <= 97
    finally:
        ingress.remove_run_dir({"RAY_SERVE_HAPROXY_SERVER_STATE_BASE": d})


def test_haproxy_is_found_where_serve_looks(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(tmp_path / "missing"))
    assert ingress.haproxy_binary() is None                       # named but not there
    exe = tmp_path / "haproxy"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(exe))
    assert ingress.haproxy_binary() == str(exe)
    monkeypatch.delenv("RAY_SERVE_HAPROXY_BINARY_PATH")
    assert ingress.haproxy_binary()                                # ray[serve] bundles one on Linux


def test_no_haproxy_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(ingress, "haproxy_binary", lambda: None)
    monkeypatch.delenv(ingress.HA_PROXY, raising=False)
    with pytest.raises(ValueError, match="no HAProxy binary was found.*serve.ingress: proxy"):
        ingress.install("haproxy")


def test_install_can_add_the_haproxy_edge(monkeypatch, tmp_path):
    """The HAProxy edge as an ingress option: the rate map and the wrapper go in this cluster's
    HAProxy directory, and Serve is pointed at the wrapper, which runs the real binary."""
    from serve_apps.haproxy_edge import WRAPPER, DeskRate, credential_key

    monkeypatch.setattr(ingress, "haproxy_binary", lambda: "/opt/haproxy")
    env: dict = {}
    rates = {credential_key("fx-t"): DeskRate(rate=5, burst=5)}
    values = ingress.install("haproxy", env, ports(), haproxy_edge_rates=rates)
    try:
        run_dir = values["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"]
        wrapper = env["RAY_SERVE_HAPROXY_BINARY_PATH"]
        assert wrapper == f"{run_dir}/{WRAPPER}" and "--real /opt/haproxy" in open(wrapper).read()
        # ceil(2 * (5 + 5 * 10)) a window, and ceil(2 * (5 + 5)) a second
        assert open(f"{run_dir}/rates.map").read() == f"{credential_key('fx-t')} 110\n{credential_key('fx-t')}_1s 20\n"
    finally:
        ingress.remove_run_dir(values)
    with pytest.raises(ValueError, match="HAProxy edge needs serve.ingress 'haproxy'"):
        ingress.install("proxy", {}, ports(), haproxy_edge_rates=rates)


def test_the_config_turns_the_haproxy_edge_on(monkeypatch):
    """`serve.edge: haproxy` is what LocalCluster (so `rayfin up`) installs: the map holds each
    desk's credential hash and limit; `python` (the default) installs no edge rules, only the
    wrapper that sets HAProxy's niceness (`serve.replica_niceness`)."""
    from rayfin.config import ServeConfig
    from serve_apps.haproxy_edge import MAP_ENV, rate_map, desk_rates
    from tests.support.builders import config

    assert ServeConfig().edge == "python"
    monkeypatch.setattr(ingress, "haproxy_binary", lambda: "/opt/haproxy")
    cfg = config(serve={"enabled": True, "ingress": "haproxy", "edge": "haproxy"})
    env: dict = {}
    values = ingress.install_from_config(cfg, env, ports())
    try:
        assert open(env[MAP_ENV]).read() == rate_map(desk_rates(cfg))
        assert len(desk_rates(cfg)) == len(cfg.desks)
    finally:
        ingress.remove_run_dir(values)
    env = {}
    values = ingress.install_from_config(config(serve={"enabled": True}), env, ports())
    try:
        # No edge rules; the wrapper left only sets HAProxy's niceness (serve.replica_niceness: 0)
        assert MAP_ENV not in env and "--map" not in open(env["RAY_SERVE_HAPROXY_BINARY_PATH"]).read()
    finally:
        ingress.remove_run_dir(values)
    env = {}
    values = ingress.install_from_config(config(serve={"enabled": True, "replica_niceness": None}), env, ports())
    try:
        assert MAP_ENV not in env and "RAY_SERVE_HAPROXY_BINARY_PATH" not in env
    finally:
        ingress.remove_run_dir(values)


def test_the_configured_hold_reaches_the_rules_haproxy_runs(monkeypatch, tmp_path):
    """`serve.edge_hold_s` goes into the wrapper Serve runs, and from there into the rules it
    patches into the rendered config: a tarpit of that many seconds, or none with 0."""
    from serve_apps import haproxy_edge
    from tests.support.builders import config

    monkeypatch.setattr(ingress, "haproxy_binary", lambda: "/opt/haproxy")
    for hold, expect in ((3, "timeout tarpit 4500"), (0, None)):
        env: dict = {}
        cfg = config(serve={"enabled": True, "ingress": "haproxy", "edge": "haproxy", "edge_hold_s": hold})
        values = ingress.install_from_config(cfg, env, ports())
        try:
            wrapper = open(env["RAY_SERVE_HAPROXY_BINARY_PATH"]).read()
            assert f"--hold {hold} " in wrapper
            rendered = tmp_path / f"haproxy-{hold}.cfg"
            rendered.write_text("frontend http_frontend\n" + haproxy_edge.ANCHOR + "\n")
            seen: list = []
            monkeypatch.setattr(haproxy_edge.os, "execv", lambda *a: seen.append(a))
            haproxy_edge.main(["--real", "/opt/haproxy", "--map", env[haproxy_edge.MAP_ENV],
                               "--hold", str(hold), "--", "-f", str(rendered)])
            text = rendered.read_text()
            assert seen and "acl rf_predict" in text
            assert (expect in text) if expect else ("tarpit" not in text)
        finally:
            ingress.remove_run_dir(values)
    with pytest.raises(Exception, match="edge_hold_s"):
        config(serve={"enabled": True, "ingress": "haproxy", "edge": "haproxy", "edge_hold_s": 31})


def test_haproxy_edge_without_haproxy_ingress_names_the_fields():
    from rayfin.errors import ConfigError
    from tests.support.builders import config

    with pytest.raises(ConfigError, match=r"serve.*serve.edge 'haproxy'.*serve.ingress is 'proxy'"):
        config(serve={"ingress": "proxy", "edge": "haproxy"})
    with pytest.raises(ConfigError, match=r"serve.edge.*'python' or 'haproxy'|serve.edge.*python.*haproxy"):
        config(serve={"edge": "nginx"})


def test_admission_settings_carry_the_edge_rates_only_when_configured():
    from serve_apps.admission import AdmissionSettings
    from serve_apps.haproxy_edge import desk_rates
    from tests.support.builders import config

    on = config(serve={"enabled": True, "edge": "haproxy"})
    assert AdmissionSettings.from_config(on, "gw").haproxy_edge == desk_rates(on)
    assert AdmissionSettings.from_config(config(serve={"enabled": True}), "gw").haproxy_edge is None


def test_a_cluster_without_the_edge_drops_an_earlier_clusters_wrapper(monkeypatch):
    from serve_apps.haproxy_edge import MAP_ENV, WRAPPER, DeskRate, credential_key

    monkeypatch.setattr(ingress, "haproxy_binary", lambda: "/opt/haproxy")
    env: dict = {}
    first = ingress.install("haproxy", env, ports(), haproxy_edge_rates={credential_key("a"): DeskRate(5, 5)})
    ingress.remove_run_dir(first)
    assert env["RAY_SERVE_HAPROXY_BINARY_PATH"].endswith(WRAPPER) and MAP_ENV in env
    second = ingress.install("haproxy", env, ports())
    try:
        assert "RAY_SERVE_HAPROXY_BINARY_PATH" not in env and MAP_ENV not in env
    finally:
        ingress.remove_run_dir(second)


def test_serve_request_metrics_follow_the_config():
    from rayfin.config import parse_config

    base = {"cluster": {"racks": [{"name": "r0", "nodes": [{"name": "n0", "islands": [4]}]}]},
            "desks": [{"name": "fx", "nominal_gpus": 0, "credential_sha256": "0" * 64}]}
    for flag, value in ((None, "1"), (True, "1"), (False, "0")):
        serve = {} if flag is None else {"haproxy_request_metrics": flag}
        cfg = parse_config({**base, "serve": serve})
        env: dict = {}
        values = ingress.install_from_config(cfg, env, ports())
        try:
            assert env[ingress.REQUEST_METRICS] == value
        finally:
            ingress.remove_run_dir(values)
    # Serve's Python proxy has no HAProxy log to parse: a value left by an earlier cluster goes.
    env = {ingress.REQUEST_METRICS: "0"}
    ingress.install("proxy", env, ports())
    assert ingress.REQUEST_METRICS not in env


def test_request_metrics_setting_names_the_field():
    from rayfin.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="haproxy_request_metrics"):
        parse_config({"cluster": {"racks": [{"name": "r0", "nodes": [{"name": "n0", "islands": [4]}]}]},
                      "desks": [{"name": "fx", "nominal_gpus": 0, "credential_sha256": "0" * 64}], "serve": {"haproxy_request_metrics": "sometimes"}})


def test_the_haproxy_edge_wrapper_runs_haproxy_at_the_replica_niceness(monkeypatch, tmp_path):
    """`serve.replica_niceness` reaches the wrapper Serve runs as its HAProxy binary, which sets it
    just before it becomes HAProxy (exec keeps it); null leaves HAProxy at Ray's worker niceness."""
    from serve_apps import haproxy_edge
    from serve_apps.priority import Niceness
    from tests.support.builders import config

    monkeypatch.setattr(ingress, "haproxy_binary", lambda: "/opt/haproxy")
    for nice in (0, None):
        env: dict = {}
        cfg = config(serve={"enabled": True, "ingress": "haproxy", "edge": "haproxy", "replica_niceness": nice})
        values = ingress.install_from_config(cfg, env, ports())
        try:
            wrapper = open(env["RAY_SERVE_HAPROXY_BINARY_PATH"]).read()
            assert ("--nice 0 " in wrapper) if nice == 0 else ("--nice" not in wrapper)
        finally:
            ingress.remove_run_dir(values)
    set_to: list = []
    monkeypatch.setattr(haproxy_edge, "set_niceness", lambda n: set_to.append(n) or Niceness(n, 1, 1))
    monkeypatch.setattr(haproxy_edge.os, "execv", lambda *a: set_to.append("exec"))
    rendered = tmp_path / "haproxy.cfg"
    rendered.write_text("frontend http_frontend\n" + haproxy_edge.ANCHOR + "\n")
    haproxy_edge.main(["--real", "/opt/haproxy", "--map", str(tmp_path / "rates.map"), "--nice", "0", "--",
                       "-f", str(rendered)])
    assert set_to == [0, "exec"]                 # the niceness first, then HAProxy
    assert "acl rf_predict" in rendered.read_text()
    # Without the edge: the wrapper sets the niceness and leaves the config as Serve rendered it.
    set_to.clear()
    plain = tmp_path / "plain.cfg"
    plain.write_text("frontend http_frontend\n" + haproxy_edge.ANCHOR + "\n")
    before = plain.read_text()
    haproxy_edge.main(["--real", "/opt/haproxy", "--nice", "0", "--", "-f", str(plain)])
    assert set_to == [0, "exec"] and plain.read_text() == before


def test_the_wrapper_quotes_its_paths_and_runs_the_operators_haproxy(monkeypatch, tmp_path):
    """A path with a space survives the shell; an operator's own RAY_SERVE_HAPROXY_BINARY_PATH is
    what the wrapper runs, and a later cluster in the process still finds it."""
    import shlex

    from serve_apps import haproxy_edge

    text = haproxy_edge.wrapper_script("/opt/my venv/python", "/opt/ha proxy/haproxy", None, niceness=0)
    words = shlex.split(text.splitlines()[1])
    assert words[:2] == ["exec", "/opt/my venv/python"] and "/opt/ha proxy/haproxy" in words
    theirs = tmp_path / "their-haproxy"
    theirs.write_text("#!/bin/sh\n")
    theirs.chmod(0o755)
    import os

    saved = dict(os.environ)           # install() with no mapping works on the process environment
    monkeypatch.setattr(ingress, "_installed", ingress._installed)
    monkeypatch.setattr(ingress, "_installed_threads", ingress._installed_threads)
    monkeypatch.setattr(ingress, "_refresh_imported_serve", lambda ha_proxy: None)
    os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] = str(theirs)
    os.environ.pop(ingress.OPERATOR_BINARY, None)
    os.environ.pop("RAY_SERVE_ENABLE_HA_PROXY", None)
    first: dict = {}
    try:
        first = ingress.install("haproxy", None, ports(), niceness=0)
        wrapper = os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"]
        assert wrapper.endswith(haproxy_edge.WRAPPER) and str(theirs) in open(wrapper).read()
        assert ingress.haproxy_binary() == str(theirs)        # the next cluster's HAProxy is still theirs
    finally:
        ingress.remove_run_dir(first)
        os.environ.clear()
        os.environ.update(saved)
