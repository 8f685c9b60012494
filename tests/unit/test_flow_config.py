"""FlowConfig presets, cosyvoice.yaml parsing, and load_flow's error paths."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from editx.errors import CheckpointError, InvalidInputError
from editx.models.flow import DiTConfig, FlowConfig, FlowEncoderConfig, FlowModel, load_flow

YAML_TEMPLATE = """\
sample_rate: 24000
flow: !new:stepvocoder.cosyvoice2.flow.flow.CausalMaskedDiffWithXvec
    input_size: {dim}
    output_size: 80
    spk_embed_dim: 192
    output_type: 'mel'
    vocab_size: 5121
    input_embedding: !new:stepvocoder.cosyvoice2.embedding.dual_codebook.DualCodebookEmbedding
        vocab_size: 5121
        input_size: {dim}
    encoder: !new:stepvocoder.cosyvoice2.transformer.upsample_encoder_v2.UpsampleConformerEncoderV2
        input_size: {dim}
        output_size: {dim}
        input_layer: 'linear'
        pre_lookahead_len: 3
        num_blocks: 1
        num_up_blocks: 1
        up_stride: 2
        up_scale_factor: 2
{encoder_extra}    decoder: !new:stepvocoder.cosyvoice2.flow.flow_matching.CausalConditionalCFM
        inference_cfg_rate: 0.5
        estimator: !new:stepvocoder.cosyvoice2.flow.decoder_dit.DiT
            in_channels: 320
            out_channels: 80
            mlp_ratio: 2.0
            depth: 1
            num_heads: 2
            head_dim: 8
            hidden_size: 16
"""


def write_yaml(tmp_path: Path, dim: int = 32, encoder_extra: str = "") -> Path:
    (tmp_path / "cosyvoice.yaml").write_text(YAML_TEMPLATE.format(dim=dim, encoder_extra=encoder_extra))
    return tmp_path


def test_full_preset_has_the_real_dims():
    cfg = FlowConfig.full()
    assert (cfg.input_size, cfg.output_size, cfg.vocab_size, cfg.spk_embed_dim) == (512, 80, 5121, 192)
    enc = cfg.encoder
    assert (enc.num_blocks, enc.num_up_blocks, enc.attention_heads, enc.linear_units) == (6, 4, 8, 2048)
    assert (enc.pre_lookahead_len, enc.up_stride) == (3, 2)
    dit = cfg.dit
    assert (dit.depth, dit.num_heads, dit.head_dim, dit.hidden_size, dit.in_channels) == (16, 8, 64, 512, 320)
    assert (cfg.n_timesteps, cfg.inference_cfg_rate, cfg.chunk_sizes) == (10, 0.7, (15, 24, 48))
    assert (cfg.token_mel_ratio, cfg.stream_att_left_context, cfg.mel_cache_len) == (2, 96, 8)


def test_full_preset_parameter_count_matches_flow_pt():
    # spec §8.3/§11: flow.pt holds 605 tensors, ≈153.75 M parameters
    with torch.device("meta"):
        model = FlowModel(FlowConfig.full())
    sd = model.state_dict()
    assert len(sd) == 605
    assert abs(sum(t.numel() for t in sd.values()) / 1e6 - 153.75) < 0.01


def test_tiny_preset_builds():
    model = FlowModel(FlowConfig.tiny())
    assert sum(p.numel() for p in model.parameters()) < 2_000_000


def test_from_yaml_reads_sizes_and_defaults_unconfirmed_keys(tmp_path):
    cfg = FlowConfig.from_yaml(write_yaml(tmp_path) / "cosyvoice.yaml")
    assert cfg.input_size == 32 and cfg.encoder.output_size == 32
    assert cfg.encoder.attention_heads == 8 and cfg.encoder.linear_units == 2048  # spec defaults
    assert (cfg.dit.depth, cfg.dit.num_heads, cfg.dit.head_dim, cfg.dit.hidden_size) == (1, 2, 8, 16)
    assert cfg.dit.mlp_ratio == 2.0 and cfg.inference_cfg_rate == 0.5


def test_from_yaml_reads_explicit_heads(tmp_path):
    extra = "        attention_heads: 4\n        linear_units: 64\n"
    cfg = FlowConfig.from_yaml(write_yaml(tmp_path, encoder_extra=extra) / "cosyvoice.yaml")
    assert (cfg.encoder.attention_heads, cfg.encoder.linear_units) == (4, 64)


def test_from_yaml_rejects_unsupported_values(tmp_path):
    extra = "        pos_enc_layer_type: 'rel_pos'\n"
    with pytest.raises(CheckpointError, match="pos_enc_layer_type"):
        FlowConfig.from_yaml(write_yaml(tmp_path, encoder_extra=extra) / "cosyvoice.yaml")


def test_from_yaml_missing_file_and_missing_node(tmp_path):
    with pytest.raises(CheckpointError, match="cosyvoice.yaml"):
        FlowConfig.from_yaml(tmp_path / "cosyvoice.yaml")
    (tmp_path / "cosyvoice.yaml").write_text("sample_rate: 24000\n")
    with pytest.raises(CheckpointError, match="missing key flow"):
        FlowConfig.from_yaml(tmp_path / "cosyvoice.yaml")


@pytest.mark.parametrize("change", [
    dict(input_size=63),
    dict(output_size=64),
    dict(inference_cfg_rate=0.0),
    dict(chunk_sizes=()),
    dict(token_mel_ratio=3),
])
def test_flow_config_validation(change):
    with pytest.raises(InvalidInputError):
        dataclasses.replace(FlowConfig.tiny(), **change)


def test_encoder_and_dit_config_validation():
    with pytest.raises(InvalidInputError, match="attention_heads"):
        FlowEncoderConfig(output_size=30, input_size=30, attention_heads=4)
    with pytest.raises(InvalidInputError, match="input_size"):
        FlowEncoderConfig(input_size=256)
    with pytest.raises(InvalidInputError, match="depth"):
        DiTConfig(depth=0)


def test_load_flow_round_trip_and_strict_keys(tmp_path):
    d = write_yaml(tmp_path)
    model = FlowModel(FlowConfig.from_yaml(d / "cosyvoice.yaml"))
    sd = model.state_dict()
    torch.save(sd, d / "flow.pt")
    loaded, cfg = load_flow(d)
    assert cfg.input_size == 32
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, sd[k]), k

    broken = dict(sd)
    broken.pop("decoder.estimator.blocks.0.attn.to_q.weight")
    broken["encoder.encoders.0.self_attn.pos_bias_u"] = torch.zeros(4, 4)
    broken["spare.weight"] = torch.zeros(1)
    torch.save(broken, d / "flow.pt")
    with pytest.raises(CheckpointError) as err:
        load_flow(d)
    text = str(err.value)
    assert "decoder.estimator.blocks.0.attn.to_q.weight" in text
    assert "pos_bias_u" in text and "spare.weight" in text


def test_load_flow_missing_checkpoint_and_bad_dtype(tmp_path):
    d = write_yaml(tmp_path)
    with pytest.raises(CheckpointError, match="flow.pt"):
        load_flow(d)
    with pytest.raises(InvalidInputError, match="dtype"):
        load_flow(d, dtype=torch.int64)
    with pytest.raises(InvalidInputError, match="device"):
        load_flow(d, device="not-a-device")


def test_load_flow_bfloat16(tmp_path):
    d = write_yaml(tmp_path)
    torch.save(FlowModel(FlowConfig.from_yaml(d / "cosyvoice.yaml")).state_dict(), d / "flow.pt")
    model, _ = load_flow(d, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert not model.training
