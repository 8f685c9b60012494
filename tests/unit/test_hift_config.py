"""HiFTConfig: presets, parsing the cosyvoice.yaml `hift` node, validation."""
from __future__ import annotations

import pytest

from editx.errors import CheckpointError, InvalidInputError
from editx.models.hift import HiFTConfig

HIFT_YAML = """\
sample_rate: 24000
hift: !new:stepvocoder.cosyvoice2.hifigan.generator.HiFTGenerator
    in_channels: 80
    base_channels: 64
    nb_harmonics: 8
    sampling_rate: 24000
    nsf_alpha: 0.1
    nsf_sigma: 0.003
    nsf_voiced_threshold: 10
    upsample_rates: [8, 5, 3]
    upsample_kernel_sizes: [16, 11, 7]
    istft_params:
        n_fft: 16
        hop_len: 4
    resblock_kernel_sizes: [3, 7, 11]
    resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    source_resblock_kernel_sizes: [7, 7, 11]
    source_resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    lrelu_slope: 0.1
    audio_limit: 0.99
    f0_predictor: !new:stepvocoder.cosyvoice2.hifigan.f0_predictor.ConvRNNF0Predictor
        num_class: 1
        in_channels: 80
        cond_channels: 48
"""


def test_presets():
    full, tiny = HiFTConfig.full(), HiFTConfig.tiny()
    assert (full.base_channels, full.f0_cond_channels) == (512, 512)
    assert (tiny.base_channels, tiny.f0_cond_channels) == (32, 32)
    for cfg in (full, tiny):
        assert cfg.upsample_scale == 480
        assert cfg.n_harmonic_channels == 9 and cfg.spec_channels == 18
        assert cfg.final_lrelu_slope == 0.01 and cfg.lrelu_slope == 0.1
        assert [cfg.stage_channels(i) for i in range(3)] == [cfg.base_channels // d for d in (2, 4, 8)]


def test_parse_yaml(tmp_path):
    path = tmp_path / "cosyvoice.yaml"
    path.write_text(HIFT_YAML)
    cfg = HiFTConfig.from_cosyvoice_yaml(path)
    assert cfg.base_channels == 64 and cfg.f0_cond_channels == 48
    assert cfg.istft_n_fft == 16 and cfg.istft_hop == 4
    assert cfg.resblock_dilation_sizes == ((1, 3, 5),) * 3
    assert cfg.upsample_rates == (8, 5, 3)
    assert cfg == HiFTConfig(base_channels=64, f0_cond_channels=48)


def test_yaml_without_hift_node(tmp_path):
    path = tmp_path / "cosyvoice.yaml"
    path.write_text("sample_rate: 24000\n")
    with pytest.raises(CheckpointError, match="hift"):
        HiFTConfig.from_cosyvoice_yaml(path)


def test_yaml_with_bad_value_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "cosyvoice.yaml"
    path.write_text(HIFT_YAML.replace("base_channels: 64", "base_channels: 60"))
    with pytest.raises(CheckpointError, match="base_channels"):
        HiFTConfig.from_cosyvoice_yaml(path)


@pytest.mark.parametrize("kwargs,field", [
    ({"base_channels": 0}, "base_channels"),
    ({"base_channels": 36}, "base_channels"),
    ({"upsample_kernel_sizes": (16, 11)}, "upsample_kernel_sizes"),
    ({"upsample_rates": (8, 5, 0)}, "upsample_rates"),
    ({"resblock_dilation_sizes": ((1, 3, 5),)}, "resblock_dilation_sizes"),
    ({"istft_n_fft": 15}, "istft_n_fft"),
    ({"f0_num_class": 2}, "f0_num_class"),
    ({"f0_in_channels": 100}, "f0_in_channels"),
    ({"nsf_alpha": float("nan")}, "nsf_alpha"),
    ({"nb_harmonics": -1}, "nb_harmonics"),
])
def test_validation(kwargs, field):
    with pytest.raises(InvalidInputError, match=field):
        HiFTConfig(**kwargs)
