"""HiFT vocoder (upstream `HiFTGenerator` + `ConvRNNF0Predictor`, spec §5.7): mel → 24 kHz waveform.

mel [B, 80, T] → f0 [B, T] → NSF source [B, 1, 480·T] → source STFT (18 ch) fused into a
3-stage upsampling conv net → 18 channels → exp-magnitude / sin-phase iSTFT → [B, 480·T].

The module is stateless. Weight norm is folded into plain conv weights once at load
(`load_hift`), so parameter names are upstream's keys minus `.parametrizations.weight.*`.
Randomness (NSF phases/noise) is an explicit input (`draws`) or comes from a caller's
`torch.Generator`. Streaming (upstream `token2wav_stream`'s vocoder part) lives in
`hift_stream.py` and is reachable as `HiFTGenerator.vocode_chunk`.

Dtypes: convs run in the module dtype; f0 → source, the STFT/iSTFT and the returned
waveforms are float32 (the phase integrates over the whole utterance and bf16 audio
would lose precision). Upstream runs everything in fp32, where this is identical.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, InvalidInputError
from ..loading.state_dict import fold_weight_norm, load_checked, read_torch_state_dict
from .hift_config import HiFTConfig
from .hift_layers import F0Predictor, ResBlock
from .hift_source import HarmonicSource, NSFDraws, check_draws, draw_nsf
from .hift_stream import HiFTStreamState, hamming_fade_window, vocode_chunk

__all__ = [
    "HiFTConfig", "HiFTGenerator", "HiFTStreamState", "NSFDraws", "draw_nsf", "hamming_fade_window",
    "load_hift", "vocode_chunk",
]


class HiFTGenerator(nn.Module):
    """HiFTNet generator (NSF + iSTFTNet) with upstream's parameter names."""

    def __init__(self, config: HiFTConfig) -> None:
        super().__init__()
        if not isinstance(config, HiFTConfig):
            raise InvalidInputError(f"config: expected a HiFTConfig, got {type(config).__name__}")
        self.config = config
        c = config
        self.m_source = HarmonicSource(c.sampling_rate, c.upsample_scale, c.nb_harmonics, c.nsf_alpha,
                                       c.nsf_sigma, c.nsf_voiced_threshold)
        self.conv_pre = nn.Conv1d(c.in_channels, c.base_channels, 7, padding=3)
        self.ups = nn.ModuleList(
            nn.ConvTranspose1d(c.base_channels // 2**i, c.stage_channels(i), k, u, padding=(k - u) // 2)
            for i, (u, k) in enumerate(zip(c.upsample_rates, c.upsample_kernel_sizes))
        )
        self.source_downs = nn.ModuleList(
            _source_down(c.spec_channels, c.stage_channels(i), stride)
            for i, stride in enumerate(_source_down_strides(c.upsample_rates))
        )
        self.source_resblocks = nn.ModuleList(
            ResBlock(c.stage_channels(i), k, d)
            for i, (k, d) in enumerate(zip(c.source_resblock_kernel_sizes, c.source_resblock_dilation_sizes))
        )
        self.resblocks = nn.ModuleList(
            ResBlock(c.stage_channels(i), k, d)
            for i in range(len(c.upsample_rates))
            for k, d in zip(c.resblock_kernel_sizes, c.resblock_dilation_sizes)
        )
        self.conv_post = nn.Conv1d(c.stage_channels(len(c.upsample_rates) - 1), c.spec_channels, 7, padding=3)
        self.f0_predictor = F0Predictor(c.f0_in_channels, c.f0_cond_channels, c.f0_num_class)

    # -- properties --------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.conv_pre.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_pre.weight.device

    # -- stages ------------------------------------------------------------------------
    def f0(self, mel: torch.Tensor) -> torch.Tensor:
        """Predict f0 in Hz. mel [B, 80, T] → f0 [B, T] float32."""
        mel = self._check_mel(mel, "mel")
        return self.f0_predictor(mel.to(self.dtype)).float()

    def source(self, f0: torch.Tensor, rand_ini: torch.Tensor, sine_noise: torch.Tensor) -> torch.Tensor:
        """NSF excitation. f0 [B, T] Hz, rand_ini [B, H+1], sine_noise [B, 480·T, H+1] → [B, 1, 480·T] float32."""
        if not isinstance(f0, torch.Tensor) or f0.dim() != 2 or f0.shape[1] < 1 or not torch.is_floating_point(f0):
            raise InvalidInputError(f"f0: expected a float tensor [B, T] with T >= 1, got "
                                    f"{_describe(f0)}")
        batch, frames = f0.shape
        draws = check_draws((rand_ini, sine_noise), batch, frames * self.config.upsample_scale,
                            self.config.n_harmonic_channels)
        return self.m_source(f0.float(), NSFDraws(draws.rand_ini.to(f0.device), draws.sine_noise.to(f0.device)))

    def decode(self, mel: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Waveform from mel and NSF source. mel [B, 80, T], source [B, 1, 480·T] → [B, 480·T] float32."""
        mel = self._check_mel(mel, "mel")
        batch, _, frames = mel.shape
        self._check_source(source, "source", batch, frames * self.config.upsample_scale, exact=True)
        spec = self._source_spectrum(source[:, 0].float()).to(self.dtype)  # [B, n_fft+2, 120·T+1]
        x = self._decode_spectrum(mel.to(self.dtype), spec)  # [B, n_fft+2, 120·T+1]
        return self._waveform(x)

    def inference(
        self,
        mel: torch.Tensor,
        draws: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        cache_source: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        return_f0: bool = False,
    ):
        """Upstream `HiFTGenerator.inference`: mel → (speech, source[, f0]).

        mel [B, 80, T]; draws = (rand_ini [B, H+1], sine_noise [B, 480·T, H+1]) or None to
        draw them from `generator` (torch's default generator if that is None too);
        cache_source [B, 1, n ≤ 480·T] overwrites the first n source samples (streaming, to
        keep the excitation continuous across chunks). Returns speech [B, 480·T] and
        source [B, 1, 480·T] (after the overwrite), float32; with `return_f0` also f0 [B, T].
        """
        mel = self._check_mel(mel, "mel")
        batch, _, frames = mel.shape
        n_samples = frames * self.config.upsample_scale
        if cache_source is not None:
            self._check_source(cache_source, "cache_source", batch, n_samples, exact=False)
        with torch.no_grad():
            f0 = self.f0(mel)
            if draws is None:
                draws = draw_nsf(batch, n_samples, self.config.n_harmonic_channels, mel.device, generator)
            source = self.source(f0, *check_draws(draws, batch, n_samples, self.config.n_harmonic_channels))
            if cache_source is not None and cache_source.shape[2] > 0:
                source[:, :, : cache_source.shape[2]] = cache_source.to(source)
            speech = self.decode(mel, source)
        return (speech, source, f0) if return_f0 else (speech, source)

    def vocode_chunk(
        self,
        mel_chunk: torch.Tensor,
        state: Optional[HiFTStreamState] = None,
        last: bool = False,
        draws: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        generator: Optional[torch.Generator] = None,
        return_source: bool = False,
    ):
        """Streaming vocoder step: (audio [B, n], new_state[, source]); see `hift_stream.vocode_chunk`."""
        return vocode_chunk(self, mel_chunk, state, last, draws=draws, generator=generator,
                            return_source=return_source)

    # -- internals ---------------------------------------------------------------------
    def _decode_spectrum(self, x: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
        """Upstream `decode_without_stft`. x [B, 80, T], spec [B, n_fft+2, F] → [B, n_fft+2, F]."""
        c = self.config
        n_stages, n_kernels = len(self.ups), len(c.resblock_kernel_sizes)
        x = self.conv_pre(x)
        for i in range(n_stages):
            x = self.ups[i](F.leaky_relu(x, c.lrelu_slope))
            if i == n_stages - 1:
                # One extra frame so the length reaches the STFT's 120·T + 1 frames.
                x = F.pad(x, (1, 0), mode="reflect")
            x = x + self.source_resblocks[i](self.source_downs[i](spec))
            xs = self.resblocks[i * n_kernels](x)
            for j in range(1, n_kernels):
                xs += self.resblocks[i * n_kernels + j](x)
            x = xs / n_kernels
        # Upstream calls F.leaky_relu(x) here: torch's default slope 0.01, not lrelu_slope.
        return self.conv_post(F.leaky_relu(x, c.final_lrelu_slope))

    def _source_spectrum(self, source: torch.Tensor) -> torch.Tensor:
        """STFT of the source as [real | imag] channels. source [B, L] fp32 → [B, n_fft+2, L/hop+1]."""
        c = self.config
        spec = torch.stft(source, c.istft_n_fft, c.istft_hop, c.istft_n_fft,
                          window=_hann_window(c.istft_n_fft, source.device), return_complex=True)
        spec = torch.view_as_real(spec)  # [B, n_fft/2+1, F, 2]
        return torch.cat([spec[..., 0], spec[..., 1]], dim=1)

    def _waveform(self, x: torch.Tensor) -> torch.Tensor:
        """Head: magnitude exp(ch 0..n/2) clipped at 100, phase sin(rest), iSTFT, clamp. → [B, L] fp32."""
        c = self.config
        half = c.istft_n_fft // 2 + 1
        x = x.float()
        magnitude = torch.clip(torch.exp(x[:, :half]), max=1e2)
        phase = torch.sin(x[:, half:])  # upstream's (redundant) sin, kept for parity
        spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        wave = torch.istft(spec, c.istft_n_fft, c.istft_hop, c.istft_n_fft,
                           window=_hann_window(c.istft_n_fft, x.device))
        return torch.clamp(wave, -c.audio_limit, c.audio_limit)

    def _check_mel(self, mel: torch.Tensor, name: str) -> torch.Tensor:
        c = self.config
        if (not isinstance(mel, torch.Tensor) or mel.dim() != 3 or mel.shape[1] != c.in_channels
                or mel.shape[2] < 1 or mel.shape[0] < 1 or not torch.is_floating_point(mel)):
            raise InvalidInputError(f"{name}: expected a float tensor [B, {c.in_channels}, T] with B, T >= 1, "
                                    f"got {_describe(mel)}")
        return mel

    @staticmethod
    def _check_source(source: torch.Tensor, name: str, batch: int, n_samples: int, exact: bool) -> None:
        ok = (isinstance(source, torch.Tensor) and source.dim() == 3 and source.shape[0] == batch
              and source.shape[1] == 1 and torch.is_floating_point(source)
              and (source.shape[2] == n_samples if exact else source.shape[2] <= n_samples))
        if not ok:
            length = f"{n_samples}" if exact else f"n <= {n_samples}"
            raise InvalidInputError(f"{name}: expected a float tensor [{batch}, 1, {length}], got {_describe(source)}")


def _source_down_strides(upsample_rates: tuple[int, ...]) -> list[int]:
    """Stride of each source downsampler: the total upsampling still to come after stage i.

    For rates (8, 5, 3): (15, 3, 1) — the source STFT (at the final frame rate) is brought
    down to the frame rate of each stage's output.
    """
    strides, acc = [], 1
    for rate in reversed(upsample_rates):
        strides.append(acc)
        acc *= rate
    return strides[::-1]


def _source_down(in_channels: int, out_channels: int, stride: int) -> nn.Conv1d:
    if stride == 1:
        return nn.Conv1d(in_channels, out_channels, 1)
    return nn.Conv1d(in_channels, out_channels, stride * 2, stride, padding=stride // 2)


def _hann_window(n_fft: int, device: torch.device) -> torch.Tensor:
    # Periodic Hann computed in float64 then rounded, like upstream's scipy get_window(..).astype(float32).
    return torch.hann_window(n_fft, periodic=True, dtype=torch.float64).to(device=device, dtype=torch.float32)


def _describe(t: object) -> str:
    if isinstance(t, torch.Tensor):
        return f"{t.dtype} tensor of shape {list(t.shape)}"
    return type(t).__name__


def load_hift(
    path: str | Path,
    config: Optional[HiFTConfig] = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> HiFTGenerator:
    """Build a HiFTGenerator from upstream's `hift.pt` (or a CosyVoice dir holding it).

    `config=None` reads the `hift` node of `cosyvoice.yaml` in the same directory.
    Weight norm is folded once here; every missing / unexpected / mis-shaped key raises
    CheckpointError naming it.
    """
    p = Path(path)
    pt = p / "hift.pt" if p.is_dir() else p
    if config is None:
        yaml_path = pt.parent / "cosyvoice.yaml"
        if not yaml_path.is_file():
            raise CheckpointError(f"HiFT config: no config given and no cosyvoice.yaml beside {pt}")
        config = HiFTConfig.from_cosyvoice_yaml(yaml_path)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise InvalidInputError(f"dtype: expected torch.float32, float16 or bfloat16, got {dtype}")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidInputError(f"device: expected a torch device such as 'cpu' or 'cuda:0', got {device!r}") from exc
    try:
        sd = fold_weight_norm(read_torch_state_dict(pt, "HiFT weights (hift.pt)"))
    except CheckpointError as exc:
        raise CheckpointError(f"HiFT weights {pt}: {exc}") from exc
    model = HiFTGenerator(config)
    load_checked(model, sd, what=f"HiFT weights {pt}")
    # Inference only: no autograd bookkeeping on the weights.
    return model.requires_grad_(False).to(device=device, dtype=dtype).eval()
