"""Pictures of the generation process: one row per sample, one column per stage."""

from __future__ import annotations

import numpy as np
import torch

from ecar.flow.pyramid import upsample
from ecar.imageio import make_grid, to_uint8, auto_scale


def stages_strip(stages: list[torch.Tensor], max_rows: int = 8) -> np.ndarray:
    """stages: per stage (N, C, h_s, w_s) images in [-1, 1], coarse to fine -> (H, W, C) uint8.

    Each stage is shown at the final size (nearest upsampling keeps its blocks visible);
    row i shows sample i from the coarsest stage (left) to the final image (right).
    """
    n = min(max_rows, stages[0].shape[0])
    size = stages[-1].shape[-1]
    cols = [upsample(s[:n].float(), size) for s in stages]
    tiles = torch.stack(cols, dim=1).flatten(0, 1)  # row-major: sample, stage
    return make_grid(to_uint8(tiles), nrow=len(stages), scale=auto_scale(size, 48))
