import math

import pytest
import torch
import torch.nn.functional as F

from idmm.eval.linear import (
    DEFAULT_LRS,
    _ce_grad,
    edge_warning,
    linear_probe,
    stratified_split,
    train_heads,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """The torch references below run tiny ops; on a busy 2-core box 2 threads are ~100x slower."""
    torch.set_num_threads(1)


def _blobs(n_per_class, num_classes=5, dim=32, sep=4.0, noise=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = sep * torch.randn(num_classes, dim, generator=g)
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    f = means[y] + noise * torch.randn(len(y), dim, generator=g)
    return f, y


def _split(f, y, seed=1):
    """Every other sample to test, so both halves hold every class."""
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    tr, te = perm[: len(y) // 2], perm[len(y) // 2 :]
    return f[tr], y[tr], f[te], y[te]


def test_separable_blobs_are_learned():
    train_f, train_y, test_f, test_y = _split(*_blobs(80))
    r = linear_probe(train_f, train_y, test_f, test_y, num_classes=5, epochs=30)
    assert r["top1"] >= 0.95
    assert r["top5"] >= r["top1"]
    assert r["best_lr"] in DEFAULT_LRS
    assert set(r["val_top1_by_lr"]) == {str(lr) for lr in DEFAULT_LRS}
    assert (r["train_images"], r["test_images"], r["epochs"]) == (200, 200, 30)
    pred = r["predictions"]
    assert pred.dtype == torch.long and pred.shape == (200,)
    assert r["top1"] == pytest.approx(float((pred == test_y).float().mean()))


def test_random_labels_stay_near_chance():
    f, _ = _blobs(80)
    y = torch.randint(0, 5, (len(f),), generator=torch.Generator().manual_seed(3))
    r = linear_probe(*_split(f, y), num_classes=5, epochs=30)
    assert r["top1"] < 0.5
    assert all(0.0 <= a <= 1.0 for a in r["val_top1_by_lr"].values())


def test_top5_is_top_k_with_k_clipped_to_classes():
    f, y = _blobs(40, num_classes=3, sep=0.0)  # no signal: top-1 far from 1
    r = linear_probe(*_split(f, y), num_classes=3, epochs=5)
    assert r["top1"] < 0.9
    assert r["top5"] == 1.0  # k = min(5, 3) = 3 covers every class


def test_ce_grad_matches_autograd_of_summed_mean_ce():
    torch.manual_seed(0)
    x, y = torch.randn(17, 6), torch.randint(0, 4, (17,))
    w, b = torch.randn(6, 3, 4).requires_grad_(), torch.randn(3, 4).requires_grad_()
    logits = torch.einsum("nd,dkc->knc", x, w) + b[:, None]
    loss = sum(F.cross_entropy(logits[k], y) for k in range(3))
    gw, gb = torch.autograd.grad(loss, (w, b))
    ow, ob = _ce_grad(x, y, w.detach(), b.detach())
    assert torch.allclose(ow, gw, atol=1e-6) and torch.allclose(ob, gb, atol=1e-6)


def test_one_pass_heads_train_as_if_alone():
    f, y = _blobs(30, noise=3.0)
    args = dict(num_classes=5, epochs=7, batch_size=32, weight_decay=1e-3, seed=4)
    w2, b2 = train_heads(f, y, lrs=(0.01, 0.3), **args)
    w1, b1 = train_heads(f, y, lrs=(0.01,), **args)
    assert w2.shape == (2, 32, 5) and b2.shape == (2, 5)
    assert torch.allclose(w2[0], w1[0], atol=1e-6) and torch.allclose(b2[0], b1[0], atol=1e-6)
    assert not torch.allclose(w2[0], w2[1], atol=1e-3)  # the other head did train differently

    data = _split(*_blobs(60, noise=3.0))
    two = linear_probe(*data, num_classes=5, lrs=(0.01, 0.3), epochs=10)
    one = linear_probe(*data, num_classes=5, lrs=(0.01,), epochs=10)
    assert two["val_top1_by_lr"]["0.01"] == one["val_top1_by_lr"]["0.01"]


def test_train_heads_is_torch_sgd_with_momentum_and_cosine():
    """Reference: torch.optim.SGD (momentum 0.9, weight decay on W only) + cosine per step,
    drawing init and shuffles from the generator in the same order as train_heads."""
    f, y = _blobs(20, noise=3.0)
    lr, wd, epochs, bs, seed = 0.05, 1e-2, 4, 16, 7
    ours_w, ours_b = train_heads(f, y, 5, (lr,), epochs, bs, wd, seed)

    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(32, 1, 5, generator=g) * 0.01)[:, 0].requires_grad_()
    b = torch.zeros(5, requires_grad=True)
    opt = torch.optim.SGD(
        [{"params": [w], "weight_decay": wd}, {"params": [b], "weight_decay": 0.0}],
        lr=lr,
        momentum=0.9,
    )
    total = epochs * math.ceil(len(y) / bs)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total))
    )
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), bs):
            idx = perm[i : i + bs]
            opt.zero_grad()
            F.cross_entropy(f[idx] @ w + b, y[idx]).backward()
            opt.step()
            sched.step()
    assert torch.allclose(ours_w[0], w.detach(), atol=1e-5)
    assert torch.allclose(ours_b[0], b.detach(), atol=1e-5)


def test_same_seed_same_result_other_seed_differs():
    f, _ = _blobs(60)
    y = torch.randint(0, 5, (len(f),), generator=torch.Generator().manual_seed(5))
    data = _split(f, y)
    kw = dict(num_classes=5, epochs=10, batch_size=32, weight_decay=0.0)  # several batches
    a = linear_probe(*data, **kw, seed=1)
    torch.manual_seed(123)  # the global RNG must play no part
    b = linear_probe(*data, **kw, seed=1)
    c = linear_probe(*data, **kw, seed=2)
    assert torch.equal(a.pop("predictions"), b.pop("predictions"))
    for ta, tb in zip(a.pop("head"), b.pop("head")):
        assert torch.equal(ta, tb)
    assert a == b
    assert a["val_top1_by_lr"] != c["val_top1_by_lr"]

    wa, _ = train_heads(f, y, lrs=(0.1,), seed=1, **kw)
    wb, _ = train_heads(f, y, lrs=(0.1,), seed=1, **kw)
    wc, _ = train_heads(f, y, lrs=(0.1,), seed=2, **kw)
    assert torch.equal(wa, wb) and not torch.allclose(wa, wc, atol=1e-4)


def test_thread_count_is_restored():
    torch.set_num_threads(2)
    linear_probe(*_split(*_blobs(10)), num_classes=5, epochs=2)
    assert torch.get_num_threads() == 2


def test_stratified_split_holds_out_from_every_class():
    sizes = [10, 5, 2, 1, 20]
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    tr, va = stratified_split(y, 0.2, torch.Generator().manual_seed(0))
    assert torch.equal(torch.cat([tr, va]).sort().values, torch.arange(len(y)))  # a partition
    assert torch.bincount(y[va], minlength=5).tolist() == [2, 1, 1, 0, 4]
    assert torch.bincount(y[tr], minlength=5).tolist() == [8, 4, 1, 1, 16]
    tr2, va2 = stratified_split(y, 0.2, torch.Generator().manual_seed(0))
    assert torch.equal(va, va2) and torch.equal(tr, tr2)


def _bad(**over):
    f, y = _blobs(4)
    kw = dict(train_f=f, train_y=y, test_f=f, test_y=y, num_classes=5, epochs=1)
    kw.update(over)
    return kw


@pytest.mark.parametrize(
    "over",
    [
        dict(test_f=torch.randn(20, 31)),  # feature dims disagree
        dict(train_y=torch.zeros(19, dtype=torch.long)),  # labels vs features
        dict(test_f=torch.randn(20, 32, 1)),  # not (N, D)
        dict(train_f=torch.randn(1, 32), train_y=torch.zeros(1, dtype=torch.long)),
        dict(train_y=torch.full((20,), 5)),  # label == num_classes
        dict(train_y=torch.full((20,), -1)),
        dict(test_y=torch.full((20,), 7)),
        dict(lrs=()),
        dict(lrs=(0.1, -1.0)),
        dict(val_fraction=0.0),
        dict(val_fraction=1.0),
        dict(train_f=torch.randn(2, 32), train_y=torch.tensor([0, 1])),  # no class to hold out
    ],
)
def test_bad_inputs_raise(over):
    with pytest.raises(ValueError):
        linear_probe(**_bad(**over))


def test_head_in_raw_feature_space_gives_the_same_predictions():
    train_f, train_y, test_f, test_y = _split(*_blobs(40, noise=3.0))
    train_f, test_f = train_f * 7 + 3, test_f * 7 + 3  # far from standardised
    r = linear_probe(train_f, train_y, test_f, test_y, num_classes=5, epochs=20)
    weight, bias = r["head"]
    assert weight.shape == (5, 32) and bias.shape == (5,)
    assert torch.equal((test_f @ weight.T + bias).argmax(1), r["predictions"])


@pytest.mark.parametrize(
    "val, edge",
    [
        ({"0.1": 0.5, "0.3": 0.6, "1.0": 0.7}, "largest"),
        ({"0.1": 0.7, "0.3": 0.6, "1.0": 0.5}, "smallest"),
        ({"0.1": 0.5, "0.3": 0.7, "1.0": 0.6}, None),
        ({"0.1": 0.6, "0.3": 0.7, "1.0": 0.7}, None),  # ties go to the smaller lr: inside
        ({"0.1": 0.7, "0.3": 0.7, "1.0": 0.7}, None),  # a flat grid says nothing about beyond
    ],
)
def test_grid_edge_is_flagged_only_when_the_end_beats_its_neighbour(val, edge):
    from idmm.eval.linear import _grid_edge

    lrs = (1.0, 0.1, 0.3)  # any order
    best = max(lrs, key=lambda lr: (val[str(lr)], -lr))
    assert _grid_edge(lrs, best, val) == edge


def test_probe_result_flags_a_grid_too_small_to_reach_the_optimum():
    train_f, train_y, test_f, test_y = _split(*_blobs(80))
    # 1e-5 leaves the head near its random init; 0.1 learns the blobs: the grid's top wins
    r = linear_probe(train_f, train_y, test_f, test_y, num_classes=5, lrs=(1e-5, 0.1), epochs=30)
    assert r["val_top1_by_lr"]["0.1"] > r["val_top1_by_lr"]["1e-05"] + 0.3
    assert r["best_lr"] == 0.1 and r["best_lr_at_edge"] == "largest"
    assert "lr 0.1 is the grid's largest" in edge_warning(r) and "widen" in edge_warning(r)
    r = linear_probe(train_f, train_y, test_f, test_y, num_classes=5, epochs=30)
    assert r["best_lr_at_edge"] is None  # the default grid holds these blobs' optimum inside
    assert edge_warning(r) is None
