"""Faults: a run SIGKILLed at random points resumes to the same weights, bitwise; a failed
checkpoint write, a NaN loss and a planted pickle are handled; memory stays flat."""

import json
import os
import pickle
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import idmm
from idmm.engine import checkpoint as ckpt_mod
from idmm.engine.checkpoint import CheckpointError, load_checkpoint
from idmm.engine.trainer import TrainingError

ENV = dict(os.environ, PYTHONPATH=str(Path(idmm.__file__).parents[1]))
DRIVER = str(Path(__file__).parent / "_fault_driver.py")
# 200 real Fashion-MNIST images, batch 50: 4 steps per epoch, about a second per epoch
TINY = dict(
    data="fashion-mnist",
    subset_per_class=20,
    model="vit_test",
    batch_size=50,
    warmup_epochs=1,
    threads=2,
    progress="log",
    base_lr=2e-3,
    **{"aug.local_size": 16},
)
FT = {k: v for k, v in TINY.items() if not k.startswith("aug.")}  # fine-tuning has no multi-crop


def _args(**settings) -> list[str]:
    return [f"{k}={v}" for k, v in settings.items()]


def _run(args: list[str], kill: str | None = None) -> int:
    env = dict(ENV, IDMM_KILL=kill or "none:0")
    done = subprocess.run([sys.executable, DRIVER, *args], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    if kill is None:
        assert done.returncode == 0, done.stderr[-3000:]
    return done.returncode


def _kill_and_resume(args: list[str], out: Path, seed: int) -> list[str]:
    """Kill at a random step, inside a random checkpoint write and between random epochs,
    resuming after each; then finish. Returns the kill points (all of them must have hit)."""
    rng = random.Random(seed)
    points = [f"step:{rng.randint(1, 7)}", f"save:{rng.randint(1, 2)}",
              f"epoch:{rng.randint(1, 2)}"]  # fmt: skip
    for i, point in enumerate(points):
        code = _run([*args, f"out={out}", *(["resume=true"] if i else [])], kill=point)
        assert code == -signal.SIGKILL, f"{point} did not kill the run (exit {code})"
    _run([*args, f"out={out}", "resume=true"])
    return points


def test_pretraining_killed_three_times_resumes_bitwise(tmp_path):
    args = ["pretrain", *_args(**TINY, epochs=6)]
    _run([*args, f"out={tmp_path / 'full'}"])
    _kill_and_resume(args, tmp_path / "killed", seed=0)
    a = load_file(str(tmp_path / "full" / "backbone.safetensors"))
    b = load_file(str(tmp_path / "killed" / "backbone.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = [(tmp_path / r / "metrics.jsonl").read_text().splitlines() for r in ("full", "killed")]
    losses = [[json.loads(x)["loss"] for x in run] for run in lines]
    assert losses[0] == losses[1] and len(losses[0]) == 6  # no epoch lost or repeated


def test_fine_tuning_killed_three_times_resumes_bitwise(tmp_path):
    pre = tmp_path / "pre"
    idmm.pretrain(out=str(pre), epochs=1, **TINY)
    args = ["finetune", *_args(**FT, epochs=6, init=pre, **{"finetune.eval_every": 2})]
    _run([*args, f"out={tmp_path / 'full'}"])
    _kill_and_resume(args, tmp_path / "killed", seed=1)
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((tmp_path / r / "results.json").read_text())["finetune"]
              for r in ("full", "killed"))  # fmt: skip
    assert ra["top1"] == rb["top1"]


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    """A full disk while saving epoch 2: the run stops with a message saying what to do, and
    epoch 1's checkpoint is intact and resumable."""
    real, calls = ckpt_mod.torch.save, {"n": 0}

    def full_disk(obj, f):
        calls["n"] += 1
        if calls["n"] == 2:
            f.write(b"partial")
            raise OSError(28, "No space left on device")
        real(obj, f)

    monkeypatch.setattr(ckpt_mod.torch, "save", full_disk)
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"after epoch 2.*No space left.*previous checkpoint "
                       r"is intact.*resume=true"):  # fmt: skip
        idmm.pretrain(out=str(run), epochs=3, **TINY)
    monkeypatch.undo()
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 1
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]
    idmm.pretrain(out=str(run), epochs=3, resume=True, **TINY)
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 3


def test_non_finite_steps_can_be_skipped_and_are_counted(tmp_path, monkeypatch):
    from idmm.methods.idmm import IDMM

    real, calls = IDMM.forward, {"n": 0}

    def poisoned(self, groups):
        calls["n"] += 1
        loss, m = real(self, groups)
        return (loss * float("inf"), m) if calls["n"] in (3, 6) else (loss, m)

    monkeypatch.setattr(IDMM, "forward", poisoned)
    run = tmp_path / "run"
    result = idmm.pretrain(out=str(run), epochs=3, skip_nonfinite=True, **TINY)
    assert result["pretrain"]["skipped_steps"] == 2
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records] == [1, 2, 2]
    assert all(r["loss"] == r["loss"] and r["loss"] < float("inf") for r in records)
    assert "skipped a non-finite loss (inf) at epoch 1, step 2" in (run / "train.log").read_text()


def test_memory_stays_flat_over_a_long_run(tmp_path):
    """Resident memory after epoch 2 and after epoch 30 differ by less than 5%."""
    run = tmp_path / "run"
    _run(["pretrain", *_args(**dict(TINY, subset_per_class=5, batch_size=25), epochs=30,
                              out=run)])  # fmt: skip
    rss = [json.loads(x)["rss_mb"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rss) == 30 and abs(rss[29] - rss[1]) / rss[1] < 0.05, rss


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_planted_pickle_is_refused_and_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    idmm.pretrain(out=str(run), epochs=1, **TINY)
    ckpt = run / "checkpoints" / "last.ckpt"
    with open(ckpt, "wb") as f:
        pickle.dump({"epoch": 1, "payload": _Exploit()}, f)
    with pytest.raises(CheckpointError, match="only weights are loaded"):
        idmm.pretrain(out=str(run), epochs=2, resume=True, **TINY)
    torch.save({"payload": _Exploit()}, run / "backbone.safetensors")  # a pickle in disguise
    with pytest.raises(idmm.ConfigError, match="not a readable safetensors file"):
        idmm.finetune(init=str(run), out=str(tmp_path / "ft"), **FT)
    assert not (tmp_path / "PWNED").exists()
