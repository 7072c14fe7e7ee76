"""Choosing γ per call (issue 28, part 2): the cost model's logic on given costs, and the
engine's gamma="auto" / gamma=0 paths on a tiny random-weight pair."""

from __future__ import annotations

import pytest
import torch

from ecar.build import LatentSpec
from ecar.config import load_config
from ecar.engine.speculative import PLAIN, generate_speculative
from ecar.engine.speculative_cost import CallCosts, GammaMemory, choose_gamma, predicted_seconds, rounds_needed, tokens_per_round
from ecar.methods.ar import AR_METHOD

# batch 1 on a CPU: every call costs mostly latency, the draft's chain is cheap next to the target's
LATENCY = CallCosts(pass_=1.0, target_chain=6.0, draft_pass=0.0, draft_chain=1.0, verify_fixed=1.0,
                    verify_per_token=0.05, decide=0.2)
# a large batch: verification rows cost what plain steps cost, per image and token
THROUGHPUT = CallCosts(pass_=1.0, target_chain=5.0, draft_pass=0.0, draft_chain=1.5, verify_fixed=0.1,
                       verify_per_token=5.0 / 64, decide=0.3)


def test_tokens_per_round_is_the_geometric_prefix_plus_the_residual():
    mean, var = tokens_per_round(0.9, 4)
    assert mean == pytest.approx((1 - 0.9 ** 4) / (1 - 0.9))
    assert tokens_per_round(1.0, 4) == (4.0, 0.0) and tokens_per_round(0.0, 4) == (1.0, 0.0)
    assert var > 0


def test_the_slowest_image_of_a_batch_needs_more_rounds():
    one, many = rounds_needed(0.9, 4, 1, 64), rounds_needed(0.9, 4, 64, 64)
    assert one == pytest.approx(64 / tokens_per_round(0.9, 4)[0])
    assert one < many <= 64
    assert rounds_needed(0.5, 1, 64, 64) == 64


def test_speculation_at_batch_1_with_high_acceptance():
    gamma, pred = choose_gamma(LATENCY, 0.93, batch=1, tokens=64)
    assert gamma >= 2 and pred[gamma] < pred[1] < pred[0]


def test_plain_decoding_where_speculation_loses():
    gamma, pred = choose_gamma(THROUGHPUT, 0.93, batch=64, tokens=64)
    assert gamma == 0 and min(pred[g] for g in range(1, 7)) > pred[0]
    assert choose_gamma(LATENCY, 0.05, batch=1, tokens=64)[0] == 0  # a useless draft


def test_a_tie_within_the_margin_stays_plain():
    pred1 = predicted_seconds(LATENCY, 1, 0.93, 1, 64)
    tie = CallCosts(**{**LATENCY.as_dict(), "target_chain": pred1 / 64 - LATENCY.pass_ + 0.01})
    assert choose_gamma(tie, 0.93, 1, 64, max_gamma=1)[0] == 0
    assert choose_gamma(tie, 0.93, 1, 64, max_gamma=1, margin=0.0)[0] == 1


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="batch >= 1"):
        choose_gamma(LATENCY, 0.9, batch=0, tokens=4)
    with pytest.raises(ValueError, match="acceptance"):
        predicted_seconds(LATENCY, 2, 1.5, 1, 4)


def _pair():
    cfg = load_config(None, ["model.name=ar-tiny", "sample.steps=3", "sample.cfg=2.0"])
    target = AR_METHOD.build(cfg.model, LatentSpec(1, 8, 10))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in target.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    return AR_METHOD.loop_settings(target, cfg.sample), target.eval()


def test_auto_records_its_choice_and_gamma_0_is_plain_decoding():
    settings, target = _pair()
    labels = torch.arange(6) % 10
    out = generate_speculative(target, target, labels, settings, gamma="auto", generator=torch.Generator().manual_seed(0))
    (choice,) = out["stats"].choices
    assert choice["batch"] == 6 and 0 <= choice["gamma"] <= 6 and choice["acceptance"] == 1.0
    assert set(choice["predicted_s"]) == {str(g) for g in range(7)} and choice["start"] >= 3
    assert bool((out["source"][:, :2] == PLAIN).all())  # the pilot's plain tokens
    plain = generate_speculative(target, target, labels, settings, gamma=0, generator=torch.Generator().manual_seed(0))
    assert bool((plain["source"] == PLAIN).all()) and plain["stats"].draft_head_calls == 0
    with pytest.raises(ValueError, match="gamma must be an integer >= 0 or 'auto'"):
        generate_speculative(target, target, labels, settings, gamma=-1)


def test_the_memory_pools_acceptance_and_keeps_the_first_costs_per_batch():
    memory = GammaMemory()
    memory.learn("s", 1, 30, 40)
    assert memory.recall("s", 1) is None  # no costs measured at batch 1 yet: the next call pilots
    memory.learn("s", 1, 10, 12, LATENCY)
    memory.learn("s", 1, 20, 20, THROUGHPUT)  # a later pilot's costs do not replace the first
    costs, alpha = memory.recall("s", 1)
    assert costs == LATENCY and alpha == pytest.approx(60 / 72)
    assert memory.recall("s", 4) is None and memory.recall("other settings", 1) is None
    small = GammaMemory(max_keys=2)
    for key in ("a", "b", "c"):
        small.learn(key, 1, 1, 1, LATENCY)
    assert list(small.counts) == ["b", "c"] and {k for k, _ in small.costs} == {"b", "c"}


def test_later_calls_skip_the_pilot_and_choose_from_what_earlier_calls_measured():
    settings, target = _pair()
    memory, gen = GammaMemory(), torch.Generator().manual_seed(0)
    calls = [generate_speculative(target, target, torch.arange(b) % 10, settings, gamma="auto", generator=gen,
                                  memory=memory) for b in (2, 2, 2, 3)]
    first, second, third, other = (c["stats"].choices[0] for c in calls)
    assert "remembered" not in first and first["start"] >= 3
    assert second["remembered"] and second["start"] == 0 and second["costs"] == first["costs"]
    assert second["acceptance"] == 1.0 and third["gamma"] == second["gamma"]  # a draft equal to the target
    assert not bool((calls[1]["source"] == PLAIN).any()) or second["gamma"] == 0  # no pilot's plain tokens
    assert "remembered" not in other  # another batch size measures its own costs
    tested = sum(c["stats"].tested for c in calls)
    assert memory.counts[next(iter(memory.counts))] == [tested, tested]


def test_a_drafted_pipeline_remembers_across_calls_and_settings_copies():
    import ecar
    from ecar.autoencoders import IdentityAutoencoder

    settings, target = _pair()
    cfg = load_config(None, ["model.name=ar-tiny", "sample.steps=3", "sample.cfg=2.0", "data.resolution=8",
                             "data.channels=1", "data.num_classes=10"])
    pipe = ecar.Pipeline(target, cfg, IdentityAutoencoder(1))
    drafted = pipe.with_draft(ecar.Pipeline(target, cfg, IdentityAutoencoder(1)))
    outs = [drafted(2, seed=k, batch_size=2) for k in range(2)]
    assert [("remembered" in o.speculative["choices"][0]) for o in outs] == [False, True]
    again = drafted.with_settings(drafted.cfg.sample)(2, seed=5, batch_size=2)
    assert again.speculative["choices"][0].get("remembered")
    assert pipe.with_draft(drafted.draft)(2, seed=0, batch_size=2).speculative["choices"][0].get("remembered") is None
    from ecar.cli.sample import gamma_summary

    first, later = (o.speculative["choices"][0] for o in outs)
    assert "measured on the first" in gamma_summary([first]) and "pooled over earlier calls" in gamma_summary([later])
