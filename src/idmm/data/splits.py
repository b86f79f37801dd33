"""Train / validation / test, decided once when the data is loaded, and written down.

Every number idmm reports depends on which images were trained on, which chose the settings and
which measured the result, so the split is made in one place, from the data and a seed, and
recorded in the run directory (`splits.json`): the items of each split, the seed, the fractions
and a hash of the training items. Every later stage and command reads it back instead of
deciding again, and refuses a split whose items no longer match the data.

- validation: `data.val` (a folder or CSV) or a seeded, stratified `data.val_fraction` of the
  training images;
- test: the dataset's own test split, `data.test`, or a seeded, stratified
  `data.test_fraction` of the training images when it has neither.

Pre-training, neighbour pools and probes see the training split only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .base import DataError, Source

HOLDOUT = "holdout"  # a split taken out of the training images


@dataclass
class Splits:
    seed: int
    val_fraction: float
    test_fraction: float
    val_from: str  # "holdout", "none" (unlabelled or val_fraction=0), or the data.val path
    test_from: str  # "holdout", "none", "dataset" (its own test split), or the data.test path
    items_hash: str  # of the training source's items and labels, to refuse a changed dataset
    # Positions in the training source (the dataset's training items, after any subset)
    train: list[int] = field(default_factory=list)
    val: list[int] = field(default_factory=list)  # held out (val_from == "holdout")
    test: list[int] = field(default_factory=list)  # held out (test_from == "holdout")
    source: str = ""  # the training source's name (folder:/abs/path, fashion-mnist, ...)

    def counts(self) -> str:
        return f"{len(self.train)} train, {len(self.val)} val, {len(self.test)} test held out"

    def save(self, path: Path, src: Source) -> None:
        """splits.json: the positions and, for people, the items themselves (paths or indices)."""
        record = asdict(self)
        record["items"] = {
            name: [_item(src, i) for i in getattr(self, name)] for name in ("train", "val", "test")
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Splits:
        d = json.loads(path.read_text())
        d.pop("items", None)
        return cls(**d)


def _item(src: Source, i: int):
    item = src.items[i]
    return item if isinstance(item, (int, str)) else str(item)


def items_hash(src: Source) -> str:
    """A hash of the items and labels (not the pixels): which images, in which order."""
    text = json.dumps([src.name, [_item(src, i) for i in range(len(src))], src.labels])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def decide(
    src: Source, *, seed: int, val_fraction: float, test_fraction: float, val_from: str | None,
    test_from: str | None,
) -> Splits:  # fmt: skip
    """Split the training images of `src` (by item and label: before any decoding), stratified
    by class. An image that cannot be decoded is left out of its split later (data.skip_bad).

    `val_from` / `test_from`: a path or "dataset" when that split comes from elsewhere, None to
    hold it out of the training images. Each class keeps at least one training image.
    """
    hold_val = val_from is None and val_fraction > 0
    hold_test = test_from is None
    s = Splits(seed, val_fraction, test_fraction, "none", test_from or "none", items_hash(src),
               source=src.name)  # fmt: skip
    if src.labels is None:  # unlabelled: nothing to evaluate, everything trains
        s.train = list(range(len(src)))
        s.val_from = val_from or "none"
        return s
    if hold_test:
        s.test_from = HOLDOUT
    s.val_from = HOLDOUT if hold_val else (val_from or "none")
    rng = np.random.default_rng(seed)
    labels = np.asarray(src.labels)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n = len(members)
        n_test = _share(n, test_fraction) if hold_test else 0
        n_val = _share(n - n_test, val_fraction * n / max(n - n_test, 1)) if hold_val else 0
        s.test += members[:n_test].tolist()
        s.val += members[n_test : n_test + n_val].tolist()
        s.train += members[n_test + n_val :].tolist()
    s.train.sort(), s.val.sort(), s.test.sort()
    return s


def _share(n: int, fraction: float) -> int:
    """round(fraction * n), at least 1 when the class has 2 or more images, and never all."""
    if n < 2:
        return 0
    return min(max(int(fraction * n + 0.5), 1), n - 1)


SETTINGS = ("seed", "val_fraction", "test_fraction", "val_from", "test_from")
KEYS = "data.split_seed, data.val_fraction, data.test_fraction, data.val, data.test"


def check(recorded: Splits, decided: Splits, path: Path) -> Splits:
    """The recorded split, if the data and the split settings still give it (`decided` is what
    they give now); else an error that says what differs and what to do."""
    if recorded.items_hash != decided.items_hash:
        raise DataError(
            f"{path} was decided on other images than {decided.source} now holds (another "
            "subset, or files or labels changed): its held-out images may have been trained on. "
            "Use the same data settings, or start a new run (another out= or overwrite=true)"
        )
    was = {k: getattr(recorded, k) for k in SETTINGS}
    now = {k: getattr(decided, k) for k in SETTINGS}
    if was != now:
        raise DataError(
            f"{path} splits the data with {was}, this command asks for {now} ({KEYS}). Use "
            "the recorded settings, or start a new run (another out= or overwrite=true)"
        )
    return recorded
