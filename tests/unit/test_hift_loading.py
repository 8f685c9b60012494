"""load_hift on synthetic upstream-format checkpoints (parametrized weight-norm keys), and its errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from editx.errors import CheckpointError, InvalidInputError
from editx.models.hift import HiFTConfig, HiFTGenerator, load_hift

WN_G = ".parametrizations.weight.original0"
WN_V = ".parametrizations.weight.original1"


def _is_weight_normed(key: str, value: torch.Tensor) -> bool:
    # Upstream weight-norms every conv except the source downsamplers (spec §8.4).
    return key.endswith(".weight") and value.dim() == 3 and not key.startswith("source_downs.")


def upstream_state_dict(model: HiFTGenerator, seed: int = 0) -> dict[str, torch.Tensor]:
    """Our weights written the way upstream saves them: g, v with g·v/‖v‖ = weight."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, w in model.state_dict().items():
        if not _is_weight_normed(key, w):
            out[key] = w.clone()
            continue
        prefix = key[: -len(".weight")]
        scale = torch.rand(w.shape[0], 1, 1, generator=gen) + 0.5  # ‖v‖ differs from g
        out[prefix + WN_V] = w * scale
        out[prefix + WN_G] = w.flatten(1).norm(dim=1).view(-1, 1, 1)
    return out


@pytest.fixture()
def checkpoint(tmp_path: Path):
    torch.manual_seed(0)
    model = HiFTGenerator(HiFTConfig.tiny())
    sd = upstream_state_dict(model)
    path = tmp_path / "hift.pt"
    torch.save(sd, path)
    return model, sd, path


def test_upstream_key_layout(checkpoint):
    _, sd, _ = checkpoint
    # Same layout as upstream's file: 328 tensors of which 72 Snake alphas (spec §11 item 1).
    assert len(sd) == 328
    assert sum(k.endswith(".alpha") for k in sd) == 72
    for key in ("conv_pre" + WN_G, "ups.0" + WN_V, "resblocks.3.convs1.1" + WN_V,
                "resblocks.3.activations1.1.alpha", "m_source.l_linear.weight", "source_downs.0.weight",
                "f0_predictor.condnet.0" + WN_G, "f0_predictor.classifier.weight", "conv_post.bias"):
        assert key in sd, key


def test_load_folds_weight_norm(checkpoint):
    model, _, path = checkpoint
    loaded = load_hift(path, HiFTConfig.tiny())
    for key, ref in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], ref, rtol=1e-6, atol=1e-7, msg=key)
    assert not any(p.requires_grad for p in loaded.parameters())


def test_load_reads_config_from_cosyvoice_dir(checkpoint, tmp_path):
    _, _, path = checkpoint
    (tmp_path / "cosyvoice.yaml").write_text(
        "hift: !new:stepvocoder.cosyvoice2.hifigan.generator.HiFTGenerator\n"
        "    base_channels: 32\n"
        "    f0_predictor: !new:stepvocoder.cosyvoice2.hifigan.f0_predictor.ConvRNNF0Predictor\n"
        "        cond_channels: 32\n")
    model = load_hift(tmp_path, dtype=torch.bfloat16)
    assert model.config == HiFTConfig.tiny()
    assert model.dtype == torch.bfloat16


def test_missing_key_is_named(checkpoint, tmp_path):
    _, sd, _ = checkpoint
    del sd["resblocks.4.activations2.1.alpha"]
    del sd["ups.1" + WN_G]
    del sd["ups.1" + WN_V]
    del sd["m_source.l_linear.bias"]
    torch.save(sd, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError) as err:
        load_hift(tmp_path / "broken.pt", HiFTConfig.tiny())
    for key in ("resblocks.4.activations2.1.alpha", "ups.1.weight", "m_source.l_linear.bias", "broken.pt"):
        assert key in str(err.value), key


def test_misshaped_key_is_named(checkpoint, tmp_path):
    _, sd, _ = checkpoint
    sd["conv_post" + WN_V] = torch.randn(18, 4, 5)
    sd["conv_post" + WN_G] = torch.ones(18, 1, 1)
    torch.save(sd, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="conv_post.weight"):
        load_hift(tmp_path / "broken.pt", HiFTConfig.tiny())


def test_wrong_config_for_checkpoint(checkpoint):
    _, _, path = checkpoint
    with pytest.raises(CheckpointError, match="shape"):
        load_hift(path, HiFTConfig(base_channels=64, f0_cond_channels=32))


def test_unexpected_key_is_named(checkpoint, tmp_path):
    _, sd, _ = checkpoint
    sd["m_source.extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="m_source.extra.weight"):
        load_hift(tmp_path / "broken.pt", HiFTConfig.tiny())


def test_half_weight_norm_pair(checkpoint, tmp_path):
    _, sd, _ = checkpoint
    del sd["conv_pre" + WN_V]
    torch.save(sd, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="broken.pt.*conv_pre"):
        load_hift(tmp_path / "broken.pt", HiFTConfig.tiny())


def test_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="hift.pt"):
        load_hift(tmp_path, HiFTConfig.tiny())
    with pytest.raises(CheckpointError, match="cosyvoice.yaml"):
        load_hift(tmp_path / "hift.pt")


def test_bad_dtype_and_device(checkpoint):
    _, _, path = checkpoint
    with pytest.raises(InvalidInputError, match="dtype"):
        load_hift(path, HiFTConfig.tiny(), dtype=torch.int8)
    with pytest.raises(InvalidInputError, match="device"):
        load_hift(path, HiFTConfig.tiny(), device="warp-drive")
