"""The run directory: the one place that knows its layout.

    RUN/                    one command's output (`idmm pretrain`, `idmm finetune`)
      config.yaml           exactly the settings that ran (auto values resolved)
      splits.json           which images are train / val / test (idmm.data.splits)
      metrics.jsonl         one JSON object per epoch or evaluation; metrics.csv: the epochs
      provenance.json       each command that wrote here: command line, versions, machine
      tensorboard/          event files when tensorboard is installed (idmm[tensorboard])
      train.log             what the console showed
      checkpoints/last.ckpt full training state (resume=true)
      backbone.safetensors  pre-training: the representation, timm names
      model.safetensors     fine-tuning: the classifier, timm names
      results.json          final numbers, one entry per evaluation
      plots/ snapshots/ export/ stage2/ (fine-tuning's second stage, itself a run directory)

An `idmm run` directory holds pretrain/, finetune/ and scratch/ (each a run directory) with
config.yaml, results.json, splits.json, report.md and plots/ at its top.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .config import ConfigError, from_dict, load_yaml, save_yaml, schema_of
from .data.splits import Splits
from .engine import checkpoint, log, provenance

# What a run writes besides config.yaml; `overwrite=true` removes it first.
OUTPUTS = (
    "checkpoints", "metrics.jsonl", "results.json", "backbone.safetensors", "train.log",
    "model.safetensors", "plots", "stage2", "export", "snapshots", "splits.json", "metrics.csv",
    "provenance.json", "tensorboard",
)  # fmt: skip


def check_out(path: Path, key: str = "out", file: str | None = None) -> Path:
    """Refuse, with what to do, an output path that cannot be written: one under a file, a
    directory where a file is meant (`file`: an example file name), or a file where a
    directory is."""
    path = Path(path)
    for parent in [path.parent, *path.parent.parents]:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"{key}={path}: {parent} is a file, not a directory; "
                              f"choose another {key}=")  # fmt: skip
    if file and path.is_dir():
        raise ConfigError(f"{key}={path} is a directory; give a file name, e.g. "
                          f"{key}={path / file}")  # fmt: skip
    if not file and path.exists() and not path.is_dir():
        raise ConfigError(f"{key}={path} is a file; give a directory for {key}=")
    return path


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @classmethod
    def find(cls, path: str | Path) -> RunDir:
        """The run directory of `path`: the directory itself, or one of its files (its
        backbone, checkpoints/last.ckpt, export/model.json ...)."""
        p = Path(path)
        if p.is_file():
            p = p.parent
        if p.name in ("checkpoints", "export", "snapshots") and not (p / "config.yaml").is_file():
            p = p.parent
        return cls(p)

    # -- files -----------------------------------------------------------------------------------
    config_file = property(lambda self: self.path / "config.yaml")
    splits_file = property(lambda self: self.path / "splits.json")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    metrics_csv = property(lambda self: self.path / "metrics.csv")
    provenance_file = property(lambda self: self.path / "provenance.json")
    tensorboard_dir = property(lambda self: self.path / "tensorboard")
    log_file = property(lambda self: self.path / "train.log")
    checkpoint = property(lambda self: self.path / "checkpoints" / "last.ckpt")
    backbone = property(lambda self: self.path / "backbone.safetensors")
    model = property(lambda self: self.path / "model.safetensors")
    results_file = property(lambda self: self.path / "results.json")
    plots = property(lambda self: self.path / "plots")
    snapshots = property(lambda self: self.path / "snapshots")
    export_dir = property(lambda self: self.path / "export")
    report_file = property(lambda self: self.path / "report.md")

    def stage(self, name: str) -> RunDir:
        """A sub-run: pretrain, finetune, scratch (of `idmm run`) or stage2 (of fine-tuning)."""
        return RunDir(self.path / name)

    # -- what kind of run --------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.config_file.is_file()

    def require(self) -> RunDir:
        if not self.exists():
            raise ConfigError(
                f"{self.path} is not an idmm run directory (no config.yaml); pass the out= of an "
                "`idmm pretrain`, `idmm finetune` or `idmm run`"
            )
        return self

    @property
    def kind(self) -> str:
        """ "run" (idmm run), "pretrain" or "finetune", from its config.yaml."""
        schema = schema_of(load_yaml(self.require().config_file)).__name__
        return {"RunConfig": "run", "PretrainConfig": "pretrain"}.get(schema, "finetune")

    def read_config(self) -> Any:
        d = load_yaml(self.require().config_file)
        return from_dict(d, schema_of(d))

    def write_config(self, cfg: Any) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, self.config_file)

    # -- weights -----------------------------------------------------------------------------------
    def pretrained(self) -> RunDir:
        """The pre-training run of this directory (itself, or an `idmm run`'s pretrain/)."""
        if self.kind == "run":
            return self.stage("pretrain")
        if self.kind != "pretrain":
            raise ConfigError(
                f"{self.path} is a fine-tuning run; pass a pre-training run (`idmm pretrain` or "
                "`idmm run` out=) for a frozen-backbone evaluation"
            )
        return self

    def backbone_weights(self) -> Path:
        pre = self.pretrained()
        if not pre.backbone.is_file():
            raise ConfigError(
                f"{pre.backbone} not found: the run has not finished pre-training (resume it "
                f"with `idmm pretrain out={pre.path} resume=true`)"
            )
        return pre.backbone

    def classifier_weights(self) -> Path | None:
        """The fine-tuned classifier (the second stage's when there is one), or None."""
        if self.kind == "run":
            ft = self.stage("finetune")
            return ft.classifier_weights() if ft.exists() else None
        for p in (self.stage("stage2").model, self.model):
            if p.is_file():
                return p
        return None

    def model_weights(self) -> Path:
        """The most useful model of this directory: the classifier, else the backbone."""
        if (self.path / "model.json").is_file():  # an export directory
            return self.model
        self.require()
        found = self.classifier_weights()
        if found is None and self.kind != "finetune" and self.pretrained().backbone.is_file():
            found = self.pretrained().backbone
        if found is None:
            raise ConfigError(
                f"{self.path}: no trained model yet (no model.safetensors or "
                "backbone.safetensors); pass a finished run directory"
            )
        return found

    # -- records -----------------------------------------------------------------------------------
    def results(self) -> dict:
        return checkpoint.read_json(self.results_file)

    def update_results(self, key: str, value: dict) -> dict:
        results = self.results()
        results[key] = value
        checkpoint.write_json(self.results_file, results)
        return results

    def write_results(self, results: dict) -> None:
        checkpoint.write_json(self.results_file, results)

    def metrics(self) -> list[dict]:
        return log.read_metrics(self.metrics_file)

    def append_metrics(self, record: dict) -> None:
        log.append_metrics(self.metrics_file, record)
        if "epoch" in record:
            self._write_csv()

    def drop_metrics_after(self, epoch: int) -> None:
        """On resume: forget epoch records newer than the checkpoint (they will be recomputed)."""
        log.drop_metrics_after(self.metrics_file, epoch)
        self._write_csv()

    def _write_csv(self) -> None:
        """metrics.csv: the per-epoch records as a table (timm's summary.csv convention)."""
        rows = [r for r in self.metrics() if "epoch" in r]
        columns = list(dict.fromkeys(k for r in rows for k in r))
        lines = [",".join(columns)]
        for r in rows:
            lines.append(",".join("" if r.get(c) is None else str(r.get(c)) for c in columns))
        tmp = self.metrics_csv.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.metrics_csv)

    def record_invocation(self) -> None:
        """Append what runs now (command, versions, machine) to provenance.json."""
        record = checkpoint.read_json(self.provenance_file)
        record.setdefault("invocations", []).append(provenance.describe())
        checkpoint.write_json(self.provenance_file, record)

    def splits(self) -> Splits | None:
        return Splits.load(self.splits_file) if self.splits_file.is_file() else None

    def start(self, resume: bool, overwrite: bool, is_main: bool) -> None:
        """Check that a new run may write here: a finished or interrupted run is continued
        (resume=true), replaced (overwrite=true), or refused. What a run killed before its first
        checkpoint left (its splits.json, log, metrics) is cleared, so nothing of it is reused."""
        check_out(self.path)
        if self.checkpoint.exists() and not resume and not overwrite:
            raise ConfigError(
                f"{self.path} already holds a run; pass resume=true to continue it, "
                "overwrite=true to start it again, or choose another out="
            )
        continuing = resume and self.checkpoint.exists()
        left_by_idmm = self.checkpoint.exists() or self.splits_file.exists()
        if is_main and not continuing and left_by_idmm:  # never a user's own files
            self.clear()

    def clear(self) -> None:
        for name in OUTPUTS:
            p = self.path / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
