"""Samplers: one module per algorithm (`llada`, `dream`, `causal`) and what the diffusion ones share (`common`).
A family names its algorithm (`Family.sampler`); `dlm.generation` builds it from `SamplerSettings`."""
