"""`budget=20m`: a whole command (all its training stages) within a time limit.

The recipe's epochs give the split between stages, the budget their length: after its first
epoch, the first stage times itself and (a few steps each) the stages after it, and scales every
stage's epochs by one factor so that the whole command, less a reserve for what runs between and
after the stages (evaluation, export), ends within the budget. The scale is checked again at a
tenth of the first stage. What a stage decided is written to its config.yaml and checkpoint, so
`resume=true` continues with the same epochs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from ..config_types import ConfigError

# of the time left: evaluations, exports, the start of the next stage, and a pace that varies
# (+-20% between epochs on a shared 2-core machine; a probe of 3 steps misses some of it)
RESERVE = 0.10
_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str, key: str = "budget") -> float:
    """'90s', '20m', '2h', '1h30m' -> seconds."""
    s = str(text).strip().lower().replace(" ", "")
    parts = re.findall(r"(\d+(?:\.\d+)?)([smh])", s)
    if not s or "".join(f"{n}{u}" for n, u in parts) != s:
        raise ConfigError(f"{key}={text}: give a duration such as 90s, 20m, 2h or 1h30m")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ConfigError(f"{key}={text}: give a duration above 0")
    return seconds


Probe = Callable[[Any, Any], float]  # (a stage's training data, runtime) -> seconds an epoch


class Budget:
    """The time limit of one command, shared out between its stages (name -> the recipe's
    epochs). The clock starts when the command does (the Budget is made).

    The first stage to run decides one scale for every stage, from its own pace and that of
    the stages after it (`probes`: a few steps of each, timed before it runs): each stage then
    trains scale x its recipe epochs (rounded down), so every command with the same recipe has
    the same split between its stages whatever its pace, and a comparison of methods at equal
    minutes differs in the epochs of all stages alike. A later stage trains fewer only if its own
    pace, measured, would run past the budget."""

    def __init__(self, text: str, stages: dict[str, int]):
        self.text, self.seconds = text, parse_duration(text)
        self.start = time.monotonic()
        self.epochs = dict(stages)  # the recipe's epochs of the stages still to run
        self.probes: dict[str, Probe] = {}
        self.paces: dict[str, float] = {}  # seconds an epoch: probed, or measured
        self.scale: float | None = None
        self.decider: str | None = None  # the stage that set the scale
        self.spent_before = 0.0  # in earlier invocations of a resumed command

    def left(self) -> float:
        return self.seconds - self.spent_before - (time.monotonic() - self.start)

    def plan(self, stage: str, done: int, epoch_s: float, data=None, rt=None) -> int:
        """The epochs of `stage`, which has trained `done` epochs at about `epoch_s` seconds
        each: scale x its recipe epochs, no more than fit in the time left (less the
        reserve and what the stages after it will take)."""
        usable = max(0.0, self.left() * (1 - RESERVE))
        self.paces[stage] = epoch_s
        later = [s for s in self.epochs if s != stage]
        if stage not in self.epochs:  # not planned: all that is left
            return done + epochs_within(usable, epoch_s)
        for s in later:
            if s not in self.paces:
                self.paces[s] = self.probes[s](data, rt) if s in self.probes else epoch_s
        if self.scale is None or self.decider == stage:
            self.decider = stage
            cost = sum(self.epochs[s] * self.paces[s] for s in self.epochs)
            self.scale = (usable + done * epoch_s) / max(cost, 1e-9)
        after = sum(self.planned(s) * self.paces[s] for s in later)
        fit = done + epochs_within(usable - after, epoch_s)
        return max(done, min(self.planned(stage), fit))

    def planned(self, stage: str) -> int:
        return max(1, int(self.scale * self.epochs[stage] + 1e-9))  # down: within the budget

    def adopt(self, stage: str, epochs: int) -> None:
        """A resumed stage with the epochs an earlier invocation gave it: the stages after it
        keep the scale those epochs came from."""
        if self.scale is None and self.epochs.get(stage):
            self.scale, self.decider = epochs / self.epochs[stage], stage

    def finished(self, stage: str, earlier_s: float = 0.0) -> None:
        """`stage` is done; `earlier_s`: the part of it an earlier invocation ran (resume)."""
        self.epochs.pop(stage, None)
        self.spent_before += earlier_s
        if self.decider == stage:
            self.decider = None  # the scale stays; no later stage changes it


def epochs_within(allowed_s: float, epoch_s: float) -> int:
    """Whole epochs of `epoch_s` that end within `allowed_s` (0 when none does)."""
    return max(0, int(allowed_s // max(epoch_s, 1e-6)))
