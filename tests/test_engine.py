"""The multistage engine: KV cache vs full recomputation, guidance, stage outputs."""

import pytest
import torch

from ecar.build import LatentSpec, build_model
from ecar.config import load_config
from ecar.engine.multistage import StageSampleConfig, generate_multistage
from ecar.methods.ecar import ECAR_METHOD, stage_step_counts
from ecar.models.ecar import ECAR


def _model(mode="ecar", head="mlp", **extra):
    over = [f"model.name=ecar-tiny", f"model.mode={mode}", f"model.head={head}",
            "sample.steps=3", "sample.cfg=2.5", "sample.cfg_schedule=linear"]
    over += [f"{k}={v}" for k, v in extra.items()]
    cfg = load_config(None, over)
    cfg.data.num_classes = 10
    torch.manual_seed(0)
    model, _ = build_model(cfg, LatentSpec(2, 16, 10))
    for p in model.parameters():  # zero-initialised heads would make the test vacuous
        torch.nn.init.normal_(p, std=0.1)
    return cfg, model.eval()


def _stages(model, sample):
    """The loop's per-stage settings, as the E-CAR method resolves them."""
    return ECAR_METHOD.stage_settings(model, sample)


@pytest.mark.parametrize("mode,head", [("ecar", "mlp"), ("flowar", "mlp"), ("ecar", "transformer")])
def test_kv_cache_equals_full_recompute(mode, head):
    cfg, model = _model(mode, head)
    labels = torch.tensor([0, 3, 7])
    a = generate_multistage(model, labels, _stages(model, cfg.sample), torch.Generator().manual_seed(5),
                            return_stages=True, use_cache=True)
    b = generate_multistage(model, labels, _stages(model, cfg.sample), torch.Generator().manual_seed(5),
                            return_stages=True, use_cache=False)
    assert len(a["stages"]) == model.num_stages == 4
    for x, y in zip(a["stages"], b["stages"]):
        assert (x - y).abs().max().item() <= 1e-4
    assert a["latents"].abs().sum() > 0


def test_guidance_interval_drops_the_null_branch_after_the_last_guided_stage():
    import dataclasses

    from torch.utils.flop_counter import FlopCounterMode

    cfg, model = _model("ecar", "transformer")
    labels = torch.tensor([0, 3, 7])
    limited = dataclasses.replace(cfg.sample, cfg_schedule="constant", cfg_interval=[0.0, 0.5])
    full = dataclasses.replace(limited, cfg_interval=None)

    def run(sample, use_cache=True):
        with FlopCounterMode(display=False) as fc:
            out = generate_multistage(model, labels, _stages(model, sample), torch.Generator().manual_seed(5),
                                      return_stages=True, use_cache=use_cache)
        return out["stages"], fc.get_total_flops()

    a, flops_a = run(limited)
    b, _ = run(limited, use_cache=False)
    c, flops_c = run(full)
    for x, y in zip(a, b):  # dropping the null half of the KV cache changes nothing else
        assert (x - y).abs().max().item() <= 1e-4
    # stages at progress 0 and 1/3 are guided in both runs, 2/3 and 1 only in the full one
    for s in (0, 1):
        assert (a[s] - c[s]).abs().max().item() <= 1e-5
    assert (a[3] - c[3]).abs().max().item() > 1e-3
    assert flops_a < 0.75 * flops_c


def test_cached_stage_pass_matches_masked_full_pass():
    cfg, model = _model()
    y = torch.tensor([1, 2])
    inputs = [torch.randn(2, 2, n, n) for n in model.schedule.sizes]
    full = model.condition(inputs, y)
    cache = model.new_cache()
    for s, inp in enumerate(inputs):
        torch.testing.assert_close(model.condition_step(inp, s, y, cache), full[s], atol=1e-5, rtol=1e-5)


def test_block_causal_mask_structure():
    _, model = _model()
    m = model.block_causal_mask("cpu")
    ids = model.stage_ids("cpu")
    assert m.shape == (len(ids), len(ids))
    assert m[0].sum() == 1                        # class token sees itself only
    last = len(ids) - 1
    assert m[last].all()                          # finest token sees everything
    first_stage1 = 1
    assert not m[first_stage1, 2:].any()          # stage 1 (one token) sees no later stage


def test_earlier_stages_do_not_depend_on_later_inputs():
    cfg, model = _model()
    y = torch.tensor([4])
    inputs = [torch.randn(1, 2, n, n) for n in model.schedule.sizes]
    z1 = model.condition(inputs, y)
    inputs[-1] = inputs[-1] + 5.0
    z2 = model.condition(inputs, y)
    for s in range(model.num_stages - 1):
        torch.testing.assert_close(z1[s], z2[s])
    assert not torch.allclose(z1[-1], z2[-1])


def test_guidance_scale_one_skips_uncond_and_changes_nothing_else():
    cfg, model = _model()
    cfg.sample.cfg = 1.0
    labels = torch.tensor([1, 2])
    out = generate_multistage(model, labels, _stages(model, cfg.sample), torch.Generator().manual_seed(0))
    assert torch.isfinite(out["latents"]).all() and out["latents"].shape == (2, 2, 16, 16)


def test_stage_steps_validation():
    cfg, model = _model()
    cfg.sample.stage_steps = [1, 2]
    with pytest.raises(ValueError, match="one per stage"):
        stage_step_counts(cfg.sample, model.num_stages)


def test_stage_settings_are_checked():
    _, model = _model()
    with pytest.raises(ValueError, match="per stage"):
        StageSampleConfig((2, 2), (1.0,))
    with pytest.raises(ValueError, match="4 stages"):
        generate_multistage(model, torch.tensor([1]), StageSampleConfig((2, 2), (1.0, 1.0)))
