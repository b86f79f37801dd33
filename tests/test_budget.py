"""budget=: a command's stages end within a time limit (a fake clock: deterministic, no
wall-clock assertion), the decided epochs are recorded and kept on resume, bad durations are
refused."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import idmm
from idmm.config import ConfigError, build_config
from idmm.engine import budget as budget_mod
from idmm.engine import trainer as trainer_mod
from idmm.engine.budget import RESERVE, Budget, parse_duration

TINY = dict(data="fashion-mnist", subset_per_class=12, model="vit_test", img_size=16,
            batch_size=24, progress="log", threads=1, knn_every=0,
            **{"aug.local_size": 8, "finetune.batch_size": 24})  # fmt: skip


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("20m", 1200), ("2h", 7200),
                                          ("1h30m", 5400), ("0.5m", 30)])  # fmt: skip
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["20", "abc", "20 minutes", "0m", "m"])
def test_bad_durations_are_refused_naming_the_key(text):
    with pytest.raises(ConfigError, match="config key 'budget' must be a duration such as 90s"):
        build_config(overrides={"budget": text})


class FakeClock:
    """Time moves only when an epoch is trained (1 s each, `first` for the first of a run),
    plus a microsecond per reading so that rates stay finite."""

    def __init__(self):
        self.now, self.first, self.epochs = 0.0, 1.0, 0

    def read(self) -> float:
        self.now += 1e-6
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(budget_mod.time, "monotonic", c.read)
    monkeypatch.setattr(trainer_mod.time, "perf_counter", c.read)
    real = trainer_mod.Trainer.train_epoch

    def one_second_epoch(self):
        loss = real(self)
        c.now += c.first if self.epoch == 0 else 1.0
        return loss

    monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", one_second_epoch)
    return c


def test_budget_sets_the_epochs_and_records_them(tmp_path, clock):
    out = tmp_path / "pre"
    r = idmm.pretrain(out=str(out), epochs=1000, budget="10s", **TINY)
    # 95% of 10 s at 1 s an epoch
    assert r["pretrain"]["epochs"] == int(10 * (1 - RESERVE)) == 9
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["epochs"] == 9 and saved["budget"] == "10s"
    assert len([x for x in idmm.RunDir(out).metrics() if "epoch" in x]) == 9
    # resumed with another budget: the epochs it was given stay
    again = idmm.pretrain(out=str(out), epochs=1000, budget="1h", resume=True, **TINY)
    assert again == {} and yaml.safe_load((out / "config.yaml").read_text())["epochs"] == 9


def test_the_recheck_goes_by_the_pace_after_the_first_epoch(tmp_path, clock):
    """A slow first epoch (warm-up, compilation) gives few epochs; the re-check at a tenth
    (here epoch 3) goes by the pace since, and the stage still ends within its share."""
    clock.first = 5.0
    r = idmm.pretrain(out=str(tmp_path / "p"), epochs=1000, budget="20.5s", **TINY)
    # share 19.5 s: after epoch 1 (5 s) 1 + 14.5 // 5 = 3 epochs; at epoch 3 (7 s, 1 s an epoch
    # since) 3 + 12.5 // 1 = 15
    assert r["pretrain"]["epochs"] == 15 and clock.now < 20.5


def test_run_shares_the_budget_between_its_stages_by_planned_cost(tmp_path, clock):
    out = tmp_path / "run"
    r = idmm.run(out=str(out), epochs=10, budget="41s", baseline=True,
                 **{"finetune.epochs": 10}, **TINY)  # fmt: skip
    pre, ft, scratch = (r[k]["epochs"] for k in ("pretrain", "finetune", "scratch"))
    # planned: pre-training 10 x (2 x 16^2 + 6 x 8^2) pixels, fine-tuning 10 x 16^2,
    # scratch 20 x 16^2: pre-training gets its share of 95% of 41 s
    aug = build_config(overrides=TINY).aug
    cost = {"pre": 10 * (aug.global_crops * 256 + aug.local_crops * 64), "ft": 2560,
            "scratch": 5120}  # fmt: skip
    assert pre == int(41 * (1 - RESERVE) * cost["pre"] / sum(cost.values())) == 19
    assert ft >= 1 and scratch >= ft  # each its share of what is left when it starts
    assert pre + ft + scratch <= 41  # 1 s an epoch: within the budget
    ran = yaml.safe_load((out / "config.yaml").read_text())
    assert ran["epochs"] == pre and ran["finetune"]["epochs"] == ft


def test_a_killed_budget_run_resumes_with_the_epochs_it_was_given(tmp_path):
    """Real clock and a real SIGKILL between epochs: what resume keeps is config.yaml's
    epochs, whatever the pace of the resumed process."""
    out = tmp_path / "killed"
    args = [f"{k}={v}" for k, v in TINY.items() if not k.startswith("finetune.")]
    cmd = [sys.executable, str(Path(__file__).parent / "_fault_driver.py"), "pretrain", *args,
           "epochs=100000", "budget=40s", f"out={out}"]  # fmt: skip
    env = dict(os.environ, IDMM_KILL="epoch:4",
               PYTHONPATH=str(Path(idmm.__file__).parents[1]))  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    decided = yaml.safe_load((out / "config.yaml").read_text())["epochs"]
    assert 4 <= decided < 100000
    env["IDMM_KILL"] = "none:0"
    done = subprocess.run([*cmd, "resume=true"], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert idmm.RunDir(out).results()["pretrain"]["epochs"] == decided
    assert yaml.safe_load((out / "config.yaml").read_text())["epochs"] == decided


def test_shares_follow_the_planned_costs(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(budget_mod.time, "monotonic", lambda: now[0])
    b = Budget("100s", {"a": 3.0, "b": 1.0})
    assert b.share("a") == pytest.approx(100 * (1 - RESERVE) * 0.75)
    now[0] = 50.0
    b.finished("a")
    assert b.share("b") == pytest.approx(50 * (1 - RESERVE))  # the last stage: all that is left
    b.finished("b", earlier_s=10.0)  # time an earlier (killed) invocation spent
    assert b.left() == pytest.approx(40.0)
