"""Access to upstream parity fixture sets (see ../shared/fixtures/README.md).

A fixture *set* is a directory with `manifest.json`, `weights/`, `tokenizer/`, `cases/`;
`$EDITX_FIXTURES` points at one set or at a directory holding several (each with a
manifest). Real speech referenced by cases lives in `<set>/../audio`.
Tests never hard-code fixture values: they read inputs, outputs, params and tolerances
from the manifest and loop over every case it lists.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def fixture_roots() -> list[Path]:
    """Every fixture set under $EDITX_FIXTURES (default ../shared/fixtures)."""
    base = Path(os.environ.get("EDITX_FIXTURES", REPO.parent / "shared" / "fixtures")).resolve()
    if (base / "manifest.json").is_file():
        return [base]
    if base.is_dir():
        return sorted(p.parent for p in base.glob("*/manifest.json"))
    return []


@dataclass
class Case:
    """One manifest case of one fixture set."""

    root: Path
    spec: dict[str, Any]
    manifest: dict[str, Any] = field(repr=False)

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def params(self) -> dict[str, Any]:
        return self.spec.get("params") or {}

    @property
    def id(self) -> str:
        return f"{self.root.name}:{self.name}"

    @property
    def audio_dir(self) -> Path:
        return self.root.parent / "audio"

    def path(self, rel: str) -> Path:
        return self.root / rel

    def weights(self, default: str) -> Path:
        """The weights path a case names in params (file or dir), relative to the set."""
        return self.root / self.params.get("weights", default)

    # -- tensors -------------------------------------------------------------------
    def _file(self) -> Path:
        return self.root / self.spec["file"].split("#", 1)[0]

    def _tensors(self) -> dict[str, torch.Tensor]:
        return _load_safetensors(str(self._file()))

    def input(self, name: str) -> torch.Tensor:
        return self._get(self.spec["inputs"][name])

    def output(self, name: str) -> torch.Tensor:
        return self._get(self.spec["outputs"][name])

    def _get(self, meta: dict[str, Any]) -> torch.Tensor:
        t = self._tensors()[meta["key"]]
        # fp16 fixture tensors are exact images of fp32 draws: upcast (README §2).
        return t.float() if t.dtype == torch.float16 else t

    def input_names(self) -> list[str]:
        return list(self.spec.get("inputs", {}))

    def output_names(self) -> list[str]:
        return list(self.spec.get("outputs", {}))

    # -- JSON cases ----------------------------------------------------------------
    def json_value(self) -> Any:
        """The JSON object a `file` of the form `cases/x.json#a/b` points at."""
        rel, _, frag = self.spec["file"].partition("#")
        data = json.loads((self.root / rel).read_text(encoding="utf-8"))
        for part in [p for p in frag.split("/") if p]:
            if isinstance(data, list):
                data = next(d for d in data if d.get("name") == part)
            else:
                data = data[part]
        return data

    def tolerance(self, output: str) -> Any:
        """Tolerance for one output: a dict, "exact", or {"exact": True}."""
        tol = self.spec.get("tolerance", {})
        if isinstance(tol, dict) and output in tol and not _is_tol_dict(tol):
            return tol[output]
        return tol


def _is_tol_dict(tol: dict[str, Any]) -> bool:
    return any(k in tol for k in ("atol", "rtol", "exact"))


@lru_cache(maxsize=32)
def _load_safetensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


@lru_cache(maxsize=8)
def _manifest(root: str) -> dict[str, Any]:
    return json.loads((Path(root) / "manifest.json").read_text(encoding="utf-8"))


def all_cases() -> list[Case]:
    out = []
    for root in fixture_roots():
        m = _manifest(str(root))
        out.extend(Case(root, spec, m) for spec in m["cases"])
    return out


def cases_where(pred) -> list[Any]:
    """pytest params for every case (of every set) whose spec satisfies `pred`."""
    found = [pytest.param(c, id=c.id) for c in all_cases() if pred(c.spec)]
    if not found:
        return [pytest.param(None, marks=pytest.mark.skip(reason="no such case in $EDITX_FIXTURES"))]
    return found


def named(*prefixes: str):
    """Predicate: case name equals or starts with one of `prefixes`."""
    return lambda spec: any(spec["name"] == p or spec["name"].startswith(p) for p in prefixes)


# -- comparisons ---------------------------------------------------------------------
def assert_matches(got: Any, ref: Any, tol: Any, what: str) -> None:
    """Check `got` against `ref` under a manifest tolerance (README §2 semantics).

    Elementwise |got - ref| <= atol + rtol*|ref|; "exact" means equality; positions
    where ref is -inf must be -inf in got too and only finite entries are compared.
    """
    if _is_exact(tol):
        if isinstance(ref, torch.Tensor) or isinstance(got, torch.Tensor):
            g, r = torch.as_tensor(got), torch.as_tensor(ref)
            assert g.shape == r.shape, f"{what}: shape {tuple(g.shape)} != {tuple(r.shape)}"
            diff = (g != r).nonzero()
            assert diff.numel() == 0, f"{what}: {diff.shape[0]} entries differ, first at {diff[0].tolist()}"
        else:
            assert got == ref, f"{what}: {got!r} != {ref!r}"
        return
    g = torch.as_tensor(got).double()
    r = torch.as_tensor(ref).double()
    assert g.shape == r.shape, f"{what}: shape {tuple(g.shape)} != {tuple(r.shape)}"
    ninf = torch.isneginf(r)
    assert torch.equal(torch.isneginf(g), ninf), f"{what}: -inf pattern differs"
    finite = ~ninf
    assert torch.isfinite(g[finite]).all(), f"{what}: non-finite values where reference is finite"
    atol, rtol = float(tol.get("atol", 0.0)), float(tol.get("rtol", 0.0))
    err = (g[finite] - r[finite]).abs()
    bound = atol + rtol * r[finite].abs()
    bad = err > bound
    if bad.any():
        worst = int(torch.argmax(err - bound))
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{err.numel()} entries out of tolerance (atol={atol}, rtol={rtol}); "
            f"max |diff| {float(err.max()):.3g}, worst excess at flat index {worst}"
        )


def _is_exact(tol: Any) -> bool:
    return tol == "exact" or (isinstance(tol, dict) and tol.get("exact") is True)

