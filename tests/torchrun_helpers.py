"""Launching CPU processes with torchrun (gloo) from the tests."""

import json
import os
import subprocess
import sys
from pathlib import Path

import idmm

ENV = dict(os.environ, PYTHONPATH=str(Path(idmm.__file__).parents[1]), OMP_NUM_THREADS="1")


def launch(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """`python [-m torch.distributed.run --nproc_per_node=N] ARGS`, which must succeed."""
    launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone"]
    cmd = [sys.executable, *(launcher if nproc > 1 else []), *args]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def run_worker(script: str, tmp_path: Path, nproc: int = 2) -> list[dict]:
    """Run tests/SCRIPT in N processes; each writes OUT.<rank> as JSON; returns them by rank."""
    launch(str(Path(__file__).parent / script), str(tmp_path / "out"), nproc=nproc)
    return [json.loads((tmp_path / f"out.{r}").read_text()) for r in range(nproc)]
