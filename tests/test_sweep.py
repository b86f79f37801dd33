"""`idmm sweep`: one recipe, several backbones (a ViT and the ResNet-style CNN), measured."""

from __future__ import annotations

import json

import pytest

from idmm import cli
from idmm.builders import build_backbone, make_config
from idmm.config import ConfigError


def test_sweep_trains_measures_and_reuses(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "data=sklearn-digits", "models=vit_test,resnet_cpu_small", "epochs=1",
            "finetune.epochs=1", "batch_size=64", "threads=1", f"out={out}"]  # fmt: skip
    assert cli.main(args) == 0
    assert "| resnet_cpu_small | 0.91 |" in capsys.readouterr().out
    rows = json.loads((out / "sweep.json").read_text())
    assert set(rows) == {"vit_test", "resnet_cpu_small"}
    for r in rows.values():
        assert r["gflops"] > 0 and 0 < r["latency_bs1_ms"] < r["latency_bs64_ms"]
        assert 0 <= r["finetune_top1"] <= 1 and r["img_size"] == 16  # digits: 8 px upsampled to 16
    assert rows["vit_test"]["params_m"] < 0.1 < rows["resnet_cpu_small"]["params_m"]
    assert (out / "plots" / "sweep.png").stat().st_size > 1000
    ckpts = sorted(out.glob("*/*/checkpoints/last.ckpt"))
    assert len(ckpts) == 4  # pre-training and fine-tuning of each model
    before = [p.stat().st_mtime_ns for p in ckpts]
    assert cli.main(args) == 0  # finished runs are reused, not trained again
    assert [p.stat().st_mtime_ns for p in ckpts] == before


def test_a_model_too_small_for_its_input_is_refused_clearly():
    cfg = make_config(None, model="pvt_v2_b0", img_size=16)
    with pytest.raises(ConfigError, match="pvt_v2_b0 cannot take 16-px images"):
        build_backbone(cfg)
    build_backbone(make_config(None, model="pvt_v2_b0", img_size=32))  # 32 px works


def test_sweep_model_at_size_syntax_is_checked(tmp_path, capsys):
    args = ["sweep", "data=sklearn-digits", "models=vit_test@big", f"out={tmp_path}"]
    assert cli.main(args) == 2
    assert "MODEL@PIXELS" in capsys.readouterr().err
