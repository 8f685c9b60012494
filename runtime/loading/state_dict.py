"""Reading checkpoint files and loading them into our modules with strict checks.

Our modules use upstream's parameter names, so loading is `load_state_dict` after
normalising the file (weight-norm folding, prefix selection, dtype). Unlike upstream
(whose FunASR loader silently keeps random weights for missing keys) every missing,
unexpected or mis-shaped tensor is reported by name.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping

import torch

from ..errors import CheckpointError

StateDict = dict[str, torch.Tensor]


def require_file(path: str | Path, what: str) -> Path:
    """Return `path` as a Path, or raise CheckpointError naming `what` is missing."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"missing {what}: expected file {p}")
    return p


def read_torch_state_dict(path: str | Path, what: str = "checkpoint") -> StateDict:
    """Load a torch pickle state dict safely (weights_only), unwrapping `state_dict`/`model` nesting."""
    p = require_file(path, what)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt / non-torch file
        raise CheckpointError(f"cannot read {what} {p}: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{what} {p} does not hold a state dict (got {type(obj).__name__})")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def read_safetensors_dir(directory: str | Path, what: str = "LLM weights") -> StateDict:
    """Read HF safetensors weights: `model.safetensors.index.json` + shards, or one `*.safetensors` file."""
    from safetensors.torch import load_file

    d = Path(directory)
    index = d / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except Exception as exc:
            raise CheckpointError(f"cannot parse {index}: {exc}") from exc
        shards = sorted(set(weight_map.values()))
    else:
        shards = sorted(p.name for p in d.glob("*.safetensors"))
        weight_map = None
    if not shards:
        raise CheckpointError(f"missing {what}: no *.safetensors (and no index) in {d}")
    out: StateDict = {}
    for shard in shards:
        path = require_file(d / shard, f"{what} shard")
        try:
            out.update(load_file(str(path)))
        except Exception as exc:
            raise CheckpointError(f"cannot read {what} shard {path}: {exc}") from exc
    if weight_map is not None:
        absent = sorted(set(weight_map) - set(out))
        if absent:
            raise CheckpointError(f"{what}: index lists tensors absent from the shards: {absent[:8]}")
    return out


def fold_weight_norm(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Replace weight-norm pairs by plain weights: w = g * v / ||v|| (norm over all dims but 0).

    Handles torch's parametrized keys (`X.parametrizations.weight.original0/1`) and the
    older `X.weight_g` / `X.weight_v`. Computed in float64 then cast back, so folding
    adds no error beyond the final rounding.
    """
    out: StateDict = {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        for g_suffix, v_suffix in ((".parametrizations.weight.original0", ".parametrizations.weight.original1"),
                                   (".weight_g", ".weight_v")):
            if key.endswith(g_suffix):
                pairs.setdefault(key[: -len(g_suffix)], {})["g"] = value
                break
            if key.endswith(v_suffix):
                pairs.setdefault(key[: -len(v_suffix)], {})["v"] = value
                break
        else:
            out[key] = value
    for prefix, gv in pairs.items():
        if set(gv) != {"g", "v"}:
            raise CheckpointError(f"weight-norm tensor {prefix}: has {sorted(gv)} but needs both g and v")
        g, v = gv["g"].double(), gv["v"].double()
        norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
        out[prefix + ".weight"] = (g * v / norm).to(gv["v"].dtype)
    return out


def load_checked(
    module: torch.nn.Module,
    sd: Mapping[str, torch.Tensor],
    what: str,
    ignore_unexpected: Iterable[str] = (),
) -> None:
    """Copy `sd` into `module` after checking every key and shape; name every problem.

    Tensors are cast to each parameter's dtype (fp16/bf16 files load into fp32 modules).
    `ignore_unexpected` lists key prefixes the file may hold but we do not use
    (e.g. the Paraformer decoder).
    """
    ignore = tuple(ignore_unexpected)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(k for k in set(sd) - set(expected) if not k.startswith(ignore))
    mismatched = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(sd))
        if tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_preview(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_preview(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {_preview(mismatched)}")
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems))
    with torch.no_grad():
        for k, target in expected.items():
            src = sd[k]
            if not torch.is_floating_point(src) and torch.is_floating_point(target):
                raise CheckpointError(f"{what}: tensor {k} has dtype {src.dtype}, expected floating point")
            if torch.is_floating_point(src) and not torch.isfinite(src).all():
                raise CheckpointError(f"{what}: tensor {k} contains NaN or Inf")
            target.copy_(src.to(target.dtype))


def _preview(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")
