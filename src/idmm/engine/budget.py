"""`budget=20m`: a whole command (all its training stages) within a time limit.

The epochs of a stage are set after its first epoch, from how long that epoch took: the stage may
use the time left, in proportion to its planned cost against the stages still to run (cost =
the recipe's epochs x pixels an image is trained on per epoch), less a reserve for what runs
between and after the stages (evaluation, export). The recipe's epochs thus give the split between
stages, the budget their length. What a stage decided is written to its config.yaml and
checkpoint, so `resume=true` continues with the same epochs.
"""

from __future__ import annotations

import re
import time

from ..config_types import ConfigError

RESERVE = 0.05  # of the time left: evaluations, exports, start-up of the next stage
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


def pretrain_cost(epochs: int, img_size: int, aug) -> float:
    """Pixels a pre-training run trains on per image: epochs x the crops' pixels."""
    local = aug.local_size or img_size
    return epochs * (aug.global_crops * img_size**2 + aug.local_crops * local**2)


def finetune_cost(epochs: int, img_size: int) -> float:
    """The same for fine-tuning (or training from scratch): one view per image per epoch."""
    return epochs * img_size**2


class Budget:
    """The time limit of one command, shared out between its stages (name -> planned cost).
    The clock starts when the command does (the Budget is made)."""

    def __init__(self, text: str, stages: dict[str, float]):
        self.text, self.seconds = text, parse_duration(text)
        self.start = time.monotonic()
        self.planned = {k: max(v, 1e-9) for k, v in stages.items()}
        self.spent_before = 0.0  # in earlier invocations of a resumed command

    def left(self) -> float:
        return self.seconds - self.spent_before - (time.monotonic() - self.start)

    def share(self, stage: str) -> float:
        """Seconds `stage` may take from now: the time left less the reserve, in proportion to
        its planned cost against that of the stages still to run (itself included)."""
        usable = max(0.0, self.left() * (1 - RESERVE))
        if stage not in self.planned:
            return usable
        return usable * self.planned[stage] / sum(self.planned.values())

    def finished(self, stage: str, earlier_s: float = 0.0) -> None:
        """`stage` is done; `earlier_s`: the part of it an earlier invocation ran (resume)."""
        self.planned.pop(stage, None)
        self.spent_before += earlier_s


def epochs_within(allowed_s: float, epoch_s: float) -> int:
    """Whole epochs of `epoch_s` that end within `allowed_s` (0 when none does)."""
    return max(0, int(allowed_s // max(epoch_s, 1e-6)))
