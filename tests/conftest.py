import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tests run two workers on a 2-core machine: one thread each keeps them from fighting.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def concept_arrays():
    """Synthetic (features, concepts, label) data: features are a noisy linear image of
    5 binary concepts, and the label is 2*c0 + c1 (4 classes)."""
    g = torch.Generator().manual_seed(0)
    n, d, k = 2000, 20, 5
    c = (torch.rand(n, k, generator=g) > 0.5).float()
    w = torch.randn(k, d, generator=g)
    x = c @ w + 0.3 * torch.randn(n, d, generator=g)
    y = (c[:, 0] * 2 + c[:, 1]).long()
    return x, c, y
