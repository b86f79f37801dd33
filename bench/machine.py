"""What a benchmark ran on and how it was invoked: stored with every result in bench/results/."""

from __future__ import annotations

import os

from idmm.engine.provenance import cpu_model, describe  # noqa: F401  (bench scripts import them)


def _children(pid: int) -> list[int]:
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(d))
            except (OSError, ValueError, IndexError):
                continue
    return kids


def tree_peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a process plus all its descendants, summed: a pipeline
    with DataLoader workers uses the memory of every worker too."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) / 1024
        except OSError:
            continue
        todo += _children(p)
    return total
