"""IDMM's levers beyond the paper (off by default): a cosine instance head with a temperature,
a projection MLP before the head, a weight on the local crops' loss."""

import pytest
import torch
import torch.nn.functional as F

from idmm.builders import build_method, make_config, resolve
from idmm.config import ConfigError
from idmm.engine.distributed import Runtime
from idmm.eval.features import extract_features
from idmm.losses import mixed_soft_ce
from idmm.methods.idmm import CosineHead


def _idmm(n=32, **overrides):
    cfg = make_config(method="idmm", model="vit_test", img_size=16, batch_size=8,
                      **{"aug.local_size": 8, **overrides})  # fmt: skip
    rt = Runtime(0, 1, 0, torch.device("cpu"), "fp32")
    resolve(cfg, rt, None)
    return cfg, build_method(cfg, rt, n, 4)


def test_defaults_are_the_papers_plain_linear_head():
    _, m = _idmm()
    assert isinstance(m.head, torch.nn.Linear) and isinstance(m.projector, torch.nn.Identity)


def test_cosine_head_is_cosine_over_temperature_in_fp32():
    head = CosineHead(6, 5, temperature=0.2)
    f = torch.randn(3, 6)
    want = F.normalize(f, dim=1) @ F.normalize(head.weight, dim=1).T / 0.2
    assert torch.allclose(head(f), want, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head(f.bfloat16()).dtype == torch.float32
    assert head(f).abs().max() <= 1 / 0.2 + 1e-5


def test_imprinted_cosine_rows_are_the_images_own_directions(uint8_batch):
    n = len(uint8_batch)
    cfg, m = _idmm(n, **{"idmm.head": "cosine", "idmm.head_init": "imprint",
                         "data.mean": "0.5,0.5,0.5", "data.std": "0.25,0.25,0.25"})  # fmt: skip
    m.on_train_start(uint8_batch)
    assert torch.allclose(F.normalize(m.head.weight, dim=1), m.head.weight, atol=1e-5)
    # each image's own row is its best match: logit 1 / temperature
    rt = Runtime(0, 1, 0, torch.device("cpu"), "fp32")
    feats = extract_features(torch.nn.Sequential(m.backbone, m.projector), uint8_batch, 16,
                             cfg.data.mean, cfg.data.std, rt)  # fmt: skip
    logits = m.head(feats)
    assert torch.equal(logits.argmax(1), torch.arange(n))
    assert torch.allclose(logits.diagonal(), torch.full((n,), 10.0), atol=1e-3)


def test_projector_sits_between_backbone_and_head_and_is_not_exported(uint8_batch):
    _, m = _idmm(**{"idmm.projector": 64})
    assert m.representation() is m.backbone  # features are taken before the projector
    x = torch.randn(2, 3, 16, 16)
    assert m.embed(x).shape == m.backbone(x).shape
    assert not torch.allclose(m.embed(x), m.backbone(x))
    names = {n for group in m.param_groups(1e-3, 0.0) for n in map(id, group["params"])}
    assert all(id(p) in names for p in m.projector.parameters())  # trained


def test_local_weight_scales_the_local_crops_loss(uint8_batch):
    cfg, m = _idmm(**{"idmm.local_weight": 0.0, "idmm.cutmix_alpha": 0.0})
    m.eval()  # no drop-path: the same forward twice
    g = torch.Generator().manual_seed(0)
    groups = m.prepare(uint8_batch[:8], torch.arange(8), None, None, g)
    loss, _ = m(groups)
    glob = groups[0]
    want = mixed_soft_ce(m.head(m.embed(glob.x)), glob.target_a, glob.target_b, 1.0,
                         cfg.idmm.label_smoothing)  # fmt: skip
    assert torch.allclose(loss, want, atol=1e-6)
    m.settings.local_weight = 0.5
    half, _ = m(groups)
    loc = groups[1]
    local = mixed_soft_ce(m.head(m.embed(loc.x)), loc.target_a, loc.target_b, 1.0,
                          cfg.idmm.label_smoothing)  # fmt: skip
    assert torch.allclose(half, want + 0.5 * local, atol=1e-5)


@pytest.mark.parametrize("overrides,says", [
    ({"idmm.head": "mlp"}, "linear or cosine"),
    ({"idmm.head": "cosine", "idmm.shard_head": True}, "linear when shard_head=true"),
    ({"idmm.temperature": 0}, "positive"),
])  # fmt: skip
def test_bad_lever_settings_are_refused(overrides, says):
    with pytest.raises(ConfigError, match=says):
        make_config(**overrides)
