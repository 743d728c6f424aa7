"""Request and response bodies of the gateway (pydantic), one input model per model kind.

Bounds match what the models were fitted on, so a value outside them is a 422 naming the field
rather than a silent extrapolation.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from serve_apps.models import fraud_scorer, option_pricer

MAX_ROWS = 256


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OptionInput(_Strict):
    # Prices below a millionth of a currency unit are not prices (and vanish in float32).
    spot: float = Field(..., ge=1e-6, le=1e9)
    strike: float = Field(..., ge=1e-6, le=1e9)
    maturity_years: float = Field(..., ge=option_pricer.MATURITY[0], le=option_pricer.MATURITY[1])
    volatility: float = Field(..., ge=option_pricer.VOL[0], le=option_pricer.VOL[1])
    rate: float = Field(0.0, ge=option_pricer.RATE[0], le=option_pricer.RATE[1])
    kind: Literal["call", "put"] = "call"

    def row(self) -> list[float]:
        return [self.spot, self.strike, self.maturity_years, self.volatility, self.rate,
                1.0 if self.kind == "call" else 0.0]


class FraudInput(_Strict):
    amount: float = Field(..., ge=0.5, le=50_000)
    hour: int = Field(..., ge=0, le=23)
    merchant_risk: float = Field(..., ge=0, le=1)
    distance_km: float = Field(0.0, ge=0, le=20_000)
    tx_last_hour: int = Field(0, ge=0, le=1_000)
    card_present: bool = True

    def row(self) -> list[float]:
        return [self.amount, float(self.hour), self.merchant_risk, self.distance_km, float(self.tx_last_hour),
                1.0 if self.card_present else 0.0]


class OptionPredictRequest(_Strict):
    inputs: list[OptionInput] = Field(..., min_length=1, max_length=MAX_ROWS)


class FraudPredictRequest(_Strict):
    inputs: list[FraudInput] = Field(..., min_length=1, max_length=MAX_ROWS)


REQUEST_SCHEMAS: dict[str, type[BaseModel]] = {
    "option_pricer": OptionPredictRequest,
    "fraud_scorer": FraudPredictRequest,
}
assert tuple(OptionInput.model_fields)[:5] == option_pricer.FEATURES[:5]
assert tuple(FraudInput.model_fields) == fraud_scorer.FEATURES


def rows_of(req: BaseModel) -> list[list[float]]:
    return [x.row() for x in req.inputs]


class PredictResponse(_Strict):
    model: str
    predictions: list[float]
    batch_size: int = Field(..., description="requests served by the same forward pass")
    gpu_seconds: float = Field(..., description="GPU-seconds charged for this request")
    device: str


def example_body(kind: str, n: int = 1) -> dict:
    """A valid body for a model kind (docs, demo, benchmark)."""
    if kind == "option_pricer":
        row = {"spot": 101.0, "strike": 100.0, "maturity_years": 0.5, "volatility": 0.25, "rate": 0.03, "kind": "call"}
    else:
        row = {"amount": 420.0, "hour": 2, "merchant_risk": 0.7, "distance_km": 800.0, "tx_last_hour": 4,
               "card_present": False}
    return {"inputs": [row] * n}
