"""HiFT neural-source-filter excitation (upstream `SourceModuleHnNSF2` + `SineGen2`, spec §5.7).

f0 (frame rate) → nearest ×S upsample (S = 480 samples per mel frame) → harmonics
1..H+1 → per-sample phase increments → phase integrated at *frame* rate (linear
interpolate ↓S, cumsum, ×S, linear interpolate ↑S, as upstream does) → sin · 0.1 →
voiced mask + Gaussian noise → Linear(H+1 → 1) → tanh.

Upstream draws its randomness inside the module with unseeded `torch.rand` /
`torch.randn_like`; here the draws are an explicit `NSFDraws` input so runs are
reproducible and fixtures replayable. Their order and shapes are upstream's
(fixtures README §4): `rand_ini = rand(B, H+1)` then `sine_noise = randn(B, S·T, H+1)`.
Upstream's third draw (the noise branch `randn_like(uv)`) is discarded by
`HiFTGenerator.inference`, so it is never drawn here.

Everything here runs in float32 whatever the module dtype: the phase is a running sum
over the whole utterance, so low-precision accumulation would drift audibly.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError


class NSFDraws(NamedTuple):
    """The random inputs of one NSF source call (float32).

    rand_ini:   [B, H+1]     U[0,1) initial phases; column 0 (the fundamental) is ignored.
    sine_noise: [B, S·T, H+1] standard normal noise added to the harmonics.
    """

    rand_ini: torch.Tensor
    sine_noise: torch.Tensor


def draw_nsf(
    batch: int,
    n_samples: int,
    n_channels: int,
    device: torch.device | str,
    generator: Optional[torch.Generator] = None,
) -> NSFDraws:
    """Draw NSF randomness in upstream's order and shapes (rand then randn), float32.

    With `generator=None` torch's default generator of `device` is used (upstream's
    behaviour). Otherwise the draws are made on the generator's device and moved to
    `device`, so a CPU generator gives the same numbers whatever device runs the model.
    """
    gen_device = generator.device if generator is not None else torch.device(device)
    rand_ini = torch.rand(batch, n_channels, generator=generator, device=gen_device, dtype=torch.float32)
    sine_noise = torch.randn(batch, n_samples, n_channels, generator=generator, device=gen_device,
                             dtype=torch.float32)
    return NSFDraws(rand_ini.to(device), sine_noise.to(device))


def check_draws(draws: object, batch: int, n_samples: int, n_channels: int) -> NSFDraws:
    """Validate caller-given draws (a pair `(rand_ini, sine_noise)`), return them as float32 NSFDraws."""
    if not isinstance(draws, (tuple, list)) or len(draws) != 2:
        raise InvalidInputError(f"draws: expected a pair (rand_ini, sine_noise), got {type(draws).__name__}")
    rand_ini, sine_noise = draws
    for name, t, shape in (("draws.rand_ini", rand_ini, (batch, n_channels)),
                           ("draws.sine_noise", sine_noise, (batch, n_samples, n_channels))):
        if not isinstance(t, torch.Tensor) or not torch.is_floating_point(t):
            raise InvalidInputError(f"{name}: expected a floating-point tensor of shape {list(shape)}")
        if tuple(t.shape) != shape:
            raise InvalidInputError(f"{name}: expected shape {list(shape)}, got {list(t.shape)}")
    return NSFDraws(rand_ini.float(), sine_noise.float())


class HarmonicSource(nn.Module):
    """Upstream `SourceModuleHnNSF2` (module path `m_source`, parameters `l_linear.*`)."""

    def __init__(
        self,
        sampling_rate: int,
        upsample_scale: int,
        nb_harmonics: int,
        sine_amp: float,
        noise_std: float,
        voiced_threshold: float,
    ) -> None:
        super().__init__()
        # Constants only (no per-request state).
        self.sampling_rate = sampling_rate
        self.upsample_scale = upsample_scale
        self.n_channels = nb_harmonics + 1
        self.sine_amp = sine_amp
        self.noise_std = noise_std
        self.voiced_threshold = voiced_threshold
        self.l_linear = nn.Linear(self.n_channels, 1)

    def forward(self, f0: torch.Tensor, draws: NSFDraws) -> torch.Tensor:
        """f0 [B, T] (Hz) + draws → source [B, 1, S·T] float32."""
        # f0 nearest-upsampled to the sample rate, upstream's nn.Upsample(scale_factor=S).
        f0_up = F.interpolate(f0.float()[:, None], scale_factor=float(self.upsample_scale), mode="nearest")
        f0_up = f0_up.transpose(1, 2)  # [B, L, 1]
        sine = self._sine_waves(f0_up, draws)  # [B, L, H+1]
        weight, bias = self.l_linear.weight.float(), self.l_linear.bias.float()
        return torch.tanh(F.linear(sine, weight, bias)).transpose(1, 2)  # [B, 1, L]

    def _sine_waves(self, f0_up: torch.Tensor, draws: NSFDraws) -> torch.Tensor:
        """SineGen2.forward: harmonics, voiced mask and noise. f0_up [B, L, 1] → [B, L, H+1]."""
        harmonics = torch.arange(1, self.n_channels + 1, device=f0_up.device, dtype=torch.float32)
        fn = f0_up * harmonics  # [B, L, H+1]
        sines = self._phase_sines(fn, draws.rand_ini) * self.sine_amp
        uv = (f0_up > self.voiced_threshold).to(torch.float32)  # [B, L, 1]
        # Unvoiced samples get noise of std sine_amp/3 instead of the (zeroed) sine.
        noise_amp = uv * self.noise_std + (1 - uv) * self.sine_amp / 3
        return sines * uv + noise_amp * draws.sine_noise

    def _phase_sines(self, fn: torch.Tensor, rand_ini: torch.Tensor) -> torch.Tensor:
        """SineGen2._f02sine (flag_for_pulse=False). fn [B, L, H+1] Hz → sin(phase) [B, L, H+1]."""
        s = self.upsample_scale
        rad = (fn / self.sampling_rate) % 1  # per-sample phase increment in cycles
        ini = rand_ini.clone()
        ini[:, 0] = 0  # no random initial phase for the fundamental
        rad[:, 0, :] = rad[:, 0, :] + ini
        # NOTE: the ↓S linear interpolation reads samples S/2−1 and S/2 of each frame, so the
        # initial phase added at sample 0 never reaches the phase (upstream behaves the same).
        rad = F.interpolate(rad.transpose(1, 2), scale_factor=1 / s, mode="linear").transpose(1, 2)
        phase = torch.cumsum(rad, dim=1) * 2 * math.pi  # [B, T, H+1] radians at frame rate
        phase = F.interpolate(phase.transpose(1, 2) * s, scale_factor=float(s), mode="linear")
        return torch.sin(phase.transpose(1, 2))
