"""The flow decoder (upstream `CausalMaskedDiffWithXvec`): token pairs + prompt mel + x-vector → mel.

Non-streaming `FlowModel.inference`: embed prompt ++ target token frames, encode them
to mel-rate states mu, condition on the prompt mel (first frames of `cond`) and the
projected x-vector, run the CFM ODE over prompt + target, return the target frames.
The streaming pair lives in `streaming.py`.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import BackendUnavailableError, InvalidInputError
from ...loading.state_dict import load_checked, read_torch_state_dict
from .cfm import CausalConditionalCFM
from .config import FlowConfig
from .dit import DiT
from .embedding import DualCodebookEmbedding
from .encoder import UpsampleConformerEncoderV2
from ...layers.embedding import embed_mixed
from .tokens import FRAMES_PER_GROUP, GROUP, check_pair_ids


def mixed_frames(n_ids: int) -> int:
    """Token frames of n mixed ids after upstream's padding to whole 5-id groups."""
    return FRAMES_PER_GROUP * -(-n_ids // GROUP)


def align_prompt_mel(prompt_feat: torch.Tensor, frames: int) -> torch.Tensor:
    """Nearest-resize a prompt mel `[B, T_mel, 80]` to `[B, frames, 80]` (upstream token2wav does this:
    the mel of the untrimmed prompt audio is stretched to 2 × the trimmed prompt's token frames).
    Identity when the length already matches."""
    if prompt_feat.shape[1] == frames:
        return prompt_feat
    return F.interpolate(prompt_feat.transpose(1, 2), size=frames, mode="nearest").transpose(1, 2)


def check_float(x: torch.Tensor, what: str, shape: tuple[int | None, ...], finite: bool = True) -> None:
    """InvalidInputError unless x is a floating tensor of `shape` (None = any size), finite if asked."""
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
        raise InvalidInputError(f"{what}: expected a floating-point tensor, got "
                                f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise InvalidInputError(f"{what}: expected shape {want}, got {tuple(x.shape)}")
    if finite and not torch.isfinite(x).all():
        raise InvalidInputError(f"{what}: contains NaN or Inf")


def slice_noise(noise: torch.Tensor, offset: int, frames: int, channels: int) -> torch.Tensor:
    """noise `[1, C, N]` → `[1, C, frames]` starting at `offset` (upstream slices its fixed noise buffer)."""
    check_float(noise, "noise", (1, channels, None), finite=False)
    if noise.shape[2] < offset + frames:
        raise InvalidInputError(
            f"noise: needs at least {offset + frames} frames (offset {offset} + {frames}), got {noise.shape[2]}")
    piece = noise[:, :, offset:offset + frames]
    if not torch.isfinite(piece).all():  # only the slice used: the buffer may be long
        raise InvalidInputError(f"noise: frames {offset}..{offset + frames - 1} contain NaN or Inf")
    return piece


class FlowModel(nn.Module):
    """Parameter names equal flow.pt keys (`input_embedding.*`, `encoder.*`, `decoder.estimator.*`, ...)."""

    def __init__(self, cfg: FlowConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_embedding = DualCodebookEmbedding(cfg.vocab_size, cfg.input_size)
        self.spk_embed_affine_layer = nn.Linear(cfg.spk_embed_dim, cfg.output_size)
        self.encoder = UpsampleConformerEncoderV2(cfg.encoder)
        self.encoder_proj = nn.Linear(cfg.encoder.output_size, cfg.output_size)
        self.decoder = CausalConditionalCFM(DiT(cfg.dit), cfg.inference_cfg_rate)

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder_proj.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.encoder_proj.weight.device

    # -- pieces ----------------------------------------------------------------------
    def project_speaker(self, embedding: torch.Tensor) -> torch.Tensor:
        """x-vector `[B, 192]` → L2-normalised → affine → `[B, 80]` (module dtype)."""
        check_float(embedding, "embedding", (None, self.cfg.spk_embed_dim))
        unit = F.normalize(embedding.to(self.device, torch.float32), dim=1)
        return self.spk_embed_affine_layer(unit.to(self.dtype))

    def embed_tokens(self, pairs: torch.Tensor, clamp: bool) -> torch.Tensor:
        """pairs `[B, T, 2]` → `[B, T, input_size]`. `clamp` maps negative ids to 0 (non-streaming path only)."""
        check_pair_ids(pairs, self.cfg.vocab_size, "token pairs", allow_negative=clamp)
        pairs = pairs.to(self.device).long()
        return self.input_embedding(pairs.clamp(min=0) if clamp else pairs)

    def encode(self, pairs: torch.Tensor) -> torch.Tensor:
        """Non-streaming: pairs `[B, T, 2]` → mu `[B, 80, 2T]` (encoder over the whole sequence)."""
        h = self.encoder(self.embed_tokens(pairs, clamp=True))
        return self.encoder_proj(h).transpose(1, 2)

    # -- non-streaming inference -----------------------------------------------------
    @torch.inference_mode()
    def inference(
        self,
        token_pairs: torch.Tensor,
        prompt_pairs: torch.Tensor,
        prompt_feat: torch.Tensor,
        embedding: torch.Tensor,
        noise: torch.Tensor,
        n_timesteps: int | None = None,
        return_states: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Target mel for `token_pairs` in the voice of the prompt.

        token_pairs `[1, T, 2]`, prompt_pairs `[1, Tp, 2]` (from `reshape_mixed_tokens`; negative
        ids are clamped to 0 as upstream does); prompt_feat `[1, T_mel, 80]` (nearest-resized to 2·Tp
        frames if needed); embedding `[1, 192]`; noise `[1, 80, N ≥ 2(Tp+T)]` (the ODE start is
        `noise[:, :, :2(Tp+T)]`). Returns mel `[1, 80, 2T]` float32 — and, with `return_states`,
        the conditional ODE states fed to the DiT at each step `[n_timesteps, 80, 2(Tp+T)]`.
        """
        n_timesteps = self.resolve_n_timesteps(n_timesteps)
        for name, pairs in (("token_pairs", token_pairs), ("prompt_pairs", prompt_pairs)):
            check_pair_ids(pairs, self.cfg.vocab_size, name, allow_negative=True)
            if pairs.shape[0] != 1:
                raise InvalidInputError(f"{name}: batch size must be 1, got {pairs.shape[0]}")
        mu = self.encode(torch.cat([prompt_pairs, token_pairs.to(prompt_pairs.device)], dim=1))  # [1, 80, T_all]
        return self._solve(mu, prompt_pairs.shape[1], prompt_feat, embedding, noise, n_timesteps, return_states)

    @torch.inference_mode()
    def inference_mixed(self, mixed: torch.Tensor, prompt_mixed: torch.Tensor, prompt_feat: torch.Tensor,
                        embedding: torch.Tensor, noise: torch.Tensor, n_timesteps: int | None = None) -> torch.Tensor:
        """`inference` straight from mixed ids (LLM id − 65536), as token2wav receives them.

        mixed [N], prompt_mixed [Np] int: each is reshaped to pairs with upstream's PAD rule,
        embedded and written into one encoder input buffer by the fused dual-codebook
        embedding (one kernel on CUDA; `editx.layers.embedding.embed_mixed`). Same result as
        `inference(reshape(mixed), reshape(prompt_mixed), ...)`. Returns mel [1, 80, 2T].
        """
        n_timesteps = self.resolve_n_timesteps(n_timesteps)
        xs, prompt_frames = self.embed_mixed(prompt_mixed, mixed)
        mu = self.encoder_proj(self.encoder(xs)).transpose(1, 2)
        return self._solve(mu, prompt_frames, prompt_feat, embedding, noise, n_timesteps, False)

    def embed_mixed(self, prompt_mixed: torch.Tensor, mixed: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Prompt then target mixed ids → embedded frames [1, Tp + T, input_size] and Tp (ids clamped
        at 0 like the non-streaming path; ids ≥ vocab are an InvalidInputError)."""
        seqs = [torch.as_tensor(x, dtype=torch.long).reshape(-1) for x in (prompt_mixed, mixed)]
        for name, seq in zip(("prompt_mixed", "mixed"), seqs):
            if seq.numel() == 0:
                raise InvalidInputError(f"{name}: no token ids")
            if int(seq.max()) >= self.cfg.vocab_size:
                raise InvalidInputError(f"{name}: id {int(seq.max())} is outside the flow vocabulary "
                                        f"(0..{self.cfg.vocab_size - 1}); were non-audio LLM ids passed?")
        frames = [mixed_frames(seq.numel()) for seq in seqs]
        width = self.input_embedding.embedding.weight.shape[1] * 2
        out = torch.empty(1, sum(frames), width, dtype=self.dtype, device=self.device)
        ids = torch.cat(seqs).to(self.device)
        cu = torch.tensor([0, seqs[0].numel(), seqs[0].numel() + seqs[1].numel()], dtype=torch.int32,
                          device=self.device)
        offsets = torch.tensor([0, frames[0] * out.stride(1)], dtype=torch.int64, device=self.device)
        embed_mixed(ids, cu, self.input_embedding.embedding.weight, out, offsets, max(frames) // 3, clamp=True)
        return out, frames[0]

    def _solve(self, mu: torch.Tensor, prompt_token_frames: int, prompt_feat: torch.Tensor, embedding: torch.Tensor,
               noise: torch.Tensor, n_timesteps: int, return_states: bool):
        """CFM decode over prompt + target given mu [1, 80, T_all]; returns the target mel (and states)."""
        prompt_frames = self.cfg.token_mel_ratio * prompt_token_frames
        check_float(prompt_feat, "prompt_feat", (1, None, self.cfg.output_size))
        cond_prompt = align_prompt_mel(prompt_feat, prompt_frames)  # [1, Tp_mel, 80]
        spks = self.project_speaker(embedding)  # [1, 80]
        total = mu.shape[2]
        cond = torch.zeros_like(mu)
        cond[:, :, :prompt_frames] = cond_prompt.to(mu).transpose(1, 2)
        x0 = slice_noise(noise, 0, total, self.cfg.output_size).to(self.device)
        mel, states = self.decoder.solve(mu, spks, cond, x0, n_timesteps, return_states=return_states)
        mel = mel[:, :, prompt_frames:]
        if return_states:
            return mel, torch.cat(states, dim=0)
        return mel

    def resolve_n_timesteps(self, n_timesteps: int | None) -> int:
        """The ODE step count to use: the argument, or the config's when None (validated)."""
        n = self.cfg.n_timesteps if n_timesteps is None else n_timesteps
        if not isinstance(n, int) or n < 1:
            raise InvalidInputError(f"n_timesteps: expected a positive int, got {n!r}")
        return n


def load_flow(
    cosyvoice_dir: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[FlowModel, FlowConfig]:
    """Build the flow decoder from `cosyvoice.yaml` and load `flow.pt` with strict key/shape checks."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InvalidInputError(f"dtype: expected a floating torch dtype, got {dtype!r}")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidInputError(f"device: cannot parse {device!r}: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(f"device: {device} requested but CUDA is not available")
    root = Path(cosyvoice_dir)
    cfg = FlowConfig.from_yaml(root / "cosyvoice.yaml")
    model = FlowModel(cfg)
    load_checked(model, read_torch_state_dict(root / "flow.pt", "flow.pt"), what=f"flow.pt ({root / 'flow.pt'})")
    return model.to(device=device, dtype=dtype).eval(), cfg
