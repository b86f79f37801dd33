"""Two CPU processes under torchrun (gloo): the DDP path of the trainer runs end to end."""

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torchrun_helpers import launch, run_worker


def test_torchrun_two_processes_gloo(tmp_path):
    run = tmp_path / "ddp"
    launch("-m", "idmm", "pretrain", "data=fashion-mnist", "subset_per_class=10",
           "model=vit_test", "epochs=2", "batch_size=20", "threads=1", f"out={run}",
           "progress=log")  # fmt: skip
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # one process writes the logs
    assert records[-1]["step"] == 2 * (100 // 40)  # 100 images, 2 ranks x 20 per step
    assert (run / "backbone.safetensors").is_file()
    cfg = (run / "config.yaml").read_text()  # the global batch and the lr scaled by it
    assert "global_batch_size: 40" in cfg and f"lr: {5e-4 * 40 / 256}" in cfg


def test_torchrun_runs_the_whole_pipeline(tmp_path):
    """`idmm run` under torchrun: pre-training and fine-tuning in DDP, one process writes."""
    out = tmp_path / "run"
    launch("-m", "idmm", "run", "data=fashion-mnist", "subset_per_class=10", "model=vit_test",
           "epochs=1", "batch_size=20", "finetune.epochs=2", "finetune.batch_size=20",
           "linear.epochs=5", "threads=1", f"out={out}", "progress=log")  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert 0 <= results["finetune"]["top1"] <= 1 and "linear" in results
    records = [json.loads(x) for x in (out / "finetune" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "epoch" in r] == [1, 2]
    assert (out / "report.md").is_file()


def _pretrain(out, nproc, batch, method, *extra, epochs=2):
    launch("-m", "idmm", "pretrain", "data=fashion-mnist", "subset_per_class=8",
           "model=vit_test", f"epochs={epochs}", f"batch_size={batch}", "threads=1", f"out={out}",
           "progress=log", "precision=fp32", "drop_path=0", "idmm.cutmix_p=0",
           "aug.local_size=16", "idmm.head_init=imprint", "lr=1e-3", "knn_every=0",
           f"method={method}", *extra, nproc=nproc)  # fmt: skip
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    return losses, load_file(str(out / "backbone.safetensors"))


@pytest.mark.parametrize("method", ["idmm", "simclr"])
def test_two_ranks_train_like_one_process_with_the_global_batch(tmp_path, method):
    """2 ranks x batch 10 follow 1 process x batch 20: the same crops (augmentation draws do not
    depend on the split), gradients averaged by DDP; for SimCLR the negatives and positives are
    gathered across ranks with gradients. Drop-path and CutMix partners are per-rank by design,
    so they are off here; fp32 so only summation order differs."""
    one_loss, one = _pretrain(tmp_path / "one", 1, 20, method)
    two_loss, two = _pretrain(tmp_path / "two", 2, 10, method)
    assert len(one_loss) == 2 and all(abs(a - b) < 1e-4 for a, b in zip(one_loss, two_loss))
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-4, rtol=1e-4), k


def _head(run):
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    return ckpt["method"]["head.weight"], ckpt["optimizer"]["state"]


def test_sharded_instance_head_trains_like_the_replicated_one(tmp_path):
    """idmm.shard_head=true: 2 processes each hold half of the head's rows, the softmax spans
    both, and training follows 1 process with the whole head; the checkpoint holds the whole
    head and its AdamW state, so a run resumes at another world size."""
    one_loss, one = _pretrain(tmp_path / "one", 1, 20, "idmm")
    two_loss, two = _pretrain(tmp_path / "two", 2, 10, "idmm", "idmm.shard_head=true")
    assert all(abs(a - b) < 1e-4 for a, b in zip(one_loss, two_loss))
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-4, rtol=1e-4), k
    (w1, s1), (w2, s2) = _head(tmp_path / "one"), _head(tmp_path / "two")
    assert w2.shape == w1.shape == (70, 48) and torch.allclose(w1, w2, atol=1e-4)
    assert all(torch.allclose(s1[i]["exp_avg_sq"], s2[i]["exp_avg_sq"], atol=1e-6) for i in s1)
    # resume the sharded run's checkpoint for a third epoch, sharded and not: the same weights
    for name in ("again", "single"):
        shutil.copytree(tmp_path / "two", tmp_path / name)
    _, sharded = _pretrain(tmp_path / "again", 2, 10, "idmm", "idmm.shard_head=true",
                           "resume=true", epochs=3)  # fmt: skip
    _, single = _pretrain(tmp_path / "single", 1, 20, "idmm", "resume=true", epochs=3)
    for k in single:
        assert torch.allclose(single[k], sharded[k], atol=1e-4, rtol=1e-4), k
    assert torch.allclose(_head(tmp_path / "again")[0], _head(tmp_path / "single")[0], atol=1e-4)


def test_sharded_head_loss_equals_the_replicated_head(tmp_path):
    """The cross-process softmax with label smoothing and soft CutMix targets (13 rows over 2
    processes, one padding row): loss and gradients equal those of one process."""
    ranks = run_worker("_sharded_head_worker.py", tmp_path)
    assert [r["rows"] for r in ranks] == [7, 6]
    for r in ranks:
        assert r["loss"] < 1e-5 and r["padding_grad"] == 0.0
        assert max(r["weight_grad"], r["bias_grad"], r["feat_grad"]) < 1e-6, r


def test_budget_under_torchrun_gives_every_rank_the_same_epochs(tmp_path):
    """Each process times its own epochs; the epochs are agreed (their mean) so that no rank
    waits forever for another's step."""
    losses, _ = _pretrain(tmp_path / "b", 2, 10, "idmm", "budget=15s", epochs=100000)
    saved = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    assert 1 <= saved["epochs"] < 100000 and len(losses) == saved["epochs"]
