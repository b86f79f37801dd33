"""`idmm embed`: the features of a folder of images, with their paths, in one file.

    idmm embed checkpoint=runs/fm photos/ out=embeddings.npz

The features are the backbone's (a fine-tuned model's pre-logits: its classifier is left out),
on idmm's evaluation preprocessing. `.npz` holds `embeddings` (N x D float32) and `paths`; `.csv`
a row per image, the path first. Unreadable images are left out and named.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError
from ..rundir import check_out
from .export import load_model, preprocessed

FORMATS = (".npz", ".csv")


@torch.no_grad()
def embed(checkpoint: str | Path, images: list[str], out: str | Path = "embeddings.npz",
          batch_size: int = 256) -> dict:  # fmt: skip
    """Write the features of `images` (files or folders) to `out`; returns where, how many,
    their dimension and the images that could not be read ({path: reason})."""
    out = Path(out)
    if out.suffix not in FORMATS:
        raise ConfigError(f"out={out}: name a {' or '.join(FORMATS)} file")
    check_out(out, file=f"embeddings{out.suffix}")
    model = load_model(checkpoint)
    _, errors, batches = preprocessed(model, images, batch_size)
    paths, rows = [], []
    for names, x in batches:
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        rows.append(feats.float().reshape(len(names), -1).numpy())
        paths += names
    embeddings = np.concatenate(rows).astype(np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")  # written whole, then renamed
    if out.suffix == ".npz":
        np.savez(tmp, embeddings=embeddings, paths=np.array(paths))
    else:
        with tmp.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", *(f"e{i}" for i in range(embeddings.shape[1]))])
            w.writerows([p, *(f"{v:.6g}" for v in row)] for p, row in zip(paths, embeddings))
    tmp.replace(out)
    return {"out": out, "images": len(paths), "dim": int(embeddings.shape[1]), "errors": errors}
