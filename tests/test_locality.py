"""Shifted patch tokens, locality self-attention and the presets that use them (idmm.locality)."""

import json

import pytest
import torch

import idmm
from idmm import models
from idmm.builders import build_backbone, export_backbone
from idmm.config import build_config
from idmm.locality import (
    LocalitySelfAttention,
    RelativePositionAttention,
    ShiftedPatchEmbed,
    shifted_copies,
)
from tests.test_run_export import _timm_from_export

NEW_PRESETS = (
    "vit_cpu_small_conv_gap",
    "vit_cpu_small_conv_lsa",
    "vit_cpu_small_conv_rpb",
    "vit_cpu_small_spt_lsa",
)


def test_shifted_copies_translate_diagonally_with_zero_fill():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 3, 5] = 1.0
    out = shifted_copies(x, 2)
    assert out.shape == (1, 5, 8, 8) and torch.equal(out[:, :1], x)
    # (dx, dy) = (-1, -1), (1, -1), (-1, 1), (1, 1) half-patches: the pixel moves with them
    for channel, (row, col) in enumerate([(1, 3), (1, 7), (5, 3), (5, 7)], start=1):
        assert out[0, channel].nonzero().tolist() == [[row, col]]
    # a pixel shifted past the border is gone, not wrapped round
    edge = torch.zeros(1, 1, 8, 8)
    edge[0, 0, 0, 0] = 1.0
    assert shifted_copies(edge, 2)[0, 1].sum() == 0


def test_shifted_patch_embed_gives_the_patchify_grid():
    pe = ShiftedPatchEmbed(img_size=16, patch_size=4, in_chans=3, embed_dim=32)
    assert pe(torch.randn(2, 3, 16, 16)).shape == (2, 16, 32)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        pe(torch.randn(1, 3, 18, 16))


@pytest.mark.parametrize("fused", [True, False])
def test_lsa_masks_each_token_from_itself(fused):
    """With q = k = 0 every allowed logit is equal, so token i's output is the mean of the
    *other* tokens' values; a token attending to itself would change it."""
    attn = LocalitySelfAttention(8, num_heads=2, qkv_bias=False)
    attn.fused_attn = fused
    with torch.no_grad():
        attn.qkv.weight[:16].zero_()  # q and k
        attn.qkv.weight[16:] = torch.eye(8)  # v = x
        attn.proj.weight.copy_(torch.eye(8))
        attn.proj.bias.zero_()
    x = torch.randn(1, 5, 8)
    others = (x.sum(1, keepdim=True) - x) / 4
    assert torch.allclose(attn(x), others, atol=1e-6)


def test_lsa_temperature_is_learned_per_head():
    attn = LocalitySelfAttention(8, num_heads=2)
    assert attn.scale.shape == (2,) and attn.scale.requires_grad
    attn(torch.randn(2, 5, 8)).sum().backward()
    assert attn.scale.grad is not None and attn.scale.grad.abs().sum() > 0


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("grid", [2, 4, 7])
def test_relative_bias_steers_attention_by_offset_on_any_grid(fused, grid):
    """q = k = 0 and a large bias at offset (0, +1): each patch token copies the value of its
    right-hand neighbour (where it has one), on every grid size; the class token, which gets no
    bias, averages all tokens."""
    attn = RelativePositionAttention(8, num_heads=2, qkv_bias=False)
    attn.fused_attn = fused
    m = attn.max_offset
    with torch.no_grad():
        attn.qkv.weight[:16].zero_()
        attn.qkv.weight[16:] = torch.eye(8)
        attn.proj.weight.copy_(torch.eye(8))
        attn.proj.bias.zero_()
        attn.rel_bias[:, m, m - 1] = 50.0  # query - key = (0, -1): the key one to the right
    n = 1 + grid * grid
    x = torch.randn(1, n, 8)
    out = attn(x)
    patches = x[0, 1:].view(grid, grid, 8)
    assert torch.allclose(out[0, 1:].view(grid, grid, 8)[:, :-1], patches[:, 1:], atol=1e-4)
    assert torch.allclose(out[0, 0], x[0].mean(0), atol=1e-5)


def test_relative_bias_starts_at_zero_and_is_learned():
    attn = RelativePositionAttention(8, num_heads=2)
    assert attn.rel_bias.abs().sum() == 0
    attn(torch.randn(2, 17, 8)).sum().backward()
    assert attn.rel_bias.grad is not None and attn.rel_bias.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NEW_PRESETS)
def test_presets_pretrain_small_and_finetune_larger(name, tmp_path):
    """Pre-training at 16 px with 8-px local crops, then fine-tuning at 28 px (the CPU
    recipe's sizes): the position embedding is resized, only the head is new."""
    model = models.create_backbone(name, 16, dynamic_img_size=True)
    for size in (8, 16):
        assert model(torch.randn(2, 3, size, size)).shape == (2, 128)
    models.save_backbone(model, tmp_path / "b.safetensors", {})
    tuned = models.create_backbone(name, 28, num_classes=10)
    new = models.load_pretrained(tuned, tmp_path / "b.safetensors")
    assert sorted(new) == ["head.bias", "head.weight"]
    assert tuned(torch.randn(2, 3, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    "name, layers",
    [
        ("vit_cpu_small_spt_lsa", {"embed_layer": "idmm.locality.ShiftedPatchEmbed",
                                   "attn_layer": "idmm.locality.LocalitySelfAttention"}),
        ("vit_cpu_small_conv_rpb", {"embed_layer": "idmm.models.ConvStem",
                                    "attn_layer": "idmm.locality.RelativePositionAttention"}),
    ],
)  # fmt: skip
def test_locality_presets_export_to_plain_timm(name, layers, tmp_path):
    cfg = build_config(
        overrides={
            "model": name,
            "img_size": "16",
            "data.mean": "0.3,0.3,0.3",
            "data.std": "0.3,0.3,0.3",
        }
    )
    ours = build_backbone(cfg).eval()
    with torch.no_grad():  # a trained bias table, so that a plain timm ViT that lost it differs
        for key, p in ours.named_parameters():
            if key.endswith("rel_bias"):
                p.normal_()
    export_backbone(cfg, ours, tmp_path / "backbone.safetensors", "idmm")
    out = idmm.export(tmp_path / "backbone.safetensors", tmp_path / "x")
    info = json.loads((out / "model.json").read_text())
    assert info["import_kwargs"] == layers
    _, plain = _timm_from_export(out)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(plain(x), ours(x), atol=1e-5)


def test_relative_bias_model_exports_to_onnx(tmp_path):
    """The exporter cannot trace the fused kernel with a float bias: export takes the plain
    attention path, and onnxruntime's outputs match torch's."""
    pytest.importorskip("onnxruntime")  # in the dev extra: CI runs this
    grey = {"data.mean": "0.3,0.3,0.3", "data.std": "0.3,0.3,0.3"}
    cfg = build_config(overrides={"model": "vit_cpu_small_conv_rpb", "img_size": "16", **grey})
    ours = build_backbone(cfg).eval()
    with torch.no_grad():
        for key, p in ours.named_parameters():
            if key.endswith("rel_bias"):
                p.normal_()
    export_backbone(cfg, ours, tmp_path / "backbone.safetensors", "idmm")
    out = idmm.export(tmp_path / "backbone.safetensors", tmp_path / "x", format="onnx")
    info = json.loads((out / "model.json").read_text())
    assert info["onnx"]["checked"] and info["onnx"]["max_abs_diff"] < 1e-3


def test_relative_bias_refuses_register_tokens():
    attn = RelativePositionAttention(8, num_heads=2)
    with pytest.raises(ValueError, match="at most a class token; got 7 tokens"):
        attn(torch.randn(1, 7, 8))  # 3 prefix tokens before a 2 x 2 grid
