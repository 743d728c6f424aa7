"""The Serve deployment that runs one fitted model, with dynamic batching (`@serve.batch`).

Production serves models through `serve_apps.deployments.GatedModel`, which subclasses this
class and puts admission in front of `predict_batch`. This class alone, with its plain-HTTP
`__call__` and no admission, is plain Serve: the benchmark's baseline
(`rayfin-direct-<name>`, benchmarks/serve_quota.py).
"""
from __future__ import annotations

import asyncio
import gc
import os
import time
from collections import Counter

import torch
from pydantic import ValidationError
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from rayfin.config import ServeModelConfig
from serve_apps.models import build
from serve_apps.priority import AtNiceness
from serve_apps.schemas import REQUEST_SCHEMAS, rows_of


def offload_inference(device: str) -> bool:
    """Whether a batch's forward pass runs in a worker thread instead of on the event loop."""
    return not str(device).startswith("cpu")


async def run_batch(forward, flat, offload: bool):
    """`forward(flat)` in a worker thread (`offload`) or inline on the running loop."""
    return await asyncio.to_thread(forward, flat) if offload else forward(flat)


@serve.deployment
class ModelServer(AtNiceness):
    def __init__(self, model: ServeModelConfig, niceness: int | None = None) -> None:
        # Serve at the node's normal priority, not Ray's worker nice 15 (serve_apps/priority.py).
        self.hold_niceness(niceness)
        # One thread: replicas share the node's cores, and these models are tiny.
        torch.set_num_threads(1)
        self.name, self.kind = model.name, model.kind
        self.gpus = model.gpus_per_replica
        self.model = build(self.kind, seed=model.seed, steps=model.fit_steps)
        self.schema = REQUEST_SCHEMAS[self.kind]
        self.predict_batch.set_max_batch_size(model.max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(model.batch_wait_timeout_s)
        self.batch_sizes: Counter[int] = Counter()
        # Serve runs this class on the replica's one event loop (serve_apps/ingress.py: Ray's
        # high-throughput mode), the loop that also serves HTTP, sheds a flood at the edge and
        # answers health checks. On a GPU a batch's forward pass and copy back wait on the device
        # (with the GIL released), so it runs in a worker thread and the loop keeps serving. On
        # the CPU it runs inline: these models' batches are cheaper than the hand-over to a
        # thread (docs/serving.md).
        self.offload = offload_inference(self.model.device)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict_batch(self, items: list[list[list[float]]]) -> list[dict]:
        sizes = [len(rows) for rows in items]
        flat = torch.tensor([r for rows in items for r in rows], dtype=torch.float32)
        out, elapsed = await run_batch(self._forward, flat, self.offload)
        self.batch_sizes[len(items)] += 1
        total = max(1, sum(sizes))
        results, at = [], 0
        for n in sizes:
            # A fractional replica is charged its fraction, shared by rows across the batch.
            results.append({"model": self.name, "predictions": out[at:at + n], "batch_size": len(items),
                            "gpu_seconds": elapsed * self.gpus * n / total, "device": self.model.device})
            at += n
        return results

    def _forward(self, flat: "torch.Tensor") -> tuple[list, float]:
        start = time.perf_counter()
        out = self.model.predict(flat).tolist()
        return out, time.perf_counter() - start

    async def predict(self, rows: list[list[float]]) -> dict:
        return await self.predict_batch(rows)

    async def __call__(self, request: Request):
        try:
            body = self.schema.model_validate_json(await request.body())
        except ValidationError as exc:
            return JSONResponse({"error": "invalid_body", "detail": exc.errors(include_url=False, include_input=False)},
                                status_code=422)
        return await self.predict(rows_of(body))

    def info(self) -> dict:
        return {"model": self.name, "kind": self.kind, "device": self.model.device, "gpus": self.gpus,
                "fit": self.model.fit_metrics, "batch_sizes": dict(self.batch_sizes),
                "priority": self.priority.as_dict(), "nice": os.nice(0),
                "gc_collections": [g["collections"] for g in gc.get_stats()]}   # per generation, since start
