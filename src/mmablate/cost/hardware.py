"""Accelerator peaks for the cost estimate: dense bf16 tensor FLOP/s and memory bandwidth.

Dense (not the 2:4-sparsity figures the data sheets print first), SXM/OAM parts unless the name
says otherwise. An estimate divides a job's FLOPs by ``peak × MFU``; generation is also bounded
by streaming the weights once per decoding step (``bytes / bandwidth``): whichever is slower.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class GPU:
    name: str
    bf16_tflops: float      # dense bf16 tensor-core peak, TFLOP/s
    hbm_tbs: float          # memory bandwidth, TB/s
    source: str


GPUS = {g.name: g for g in (
    GPU("H200", 989.0, 4.8, "NVIDIA H200 Tensor Core GPU product page (SXM: BF16 1,979 TFLOPS "
                            "with sparsity → 989 dense; 4.8 TB/s HBM3e)"),
    GPU("H100", 989.0, 3.35, "NVIDIA H100 Tensor Core GPU datasheet (SXM5: BF16 1,979 TFLOPS "
                             "with sparsity → 989 dense; 3.35 TB/s HBM3)"),
    GPU("H100-PCIe", 756.0, 2.0, "NVIDIA H100 datasheet (PCIe: BF16 1,513 TFLOPS with sparsity "
                                 "→ 756 dense; 2.0 TB/s HBM2e)"),
    GPU("A100", 312.0, 2.039, "NVIDIA A100 Tensor Core GPU datasheet (80 GB SXM: BF16 312 "
                              "TFLOPS dense; 2,039 GB/s HBM2e)"),
    GPU("A100-40GB", 312.0, 1.555, "NVIDIA A100 datasheet (40 GB SXM: BF16 312 TFLOPS; "
                                   "1,555 GB/s)"),
    GPU("L40S", 362.0, 0.864, "NVIDIA L40S datasheet (BF16 733 TFLOPS with sparsity → 362 "
                              "dense; 864 GB/s GDDR6)"),
    GPU("A10", 125.0, 0.6, "NVIDIA A10 datasheet (BF16 250 TFLOPS with sparsity → 125 dense; "
                           "600 GB/s)"),
    GPU("B200", 2250.0, 8.0, "NVIDIA HGX B200 specifications (per GPU: FP16/BF16 4.5 PFLOPS with "
                             "sparsity → 2.25 dense; 8 TB/s HBM3e)"),
)}


def gpu(name: str, peak_tflops: float | None = None, bandwidth_tbs: float | None = None) -> GPU:
    """The named GPU (case-insensitive); ``peak_tflops``/``bandwidth_tbs`` override its figures
    or, with a name not in the table, define a device (e.g. a CPU for the tiny scale)."""
    known = {k.lower(): v for k, v in GPUS.items()}
    g = known.get(str(name).lower())
    if g is None:
        if peak_tflops is None:
            raise ConfigError(f"--gpu {name!r}: no peak known; known: {sorted(GPUS)} "
                              f"(or give --peak-tflops and --bandwidth-tbs for another device)")
        return GPU(str(name), float(peak_tflops), float(bandwidth_tbs or 0.0) or float("inf"),
                   "given on the command line")
    if peak_tflops is None and bandwidth_tbs is None:
        return g
    return GPU(g.name, float(peak_tflops or g.bf16_tflops), float(bandwidth_tbs or g.hbm_tbs),
               "given on the command line (overriding " + g.source + ")")


def by_device_name(device_name: str) -> GPU | None:
    """The table's entry for a CUDA device name (``NVIDIA H100 80GB HBM3`` → H100)."""
    n = device_name.upper()
    for key in ("H200", "H100", "A100", "L40S", "B200", "A10"):
        if key in n:
            if key == "H100" and "PCIE" in n:
                return GPUS["H100-PCIe"]
            if key == "A100" and "40GB" in n.replace(" ", ""):
                return GPUS["A100-40GB"]
            if key == "A10" and ("A100" in n or "A10G" in n):
                continue
            return GPUS[key]
    return None
