"""The idmm CLI, SIGKILLed at a chosen point of its own run (used by tests/test_faults.py).

IDMM_KILL=step:N    inside this process's N-th training step (after the backward pass, before
                    the optimiser updates the weights)
IDMM_KILL=save:N    inside its N-th checkpoint write, after part of the file is on disk
IDMM_KILL=epoch:N   between epochs: after its N-th epoch's metrics line, before that checkpoint
"""

import os
import signal
import sys

import torch

from idmm import cli
from idmm.engine import checkpoint
from idmm.rundir import RunDir

kind, n = os.environ["IDMM_KILL"].split(":")
count = {"n": 0}


def reached() -> bool:
    count["n"] += 1
    return count["n"] == int(n)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


if kind == "step":
    real_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        if reached():
            die()
        return real_step(self, *args, **kwargs)

    torch.optim.AdamW.step = step
elif kind == "save":
    real_save = checkpoint.torch.save

    def save(obj, f):
        if reached():
            f.write(b"the first bytes of a checkpoint")
            f.flush()
            die()
        real_save(obj, f)

    checkpoint.torch.save = save
elif kind == "epoch":
    real_append = RunDir.append_metrics

    def append(run, record):
        real_append(run, record)
        if "epoch" in record and reached():
            die()

    RunDir.append_metrics = append
sys.exit(cli.main(sys.argv[1:]))
