"""Run-directory logging: train.log (human), metrics.jsonl (one JSON object per line)."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import warnings
from pathlib import Path

LOGGER = "idmm"


def setup_logging(log_file: Path | None, is_main: bool = True) -> logging.Logger:
    """The idmm logger: the console, and `log_file` (a run's train.log) on the main process."""
    log = logging.getLogger(LOGGER)
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    log.addHandler(console)
    if log_file is not None and is_main:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        log.addHandler(fh)
    return log


@contextlib.contextmanager
def warnings_as_log_lines():
    """Inside: a UserWarning (bad images skipped, recipe keys dropped) becomes an idmm log line,
    "warning: ...", on the console and in train.log, instead of Python's category, file and
    source line. It replaces `warnings.formatwarning`, not `showwarning`, so code that records
    warnings (pytest.warns, catch_warnings(record=True)) still gets them."""
    original = warnings.formatwarning

    def as_log_line(message, category, filename, lineno, line=None):
        log = logging.getLogger(LOGGER)
        if not issubclass(category, UserWarning) or not log.handlers:
            return original(message, category, filename, lineno, line)
        log.warning(f"warning: {message}")
        return ""  # already written by the log's handlers

    warnings.formatwarning = as_log_line
    try:
        yield
    finally:
        warnings.formatwarning = original


def append_metrics(path: Path, record: dict) -> None:
    """One record appended to a metrics.jsonl file."""
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def use_bar(progress: str) -> bool:
    return progress == "bar" or (progress == "auto" and sys.stderr.isatty())


def read_metrics(path: Path) -> list[dict]:
    """Every record of a metrics.jsonl file, in order ([] before the first)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def drop_metrics_after(path: Path, epoch: int) -> None:
    """On resume: forget epoch records newer than the checkpoint (they will be recomputed)."""
    if path.is_file():
        keep = [r for r in read_metrics(path) if r.get("epoch", 0) <= epoch]
        path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))


def tensorboard(directory: Path):
    """A TensorBoard SummaryWriter for the per-epoch numbers, or None when tensorboard is not
    installed (it is optional: pip install idmm[tensorboard])."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(directory))
