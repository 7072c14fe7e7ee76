"""AR's sampling settings and what they resolve to for the causal loop (:mod:`ecar.engine.causal`)."""

from __future__ import annotations

from dataclasses import dataclass

from ecar.engine.causal import CausalNet, CausalSampleConfig
from ecar.engine.speculative import AUTO, VERIFY_MODES
from ecar.errors import ConfigError, shown
from ecar.samplers import GUIDANCE_SCHEDULES, SAMPLER_NAMES, SampleConfig, guidance_scale
from ecar.schema import check_choice, setting

__all__ = ["ARSampleConfig", "loop_settings"]


@dataclass
class ARSampleConfig(SampleConfig):
    """AR's sampling settings: the shared ones (``steps`` are the head's, per token; the
    default sampler is the Gaussian chain) plus temperature and speculative decoding's."""

    sampler: str = setting("euler_maruyama", "integrator", choices=SAMPLER_NAMES, label="integrator")
    steps: int = setting(25, "head steps per token (the Gaussian chain's K with euler_maruyama)",
                         label="head steps per token")
    cfg_schedule: str = setting(
        "linear", "guidance schedule: linear (default, as MAR: ramps from 1 to cfg with the fraction of "
        "tokens generated after the token) or constant", choices=GUIDANCE_SCHEDULES)
    cfg_interval: list[float] | None = setting(
        None, "guide only tokens whose fraction of tokens generated (after the token) is in [LO, HI] "
        "(default: every token)", metavar="LO,HI")
    temperature: float = setting(1.0, "multiplies the head's noise: its start noise and, with "
                                 "euler_maruyama, each step's noise (< 1 sharpens)", label="temperature")
    time_power: float = setting(1.0, "head time grid t_k = chain_end·(1 − (1 − k/K)^p): p > 1 takes finer "
                                "steps near the data, where the chain's last noise would stay in the sample")
    chain_end: float | None = setting(
        None, "euler_maruyama: the Gaussian chain stops at this time (< 1) and one deterministic Euler step "
        "of the head finishes the output token, while the next tokens condition on the chain's state "
        "(docs/speculative.md); default: the model's context_time (1 unless trained for it)")
    gamma: int | str = setting(AUTO, "speculative decoding (ecar sample --draft): tokens the draft proposes per "
                               "verification (1: the draft speculates each token's chain steps only; 0: plain "
                               "decoding), or auto: chosen per call from the measured costs and acceptance at the "
                               "call's batch size, 0 where speculation would not pay (docs/speculative.md)",
                               metavar="G|auto", label="tokens the draft proposes per check (γ)")
    residual_batch: int = setting(8, "speculative decoding: candidate paths drawn at once when a "
                                  "rejected token is resampled from the residual (verify=path)")
    verify: str = setting("step", "speculative decoding: accept each Gaussian step of a proposed token's "
                          "chain (step; a rejected step is redrawn and the rest speculated again) or its "
                          "whole path (path); both exact, step the faster in benchmarks/speculative_speed.py",
                          choices=VERIFY_MODES)

    def validate(self) -> None:
        super().validate()
        if not self.temperature >= 0:
            raise ConfigError(f"sample.temperature must be >= 0, got {self.temperature}")
        if not isinstance(self.residual_batch, int) or self.residual_batch < 1:
            raise ConfigError(f"sample.residual_batch must be an integer >= 1, got {shown(self.residual_batch)}")
        if self.gamma != AUTO and (not isinstance(self.gamma, int) or self.gamma < 0):
            raise ConfigError(f"sample.gamma must be an integer >= 0 (0: plain decoding) or {AUTO}, got "
                              f"{shown(self.gamma)}")
        check_choice("sample.verify", self.verify, VERIFY_MODES)
        if not self.time_power > 0 or not (self.chain_end is None or 0 < self.chain_end <= 1):
            raise ConfigError(f"sample.time_power must be > 0 and sample.chain_end in (0, 1]; got "
                              f"{shown(self.time_power)}, {shown(self.chain_end)}")
        if self.chain_end is not None and self.chain_end < 1 and self.sampler != "euler_maruyama":
            raise ConfigError(f"sample.chain_end < 1 stops the Gaussian chain early (sampler euler_maruyama); "
                              f"the {self.sampler} ODE integrates to t = 1: leave chain_end at 1")


def loop_settings(model: CausalNet, sample: ARSampleConfig, context_time: float) -> CausalSampleConfig:
    """Guidance per token position at progress (i + 1)/N, and the head's settings; the chain
    ends at ``sample.chain_end``, or by default at ``context_time`` (the time the transformer
    was trained to read; ODE samplers end at 1)."""
    n = model.num_tokens
    scales = tuple(guidance_scale(sample.cfg, sample.cfg_schedule, (i + 1) / n, sample.cfg_interval)
                   for i in range(n))
    end = sample.chain_end
    if end is None:
        end = context_time if sample.sampler == "euler_maruyama" else 1.0
    return CausalSampleConfig(scales, sample.steps, sample.sampler, sample.noise_scale, sample.temperature,
                              sample.time_power, end)
