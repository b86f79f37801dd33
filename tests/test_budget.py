"""budget=: a command's stages end within a time limit (a fake clock: deterministic, no
wall-clock assertion), the decided epochs are recorded and kept on resume, bad durations are
refused."""

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import idmm
from idmm.builders import load_data, runtime
from idmm.commands import run as run_mod
from idmm.commands.finetune import probe
from idmm.config import ConfigError, build_config, finetune_config
from idmm.engine import budget as budget_mod
from idmm.engine import trainer as trainer_mod
from idmm.engine.budget import EVAL_COST, RESERVE, TAIL_S, Budget, parse_duration
from idmm.rundir import RunDir

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
        self.pace = {}  # stage -> seconds of its later epochs (default 1 s)
        self.slower = None  # (epoch, seconds): every epoch from that one on takes as long
        self.hiccups = {}  # epoch -> seconds more that one epoch takes

    def read(self) -> float:
        self.now += 1e-6
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(budget_mod, "EVAL_COST", 0.0)  # evaluations take no time on this clock
    monkeypatch.setattr(budget_mod.time, "monotonic", c.read)
    monkeypatch.setattr(trainer_mod.time, "perf_counter", c.read)
    real = trainer_mod.Trainer.train_epoch

    def one_second_epoch(self):
        loss = real(self)
        c.now += c.first if self.epoch == 0 else c.pace.get(self.stage, 1.0)
        if c.slower and self.epoch >= c.slower[0]:
            c.now += c.slower[1] - c.pace.get(self.stage, 1.0)
        c.now += c.hiccups.get(self.epoch, 0.0)
        return loss

    monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", one_second_epoch)
    return c


def test_budget_sets_the_epochs_and_records_them(tmp_path, clock):
    out = tmp_path / "pre"
    r = idmm.pretrain(out=str(out), epochs=1000, budget="10.5s", **TINY)
    # after the first epoch (1 s): 9.5 s left, less the 3 s kept for writing the files (the
    # only stage: no evaluation after it), at 1 s an epoch
    assert r["pretrain"]["epochs"] == 1 + int(10.5 - 1 - TAIL_S) == 7
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["epochs"] == 7 and saved["budget"] == "10.5s"
    assert len([x for x in idmm.RunDir(out).metrics() if "epoch" in x]) == 7
    # resumed with another budget: the epochs it was given stay
    again = idmm.pretrain(out=str(out), epochs=1000, budget="1h", resume=True, **TINY)
    assert again == {} and yaml.safe_load((out / "config.yaml").read_text())["epochs"] == 7


def test_the_recheck_goes_by_the_pace_after_the_first_epoch(tmp_path, clock):
    """A slow first epoch (warm-up, compilation) gives few epochs; the re-check at a tenth
    (here epoch 3) goes by the pace since, and the stage still ends within its share."""
    clock.first = 5.0
    r = idmm.pretrain(out=str(tmp_path / "p"), epochs=1000, budget="20.5s", **TINY)
    # 3 s kept free: after epoch 1 (5 s) 1 + 12.5 // 5 = 3 epochs; at epoch 3 (7 s, 1 s an
    # epoch since) 3 + 10.5 // 1 = 13, and so at every later check
    assert TAIL_S == 3 and r["pretrain"]["epochs"] == 13 and clock.now < 20.5


def test_the_recheck_follows_a_pace_that_slows(tmp_path, clock):
    """Epochs slow from 1 s to 3 s a third of the way in (the machine's drift): each re-check
    weighs the pace since the one before by half, not the average since the first epoch, so the
    stage still ends within its share of the budget."""
    clock.slower = (12, 3.0)
    r = idmm.pretrain(out=str(tmp_path / "s"), epochs=1000, budget="40s", **TINY)
    # within the budget less what it keeps free for evaluation (the average pace since the
    # first epoch, 1.7 s at epoch 18, gave 21 epochs ending at 39 s)
    assert clock.now <= 40 * (1 - RESERVE) and r["pretrain"]["epochs"] == 20


def test_one_slow_epoch_moves_the_plan_less_than_a_lasting_slowdown(tmp_path, clock,
                                                                     monkeypatch):  # fmt: skip
    """One epoch takes 4 s instead of 1 (the machine, a kNN monitor's epoch): the re-check after
    it halves that pace with the estimate before, so the plan dips to 25 epochs and recovers
    (taken alone, the window's 2 s an epoch would cut it from 36 to 21 and the lr schedule
    with it)."""
    plans = []
    real = trainer_mod.Trainer.set_epochs

    def recorded(self, epoch_s):
        real(self, epoch_s)
        plans.append(self.cfg.epochs)

    monkeypatch.setattr(trainer_mod.Trainer, "set_epochs", recorded)
    clock.hiccups = {7: 3.0}
    r = idmm.pretrain(out=str(tmp_path / "h"), epochs=1000, budget="40s", **TINY)
    # checks every 3 epochs; the window with the slow epoch (epochs 7-9) ran at 2 s an epoch
    assert plans[:3] == [36, 36, 36] and min(plans) == 25
    assert r["pretrain"]["epochs"] == 33 and clock.now <= 40 * (1 - RESERVE)


def test_a_compiled_run_plans_after_its_second_epoch(tmp_path, clock, monkeypatch):
    """Compiling makes the first epoch slow (here 30 s): planned from it, the run would get one
    epoch; planned after the second (1 s), the time left at 1 s an epoch."""
    monkeypatch.setattr(trainer_mod.torch, "compile", lambda model, **kw: model)
    clock.first = 30.0
    r = idmm.pretrain(out=str(tmp_path / "c"), epochs=1000, budget="60.5s", compile=True,
                      **TINY)  # fmt: skip
    # after epoch 2 (31 s): 29.5 s left less 3 s kept free, at 1 s an epoch: 2 + 26
    assert r["pretrain"]["epochs"] == 2 + int(60.5 - 31 - TAIL_S) == 28


@pytest.fixture
def probed(monkeypatch):
    """The stages after pre-training timed at `probed.epoch_s` (real probes time real steps)."""

    class Probe:
        epoch_s = 1.0

    monkeypatch.setattr(run_mod, "probe", lambda cfg: lambda data, rt: Probe.epoch_s)
    return Probe


@pytest.mark.parametrize("pace,expected", [(1.0, (38, 20)), (2.0, (22, 13))])
def test_every_stage_gets_the_same_scale_of_its_recipe_epochs(tmp_path, clock, probed, pace,
                                                              expected):  # fmt: skip
    """Pre-training at 1 s or 2 s an epoch (a slower method), fine-tuning timed at 1 s: the
    split is the recipe's 20 : 10 either way, the budget sets its length; fine-tuning, the last
    stage, then also takes what the reserve kept free and the evaluations between the stages
    did not need (none here), so the command uses its budget."""
    clock.first, clock.pace = pace, {"pre-training": pace}
    out = tmp_path / "run"
    r = idmm.run(out=str(out), epochs=20, budget="62s", **{"finetune.epochs": 10}, **TINY)
    pre, ft = r["pretrain"]["epochs"], r["finetune"]["epochs"]
    # after epoch 1: the time left less 8% of 62 s, scale (usable + pace) / (20 pace + 10 x 1 s),
    # the same at every later check (the pace does not drift)
    usable = 62 - pace - RESERVE * 62
    scale = (usable + pace) / (20 * pace + 10)
    assert pre == int(20 * scale) and ft > int(10 * scale) and (pre, ft) == expected
    # fine-tuning ends within the budget less the 3 s kept for its files, less than an epoch
    # short of it (at pace 2 its first epoch took 2 s and the rest 1 s)
    assert 62 - TAIL_S - 1 < clock.now <= 62 - TAIL_S
    ran = yaml.safe_load((out / "config.yaml").read_text())
    assert ran["epochs"] == pre and ran["finetune"]["epochs"] == ft


def test_a_later_stage_slower_than_timed_trains_only_what_fits(tmp_path, clock, probed):
    probed.epoch_s = 0.5  # fine-tuning really takes 1 s an epoch
    r = idmm.run(out=str(tmp_path / "run"), epochs=20, budget="62s", baseline=True,
                 **{"finetune.epochs": 10}, **TINY)  # fmt: skip
    pre, ft, scratch = (r[k]["epochs"] for k in ("pretrain", "finetune", "scratch"))
    scale = (62 - RESERVE * 62) / (20 + 0.5 * 10 + 0.5 * 30)  # as timed
    assert pre == int(20 * scale)  # pre-training as planned; the later stages shrink alike
    assert 2 <= ft < int(10 * scale) and ft < scratch < int(30 * scale)
    assert clock.now <= 62 - TAIL_S  # cut to what fits at the pace measured


def test_the_last_stage_keeps_time_for_its_test_evaluation(monkeypatch):
    """Stages to come: 8% of the budget kept free for the evaluations between them; the last
    stage: its files' seconds plus its test images at EVAL_COST x an epoch's seconds per
    training image (10,000 test images after 1 s epochs of 1,000 images: 5 s)."""
    b = Budget("100s", {"a": 30, "b": 10})
    b.evaluated["b"] = 10_000
    assert b.reserve("a", 1.0, 1000) == pytest.approx(RESERVE * 100)
    b.finished("a")
    assert EVAL_COST == 0.5 and b.reserve("b", 1.0, 1000) == pytest.approx(TAIL_S + 5.0)
    assert b.reserve("b", 2.0, 1000) == pytest.approx(TAIL_S + 10.0)  # follows the pace


def test_the_probe_times_a_finetuning_epoch(tmp_path):
    """A real probe: a few steps of a throwaway classifier, nothing written."""
    cfg = build_config(overrides=TINY)
    rt = runtime(cfg)
    data = load_data(cfg, RunDir(tmp_path / "r"), with_test=False).train
    ft = finetune_config(cfg)
    ft.img_size, ft.model = 16, "vit_test"
    assert probe(ft)(data, rt) > 0
    unlabelled = dataclasses.replace(data, labels=None)
    assert probe(ft)(unlabelled, rt) > 0


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


def test_the_scale_is_decided_once_and_kept_on_resume(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(budget_mod.time, "monotonic", lambda: now[0])
    b = Budget("100s", {"a": 30, "b": 10})
    b.probes["b"] = lambda data, rt: 2.0
    now[0] = 1.0  # a's first epoch: 1 s
    # usable 99 - 8; scale (91 + 1) / (30 x 1 + 10 x 2) = 1.84
    assert b.plan("a", 1, 1.0) == 55 and b.planned("b") == 18
    b.finished("a")
    now[0] = 59.0
    # the last stage: 41 s left less 3 s kept for its files (no test split); its 17 more at 2 s
    # would take 34 s, the 8 s kept free for evaluations between stages not needed now: 19 more
    assert b.plan("b", 1, 2.0) == 20
    b.finished("b", earlier_s=10.0)  # time an earlier (killed) invocation spent
    assert b.left() == pytest.approx(31.0)
    resumed = Budget("100s", {"a": 30, "b": 10})
    resumed.adopt("a", 55)  # a resumed stage: the later ones keep its scale
    assert resumed.planned("b") == 18
    alone = Budget("1m", {})  # its clock starts now: 60 s less the 3 s kept for its files
    assert alone.plan("alone", 1, 1.0) == 1 + int(60 - TAIL_S)
