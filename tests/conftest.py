import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def fmnist_images() -> np.ndarray:
    """The first 512 real Fashion-MNIST training images (uint8, 512 x 28 x 28)."""
    path = FMNIST / "train-images-idx3-ubyte.gz"
    if not path.is_file():
        pytest.fail(f"{path} missing: install the Debian package dataset-fashion-mnist")
    with gzip.open(path) as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16)
    return raw[: 512 * 784].reshape(512, 28, 28).copy()


@pytest.fixture
def uint8_batch(fmnist_images) -> torch.Tensor:
    """16 real images as a (16, 3, 28, 28) uint8 batch."""
    x = torch.from_numpy(fmnist_images[:16]).unsqueeze(1)
    return x.expand(-1, 3, -1, -1).contiguous()
