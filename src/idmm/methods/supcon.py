"""SupCon (Khosla et al. 2020): SimCLR's loss with the class label as the id, so every crop of
every image of the same class is a positive. Uses the labels; the paper's supervised
contrastive baseline."""

from __future__ import annotations

from .base import register
from .simclr import SimCLR


@register
class SupCon(SimCLR):
    name, display_name = "supcon", "SupCon"
    needs_labels = True

    def ids(self, indices, labels):
        return labels
