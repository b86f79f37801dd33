"""Fine-tuning: position-embedding resize, init vs scratch, the Mixup/CutMix schedule, splits."""

import importlib
import json

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import idmm
from idmm import models
from idmm.builders import build_method
from idmm.config import ConfigError, FinetuneConfig, build_config
from idmm.data.sources import DataError
from idmm.engine.distributed import Runtime
from idmm.methods import supervised
from tests.fixtures_data import make_class_folder

finetune_command = importlib.import_module("idmm.commands.finetune")  # not idmm.finetune()

# Tiny fine-tuning runs on real Fashion-MNIST pixels: a few seconds each.
TINY = dict(data="fashion-mnist", subset_per_class=10, model="vit_test", batch_size=25,
            epochs=2, warmup_epochs=0, threads=2, progress="log", base_lr=2e-3,
            **{"finetune.eval_every": 100})  # fmt: skip


def _supervised(**keys):
    """A fine-tuning method on vit_test at 28 px, 16 images of 10 classes, built from `keys`."""
    keys = {"model": "vit_test", "img_size": 28, "data.mean": "0.3,0.3,0.3",
            "data.std": "0.35,0.35,0.35", **keys}  # fmt: skip
    cfg = build_config(None, keys, schema=FinetuneConfig)
    return build_method(cfg, Runtime(0, 1, 0, torch.device("cpu"), "fp32"), 16, 10, "supervised")


def _saved(model, path, size):
    models.save_backbone(model, path, {"model": "vit_test", "img_size": str(size)})


def test_pos_embed_resized_bicubic_keeping_the_class_token(tmp_path):
    src = models.create_backbone("vit_test", 28)  # a 7 x 7 grid
    _saved(src, tmp_path / "b.safetensors", 28)
    dst = models.create_backbone("vit_test", 56, num_classes=5)  # 14 x 14
    fresh = models.load_pretrained(dst, tmp_path / "b.safetensors")
    assert sorted(fresh) == ["head.bias", "head.weight"]
    assert dst.pos_embed.shape == (1, 1 + 14 * 14, 48)
    assert torch.equal(dst.pos_embed[:, 0], src.pos_embed[:, 0])  # the class token's row
    grid = dst.pos_embed[0, 1:].reshape(14, 14, 48)
    # exactly the official code's resize: F.interpolate bicubic, align_corners=False, no antialias
    old = src.pos_embed[0, 1:].reshape(1, 7, 7, 48).permute(0, 3, 1, 2)
    official = F.interpolate(old, size=(14, 14), mode="bicubic", align_corners=False)
    assert torch.allclose(grid, official[0].permute(1, 2, 0), atol=1e-6)
    assert torch.equal(dst.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)


def test_same_size_fine_tuning_loads_every_weight_unchanged(tmp_path):
    src = models.create_backbone("vit_test", 112)
    _saved(src, tmp_path / "b.safetensors", 112)
    dst = models.create_backbone("vit_test", 112, num_classes=3)
    models.load_pretrained(dst, tmp_path / "b.safetensors")
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_models_without_class_token_resize_too(tmp_path):
    kw = dict(patch_size=4, embed_dim=48, depth=1, num_heads=2, class_token=False,
              global_pool="avg")  # fmt: skip
    src = timm.create_model("vit_tiny_patch16_224", img_size=28, num_classes=0, **kw)
    models.save_backbone(src, tmp_path / "b.safetensors", {})
    dst = timm.create_model("vit_tiny_patch16_224", img_size=56, num_classes=4, **kw)
    models.load_pretrained(dst, tmp_path / "b.safetensors")
    assert dst.pos_embed.shape == (1, 196, 48)
    assert dst(torch.randn(1, 3, 56, 56)).shape == (1, 4)


def test_other_shape_mismatches_name_the_weight(tmp_path):
    kw = dict(embed_dim=24, depths=(1,), num_heads=(1,), window_size=7, num_classes=0)
    src = timm.create_model("swin_tiny_patch4_window7_224", img_size=28, **kw)
    models.save_backbone(src, tmp_path / "b.safetensors", {})
    dst = timm.create_model("swin_tiny_patch4_window7_224", img_size=56, **dict(kw, window_size=14))
    with pytest.raises(ConfigError, match="relative_position|window"):
        models.load_pretrained(dst, tmp_path / "b.safetensors")


def test_mixup_on_even_epochs_cutmix_on_odd(monkeypatch, uint8_batch):
    calls = []
    real_mixup, real_cutmix = supervised.mixup, supervised.cutmix
    monkeypatch.setattr(supervised, "mixup", lambda *a: calls.append("mixup") or real_mixup(*a))
    monkeypatch.setattr(
        supervised, "cutmix", lambda *a, **k: calls.append("cutmix") or real_cutmix(*a, **k)
    )
    method = _supervised()
    labels = torch.arange(16) % 10
    rng, g = np.random.default_rng(0), torch.Generator().manual_seed(0)
    for epoch in range(4):
        method.on_epoch_start(epoch)
        b = method.prepare(uint8_batch, torch.arange(16), labels, rng, g)
        assert b.x.shape == (16, 3, 28, 28) and 0 < b.lam <= 1
        assert torch.equal(b.target_a, labels)
        loss, _ = method(b)
        assert torch.isfinite(loss)
    assert calls == ["mixup", "cutmix", "mixup", "cutmix"]


def test_init_loads_the_backbone_scratch_does_not(tmp_path):
    pre = tmp_path / "pre"
    idmm.pretrain(out=str(pre), **dict(TINY, epochs=1))
    backbone = load_file(str(pre / "backbone.safetensors"))
    # a vanishing lr: after one epoch the fine-tuned blocks still equal the pre-trained ones
    still = dict(TINY, epochs=1, lr=1e-12, **{"finetune.warmup_epochs": 0})
    idmm.finetune(out=str(tmp_path / "ft"), init=str(pre), **still)
    idmm.finetune(out=str(tmp_path / "sc"), **still)
    ft = load_file(str(tmp_path / "ft" / "model.safetensors"))
    sc = load_file(str(tmp_path / "sc" / "model.safetensors"))
    key = "blocks.0.attn.qkv.weight"
    assert torch.allclose(ft[key], backbone[key], atol=1e-6)
    assert not torch.allclose(sc[key], backbone[key], atol=1e-3)
    assert ft["head.weight"].shape == (10, 48) and "head.weight" not in backbone
    cfg = (tmp_path / "ft" / "config.yaml").read_text()
    assert "epochs: 1" in cfg and f"init: {pre}" in cfg  # epochs= meant finetune.epochs


def test_finetune_reports_and_resumes(tmp_path):
    out = tmp_path / "ft"
    r = idmm.finetune(out=str(out), **dict(TINY, epochs=3, **{"finetune.eval_every": 1}))
    assert 0 <= r["val_top1"] <= r["val_top1_best"] <= 1 and r["top1"] <= r["top5"] <= 1
    assert r["test_split"] == "dataset" and r["test_images"] == 10000 and r["val_images"] == 10
    assert set(r["per_class"]) == set(idmm.load_model(out).pretrained_cfg["label_names"])
    saved = json.loads((out / "results.json").read_text())["finetune"]
    assert saved["top1"] == r["top1"]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in records if "epoch" in x] == [1, 2, 3]
    assert r["val_top1_best"] == max(x["val_top1"] for x in records if "val_top1" in x)
    assert not any("test_top1" in x for x in records)  # test is evaluated once, at the end
    assert (out / "plots" / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError, match="resume=true"):
        idmm.finetune(out=str(out), **TINY)


def test_user_validation_folder(tmp_path):
    train, val = tmp_path / "train", tmp_path / "val"
    make_class_folder(train, {"a": 12, "b": 12})
    make_class_folder(val, {"a": 3, "b": 3}, first=30)
    r = idmm.finetune(out=str(tmp_path / "ft"), img_size=28,
                      **{**TINY, "data": str(train), "subset_per_class": None, "data.val": str(val),
                         "batch_size": 8})  # fmt: skip
    # data.val is the validation split; the test split is held out of the training folder
    assert r["val_images"] == 6 and r["test_split"] == "holdout" and r["test_images"] == 4
    assert r["train_images"] == 20
    make_class_folder(tmp_path / "bad", {"a": 1, "zebra": 1})
    with pytest.raises(DataError, match="zebra"):
        idmm.finetune(out=str(tmp_path / "ft2"), img_size=28,
                      **{**TINY, "data": str(train), "subset_per_class": None,
                         "data.val": str(tmp_path / "bad"), "batch_size": 8})  # fmt: skip


def test_second_stage_at_higher_resolution(tmp_path):
    out = tmp_path / "ft"
    idmm.finetune(
        out=str(out),
        **dict(TINY, epochs=1, **{"finetune.stage2_epochs": 1, "finetune.stage2_img_size": 56}),
    )
    stage2 = load_file(str(out / "stage2" / "model.safetensors"))
    assert stage2["pos_embed"].shape == (1, 1 + 14 * 14, 48)
    results = json.loads((out / "results.json").read_text())
    assert results["finetune"]["img_size"] == 56 and results["finetune_stage1"]["img_size"] == 28


def test_paper_recipe_runs_both_fine_tuning_stages(tmp_path):
    """configs/paper/flowers102_deit_tiny.yaml end to end on a Flowers-102 layout fixture, with
    the sizes and epochs shrunk: DeiT-Tiny's position embedding goes 2x2 -> 4x4 -> 6x6."""
    from pathlib import Path

    from tests.fixtures_data import make_flowers102

    make_flowers102(tmp_path / "data")
    recipe = Path(__file__).parents[1] / "configs" / "paper" / "flowers102_deit_tiny.yaml"
    small = {"data.root": str(tmp_path / "data"), "img_size": 32, "aug.local_size": 32,
             "epochs": 1, "batch_size": 2, "finetune.epochs": 1, "finetune.batch_size": 2,
             "finetune.stage2_batch_size": 2,
             "finetune.img_size": 64, "finetune.stage2_img_size": 96, "finetune.stage2_epochs": 1,
             "linear.epochs": 2, "threads": 2, "progress": "log"}  # fmt: skip
    results = idmm.run(str(recipe), out=str(tmp_path / "run"), **small)
    assert results["finetune"]["img_size"] == 96 and results["finetune"]["test_images"] == 5
    final = load_file(str(tmp_path / "run" / "finetune" / "stage2" / "model.safetensors"))
    assert final["pos_embed"].shape == (1, 1 + 36, 192) and final["head.weight"].shape[0] == 102
    assert (tmp_path / "run" / "report.md").is_file()


def test_probe_head_starts_from_a_linear_probe(tmp_path, monkeypatch):
    """finetune.head_init=probe (LP-FT): before any fine-tuning step the classifier already
    classifies, where a random head is at chance; the probe's grid-edge check reaches the log."""
    pre = tmp_path / "pre"
    idmm.pretrain(out=str(pre), **dict(TINY, epochs=1))
    frozen = dict(TINY, epochs=1, lr=1e-12, **{"finetune.min_lr": 0.0, "linear.epochs": 30})
    checked = []  # which edge wins on 10 val images is chance: the wiring is what is tested

    def flag(probe):
        checked.append(probe)
        return "warning: flagged by the test"

    monkeypatch.setattr(finetune_command, "edge_warning", flag)
    probed = idmm.finetune(out=str(tmp_path / "p"), init=str(pre),
                           **{**frozen, "finetune.head_init": "probe"})  # fmt: skip
    random = idmm.finetune(out=str(tmp_path / "r"), init=str(pre), **frozen)
    assert probed["top1"] > 0.15 and probed["top1"] > random["top1"] + 0.1  # chance: 0.1
    log = (tmp_path / "p" / "train.log").read_text()
    assert "head from a linear probe" in log
    assert len(checked) == 1 and "best_lr_at_edge" in checked[0]  # only the probed run
    assert "flagged by the test" in log


def test_probe_head_runs_after_the_model_is_on_the_run_device(tmp_path, monkeypatch):
    """LP-FT runs the backbone before the Trainer does, so the model must be on the run's device
    by then. It was not: on the first GPU every fine-tuning of a backbone failed with 'Input type
    (CUDABFloat16Type) and weight type (torch.FloatTensor)'. The CPU cannot show the mismatch,
    so the order of the two calls is what is tested."""
    events = []
    build, probe = finetune_command.build_method, finetune_command.probe_head

    def recording_build(*args, **kwargs):
        method = build(*args, **kwargs)
        to = method.to

        def recording_to(*a, **k):
            events.append("to device")
            return to(*a, **k)

        method.to = recording_to
        return method

    def recording_probe(*args, **kwargs):
        events.append("probe")
        return probe(*args, **kwargs)

    monkeypatch.setattr(finetune_command, "build_method", recording_build)
    monkeypatch.setattr(finetune_command, "probe_head", recording_probe)
    pre = tmp_path / "pre"
    idmm.pretrain(out=str(pre), **dict(TINY, epochs=1))
    idmm.finetune(out=str(tmp_path / "p"), init=str(pre),
                  **{**TINY, "epochs": 1, "finetune.head_init": "probe"})  # fmt: skip
    assert "probe" in events and events.index("to device") < events.index("probe")


def test_layer_decay_gives_lower_blocks_smaller_lrs():
    """finetune.layer_decay=D: the head keeps the full lr, each block below it D times its upper
    neighbour's; every parameter is trained once, with the weight decay of the default groups."""

    def groups(**keys):
        method = _supervised(**keys)
        return method, method.param_groups(1e-3, 0.05)

    method, decayed = groups(layer_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in decayed for p in g["params"]}
    assert sorted(scale) == sorted(id(p) for p in method.backbone.parameters())
    assert {g["weight_decay"] for g in decayed} == {0.05}
    blocks = method.backbone.blocks
    top, below = (scale[id(next(b.parameters()))] for b in (blocks[-1], blocks[-2]))
    assert scale[id(method.backbone.head.weight)] == 1.0
    assert below == pytest.approx(0.5 * top) and top < 1.0
    assert scale[id(method.backbone.patch_embed.proj.weight)] < below
    _, plain = groups()
    assert [g["lr_scale"] for g in plain] == [1.0]
    with pytest.raises(ConfigError, match="'layer_decay' must be in \\(0, 1\\]"):
        groups(layer_decay=0)
