"""How much slower a multi-GPU job runs on a spread placement: three models the benchmark reports.

    none        no stretch: every placement runs at the trace duration.
    linear      a formula (placement.allreduce.stretch_factor): D * ((1 - f) + f * B_ideal / B),
                f = 0.3 for every multi-GPU job; reported beside the calibrated model, which is
                measured (its reach: docs/scheduling.md, "The placement model").
    calibrated  (default) measured step times, not a formula. Each multi-GPU job gets one of six
                model classes by a stable hash of its id (crc32), and the class's slowdown of a
                placement that spans more nodes than the job needs:

                    stretch = min(cap, S[fabric][class])   if the job fits one node but spans several
                            = 1                            otherwise

S[pcie-ethernet][class] is the median, over every per-GPU batch size and every spread placement
of 2 to 4 GPUs, of step_time(spread) / step_time(same GPUs on one node) in the Pollux (OSDI'21)
artifact's `<model>_placements.csv` (AWS g4dn: PCIe in a node, Ethernet between nodes; see
shared/profiles/README.md). From those files: bert 2.14, yolov3 1.84, ncf 1.82, cifar10 1.13,
imagenet 1.08, deepspeech2 1.07 (computed at load time, not copied).

S[nvlink-ib] scales the same sensitivity into the range the Sia (SOSP'23) artifact measures on
DGX-A100 with InfiniBand, 0.8x to 1.05x for the same spreads: 1 + 0.05 * (S_pe - 1) /
(max S_pe - 1), so the most sensitive class pays 5% and the least nearly nothing (speed-ups
below 1x are not credited).

What is not measured is not charged: a split across two NVLink islands of one node, and spans
across racks beyond spanning nodes (Pollux's nodes share one Ethernet switch) cost nothing
extra; a job larger than a node ran spread in the trace already, so its trace duration holds it.
"""
from __future__ import annotations

import csv
import statistics
import zlib
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Mapping

from placement.allreduce import stretch_factor
from placement.topology import Topology

PROFILE_DIR = Path(__file__).resolve().parents[3] / "shared" / "profiles" / "pollux"
MODELS = ("bert", "cifar10", "deepspeech2", "imagenet", "ncf", "yolov3")
SIA_NVLINK_IB_MAX = 1.05   # Sia SOSP'23 artifact: worst spread slowdown measured on DGX-A100 + IB


class PlacementModel(Enum):
    NONE = "none"
    LINEAR = "linear"
    CALIBRATED = "calibrated"


class Fabric(Enum):
    NVLINK_IB = "nvlink-ib"
    PCIE_ETHERNET = "pcie-ethernet"


def spread_slowdown(rows: list[dict]) -> float:
    """Median step_time(spread) / step_time(packed on one node, same GPUs and batch size) over the
    rows of one `<model>_placements.csv` (placement strings: one digit per node)."""
    packed = {(r["placement"], r["local_bsz"]): float(r["step_time"]) for r in rows if len(r["placement"]) == 1}
    ratios = []
    for r in rows:
        p = r["placement"]
        n = sum(int(c) for c in p)
        ref = packed.get((str(n), r["local_bsz"])) if n <= 9 else None
        if len(p) >= 2 and ref:
            ratios.append(float(r["step_time"]) / ref)
    if not ratios:
        raise ValueError("placements file: no spread placement with a packed reference row "
                         "(need rows like '4' and '22' at the same local_bsz)")
    return statistics.median(ratios)


def load_slowdowns(profile_dir: str | Path = PROFILE_DIR) -> dict[str, float]:
    """Per model class, the pcie-ethernet spread slowdown measured in the Pollux artifact."""
    out = {}
    for m in MODELS:
        path = Path(profile_dir) / f"{m}_placements.csv"
        with open(path, newline="") as fh:
            out[m] = spread_slowdown(list(csv.DictReader(fh)))
    return out


def fabric_slowdowns(measured: Mapping[str, float], fabric: Fabric) -> dict[str, float]:
    if fabric is Fabric.PCIE_ETHERNET:
        return {m: max(1.0, s) for m, s in measured.items()}
    top = max(measured.values())
    if top <= 1.0:
        return {m: 1.0 for m in measured}
    return {m: 1.0 + (SIA_NVLINK_IB_MAX - 1.0) * max(0.0, s - 1.0) / (top - 1.0) for m, s in measured.items()}


def model_class(job_id: str) -> str:
    return MODELS[zlib.crc32(job_id.encode("utf-8")) % len(MODELS)]


@dataclass(frozen=True)
class Stretch:
    """The runtime model the simulator applies to every policy alike."""

    kind: PlacementModel = PlacementModel.CALIBRATED
    slowdowns: Mapping[str, float] | None = None   # per class (calibrated)
    cap: float = 2.8                               # Pollux-like Ethernet worst case
    comm_fraction: float = 0.3                     # linear only

    @classmethod
    def build(cls, kind: PlacementModel | str, fabric: Fabric | str = Fabric.NVLINK_IB, cap: float = 2.8,
              comm_fraction: float = 0.3, profile_dir: str | Path = PROFILE_DIR) -> "Stretch":
        kind, fabric = PlacementModel(kind), Fabric(fabric)
        if cap < 1.0:
            raise ValueError(f"stretch cap must be >= 1; got {cap}")
        slow = fabric_slowdowns(load_slowdowns(profile_dir), fabric) if kind is PlacementModel.CALIBRATED else None
        return cls(kind, slow, cap, comm_fraction)

    def factor(self, topo: Topology, job_id: str, placement) -> float:
        n = int(round(sum(g for _, g in placement)))
        if n <= 1 or self.kind is PlacementModel.NONE:
            return 1.0
        if self.kind is PlacementModel.LINEAR:
            return stretch_factor(topo, placement, self.comm_fraction)
        lay = topo.layout
        if n > lay.max_node:
            return 1.0
        nodes = {lay.island_node[lay.index[i]] for i, _ in placement}
        if len(nodes) <= 1:
            return 1.0
        return min(self.cap, (self.slowdowns or {}).get(model_class(job_id), 1.0))
