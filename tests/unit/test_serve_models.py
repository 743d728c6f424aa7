"""The served models fit at start-up from a seed, and the request schemas name bad fields."""
import pytest
import torch
from pydantic import ValidationError

from serve_apps.models import build, option_pricer
from serve_apps.schemas import REQUEST_SCHEMAS, example_body, rows_of


@pytest.fixture(scope="module")
def pricer():
    torch.set_num_threads(1)
    return build("option_pricer", seed=0)


@pytest.fixture(scope="module")
def scorer():
    torch.set_num_threads(1)
    return build("fraud_scorer", seed=0)


def test_pricer_fits_black_scholes(pricer):
    # Mean error under 1% of the strike over the fitted domain; prices obey put-call parity roughly.
    assert pricer.fit_metrics["test_mae_per_100_strike"] < 1.0
    rows = torch.tensor([[100.0, 100.0, 1.0, 0.2, 0.05, 1.0], [100.0, 100.0, 1.0, 0.2, 0.05, 0.0]])
    exact = option_pricer.black_scholes(*rows.unbind(-1))   # 10.45 call, 5.57 put
    assert torch.allclose(pricer.predict(rows), exact, atol=1.0)


def test_pricer_scales_with_strike(pricer):
    # The net predicts price / strike: 10x spot and strike -> 10x price.
    small = pricer.predict(torch.tensor([[90.0, 100.0, 0.5, 0.3, 0.02, 1.0]]))
    big = pricer.predict(torch.tensor([[900.0, 1000.0, 0.5, 0.3, 0.02, 1.0]]))
    assert big.item() == pytest.approx(10 * small.item(), rel=1e-4)


def test_same_seed_same_weights():
    a = build("fraud_scorer", seed=3, steps=20)
    b = build("fraud_scorer", seed=3, steps=20)
    x = torch.tensor([[420.0, 2.0, 0.7, 800.0, 4.0, 0.0]])
    assert a.predict(x).item() == b.predict(x).item()


def test_scorer_ranks_fraud_near_the_oracle(scorer):
    assert scorer.fit_metrics["test_auc"] > scorer.fit_metrics["oracle_auc"] - 0.02
    risky = scorer.predict(torch.tensor([[5000.0, 3.0, 0.95, 3000.0, 8.0, 0.0]])).item()
    safe = scorer.predict(torch.tensor([[20.0, 14.0, 0.05, 1.0, 0.0, 1.0]])).item()
    assert 0.0 <= safe < risky <= 1.0


@pytest.mark.parametrize("kind, body, field", [
    ("option_pricer", {"inputs": [{"spot": -1, "strike": 100, "maturity_years": 1, "volatility": 0.2}]}, "spot"),
    ("option_pricer", {"inputs": [{"spot": 1, "strike": 100, "maturity_years": 9, "volatility": 0.2}]}, "maturity_years"),
    ("option_pricer", {"inputs": []}, "inputs"),
    ("fraud_scorer", {"inputs": [{"amount": 10, "hour": 24, "merchant_risk": 0.1}]}, "hour"),
    ("fraud_scorer", {"inputs": [{"amount": 10, "hour": 2, "merchant_risk": 0.1, "extra": 1}]}, "extra"),
])
def test_schema_names_the_bad_field(kind, body, field):
    with pytest.raises(ValidationError) as info:
        REQUEST_SCHEMAS[kind].model_validate(body)
    assert any(field in map(str, e["loc"]) for e in info.value.errors())


@pytest.mark.parametrize("kind", ["option_pricer", "fraud_scorer"])
def test_example_bodies_are_valid(kind):
    rows = rows_of(REQUEST_SCHEMAS[kind].model_validate(example_body(kind, 3)))
    assert len(rows) == 3 and len(rows[0]) == 6


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown model kind"):
        build("llm")


def test_a_gpu_batch_runs_off_the_event_loop_and_a_cpu_batch_on_it():
    """The replica's one event loop also serves HTTP and the edge (high-throughput mode): a batch
    on a GPU waits in a worker thread, on the CPU it runs inline; the answers are the same."""
    import asyncio
    import threading

    from serve_apps.model_server import offload_inference, run_batch

    assert offload_inference("cuda") and offload_inference("cuda:1") and not offload_inference("cpu")
    model = build("option_pricer", seed=0, steps=5, device="cpu")
    flat = torch.tensor(rows_of(REQUEST_SCHEMAS["option_pricer"].model_validate(example_body("option_pricer"))),
                        dtype=torch.float32)
    threads = []

    def forward(x):
        threads.append(threading.current_thread())
        return model.predict(x).tolist()

    inline = asyncio.run(run_batch(forward, flat, False))
    offloaded = asyncio.run(run_batch(forward, flat, True))
    assert inline == offloaded
    assert threads[0] is threading.main_thread() and threads[1] is not threading.main_thread()
