import pytest
import torch

from idmm.builders import build_backbone
from idmm.config import ConfigError, build_config
from idmm.models import create_backbone, set_fused_attention


@pytest.mark.parametrize(
    "name,size,dim",
    [
        ("deit_tiny_patch16_224", 112, 192),
        ("pvt_v2_b0", 112, 256),
        ("resnet18", 64, 512),
        ("vit_cpu_small", 28, 128),
    ],
)
def test_any_timm_model_builds_for_the_pretraining_size(name, size, dim):
    model = create_backbone(name, size, drop_path=0.1).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, dim) and model.num_features == dim


def test_local_crops_at_another_resolution_share_the_vit():
    model = create_backbone("vit_test", 28, dynamic_img_size=True)
    assert model(torch.randn(2, 3, 16, 16)).shape == model(torch.randn(2, 3, 28, 28)).shape


def test_plain_attention_path_gives_the_same_features():
    model = create_backbone("vit_test", 28).eval()
    x = torch.randn(4, 3, 28, 28)
    fused = model(x)
    set_fused_attention(model, False)
    assert torch.allclose(fused, model(x), atol=1e-5)


def test_unknown_model_and_bad_size_are_config_errors():
    with pytest.raises(ConfigError, match="unknown model 'deit_tinny'.*deit_tiny"):
        create_backbone("deit_tinny", 112)
    cfg = build_config(overrides={"model": "vit_cpu_small", "img_size": "30"})
    with pytest.raises(ConfigError, match="img_size=30 is not a multiple of .* patch size 4"):
        build_backbone(cfg)
    cfg = build_config(
        overrides={"model": "vit_cpu_small", "img_size": "28", "aug.local_size": "18"}
    )
    with pytest.raises(ConfigError, match="aug.local_size=18 .* use 16 or 20"):
        build_backbone(cfg)
