"""Conditional flow matching: fixed-step Euler over a cosine schedule with classifier-free guidance.

Each step evaluates the DiT on a batch of [conditional; unconditional] inputs (the
unconditional half has mu, speaker and cond zeroed) and moves x by
dt · ((1 + r)·v_cond − r·v_uncond), r = inference_cfg_rate. Time is accumulated as
upstream does (`t += dt`, then `dt = t_span[k+1] − t`, in float32), so the DiT sees
the accumulated t rather than t_span[k] exactly.

The ODE state, time and guidance arithmetic stay in float32 whatever the module
dtype (upstream runs fp32 throughout); only the estimator runs in the module dtype.
The start noise is an explicit input (upstream slices a fixed `randn(1, 80, 30000)`
buffer drawn at construction).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from ...errors import InvalidInputError
from .dit import DiT, DiTCache, ragged_chunk_mask
from .encoder import to_device_async


def cosine_time_span(n_timesteps: int, device: torch.device | str) -> torch.Tensor:
    """`[n+1]` float32: t_k = 1 − cos(π/2 · k/n) (upstream's cosine schedule)."""
    t = torch.linspace(0, 1, n_timesteps + 1, device=device, dtype=torch.float32)
    return 1 - torch.cos(t * 0.5 * math.pi)


@dataclass(frozen=True)
class EstimatorStreamCache:
    """DiT caches of every ODE step for the streaming decoder (never modified in place).

    k, v `[n_steps, depth, 2B, H, T, hd]` (newest frames first, prompt frames last),
    conv `[n_steps, depth, 2B, 2, C, 2]`; the batch holds [conditional; unconditional].
    """

    k: torch.Tensor
    v: torch.Tensor
    conv: torch.Tensor

    @property
    def frames(self) -> int:
        """Cached mel frames T (the noise offset of the next chunk)."""
        return int(self.k.shape[4])

    def step(self, i: int) -> DiTCache:
        return DiTCache(k=self.k[i], v=self.v[i], conv=self.conv[i])

    def truncated(self, prompt_frames: int, left_context: int) -> "EstimatorStreamCache":
        """Keep the newest `left_context` frames and the oldest `prompt_frames` (the prompt) once the
        cache is longer than their sum (upstream: prompt + 2 s of left context)."""
        if self.frames <= prompt_frames + left_context:
            return self

        def cut(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x[:, :, :, :, :left_context], x[:, :, :, :, x.shape[4] - prompt_frames:]], dim=4)

        return EstimatorStreamCache(k=cut(self.k), v=cut(self.v), conv=self.conv)


class CausalConditionalCFM(nn.Module):
    """Holds the DiT as `estimator` (flow.pt keys `decoder.estimator.*`)."""

    def __init__(self, estimator: DiT, inference_cfg_rate: float) -> None:
        super().__init__()
        self.estimator = estimator
        self.inference_cfg_rate = float(inference_cfg_rate)

    def _guided(self, v: torch.Tensor, batch: int) -> torch.Tensor:
        v_cond, v_uncond = v.float().split([batch, batch], dim=0)
        r = self.inference_cfg_rate
        return (1.0 + r) * v_cond - r * v_uncond

    @staticmethod
    def _cfg_inputs(
        mu: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batch [conditional; unconditional] inputs: the second half has mu, speaker and cond zeroed."""
        return (torch.cat([mu, torch.zeros_like(mu)], dim=0), torch.cat([spks, torch.zeros_like(spks)], dim=0),
                torch.cat([cond, torch.zeros_like(cond)], dim=0))

    def solve(
        self,
        mu: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        noise: torch.Tensor,
        n_timesteps: int,
        mask: torch.Tensor | None = None,
        return_states: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Integrate from `noise` (t=0) to t=1 over the whole sequence.

        mu, cond, noise `[B, 80, T]`; spks `[B, 80]`; mask `[B, 1, T]` / `[B, T, T]` or None.
        Returns (x `[B, 80, T]` float32, the states fed to the DiT at each step if requested).
        """
        batch = mu.shape[0]
        mu_in, spks_in, cond_in = self._cfg_inputs(mu, spks, cond)
        mask_in = None if mask is None else torch.cat([mask, mask], dim=0)
        states: list[torch.Tensor] = []

        def velocity(x: torch.Tensor, t: torch.Tensor, _step: int) -> torch.Tensor:
            if return_states:
                states.append(x)
            v = self.estimator(torch.cat([x, x], dim=0), mask_in, mu_in, t.expand(2 * batch), spks_in, cond_in)
            return self._guided(v, batch)

        x = _euler(noise.float(), n_timesteps, velocity)
        return x, states

    def solve_chunk(
        self,
        mu: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        noise: torch.Tensor,
        n_timesteps: int,
        cache: EstimatorStreamCache | None,
        n_valid: Sequence[int] | None = None,
        n_cached: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, EstimatorStreamCache]:
        """One streaming chunk: like `solve` but step k attends to the cached frames of step k.

        Returns (x `[B, 80, T]` float32, the new cache with this chunk's frames prepended).
        Ragged batches (one stream per row): n_valid[b] = valid chunk frames of row b (the rest
        of mu/cond/noise is right padding), n_cached[b] = valid frames of its cache rows (the
        cache is right-padded too); the new cache keeps the layout [chunk, padded | cache, padded].
        """
        batch = mu.shape[0]
        mu_in, spks_in, cond_in = self._cfg_inputs(mu, spks, cond)
        new_caches: list[DiTCache] = []
        mask, rows_valid = None, None
        if n_valid is not None:
            n_cached = [0] * batch if n_cached is None else list(n_cached)
            if len(n_valid) != batch or len(n_cached) != batch:
                raise InvalidInputError(f"n_valid/n_cached: expected {batch} entries (one per row of mu), "
                                        f"got {len(n_valid)}/{len(n_cached)}")
            width, cache_width = mu.shape[2], 0 if cache is None else cache.frames
            rows, cached_rows = [*n_valid, *n_valid], [*n_cached, *n_cached]  # [cond rows; uncond rows]
            mask = ragged_chunk_mask(rows, cached_rows, width, cache_width, mu.device)
            if min(rows) < width:
                rows_valid = to_device_async(torch.tensor(rows), mu.device)

        # Ragged arguments only when something is padded: estimator stand-ins (exported graphs)
        # take the plain signature, and an unpadded batch needs nothing else.
        ragged = {} if mask is None and rows_valid is None else {"mask": mask, "n_valid": rows_valid}

        def velocity(x: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
            v, step_cache = self.estimator.forward_chunk(
                torch.cat([x, x], dim=0), mu_in, t.expand(2 * batch), spks_in, cond_in,
                None if cache is None else cache.step(step), **ragged)
            new_caches.append(step_cache)
            return self._guided(v, batch)

        x = _euler(noise.float(), n_timesteps, velocity)
        new_cache = EstimatorStreamCache(k=torch.stack([c.k for c in new_caches]),
                                         v=torch.stack([c.v for c in new_caches]),
                                         conv=torch.stack([c.conv for c in new_caches]))
        return x, new_cache


Velocity = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]  # (x, t [1], step) -> v


def _euler(x: torch.Tensor, n_timesteps: int, velocity: Velocity) -> torch.Tensor:
    """Upstream's Euler loop: velocity(x, t `[1]`, step) at accumulated t, x += dt·v (float32)."""
    t_span = cosine_time_span(n_timesteps, x.device)
    t = t_span[0].unsqueeze(0)  # [1]
    dt = t_span[1] - t_span[0]
    for step in range(1, n_timesteps + 1):
        x = x + dt * velocity(x, t, step - 1)
        t = t + dt
        if step < n_timesteps:
            dt = t_span[step + 1] - t
    return x
