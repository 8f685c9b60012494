"""Weight-norm folding (used by load_hift) vs torch's parametrized weight norm, on odd shapes."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from editx.loading.state_dict import fold_weight_norm


def _random_weight_normed(module: nn.Module, seed: int) -> nn.Module:
    """weight_norm(module) with random g and v."""
    gen = torch.Generator().manual_seed(seed)
    module = weight_norm(module)
    with torch.no_grad():
        # Random g and v so the fold is not the identity the default init would give.
        module.parametrizations.weight.original0.copy_(
            torch.rand(module.parametrizations.weight.original0.shape, generator=gen) + 0.5)
        module.parametrizations.weight.original1.copy_(
            torch.randn(module.parametrizations.weight.original1.shape, generator=gen))
    return module


CASES = [
    ("conv1d", lambda: nn.Conv1d(5, 7, 3, padding=1), (2, 5, 11)),
    ("conv1d_dilated", lambda: nn.Conv1d(13, 13, 7, dilation=3, padding=9), (1, 13, 29)),
    ("conv_transpose1d", lambda: nn.ConvTranspose1d(9, 5, 11, 5, padding=3), (2, 9, 6)),
    ("conv_transpose1d_k7s3", lambda: nn.ConvTranspose1d(6, 3, 7, 3, padding=2), (1, 6, 13)),
]


@pytest.mark.parametrize("name,make,x_shape", CASES, ids=[c[0] for c in CASES])
def test_fold_equals_parametrized_weight(name, make, x_shape):
    wn = _random_weight_normed(make(), seed=len(name))
    # Checkpoint keys always sit under a module path (e.g. `ups.0.`), as in hift.pt.
    sd = nn.ModuleDict({"conv": wn}).state_dict()
    assert {"conv.parametrizations.weight.original0", "conv.parametrizations.weight.original1"} <= set(sd)

    folded = {k[len("conv."):]: v for k, v in fold_weight_norm(sd).items()}
    assert set(folded) == {"weight", "bias"}
    with torch.no_grad():
        torch.testing.assert_close(folded["weight"], wn.weight, rtol=1e-6, atol=1e-7)

        plain = make()
        plain.load_state_dict(folded)
        x = torch.randn(x_shape, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(plain(x), wn(x), rtol=1e-5, atol=1e-6)


def test_fold_norm_is_over_all_dims_but_0_for_conv_transpose():
    # ConvTranspose1d weight is [in, out, k]; weight_norm's default dim 0 gives g [in, 1, 1].
    wn = _random_weight_normed(nn.ConvTranspose1d(4, 3, 5, 2), seed=3)
    sd = nn.ModuleDict({"up": wn}).state_dict()
    g = sd["up.parametrizations.weight.original0"]
    assert tuple(g.shape) == (4, 1, 1)
    folded = fold_weight_norm(sd)["up.weight"]
    torch.testing.assert_close(folded.flatten(1).norm(dim=1), g.flatten(), rtol=1e-6, atol=1e-7)
