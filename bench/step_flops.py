"""FLOPs of one training step, counted by PyTorch's FlopCounterMode (forward + backward)."""

from __future__ import annotations

from torch.utils.flop_counter import FlopCounterMode


def step_gflop(step) -> float:
    """Run `step()` once under the counter: matmuls, convolutions and attention, in GFLOP."""
    with FlopCounterMode(display=False) as counter:
        step()
    return round(counter.get_total_flops() / 1e9, 3)
