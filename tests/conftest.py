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
