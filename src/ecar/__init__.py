"""ecar: efficient continuous-token autoregressive image generation (E-CAR) and its baselines.

The Python API (docs/api.md):

    import ecar
    pipe = ecar.load("runs/ecar")                 # any method's run directory
    out = pipe(n=8, classes=[3], seed=0, cfg=2.5)  # sampling settings as keyword arguments
    out.images                                     # a list of PIL.Image; out.tensor, out.gflops_per_image

:func:`load` returns a :class:`Pipeline`; calling it returns an :class:`Output`.
:meth:`Pipeline.stages` adds each unit's images (E-CAR's stages), :meth:`Pipeline.with_draft`
samples by exact speculative decoding.
"""

__version__ = "0.1.0"

from ecar.pipeline import Output, Pipeline, load  # noqa: E402  (after __version__, which submodules read)

__all__ = ["Output", "Pipeline", "__version__", "load"]
