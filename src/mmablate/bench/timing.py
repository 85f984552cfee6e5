"""Timing, FLOP counting and the result table of `mmablate.bench`.

`StepClock` is hooked into a trainer's own loop — the harness's ``after_step`` or, for trl's
Trainer, a `TrainerCallback` (`clock_callback`) — so that what is timed is one optimizer step
of the study's trainer as the pipeline runs it (data fetch, forward, backward, clipping,
optimizer, scheduler), not a loop written for the benchmark. Step 0 is a warm-up; step 1 runs
under `torch.utils.flop_counter.FlopCounterMode` (its model FLOPs: matmuls, convolutions,
attention) and is not timed; steps 2 … are timed, each from the end of the previous one.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

# Dense bf16 peak TFLOP/s by device-name substring (vendor data sheets), for MFU.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0,
                    "RTX 4090": 165.0, "RTX 3090": 71.0, "V100": 125.0}

WARMUP_STEPS = 2  # step 0: warm-up; step 1: FLOPs counted (slow under the counter), not timed


@dataclass
class Result:
    case: str
    model: str
    batch: int
    step_s: float
    params_m: float
    flops: float | None = None
    path: str = ""                  # the product code the step ran through
    reference: str = ""
    ref_step_s: float | None = None
    same_loss_step_s: float | None = None  # ours with the reference's loss (for the ratio)
    step_times: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def samples_s(self):
        return self.batch / self.step_s


class StepClock:
    """Per-step wall times and the FLOPs of one step, from a trainer's end-of-step hook.

    ``after_step(s)`` is called once optimizer step ``s`` (0-based) is done. Run the trainer for
    ``WARMUP_STEPS + n`` steps; then ``times`` holds n step times and ``flops`` the FLOPs of
    step 1 (None when the counter could not trace it)."""

    def __init__(self, device):
        self.device = device
        self.times: list[float] = []
        self.flops: float | None = None
        self._counter = None
        self._last = None

    def _sync(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def after_step(self, s: int):
        from torch.utils.flop_counter import FlopCounterMode

        self._sync()
        if s == 0:
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()
        elif s == 1:
            self.close()
        now = time.perf_counter()
        if s >= WARMUP_STEPS:
            self.times.append(now - self._last)
        self._last = time.perf_counter()

    def close(self):
        """Leaves the FLOP counter if it is still open (also after a failed run)."""
        if self._counter is not None:
            c, self._counter = self._counter, None
            c.__exit__(None, None, None)
            self.flops = float(c.get_total_flops()) or None

    @property
    def median(self) -> float:
        if not self.times:
            raise RuntimeError("StepClock: no timed step (run WARMUP_STEPS + n steps, n ≥ 1)")
        ts = sorted(self.times)
        return ts[len(ts) // 2]


def clock_callback(clock: StepClock):
    """A transformers `TrainerCallback` feeding ``clock`` (trl's trainers are Trainers): at
    ``on_step_end`` the state's ``global_step`` counts the finished optimizer steps."""
    from transformers import TrainerCallback

    class _Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            clock.after_step(state.global_step - 1)

    return _Clock()


def peak_tflops(device) -> float | None:
    import torch

    if os.environ.get("MMABLATE_PEAK_TFLOPS"):
        return float(os.environ["MMABLATE_PEAK_TFLOPS"])
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def params_m(*modules) -> float:
    return sum(p.numel() for m in modules for p in m.parameters()) / 1e6


def table(dev, results) -> str:
    from tabulate import tabulate

    peak = peak_tflops(dev)
    head = ["case", "model", "batch", "params M", "step s", "samples/s", "TFLOP/step",
            "TFLOP/s", "MFU", "reference", "ref step s", "speed vs ref (same loss)"]
    rows = []
    for r in results:
        tf = r.flops / 1e12 if r.flops else None
        tfs = tf / r.step_s if tf else None
        mfu = f"{100 * tfs / peak:.1f}%" if (tfs and peak) else "n/a"
        ours = r.same_loss_step_s or r.step_s
        ratio = f"{r.ref_step_s / ours:.2f}x" if r.ref_step_s else "n/a"
        rows.append([r.case, r.model + (f" [{'; '.join(r.notes)}]" if r.notes else ""), r.batch,
                     f"{r.params_m:.1f}", f"{r.step_s:.4f}", f"{r.samples_s:.2f}",
                     f"{tf:.4g}" if tf else "n/a", f"{tfs:.4g}" if tfs else "n/a", mfu,
                     r.reference or "n/a", f"{r.ref_step_s:.4f}" if r.ref_step_s else "n/a", ratio])
    return tabulate(rows, head, tablefmt="github")
