"""Learning-rate schedules as pure functions of the step (so resuming at step k gives the same LR).

- `cosine`: linear warmup to the peak, then cosine decay to `minLrRatio x peak` at the last step;
- `wsd` (warmup-stable-decay): warmup, constant, then linear decay over the last
  `decayFraction` of the steps -- a run can be extended before its decay phase starts;
- `constant`: warmup, then constant.
"""

from __future__ import annotations

import math

from cpt_core.api.v1alpha1 import Schedule, ScheduleType


def lr_at(step: int, total_steps: int, peak: float, schedule: Schedule) -> float:
    """The learning rate for optimizer step `step` (0-based) of `total_steps`."""
    warmup = min(schedule.warmup_steps, total_steps)
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    floor = peak * schedule.min_lr_ratio
    if schedule.type == ScheduleType.constant:
        return peak
    if schedule.type == ScheduleType.cosine:
        span = max(1, total_steps - warmup - 1)
        progress = min(1.0, (step - warmup) / span)
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    decay_steps = max(1, round(total_steps * schedule.decay_fraction))
    decay_start = max(warmup, total_steps - decay_steps)
    if step < decay_start:
        return peak
    progress = min(1.0, (step - decay_start + 1) / max(1, total_steps - decay_start))
    return peak + (floor - peak) * progress
