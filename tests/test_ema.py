"""`ema=` / `finetune.ema=`: a moving average of the weights, what evaluation and export use."""

import pytest
import torch
from safetensors.torch import load_file

import idmm
from idmm.builders import make_config
from idmm.config import ConfigError
from idmm.engine.checkpoint import load_checkpoint
from idmm.methods.base import Method
from tests.test_pretrain import TINY


def _unique(state: dict) -> dict:
    return {k: v for k, v in state.items() if v.is_floating_point()}


def test_ema_weights_are_exported_and_checkpointed(tmp_path):
    """The backbone file holds the average, not the last step's weights, and the checkpoint
    holds both (so that resume continues the average)."""
    out = tmp_path / "ema"
    idmm.pretrain(out=str(out), ema=0.9, **TINY)
    ckpt = load_checkpoint(out / "checkpoints/last.ckpt")["method"]
    exported = load_file(str(out / "backbone.safetensors"))
    online = {k[len("backbone.") :]: v for k, v in ckpt.items() if k.startswith("backbone.")}
    average = {k[len("ema.module.") :]: v for k, v in ckpt.items() if k.startswith("ema.module.")}
    assert set(average) == set(online) == set(exported)
    assert all(torch.equal(exported[k], average[k]) for k in exported)
    differ = [k for k in _unique(online) if not torch.equal(online[k], average[k])]
    assert len(differ) > len(online) // 2  # an average of the last steps, not a copy


def test_ema_warm_up_starts_as_a_copy_and_tends_to_the_decay():
    cfg = make_config(None, model="vit_test", img_size=16, ema=0.99)
    backbone = idmm.models.create_backbone("vit_test", 16)
    method = Method(cfg, backbone, 10, 2, views=None)
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(1.0)  # the weights change after the EMA was built (e.g. weights loaded)
    method.update_ema(1)  # the first update copies
    assert all(torch.equal(a, b) for a, b in zip(backbone.parameters(),
                                                  method.ema.module.parameters()))  # fmt: skip
    assert method.ema.get_decay(100) < 0.98 and method.ema.get_decay(10**7) == 0.99
    assert not any(p.requires_grad for p in method.ema.parameters())
    assert method.representation() is method.ema.module


def test_finetune_evaluates_and_saves_the_average(tmp_path):
    from tests.test_finetune import TINY as FT

    plain = idmm.finetune(out=str(tmp_path / "plain"), **FT)
    averaged = idmm.finetune(out=str(tmp_path / "ema"), ema=0.9, **FT)
    # the average is kept beside training, which it leaves exactly as it was
    assert plain["final_loss"] == averaged["final_loss"]
    ckpt = load_checkpoint(tmp_path / "ema/checkpoints/last.ckpt")["method"]
    saved = load_file(str(tmp_path / "ema/model.safetensors"))
    assert torch.equal(saved["head.weight"], ckpt["ema.module.head.weight"])
    assert not torch.equal(saved["head.weight"], ckpt["backbone.head.weight"])


def test_resume_with_another_ema_is_refused(tmp_path):
    out = tmp_path / "r"
    idmm.pretrain(out=str(out), **dict(TINY, epochs=1))
    with pytest.raises(idmm.engine.trainer.TrainingError, match="ema"):
        idmm.pretrain(out=str(out), resume=True, ema=0.9, **dict(TINY, epochs=2))


def test_ema_value_is_checked():
    with pytest.raises(ConfigError, match="ema"):
        make_config(None, ema=1.5)
