"""Splits decided once, recorded in the run directory, and read back by every later stage."""

import json

import numpy as np
import pytest
from fixtures_data import make_class_folder, write_image

import idmm
from idmm.builders import load_data, training_source
from idmm.data import splits as splitting
from idmm.data.sources import DataError, Source
from idmm.engine import trainer as trainer_module

FOLDER = dict(model="vit_test", img_size=16, batch_size=8, threads=2, progress="log",
              linear={"epochs": 5}, **{"aug.local_size": 16})  # fmt: skip


@pytest.fixture
def folder(tmp_path):
    """A user's folder: class sub-folders, no test split (30 images)."""
    make_class_folder(tmp_path / "imgs", {"bag": 10, "coat": 10, "shoe": 10}, ext=".png")
    return str(tmp_path / "imgs")


def _items(run):
    return json.loads((run / "splits.json").read_text())["items"]


def test_no_held_out_image_reaches_pre_training(folder, tmp_path, monkeypatch):
    """By identity: the images the trainer gets are exactly the training split's, and none of
    the validation or test images is among them."""
    seen = []
    real = trainer_module.Trainer.__init__

    def spy(self, cfg, method, data, *args, **kwargs):
        src = training_source(cfg)
        seen.append({src.items[i] for i in data.kept})
        real(self, cfg, method, data, *args, **kwargs)

    monkeypatch.setattr(trainer_module.Trainer, "__init__", spy)
    run = tmp_path / "run"
    idmm.pretrain(data=folder, out=str(run), epochs=1, **FOLDER)
    items = _items(run)
    assert seen == [set(items["train"])]
    held_out = set(items["val"]) | set(items["test"])
    assert len(items["test"]) == 6 and len(items["val"]) == 3 and len(items["train"]) == 21
    assert not held_out & seen[0]
    # fine-tuning from that run reads the same splits back and trains on the same images
    ft_keys = {k: v for k, v in FOLDER.items() if not k.startswith("aug.")}
    idmm.finetune(data=folder, init=str(run), out=str(tmp_path / "ft"), epochs=1, **ft_keys)
    assert seen[1] == seen[0] and _items(tmp_path / "ft") == items


def test_the_knn_monitor_equals_offline_knn_with_the_training_pool(folder, tmp_path):
    run = tmp_path / "run"
    idmm.pretrain(data=folder, out=str(run), epochs=2, knn_every=1, **FOLDER)
    monitored = [r["knn_top1_val"] for r in map(json.loads, (run / "metrics.jsonl").open())
                 if "knn_top1_val" in r]  # fmt: skip
    offline = idmm.evaluate_knn(run)
    assert len(monitored) == 2 and monitored[-1] == offline["val_top1"]
    assert offline["train_images"] == 21 and offline["val_images"] == 3
    assert offline["test_images"] == 6 and offline["test_split"] == "holdout"
    # the line that starts training says what it trains on (after the auto and memory lines)
    log = next(x for x in (run / "train.log").read_text().splitlines() if " pretrain idmm " in x)
    assert "21 training images" in log


def _source(labels):
    return Source("t", "train", [f"{i}.png" for i in range(len(labels))], labels, ["a", "b"])


def test_decide_is_stratified_seeded_and_disjoint():
    src = _source([0] * 50 + [1] * 30)
    kw = dict(seed=0, val_fraction=0.1, test_fraction=0.2, val_from=None, test_from=None)
    s = splitting.decide(src, **kw)
    labels = np.asarray(src.labels)
    assert [int((labels[s.test] == c).sum()) for c in (0, 1)] == [10, 6]
    assert [int((labels[s.val] == c).sum()) for c in (0, 1)] == [5, 3]
    assert sorted(s.train + s.val + s.test) == list(range(80))
    assert s == splitting.decide(src, **kw)  # the same seed, the same split
    assert s.test != splitting.decide(src, **dict(kw, seed=1)).test
    # a dataset with its own test split holds out validation only; unlabelled data trains all
    own = splitting.decide(src, **dict(kw, test_from="dataset"))
    assert own.test == [] and len(own.val) == 8 and own.test_from == "dataset"
    bare = splitting.decide(Source("u", "train", ["x"] * 5, None, []), **kw)
    assert bare.train == [0, 1, 2, 3, 4] and bare.val == bare.test == []


def test_every_class_keeps_a_training_image():
    s = splitting.decide(_source([0, 0, 1]), seed=0, val_fraction=0.1,
                         test_fraction=0.2, val_from=None, test_from=None)  # fmt: skip
    assert {0, 1} - {[0, 0, 1][i] for i in s.train} == set()  # class 1 has 1 image: train


def test_a_recorded_split_that_no_longer_matches_the_data_is_refused(folder, tmp_path):
    run = tmp_path / "run"
    idmm.pretrain(data=folder, out=str(run), epochs=1, **FOLDER)
    write_image(tmp_path / "imgs" / "bag" / "one_more.png", 500)
    with pytest.raises(DataError, match="splits.json was decided on other images"):
        idmm.pretrain(data=folder, out=str(run), epochs=2, resume=True, **FOLDER)


def test_user_given_validation_and_test_folders(folder, tmp_path):
    make_class_folder(tmp_path / "val", {"bag": 2, "coat": 2, "shoe": 2}, first=100)
    make_class_folder(tmp_path / "test", {"bag": 3, "coat": 3, "shoe": 3}, first=200)
    cfg = idmm.make_config(
        data=folder,
        img_size=16,
        **{"data.val": str(tmp_path / "val"), "data.test": str(tmp_path / "test")},
    )
    data = load_data(cfg, None)
    assert (len(data.train), len(data.val), len(data.test)) == (30, 6, 9)
    assert data.splits.val_from.endswith("val") and data.splits.test_from.endswith("test")


def test_a_stage_that_would_split_the_same_images_otherwise_is_refused(folder, tmp_path):
    """Fine-tuning or evaluating on the pre-training's dataset must use its split: another subset
    or other split settings would put images pre-training saw into val or test."""
    run = tmp_path / "run"
    idmm.pretrain(data=folder, out=str(run), epochs=1, subset_per_class=8, **FOLDER)
    ft_keys = {k: v for k, v in FOLDER.items() if not k.startswith("aug.")}
    with pytest.raises(DataError, match="other images"):  # the whole folder, not the subset
        idmm.finetune(data=folder, init=str(run), out=str(tmp_path / "ft"), epochs=1, **ft_keys)
    with pytest.raises(DataError, match="other images"):
        idmm.evaluate_knn(run, data=folder)
    with pytest.raises(DataError, match="splits the data with"):
        idmm.finetune(data=folder, subset_per_class=8, init=str(run), out=str(tmp_path / "ft"),
                      epochs=1, **{"data.split_seed": 1}, **ft_keys)  # fmt: skip


def test_what_a_killed_run_left_is_not_reused(folder, tmp_path):
    """A run killed before its first checkpoint leaves splits.json: a new run there decides its
    own split instead of refusing or reusing it."""
    run = tmp_path / "run"
    idmm.pretrain(data=folder, out=str(run), epochs=1, **FOLDER)
    (run / "checkpoints" / "last.ckpt").unlink()  # as if killed during the first epoch
    idmm.pretrain(data=folder, out=str(run), epochs=1, **{"data.split_seed": 1}, **FOLDER)
    assert json.loads((run / "splits.json").read_text())["seed"] == 1


def test_batch_size_auto_never_exceeds_the_data(folder, tmp_path):
    """A folder of 30 images with the default batch_size (auto): not the paper's 256, which
    would be larger than the 21 training images, but a batch that leaves 6 steps an epoch."""
    import yaml

    from idmm.builders import auto_batch_size

    run = tmp_path / "run"
    keys = {k: v for k, v in FOLDER.items() if k != "batch_size"}
    idmm.pretrain(data=folder, out=str(run), epochs=1, **keys)
    assert yaml.safe_load((run / "config.yaml").read_text())["batch_size"] == 2
    assert "batch_size=auto -> 2" in (run / "train.log").read_text()
    assert [auto_batch_size(n) for n in (1, 140, 2040, 5000)] == [1, 16, 256, 256]
    assert auto_batch_size(2040, world_size=4) == 64
