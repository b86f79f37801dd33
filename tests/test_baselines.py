"""The baselines (SimCLR, SupCon, DINO, supervised pre-training): their losses against direct
computations, multi-process gathering, DINO's teacher and centre, and each method end to end."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torchrun_helpers import run_worker

import idmm
from idmm.builders import build_method, make_config, resolve
from idmm.engine.distributed import Runtime
from idmm.losses import multi_positive_contrastive


def direct_contrastive(z, ids, t):
    """The definition, one anchor and one positive at a time."""
    z = F.normalize(z, dim=1)
    losses = []
    for i in range(len(z)):
        others = [k for k in range(len(z)) if k != i]
        denom = torch.logsumexp(torch.stack([z[i] @ z[k] / t for k in others]), 0)
        pos = [k for k in others if ids[k] == ids[i]]
        if pos:
            losses.append(sum(denom - z[i] @ z[p] / t for p in pos) / len(pos))
    return sum(losses) / len(losses)


@pytest.mark.parametrize(
    "ids",
    [
        [0, 1, 2, 3] * 3,  # SimCLR: 4 images x 3 crops (crop-major)
        [0, 0, 1, 2] * 2 + [0, 0, 1, 2],  # SupCon: labels of 4 images, 3 crops
    ],
)
def test_contrastive_loss_equals_the_definition(ids):
    z = torch.randn(12, 8, dtype=torch.float64)
    ids = torch.tensor(ids)
    got = multi_positive_contrastive(z, ids, 0.3)
    assert torch.allclose(got.double(), direct_contrastive(z.float(), ids, 0.3).double(), atol=1e-5)


def test_contrastive_loss_with_singleton_classes_is_finite():
    z = torch.randn(6, 4, requires_grad=True)
    ids = torch.tensor([0, 1, 1, 2, 3, 4])  # one pair, four anchors without any positive
    loss = multi_positive_contrastive(z, ids, 0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    assert torch.allclose(loss, direct_contrastive(z.detach(), ids, 0.1), atol=1e-5)
    alone = multi_positive_contrastive(z, torch.arange(6), 0.1)  # nobody has a positive
    assert alone.item() == 0.0
    alone.backward()
    assert torch.isfinite(z.grad).all()


def test_gather_with_gradient_in_two_gloo_processes(tmp_path):
    """2 processes x 6 crops: the same loss and, after averaging as DDP does, the same gradient
    as one process with all 12 crops (positives and negatives span the processes)."""
    ranks = run_worker("_contrastive_worker.py", tmp_path)
    z = torch.randn(12, 5, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    ids = torch.tensor([0, 1, 2, 0, 1, 2, 3, 4, 5, 3, 4, 5])
    loss = multi_positive_contrastive(z, ids, 0.5)
    loss.backward()
    assert abs(sum(r["loss"] for r in ranks) / 2 - loss.item()) < 1e-5
    # DDP averages parameter gradients over 2 ranks: input gradients are 2x the global ones
    grad = torch.tensor([row for r in ranks for row in r["grad"]]) / 2
    assert torch.allclose(grad, z.grad, atol=1e-6)


def _method(name, **overrides):
    cfg = make_config(
        **{"method": name, "model": "vit_test", "img_size": 16, "batch_size": 8, **overrides}
    )
    rt = Runtime(0, 1, 0, torch.device("cpu"), "fp32")
    resolve(cfg, rt, None)
    return cfg, build_method(cfg, rt, 32, 4)


def test_dino_teacher_and_centre_update(uint8_batch):
    cfg, m = _method("dino", **{"dino.out_dim": 64, "dino.hidden_dim": 32})
    m.train()
    student = [p.detach().clone() for p in [*m.backbone.parameters(), *m.head.parameters()]]
    teacher = [p.detach().clone() for p in m.teacher.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(student, teacher))  # a copy at the start
    crops = m.prepare(uint8_batch[:8], torch.arange(8), None, None, torch.Generator())
    with torch.no_grad():
        t = m.teacher["head"](m.teacher["backbone"](crops[0]))
    loss, _ = m(crops)
    assert torch.isfinite(loss)
    # centre: 0.9 * 0 + 0.1 * the batch mean of the teacher's outputs
    assert torch.allclose(m.center, 0.1 * t.mean(0, keepdim=True), atol=1e-6)
    loss.backward()
    with torch.no_grad():
        for p in [*m.backbone.parameters(), *m.head.parameters()]:
            p.add_(torch.randn_like(p) if p.grad is None else -p.grad)  # any step
    m.on_step_end(0.0)  # progress 0: momentum 0.996
    new_student = [*m.backbone.parameters(), *m.head.parameters()]
    for t0, s1, t1 in zip(teacher, new_student, m.teacher.parameters()):
        assert torch.allclose(t1, 0.996 * t0 + 0.004 * s1.detach(), atol=1e-6)
    assert not any(p.requires_grad for p in m.teacher.parameters())
    m.on_step_end(1.0)  # the end of training: momentum 1, the teacher stops moving
    frozen = [p.clone() for p in m.teacher.parameters()]
    m.on_step_end(1.0)
    assert all(torch.equal(a, b) for a, b in zip(frozen, m.teacher.parameters()))


def test_dino_teacher_follows_batchnorm_and_the_student_is_exported(uint8_batch):
    """The conv stem's BatchNorm statistics follow the EMA like the weights; the student (what
    the paper's DINO baseline fine-tunes) is the representation."""
    cfg, m = _method(
        "dino", model="vit_cpu_small_conv", **{"dino.out_dim": 64, "dino.hidden_dim": 32}
    )
    assert m.representation() is m.backbone
    m.train()
    crops = m.prepare(uint8_batch[:8], torch.arange(8), None, None, torch.Generator())
    m(crops)  # the student's BatchNorm sees a batch: its running statistics move
    before = [b.clone() for b in m.teacher.buffers() if b.dtype.is_floating_point]
    m.on_step_end(0.0)
    student = [b for b in m.backbone.buffers() if b.dtype.is_floating_point]
    for t0, s, t1 in zip(before, student, [b for b in m.teacher.buffers()
                                           if b.dtype.is_floating_point]):  # fmt: skip
        assert torch.allclose(t1, 0.996 * t0 + 0.004 * s, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(before, m.teacher.buffers()))


def test_dino_teacher_runs_like_dinos(uint8_batch):
    """As the official code: the teacher runs in training mode (BatchNorm normalises with the
    batch's statistics, not running ones still near their initialisation) without stochastic
    depth, and the head's linear layers start with zero biases."""
    cfg, m = _method("dino", model="vit_cpu_small_conv", drop_path=0.2,
                     **{"dino.out_dim": 64, "dino.hidden_dim": 32})  # fmt: skip
    m.train()
    assert all(mod.training for mod in m.teacher.modules())
    drops = [mod for mod in m.teacher.modules() if hasattr(mod, "drop_prob")]
    assert drops and all(mod.drop_prob == 0 for mod in drops)
    assert any(mod.drop_prob > 0 for mod in m.backbone.modules() if hasattr(mod, "drop_prob"))
    assert all(torch.all(lin.bias == 0) for lin in m.head.mlp if isinstance(lin, torch.nn.Linear))


def test_dino_optimiser_is_dinos():
    """Weight decay 0.04 -> 0.4 on weights only, per-parameter clipping at 3, prototypes frozen
    in the first epoch."""
    cfg, m = _method("dino", **{"dino.out_dim": 64, "dino.hidden_dim": 32})
    groups = m.param_groups(1e-3, 1e-3)
    assert [g["weight_decay"] for g in groups] == [0.04, 0.0]
    assert all(p.ndim > 1 for p in groups[0]["params"])
    assert any(p is m.head.prototypes for p in groups[0]["params"])
    assert m.weight_decay_at(0.0) == pytest.approx(0.04)
    assert m.weight_decay_at(0.5) == pytest.approx(0.22) and m.weight_decay_at(1.0) == 0.4
    for p in m.parameters():
        p.grad = torch.full_like(p, 10.0)
    m.on_epoch_start(0)
    m.before_optimizer_step()
    assert m.head.prototypes.grad is None  # frozen in epoch 0
    norms = [p.grad.norm().item() for p in m.parameters() if p.grad is not None]
    assert max(norms) == pytest.approx(3.0, rel=1e-4)
    m.on_epoch_start(1)
    m.head.prototypes.grad = torch.ones_like(m.head.prototypes)
    m.before_optimizer_step()
    assert m.head.prototypes.grad is not None


def test_dino_teacher_temperature_warms_up():
    cfg, m = _method(
        "dino",
        **{
            "dino.out_dim": 16,
            "dino.warmup_teacher_temp": 0.02,
            "dino.teacher_temp": 0.06,
            "dino.warmup_teacher_temp_epochs": 4,
        },
    )
    temps = []
    for epoch in range(6):
        m.on_epoch_start(epoch)
        temps.append(m.teacher_temp())
    assert temps == pytest.approx([0.02, 0.03, 0.04, 0.05, 0.06, 0.06])


@pytest.mark.parametrize("name", ["simclr", "supcon", "dino", "supervised"])
def test_each_method_pretrains_evaluates_and_fine_tunes(tmp_path, name):
    """`idmm pretrain method=...`, then kNN and fine-tuning read its backbone.safetensors."""
    run = tmp_path / name
    common = dict(data="fashion-mnist", subset_per_class=8, model="vit_test", img_size=16,
                  batch_size=16, progress="log")  # fmt: skip
    extra = {"dino.out_dim": 64, "dino.hidden_dim": 32} if name == "dino" else {}
    idmm.pretrain(**common, method=name, epochs=2, out=str(run), **extra)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(math.isfinite(r["loss"]) for r in records)
    knn = idmm.evaluate_knn(run)
    assert 0 <= knn["top1"] <= 1
    model = idmm.load_model(idmm.export(run))  # a timm backbone (DINO: the student's)
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 48)
    ft = idmm.finetune(**common, init=str(run), out=str(tmp_path / "ft"), epochs=1)
    assert 0 <= ft["top1"] <= 1
