"""Several bias-free projections of one input as a single GEMM (Step1's q|k|v and gate|up).

Why: at batch-1 decode a Step1 layer runs 7 GEMVs (q, k, v, o, gate, up, down). k_proj and v_proj
are [256, 3072] (1.5 MB in bf16 each), too small to reach a GPU's memory bandwidth alone, and every
kernel costs a launch (eager decode 42 tok/s vs 262 tok/s CUDA-graphed on an H200, weights-only
floor ~590 tok/s). One [H·D + 2·G·D, C] GEMM for q|k|v and one [2·I, C] GEMM for gate|up (what vLLM
and TensorRT-LLM do) turn 7 GEMMs into 4, with the same dot products.

Layout: the fused weight [ΣN_i, C] is the only storage. Each projection's `weight` Parameter stays
where it was (upstream's name and state-dict key) and is re-pointed at its row block
(`param.data = fused[rows]`), so memory is not doubled (3.5 B parameters stay 7 GB in bf16) and
in-place writes (`load_state_dict`, `copy_`, `randomize_`) land in the fused weight.

Staleness: anything that gives a projection new storage breaks that aliasing. `.to()` / `.float()` /
`.cuda()` (all `_apply`) and `load_state_dict(assign=True)` re-fuse right after; anything else
(a new Parameter assigned, `param.data = ...`, a deep copy) is caught by `fused_weight()`, which
checks by pointer on every call that each projection still is its row block, and otherwise drops
the fused weight (freeing it) and logs once: the module then computes with the projections' own
current weights. Old fused weights are never used.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

log = logging.getLogger("editx")


class FusedProjections(nn.Module):
    """Base of a module whose bias-free `nn.Linear` children `fused_names` (same in_features) can run
    as one GEMM. Subclasses call `fused_weight()` in their forward: [ΣN_i, C] or None (run unfused)."""

    fused_names: Sequence[str] = ()

    def __init__(self) -> None:
        super().__init__()
        self._fused: torch.Tensor | None = None  # plain attribute: not in the state dict, not moved by `_apply`
        # per projection: (name, the nn.Linear fused, byte offset of its rows in _fused, its weight shape)
        self._fused_layout: tuple[tuple[str, nn.Linear, int, torch.Size], ...] = ()
        self.fused_sizes: tuple[int, ...] = ()  # rows of each projection, in order: the split sizes of the output
        self.register_load_state_dict_post_hook(_refuse_after_load)

    # -- public ----------------------------------------------------------------------------
    @property
    def projections_fused(self) -> bool:
        """True while the fused weight exists and every projection is still its row block."""
        return self._fused is not None and self._aliased(self._fused)

    def fuse_projections(self) -> None:
        """Make the projections row blocks of one fresh [ΣN_i, C] weight (idempotent: a no-op while
        they still are). Peak extra memory: one module's projections, while they are copied."""
        if self.projections_fused:
            return
        self._fused = None  # a stale fused weight goes before the new one is allocated
        linears = [getattr(self, name) for name in self.fused_names]
        # inference_mode(False): a fused weight made inside inference mode would be an inference tensor,
        # which the Parameters could not alias outside it.
        with torch.no_grad(), torch.inference_mode(False):
            fused = torch.cat([lin.weight.detach() for lin in linears])  # [ΣN_i, C]
            layout, first = [], 0
            for name, lin in zip(self.fused_names, linears):
                count = lin.weight.shape[0]
                lin.weight.data = fused[first:first + count]  # same Parameter object, new (aliased) storage
                layout.append((name, lin, first * fused.stride(0) * fused.element_size(), lin.weight.shape))
                first += count
        self._fused, self._fused_layout = fused, tuple(layout)
        self.fused_sizes = tuple(shape[0] for *_, shape in layout)

    def unfuse_projections(self) -> None:
        """Back to one storage per projection (values unchanged); forward runs the separate GEMMs."""
        if self._fused is None:
            return
        self._fused = None
        with torch.no_grad(), torch.inference_mode(False):
            for name in self.fused_names:
                weight = getattr(self, name).weight
                weight.data = weight.detach().clone()

    def fused_weight(self) -> torch.Tensor | None:
        """The fused weight [ΣN_i, C] if forward may use it, else None (run the projections one by one).

        None when not fused; when autograd must reach the projections' Parameters (the fused weight is
        not a Parameter); and when a projection no longer aliases its rows (stale: dropped and logged).
        """
        fused = self._fused
        if fused is None:
            return None
        if not self._aliased(fused):
            self._fused = None
            log.warning("%s: projections %s got new storage after fusion (a new Parameter, .data or a copy); "
                        "running them unfused. Call fuse_projections() to fuse the current weights again.",
                        type(self).__name__, "/".join(self.fused_names))
            return None
        if torch.is_grad_enabled() and any(lin.weight.requires_grad for _, lin, _, _ in self._fused_layout):
            return None
        return fused

    # -- staleness -------------------------------------------------------------------------
    def _aliased(self, fused: torch.Tensor) -> bool:
        # The same Linear, whose weight starts at its row block with the same dtype, device and shape:
        # then the fused GEMM reads exactly the projection's current values (fused is alive, so no
        # other tensor can sit at that address). Runs in every forward of every layer, hence the
        # direct dict lookups: nn.Module.__getattr__ made this check 27 us instead of ~4 us (CPU).
        base, modules = fused.data_ptr(), self._modules
        for name, linear, offset, shape in self._fused_layout:
            w = linear._parameters.get("weight") if modules.get(name) is linear else None
            if (w is None or w.data_ptr() != base + offset or w.dtype != fused.dtype or w.device != fused.device
                    or w.shape != shape):
                return False
        return True

    def _apply(self, fn, recurse: bool = True):
        # `.to(dtype/device)`, `.float()`, `.cuda()`: the children convert each projection on its own,
        # leaving separate tensors; fuse them again right here (the layer's old fused weight is freed
        # first), so the module stays fused and no stale copy lingers.
        was_fused = self._fused is not None
        result = super()._apply(fn, recurse)
        if was_fused:
            self.fuse_projections()
        return result


def _refuse_after_load(module: FusedProjections, incompatible_keys) -> None:
    # load_state_dict copies into the aliased Parameters in place (fused weight updated, nothing to
    # do); with assign=True it installs new Parameters, which this fuses again.
    if module._fused is not None:
        module.fuse_projections()
