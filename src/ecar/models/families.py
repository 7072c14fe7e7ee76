"""Registration of every model family and registry entry (imported lazily by the registry)."""

from __future__ import annotations

from ecar.engine.multistage import generate_multistage
from ecar.engine.single_unit import generate_single_unit
from ecar.flow.objectives import FlowMatchingObjective, MultistageObjective
from ecar.models.dit import DiT, DiTConfig
from ecar.models.ecar import ECAR, ECARConfig
from ecar.models.registry import Family, register_family, register_model

register_family(
    Family(
        name="dit",
        config_cls=DiTConfig,
        build=lambda cfg, channels, size, num_classes: DiT(cfg.model, channels, size, num_classes),
        objective=lambda model, cfg: FlowMatchingObjective(model, cfg.flow),
        generate=generate_single_unit,
    )
)

# DiT sizes: tiny/small for tests and laptops, S/B/L/XL with patch 2 as in the DiT paper (Table 1).
register_model("dit-tiny", "dit", hidden=64, depth=2, heads=4, patch=2)
register_model("dit-mini", "dit", hidden=192, depth=6, heads=6, patch=2)
register_model("dit-s/2", "dit", hidden=384, depth=12, heads=6, patch=2)
register_model("dit-b/2", "dit", hidden=768, depth=12, heads=12, patch=2)
register_model("dit-l/2", "dit", hidden=1024, depth=24, heads=16, patch=2)
register_model("dit-xl/2", "dit", hidden=1152, depth=28, heads=16, patch=2)

register_family(
    Family(
        name="ecar",
        config_cls=ECARConfig,
        build=lambda cfg, channels, size, num_classes: ECAR(cfg.model, channels, size, num_classes),
        objective=lambda model, cfg: MultistageObjective(model, cfg.flow),
        generate=generate_multistage,
    )
)

# E-CAR sizes. The AR transformer follows DiT/MAR widths; the head follows MAR's
# (width ≈ transformer width, 3-8 residual blocks). ``flowar-*`` are the same networks in
# FlowAR mode (every stage fully denoised), for side-by-side comparisons.
register_model("ecar-tiny", "ecar", hidden=64, depth=2, heads=4, patch=2, head_width=64, head_depth=2)
register_model("ecar-mini", "ecar", hidden=192, depth=6, heads=6, patch=2, head_width=256, head_depth=3)
register_model("ecar-s", "ecar", hidden=384, depth=12, heads=6, patch=2, head_width=512, head_depth=3)
register_model("ecar-b", "ecar", hidden=768, depth=12, heads=12, patch=2, head_width=1024, head_depth=6)
register_model("ecar-l", "ecar", hidden=1024, depth=24, heads=16, patch=2, head_width=1024, head_depth=8)
register_model("flowar-tiny", "ecar", mode="flowar", hidden=64, depth=2, heads=4, patch=2, head_width=64, head_depth=2)
register_model("flowar-s", "ecar", mode="flowar", hidden=384, depth=12, heads=6, patch=2, head_width=512, head_depth=3)
