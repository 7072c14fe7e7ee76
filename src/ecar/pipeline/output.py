"""What a :class:`ecar.Pipeline` call returns: the images, as pictures and as a tensor, and
what they cost."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from ecar.imageio import auto_scale, make_grid, to_uint8
from ecar.layers import upsample
from ecar.samplers import SampleConfig

__all__ = ["Output", "stages_strip"]


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


def _picture(array: Any) -> Image.Image:
    """(H, W, C) uint8 -> a PIL image (greyscale for C = 1)."""
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


@dataclass
class Output:
    """The result of ``pipe(...)`` or ``pipe.stages(...)``.

    Attributes:
        tensor: the images, (N, C, H, W) float32 in [-1, 1] on the CPU.
        labels: (N,) the class of each image.
        seed: the seed it was drawn with (same pipeline, settings, seed and batch size: same images).
        sample: the validated sampling settings it was drawn with (the method's settings dataclass).
        seconds: wall-clock seconds of the call (sampling and decoding; with a draft, of the
            sampling calls alone, as ``speculative["seconds"]``).
        stages: from :meth:`ecar.Pipeline.stages`: per unit, coarse to fine, the decoded images
            after that unit, (N, C, H_u, W_u) each; None from a plain call.
        speculative: with a draft (:meth:`ecar.Pipeline.with_draft`), speculative decoding's
            statistics: acceptance rate, tokens per target pass, calls, the γ chosen per call,
            seconds; None otherwise.
    """

    tensor: torch.Tensor
    labels: torch.Tensor
    seed: int
    sample: SampleConfig
    seconds: float
    stages: list[torch.Tensor] | None = None
    speculative: dict[str, Any] | None = None
    count_gflops: Callable[[], float | None] = field(default=lambda: None, repr=False, compare=False)
    """How :attr:`gflops_per_image` is counted (by the pipeline that made the output)."""

    def __len__(self) -> int:
        return int(self.tensor.shape[0])

    @functools.cached_property
    def images(self) -> list[Image.Image]:
        """The images as ``PIL.Image`` (mode ``L`` for one channel, ``RGB`` for three)."""
        return [_picture(a) for a in to_uint8(self.tensor)]

    @property
    def seconds_per_image(self) -> float:
        """:attr:`seconds` divided by the number of images."""
        return self.seconds / max(1, len(self))

    @functools.cached_property
    def gflops_per_image(self) -> float | None:
        """GFLOPs per image of these sampling settings, in latent space with guidance and
        attention, decoding excluded (the protocol of :mod:`ecar.eval.cost`). Counted on one
        image the first time it is read (not during the call, so it never slows or changes it)
        and remembered by the pipeline per setting. None with a draft: speculative decoding's
        work depends on what the target accepts (see :attr:`speculative` for its calls)."""
        return self.count_gflops()

    def stage_strip(self, max_rows: int = 8) -> Image.Image:
        """From :meth:`ecar.Pipeline.stages`: one row per image (the first ``max_rows``), one
        column per unit, coarse (left) to final (right), each at the final size."""
        if self.stages is None:
            raise ValueError("this output has no stages: make it with pipe.stages(...)")
        return _picture(stages_strip(self.stages, max_rows))

    def grid(self, nrow: int | None = None, scale: int | None = None) -> Image.Image:
        """All images in one picture, ``nrow`` per row (default: about square), each pixel
        enlarged ``scale`` times (default: to about 64 px per image)."""
        tiles = to_uint8(self.tensor)
        return _picture(make_grid(tiles, nrow=nrow, scale=scale or auto_scale(tiles.shape[1])))
