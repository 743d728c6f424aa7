"""Discrete-event trace simulator: replays a job trace through rayfin's policy core."""
from rayfin.sim.engine import SimResult, Simulator
from rayfin.sim.metrics import summarize
from rayfin.sim.trace import TraceJob, desk_of, equal_desks, load_trace

__all__ = ["SimResult", "Simulator", "TraceJob", "desk_of", "equal_desks", "load_trace", "summarize", "simulate"]


def simulate(jobs, topology, desks, cfg, comm_fraction: float = 0.3, record_desks: bool = False,
             name: str = "") -> SimResult:
    """Replay `jobs` on `topology` with `desks` under `cfg`; tenants map to desks by `desk_of`."""
    mapping = {j.tenant: desk_of(j.tenant, len(desks)) for j in jobs}
    return Simulator(topology, desks, cfg, mapping, comm_fraction, record_desks, name).run(jobs)
