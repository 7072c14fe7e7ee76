"""The Python API: load a trained run, call it, get images (docs/api.md).

    import ecar
    pipe = ecar.load("runs/ecar")
    out = pipe(n=8, classes=[3], seed=0, cfg=2.5)
    out.images[0].save("three.png"); out.gflops_per_image, out.seconds_per_image

:func:`load` returns a :class:`Pipeline` for a checkpoint of any method; calling it returns an
:class:`Output`. It is the one way the CLI, ``ecar serve``, the demo, evaluation, the bench
and the scripts in ``benchmarks/`` generate images.
"""

from ecar.pipeline.batches import check_generation_fits, generation_bytes, labels_for
from ecar.pipeline.output import Output
from ecar.pipeline.pipeline import Pipeline, check_draft_pair, load

__all__ = ["Output", "Pipeline", "check_draft_pair", "check_generation_fits", "generation_bytes", "labels_for",
           "load"]
