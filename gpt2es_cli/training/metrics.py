"""What the loop measures between reports: mean loss, tokens per second, step time, and MFU."""

from __future__ import annotations

import torch

STEP_TIME_SMOOTHING = 0.9
"""Weight of the past in the step time the ETA is computed from."""

# Dense bf16/fp16 tensor-core peaks (FLOP/s) of one GPU, by a substring of its name, for MFU.
GPU_PEAK_FLOPS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "A10G": 125e12,
    "A10": 125e12,
    "L40S": 362e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,
    "T4": 65e12,
}


def peak_flops(peak_tflops: float | None, device: torch.device) -> float | None:
    """One device's peak FLOP/s: --peak-tflops if given, else the table for known GPUs."""
    if peak_tflops:
        return peak_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAK_FLOPS.items():
            if key in name:
                return peak
    return None


class IntervalMeter:
    """Losses, tokens and time of the steps since the last report, and a smoothed step time."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.tokens = 0
        self.seconds = 0.0
        self.step_time: float | None = None
        self.clipped = 0
        """Steps whose gradient norm was above the clipping limit."""

    def add(self, loss: float, tokens: int, seconds: float, clipped: bool = False) -> None:
        self.clipped += int(clipped)
        self.losses.append(loss)
        self.tokens += tokens
        self.seconds += seconds
        a = STEP_TIME_SMOOTHING
        self.step_time = seconds if self.step_time is None else a * self.step_time + (1 - a) * seconds

    def drop_losses(self) -> None:
        """Forget the losses of steps that were rolled back (their tokens and time still count)."""
        self.losses = []

    @property
    def mean_loss(self) -> float:
        return sum(self.losses) / len(self.losses)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def eta(self, steps_left: int) -> float:
        return steps_left * (self.step_time or 0.0)

    def state_dict(self) -> dict:
        """The interval so far, for a checkpoint: a resumed run reports the same mean loss at the
        next log step as a run that never stopped."""
        return {"losses": list(self.losses), "tokens": self.tokens, "seconds": self.seconds,
                "step_time": self.step_time, "clipped": self.clipped}

    def load_state_dict(self, state: dict) -> None:
        self.losses = [float(x) for x in state.get("losses", [])]
        self.tokens = int(state.get("tokens", 0))
        self.seconds = float(state.get("seconds", 0.0))
        step_time = state.get("step_time")
        self.step_time = float(step_time) if step_time is not None else None
        self.clipped = int(state.get("clipped", 0))

    def reset(self) -> None:
        """Start a new report interval (the step time keeps its history)."""
        self.losses, self.tokens, self.seconds, self.clipped = [], 0, 0.0, 0
