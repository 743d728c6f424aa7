"""Config validation: every bad field is reported with its path, value and what is allowed."""
import pytest
import yaml

from rayfin.cli import main
from rayfin.config import hash_token, load_config, parse_config, token_matches
from rayfin.errors import ConfigError
from tests.support.builders import config, config_data


def test_shipped_configs_are_valid():
    for name in ("local.yaml", "test.yaml"):
        cfg = load_config(f"configs/{name}")
        assert cfg.cluster.total_gpus >= 16
    local = load_config("configs/local.yaml")
    assert len(local.cluster.nodes) >= 4 and all(len(n.islands) == 2 for n in local.cluster.nodes)
    assert len(local.desks) >= 4


@pytest.mark.parametrize("patch, path, says", [
    ({"desks__0__nominal_gpus": -1}, "desks[0].nominal_gpus", "must be >= 0"),
    ({"desks__1__name": "FX Desk"}, "desks[1].name", "lowercase name"),
    ({"desks__0__weight": 0}, "desks[0].weight", "must be > 0"),
    ({"desks__0__credential_sha256": "abc"}, "desks[0].credential_sha256", "64 lowercase hex"),
    ({"cluster__racks__0__nodes__0__islands": [4, 0]}, "cluster.racks[0].nodes[0].islands[1]", "must be > 0"),
    ({"cluster__racks__0__nodes__0__gpu": 4}, "cluster.racks[0].nodes[0].gpu", "unknown field"),
    ({"defaults__priority": "urgent"}, "defaults.priority", "'critical', 'normal' or 'batch'"),
    ({"controller__cycle_interval_s": 0}, "controller.cycle_interval_s", "must be > 0"),
    ({"desks__0__pools": ["gpu-farm"]}, "(root)", "pool 'gpu-farm' has no nodes"),
    ({"desks__2__nominal_gpus": 9}, "(root)", "confined to pool 'risk' are guaranteed 9 GPUs but the pool has 8"),
    ({"desks__2__nominal_gpus": 9, "desks__2__pools": ["risk", "general"]}, "(root)", "exceeds the cluster's 16 GPUs"),
    ({"cluster__bandwidth_gbps": {"nvlink": 10, "intra_node": 50}}, "cluster.bandwidth_gbps", "must not increase"),
])
def test_bad_field_names_path_value_and_allowed(patch, path, says):
    with pytest.raises(ConfigError) as err:
        config(**patch)
    msg = str(err.value)
    assert path in msg, msg
    assert says in msg, msg
    assert "Traceback" not in msg
    assert err.value.problems and err.value.problems[0][0] == path


def test_all_problems_are_reported_at_once():
    data = config_data(desks__0__nominal_gpus=-1, desks__1__weight=-2)
    with pytest.raises(ConfigError) as err:
        parse_config(data, "x.yaml")
    assert "2 problems" in str(err.value)
    assert {p[0] for p in err.value.problems} == {"desks[0].nominal_gpus", "desks[1].weight"}


def test_value_shown_in_message():
    with pytest.raises(ConfigError, match=r"desks\[0\]\.nominal_gpus: got -7"):
        config(desks__0__nominal_gpus=-7)


def test_yaml_syntax_error_gives_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("cluster:\n  racks: [\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(p)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(p)


def test_validate_command(tmp_path, capsys):
    assert main(["validate", "configs/local.yaml"]) == 0
    assert "ok (32 GPUs" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    data = config_data(desks__0__nominal_gpus="lots")
    bad.write_text(yaml.safe_dump(data))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "desks[0].nominal_gpus: got 'lots'" in err and "Traceback" not in err


def test_tokens_hash_and_compare():
    h = hash_token("fx-demo-token")
    assert token_matches("fx-demo-token", h)
    assert not token_matches("fx-demo-tokeN", h)
    assert not token_matches(None, h) and not token_matches("", h)


@pytest.mark.parametrize("section, value, path", [
    ("autoscaling", {"quantile": 2}, "autoscaling.quantile"),
    ("autoscaling", {"pools": {"risk": {"lead_time_s": -5}}}, "autoscaling.pools.risk.lead_time_s"),
    ("telemetry", {"exporter": "zipkin"}, "telemetry.exporter"),
])
def test_feature_sections_are_validated_at_load(section, value, path):
    with pytest.raises(ConfigError) as err:
        parse_config(config_data(**{section: value}), "x.yaml")
    assert path in str(err.value)


# ---------------------------------------------------------------- one typed tree (issue 19)
def _models_in(model, seen=None):
    """Every pydantic model class reachable from `model`'s fields."""
    import typing

    from pydantic import BaseModel

    seen = set() if seen is None else seen
    if model in seen:
        return seen
    seen.add(model)
    for f in model.model_fields.values():
        stack = [f.annotation]
        while stack:
            t = stack.pop()
            if isinstance(t, type) and issubclass(t, BaseModel):
                _models_in(t, seen)
            stack.extend(typing.get_args(t))
    return seen


def test_every_section_is_a_model_on_one_base():
    from rayfin.autoscale.config import AutoscalingSettings
    from rayfin.config import RayfinConfig
    from rayfin.config_base import ConfigModel
    from rayfin.telemetry.config import TelemetryConfig

    models = _models_in(RayfinConfig)
    assert {AutoscalingSettings, TelemetryConfig} <= models
    assert all(issubclass(m, ConfigModel) for m in models), [m for m in models if not issubclass(m, ConfigModel)]
    for name, field in RayfinConfig.model_fields.items():       # no free-form dict left
        assert field.annotation is not dict and "dict[str, Any]" not in str(field.annotation), name


def test_feature_sections_are_parsed_once_and_consumers_get_models():
    from rayfin.autoscale import AutoscalingSettings, parse_autoscaling
    from rayfin.telemetry.config import TelemetryConfig, parse_telemetry

    cfg = parse_config(config_data(telemetry={"exporter": "console"},
                                   autoscaling={"quantile": 0.8, "pools": {"risk": {"max_gpus": 8}}}), "x.yaml")
    assert isinstance(cfg.telemetry, TelemetryConfig) and cfg.telemetry.exporter == "console"
    assert isinstance(cfg.autoscaling, AutoscalingSettings) and cfg.autoscaling.pools["risk"].max_gpus == 8
    # a model passes through the section parsers untouched: nothing is validated twice
    assert parse_telemetry(cfg.telemetry) is cfg.telemetry and parse_autoscaling(cfg.autoscaling) is cfg.autoscaling


def test_a_dumped_config_loads_back_equal():
    # `rayfin up` hands its config to the supervisor process as JSON (rayfin/supervisor.py)
    cfg = parse_config(config_data(telemetry={"exporter": "otlp", "otlp_endpoint": "http://c:4318/v1/traces"},
                                   autoscaling={"pools": {"risk": {"lead_time_s": 60}}}), "x.yaml")
    assert parse_config(cfg.model_dump(mode="json"), "dump") == cfg


@pytest.mark.parametrize("patch, path, says", [
    ({"controller__cordon_s": -1}, "controller.cordon_s", "must be >= 0"),
    ({"controller__admit_timeout_s": 0}, "controller.admit_timeout_s", "must be > 0"),
    ({"serve__ingress": "nginx"}, "serve.ingress", "'haproxy' or 'proxy'"),
])
def test_controller_tunables_and_ingress_are_checked(patch, path, says):
    with pytest.raises(ConfigError) as err:
        config(**patch)
    assert path in str(err.value) and says in str(err.value), str(err.value)


def test_controller_tunables_default_to_the_controller_s_old_constants():
    c = config().controller
    assert (c.cordon_s, c.admit_timeout_s) == (20.0, 180.0)
    assert config(controller__cordon_s=5, controller__admit_timeout_s=30).controller.cordon_s == 5


def test_the_ingress_choice_is_written_once():
    import typing

    from rayfin.config import Ingress, ServeConfig

    assert typing.get_args(Ingress) == ("haproxy", "proxy")
    assert ServeConfig.model_fields["ingress"].annotation == Ingress


def test_a_desk_can_keep_out_of_least_attained_service(tmp_path):
    from rayfin.policy.model import DeskQuota      # (as the controller and the market plan build quotas)
    cfg = config(desks__0__least_attained_service=False)
    quotas = {d.name: DeskQuota.from_config(d) for d in cfg.desks}
    assert quotas[cfg.desks[0].name].las is False
    assert all(q.las for name, q in quotas.items() if name != cfg.desks[0].name)
