"""`budget=20m`: a whole command (all its training stages) within a time limit.

The recipe's epochs give the split between stages, the budget their length: after its first
epoch, the first stage times itself and (a few steps each) the stages after it, and scales every
stage's epochs by one factor so that the whole command, less a reserve for what runs between and
after the stages (evaluation, export), ends within the budget. The scale is checked again at
every tenth of the first stage, at a pace half from its epochs since the check before and half
from the estimate before (Trainer.budget_check). A later stage plans with its own pace,
measured, and trains what fits in the time left: fewer epochs than the scale gives when it is
slower than timed, more when the earlier stages left time over (the reserve they kept for the
evaluations between stages, a pace that recovered). What a stage decided is written to its
config.yaml and checkpoint, so `resume=true` continues with the same epochs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from ..config_types import ConfigError

# of the whole budget, kept free while stages remain to run: the evaluations between them
# (kNN, linear probe, the head's probe: ~25 s on 2 cores), exports, the start of the next stage
RESERVE = 0.08
# after the last stage only its evaluation on the test split and the writing of its files run:
# kept free, TAIL_S plus EVAL_COST x an epoch's seconds per training image for each test image.
# A test image costs a forward pass, a training image a forward and a backward (~3x) plus its
# augmentation, so the estimate is high: 13 s for the 9 s that 10,000 FMNIST test images took
# after 1,840-image epochs of 3.6 s on 2 cores, 4 s for clip-art's 1 s.
TAIL_S, EVAL_COST = 3.0, 0.5
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
    minutes differs in the epochs of all stages alike. A later stage then goes by its own pace,
    measured: fewer epochs where the scale's would run past the budget, more where time is
    left over (the last stage keeps free only what its test evaluation needs, not the reserve
    held for the evaluations between stages)."""

    def __init__(self, text: str, stages: dict[str, int]):
        self.text, self.seconds = text, parse_duration(text)
        self.start = time.monotonic()
        self.epochs = dict(stages)  # the recipe's epochs of the stages still to run
        self.probes: dict[str, Probe] = {}
        self.relative: dict[str, float] = {}  # each stage's pace / the first stage's
        self.paces: dict[str, float] = {}  # seconds an epoch, as last estimated
        self.scale: float | None = None
        self.decider: str | None = None  # the stage that set the scale
        self.spent_before = 0.0  # in earlier invocations of a resumed command
        self.evaluated: dict[str, int] = {}  # stage -> test images evaluated once it is done
        self.given: dict[str, int] = {}  # stage -> the epochs it was last given

    def left(self) -> float:
        return self.seconds - self.spent_before - (time.monotonic() - self.start)

    def reserve(self, stage: str, epoch_s: float, train_images: int) -> float:
        """Seconds of the time left kept free of `stage`'s training (and the later stages')."""
        if any(s != stage for s in self.epochs):  # stages to come: evaluations between them
            return RESERVE * self.seconds
        test = self.evaluated.get(stage, 0)
        return TAIL_S + EVAL_COST * epoch_s * test / max(train_images, 1)

    def plan(self, stage: str, done: int, epoch_s: float, data=None, rt=None) -> int:
        """The epochs of `stage`, which has trained `done` epochs at about `epoch_s` seconds
        each. The stage that sets the scale: scale x its recipe epochs, fewer where it and the
        stages after it would not fit in the time left less the reserve; a later stage: what
        fits of the time left, shared with the stages after it as the scale shares it."""
        n = len(data) if data is not None else 0
        usable = max(0.0, self.left() - self.reserve(stage, epoch_s, n))
        later = [s for s in self.epochs if s != stage]
        if stage not in self.epochs:  # not planned: all that is left
            return done + epochs_within(usable, epoch_s)
        if not self.relative:  # the first stage to plan: the others are timed against it
            self.relative[stage] = 1.0
        mine = self.relative.get(stage, 1.0)
        for s in later:  # timed once, kept as a ratio to the first stage's pace
            if s not in self.relative:
                probed = self.probes[s](data, rt) if s in self.probes else epoch_s
                self.relative[s] = mine * probed / max(epoch_s, 1e-9)
        # the machine's pace drifts (other work, clocks): the later stages' estimates follow
        # this stage's latest pace
        now = epoch_s / mine
        self.paces = {s: self.relative[s] * now for s in [stage, *later]}
        deciding = self.scale is None or self.decider == stage
        if deciding:
            self.decider = stage
            cost = sum(self.epochs[s] * self.paces[s] for s in self.epochs)
            self.scale = (usable + done * epoch_s) / max(cost, 1e-9)
        # at these paces, this stage's rest and the later stages' plans may not fit (a pace
        # timed too fast): then this stage's rest shrinks by the factor they all would. A later
        # stage's rest also grows by the factor when time is left over (each stage after it
        # does the same when it starts, with its own pace measured); the deciding stage's
        # does not: its scale already spends the time.
        base = self.planned(stage) if deciding else self.given.get(stage, self.planned(stage))
        rest = max(0, base - done)
        need = rest * epoch_s + sum(self.planned(s) * self.paces[s] for s in later)
        factor = usable / need if need > 0 else 1.0
        epochs = done + int(rest * (min(1.0, factor) if deciding else factor) + 1e-9)
        self.given[stage] = epochs
        return epochs

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
