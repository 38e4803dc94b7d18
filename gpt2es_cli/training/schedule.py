"""The learning-rate schedule: the curves (warmup, then cosine, linear, constant, wsd or onecycle
down to min_lr) and the `Schedule` of segments that re-plans them without a jump.

`learning_rate` draws one curve planned for a number of steps and a warmup. A `Schedule` is a
run's rate at every step: its first segment, from step 0, is planned for a number of steps and a
warmup; each later one starts at the step it was re-planned at, and never makes the rate jump.
While the plan is still running, a re-plan stretches (or squeezes) what is left of the curve to
end at the new total: the rate goes on from where it is, with the same shape (the rest of the
warmup, the stable part of wsd, the decay), annealed to min_lr on the new last step. When the
old plan had already ended (a finished run resumed with a larger budget), or when it was only a
placeholder (before the first time fit), the segment joins, linearly over a warmup's length, the
curve of a run planned for the new total from the start: a finished run re-warms from min_lr to
that curve and decays again.

Nothing here reads a clock or uses torch: the same steps give the same rates in every process.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, replace

from gpt2es_cli.config import TrainConfig
from gpt2es_cli.errors import ConfigError

ONECYCLE_WARMUP = 0.3
"""OneCycle's rising phase: 30% of the steps, torch's OneCycleLR pct_start."""
ONECYCLE_DIV = 25.0
"""OneCycle starts at lr / 25 (torch's div_factor)."""


def default_warmup(total_steps: int, schedule: str = "cosine") -> int:
    """5% of the steps, at least 1, at most 1000; onecycle's rising phase: 30% of them."""
    if schedule == "onecycle":
        return max(1, round(ONECYCLE_WARMUP * total_steps))
    return min(1000, max(1, total_steps // 20))


def learning_rate(
    step: int,
    *,
    lr: float,
    min_lr: float,
    total_steps: int,
    warmup_steps: int,
    schedule: str = "cosine",
    decay_fraction: float = 0.2,
) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup to lr, then

    cosine: half a cosine down to min_lr at total_steps; linear: a straight line to min_lr;
    constant: lr; wsd (warmup-stable-decay): lr until the last `decay_fraction` of the steps,
    then a straight line to min_lr. onecycle: torch's OneCycleLR (two phases, cosine annealing,
    no momentum cycling): from lr / ONECYCLE_DIV at step 0 up to lr at step warmup_steps - 1 by
    half a cosine, then down to min_lr at the last step by another. Past total_steps it stays at
    the end value.
    """
    if schedule == "onecycle":
        return _onecycle(step, lr, min_lr, total_steps, warmup_steps)
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    if schedule == "wsd":
        decay_start = max(warmup_steps, total_steps - math.ceil(decay_fraction * total_steps))
        if step < decay_start:
            return lr
        span = max(1, total_steps - decay_start)
        return lr - (lr - min_lr) * min(1.0, (step - decay_start + 1) / span)
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps + 1) / span)
    if schedule == "cosine":
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)
    if schedule == "linear":
        return lr - (lr - min_lr) * progress
    raise ConfigError(f"unknown schedule {schedule!r}: choose cosine, linear, constant, wsd or onecycle")


def _onecycle(step: float, lr: float, min_lr: float, total_steps: int, warmup_steps: int) -> float:
    def anneal(start: float, end: float, progress: float) -> float:
        return end + (start - end) / 2 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))

    peak = max(0, warmup_steps - 1)  # the step at lr (torch: pct_start * total_steps - 1)
    if step <= peak and peak > 0:
        return anneal(lr / ONECYCLE_DIV, lr, step / peak)
    return anneal(lr, min_lr, (step - peak) / max(1, total_steps - 1 - peak))


@dataclass(frozen=True)
class Segment:
    """From optimizer step `start` (0-based) on, the rate ends at min_lr on step `total_steps` - 1:
    the previous segment's curve stretched to it (`stretch`), or the curve planned for
    `total_steps` with `warmup_steps` from step 0, joined from the previous rate over `join` steps."""

    start: int
    total_steps: int
    warmup_steps: int
    """The warmup (for a stretched segment: where its stretched warmup ends)."""
    join: int = 0
    stretch: bool = False


@dataclass(frozen=True)
class Schedule:
    """The learning rate of every step: warmup then `kind` to min_lr, re-planned piecewise."""

    lr: float
    min_lr: float
    kind: str
    decay_fraction: float
    segments: tuple[Segment, ...]

    def __post_init__(self) -> None:
        anchors: list[float] = []  # the rate at the step before each segment, which the segment joins
        for i, segment in enumerate(self.segments):
            anchors.append(0.0 if i == 0 else self._rate(segment.start - 1, i - 1, anchors))
        object.__setattr__(self, "_anchors", anchors)
        object.__setattr__(self, "_starts", [s.start for s in self.segments])

    @property
    def total_steps(self) -> int:
        return self.segments[-1].total_steps

    @property
    def warmup_steps(self) -> int:
        return self.segments[-1].warmup_steps

    def _base(self, segment: Segment, step: float) -> float:
        return learning_rate(
            step, lr=self.lr, min_lr=self.min_lr, total_steps=segment.total_steps,
            warmup_steps=segment.warmup_steps, schedule=self.kind, decay_fraction=self.decay_fraction,
        )

    def _rate(self, step: float, i: int, anchors: list[float]) -> float:
        segment = self.segments[i]
        if i > 0 and segment.stretch:  # the previous curve, from start - 1 to its end, over start - 1 to ours
            before = self.segments[i - 1].total_steps - segment.start
            virtual = segment.start - 1 + (step - segment.start + 1) * before / (segment.total_steps - segment.start)
            return self._rate(virtual, i - 1, anchors)
        base = self._base(segment, step)
        left = 1 - (step - segment.start + 1) / (segment.join + 1)  # share of the gap still to close
        if i == 0 or segment.join <= 0 or left <= 0:
            return base
        # never above the peak: a join from a higher rate onto a curve still rising would overshoot it
        return min(self.lr, base + (anchors[i] - self._base(segment, segment.start - 1)) * left)

    def __call__(self, step: int) -> float:
        """The rate of optimizer step `step` (0-based)."""
        i = max(0, bisect.bisect_right(self._starts, step) - 1)  # type: ignore[attr-defined]
        return self._rate(step, i, self._anchors)  # type: ignore[attr-defined]

    def replanned(self, start: int, total_steps: int, warmup_steps: int, rejoin: bool = False) -> Schedule:
        """The schedule planned again from step `start` to end at `total_steps`: what is left of the
        current curve stretched to it, or (`rejoin`, or the current plan has ended, or only the warmup
        changes) the curve planned for `total_steps` with `warmup_steps`, joined over the warmup."""
        last = self.segments[-1]
        if (total_steps, warmup_steps) == (last.total_steps, last.warmup_steps):
            return self
        kept = tuple(s for s in self.segments if s.start < start)
        if not kept:
            return replace(self, segments=(Segment(0, total_steps, warmup_steps),))
        previous = kept[-1]
        if rejoin or start >= previous.total_steps or total_steps == previous.total_steps:
            join = max(0, min(max(warmup_steps, 1), total_steps - 1 - start))
            return replace(self, segments=(*kept, Segment(start, total_steps, warmup_steps, join)))
        warmup = previous.warmup_steps
        if start < warmup:  # the rest of the warmup stretches too
            warmup = start + math.ceil((warmup - start) * (total_steps - start) / (previous.total_steps - start))
        return replace(self, segments=(*kept, Segment(start, total_steps, warmup, stretch=True)))

    @classmethod
    def of(cls, config: TrainConfig, segments: tuple[Segment, ...]) -> Schedule:
        """The schedule `config` asks for (rate, floor, kind) over these segments (min_lr resolved)."""
        return cls(lr=config.peak_lr, min_lr=config.floor_lr, kind=config.schedule, decay_fraction=config.decay_fraction,
                   segments=segments)
