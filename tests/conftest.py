import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_overrides():
    """Overrides that make any recipe train in seconds."""
    return [
        "train.batch_size=16", "train.log_every=1", "train.warmup_steps=2",
        "train.tensorboard=false", "sample.steps=2",
    ]


def require_fashion_mnist():
    """Directory of the Fashion-MNIST files, or skip the calling test when they are absent.

    With ``ECAR_REQUIRE_DATASETS=1`` (set by ``.ci/run``) a missing dataset fails the test
    instead, so CI cannot go green by skipping. The message is the dataset's own error,
    which says how to install it (``apt-get install dataset-fashion-mnist``, or download
    the four files and set ``ECAR_FASHION_MNIST``).
    """
    from ecar.data import DataError
    from ecar.data.fashion_mnist import find_fashion_mnist

    try:
        return find_fashion_mnist()
    except DataError as e:
        if os.environ.get("ECAR_REQUIRE_DATASETS", "").strip() not in ("", "0"):
            pytest.fail(f"ECAR_REQUIRE_DATASETS is set but {e}", pytrace=False)
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def fashion_mnist_dir():
    """:func:`require_fashion_mnist` as a fixture (skips or fails once per session)."""
    return require_fashion_mnist()
