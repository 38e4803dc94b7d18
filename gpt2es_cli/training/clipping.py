"""Gradient clipping: a fixed --grad-clip, or `auto`, adaptive to the recent gradient norms.

`--grad-clip auto` clips each step's global gradient norm at AUTO_FACTOR times an exponential
moving average of the norms before it (ZClip-style: the average follows the clipped norms, so
one spike does not raise the limit for the steps after it). The first step is not clipped (there
is no history yet). A spike, a bad batch or a loss that jumps is cut to twice the recent norm,
while a norm that drifts slowly (it grows as the rate decays) moves the limit with it, so the
limit never needs tuning to the model, the batch or the optimizer.

The state is two numbers, saved in last.pth and restored by --resume and by a NaN rollback, so
a resumed run clips exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Any

AUTO_FACTOR = 2.0
"""Clip at this multiple of the moving average of the recent norms."""
AUTO_DECAY = 0.98
"""Weight of the past in that average (about the last 50 steps)."""


class GradClip:
    """The clipping limit of each step (fixed or adaptive) and what it did."""

    def __init__(self, setting: float | str):
        self.auto = setting == "auto"
        self.fixed = math.inf if self.auto or not setting else float(setting)
        self.average: float | None = None
        """The moving average of the (clipped) norms so far (auto only)."""
        self.steps = 0

    def limit(self) -> float:
        """The largest gradient norm the next step may have (inf: no clipping)."""
        if not self.auto:
            return self.fixed
        return math.inf if self.average is None else AUTO_FACTOR * self.average

    def update(self, norm: float) -> None:
        """Take the norm (before clipping) of a step that was kept."""
        if not self.auto or not math.isfinite(norm):
            return
        clipped = min(norm, self.limit())
        self.average = clipped if self.average is None else AUTO_DECAY * self.average + (1 - AUTO_DECAY) * clipped
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"average": self.average, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        average = state.get("average")
        self.average = float(average) if average is not None else None
        self.steps = int(state.get("steps", 0))
