import pytest
import torch
import torch.nn.functional as F

from idmm.losses import mixed_soft_ce, soft_target_ce


@pytest.mark.parametrize("lam,eps", [(1.0, 0.0), (0.7, 0.0), (0.7, 0.1), (0.5, 0.3)])
def test_mixed_soft_ce_equals_dense_soft_target(lam, eps):
    torch.manual_seed(0)
    n, b = 50, 8
    logits = torch.randn(b, n) * 3
    a, c = torch.randint(0, n, (b,)), torch.randint(0, n, (b,))
    target = lam * F.one_hot(a, n).float() + (1 - lam) * F.one_hot(c, n).float()
    target = (1 - eps) * target + eps / n
    assert torch.allclose(target.sum(1), torch.ones(b))  # soft targets sum to one
    assert torch.allclose(
        mixed_soft_ce(logits, a, c, lam, eps), soft_target_ce(logits, target), atol=1e-5
    )


def test_label_smoothing_matches_torch():
    torch.manual_seed(0)
    logits, y = torch.randn(6, 20), torch.randint(0, 20, (6,))
    ours = mixed_soft_ce(logits, y, y, 1.0, 0.1)
    assert torch.allclose(ours, F.cross_entropy(logits, y, label_smoothing=0.1), atol=1e-6)
    # the smoothed target: 1 - eps + eps/N on the true class, eps/N elsewhere
    t = (1 - 0.1) * F.one_hot(y, 20).float() + 0.1 / 20
    assert torch.allclose(t.max(1).values, torch.full((6,), 0.9 + 0.005))


def test_contrastive_loss_is_fp32_under_autocast():
    """Under CPU bf16 autocast the similarities stay fp32, as IDMM's cross-entropy does."""
    from idmm.losses import multi_positive_contrastive

    z = torch.randn(12, 16, generator=torch.Generator().manual_seed(0))
    ids = torch.arange(12) % 6
    exact = multi_positive_contrastive(z, ids, 0.2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = multi_positive_contrastive(z, ids, 0.2)
    assert under.dtype == torch.float32 and torch.allclose(under, exact, atol=1e-6)
