"""vq02 loaders: Paraformer model dir (config.yaml + model.pt) and k-means centroids.

Self-contained: each test writes a small random FunASR-style model dir to tmp_path.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from editx.errors import CheckpointError, InvalidInputError
from editx.models.vq02 import SANMEncoderConfig, SANMStreamingEncoder, load_centroids, load_paraformer_encoder

CFG = SANMEncoderConfig(input_size=560, output_size=32, attention_heads=4, linear_units=48, num_blocks=3)


def _funasr_config(cfg: SANMEncoderConfig, **encoder_overrides) -> dict:
    encoder_conf = {
        "output_size": cfg.output_size,
        "attention_heads": cfg.attention_heads,
        "linear_units": cfg.linear_units,
        "num_blocks": cfg.num_blocks,
        "dropout_rate": 0.1,
        "input_layer": "pe_online",
        "pos_enc_class": "SinusoidalPositionEncoder",
        "normalize_before": True,
        "kernel_size": cfg.kernel_size,
        "sanm_shfit": cfg.sanm_shfit,
        "selfattention_layer_type": "sanm",
        "chunk_size": [12, 15],
        **encoder_overrides,
    }
    return {
        "model": "ParaformerStreaming",
        "encoder": "SANMEncoderChunkOpt",
        "encoder_conf": encoder_conf,
        "frontend": "WavFrontendOnline",
        "frontend_conf": {"fs": 16000, "window": "hamming", "n_mels": 80, "lfr_m": 7, "lfr_n": 6},
    }


def _random_encoder_state(cfg: SANMEncoderConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """`encoder.*` tensors of a random model, values exactly representable in fp16."""
    torch.manual_seed(seed)
    module = SANMStreamingEncoder(cfg)
    return {"encoder." + k: v.detach().half().float() for k, v in module.state_dict().items()}


def _write_model_dir(root: Path, state: dict, config: dict | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(yaml.safe_dump(config or _funasr_config(CFG)))
    torch.save(state, root / "model.pt")
    return root


def _extra_unused_keys() -> dict[str, torch.Tensor]:
    return {
        "decoder.decoders.0.feed_forward.w_1.weight": torch.zeros(4, 4),
        "predictor.cif_output.bias": torch.zeros(3),
        "ctc.ctc_lo.weight": torch.zeros(2, 2),
    }


def test_loads_fp16_file_and_ignores_non_encoder_keys(tmp_path):
    state = _random_encoder_state(CFG)
    fp16 = {k: v.half() for k, v in state.items()} | _extra_unused_keys()
    encoder, cfg = load_paraformer_encoder(_write_model_dir(tmp_path / "m", fp16))
    assert cfg.output_size == CFG.output_size and cfg.num_blocks == CFG.num_blocks and cfg.input_size == 560
    loaded = encoder.state_dict()
    for key, value in state.items():
        got = loaded[key.removeprefix("encoder.")]
        assert got.dtype == torch.float32
        assert torch.equal(got, value), key


def test_fp32_and_fp16_files_give_the_same_module(tmp_path):
    state = _random_encoder_state(CFG, seed=1)
    enc16, _ = load_paraformer_encoder(_write_model_dir(tmp_path / "fp16", {k: v.half() for k, v in state.items()}))
    enc32, _ = load_paraformer_encoder(_write_model_dir(tmp_path / "fp32", state))
    sd16, sd32 = enc16.state_dict(), enc32.state_dict()
    assert list(sd16) == list(sd32)
    for key in sd16:
        assert torch.equal(sd16[key], sd32[key]), key


@pytest.mark.parametrize("nest", ["state_dict", "model"])
def test_nested_checkpoint(tmp_path, nest):
    state = _random_encoder_state(CFG, seed=2)
    encoder, _ = load_paraformer_encoder(_write_model_dir(tmp_path / "m", {nest: state}))
    assert torch.equal(encoder.after_norm.weight, state["encoder.after_norm.weight"])


def test_device_and_dtype_applied(tmp_path):
    encoder, _ = load_paraformer_encoder(_write_model_dir(tmp_path / "m", _random_encoder_state(CFG)), dtype=torch.bfloat16)
    assert {p.dtype for p in encoder.parameters()} == {torch.bfloat16}
    with pytest.raises(InvalidInputError, match="dtype"):
        load_paraformer_encoder(tmp_path / "m", dtype=torch.int32)


def test_missing_key_is_named(tmp_path):
    state = _random_encoder_state(CFG)
    del state["encoder.encoders.1.norm2.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys: encoder\.encoders\.1\.norm2\.bias"):
        load_paraformer_encoder(_write_model_dir(tmp_path / "m", state))


def test_misshaped_key_is_named(tmp_path):
    state = _random_encoder_state(CFG)
    key = "encoder.encoders0.0.self_attn.linear_q_k_v.weight"
    state[key] = torch.zeros(3 * CFG.output_size, 512)  # 512 inputs instead of 560
    with pytest.raises(CheckpointError, match=r"shape mismatches: encoder\.encoders0\.0\.self_attn\.linear_q_k_v\.weight"):
        load_paraformer_encoder(_write_model_dir(tmp_path / "m", state))


def test_unexpected_encoder_key_is_named(tmp_path):
    state = _random_encoder_state(CFG) | {"encoder.embed.weight": torch.zeros(2)}
    with pytest.raises(CheckpointError, match=r"unexpected keys: encoder\.embed\.weight"):
        load_paraformer_encoder(_write_model_dir(tmp_path / "m", state))


def test_config_with_fewer_blocks_than_file_is_refused(tmp_path):
    state = _random_encoder_state(CFG)
    config = _funasr_config(CFG, num_blocks=2)
    with pytest.raises(CheckpointError, match=r"encoder\.encoders\.1\."):
        load_paraformer_encoder(_write_model_dir(tmp_path / "m", state, config))


def test_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="directory"):
        load_paraformer_encoder(tmp_path / "nowhere")
    d = tmp_path / "noweights"
    d.mkdir()
    (d / "config.yaml").write_text(yaml.safe_dump(_funasr_config(CFG)))
    with pytest.raises(CheckpointError, match="model.pt"):
        load_paraformer_encoder(d)
    e = tmp_path / "noconfig"
    e.mkdir()
    torch.save(_random_encoder_state(CFG), e / "model.pt")
    with pytest.raises(CheckpointError, match="config.yaml"):
        load_paraformer_encoder(e)


def test_corrupt_model_pt(tmp_path):
    d = _write_model_dir(tmp_path / "m", _random_encoder_state(CFG))
    (d / "model.pt").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_paraformer_encoder(d)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"input_layer": "conv2d"}, "input_layer"),
        ({"selfattention_layer_type": "selfattn"}, "selfattention_layer_type"),
        ({"attention_heads": 5}, "attention_heads"),
        ({"kernel_size": 10}, "kernel_size"),
    ],
)
def test_unsupported_config_is_a_checkpoint_error(tmp_path, override, message):
    d = _write_model_dir(tmp_path / "m", _random_encoder_state(CFG), _funasr_config(CFG, **override))
    with pytest.raises(CheckpointError, match=message):
        load_paraformer_encoder(d)


def test_config_missing_key(tmp_path):
    config = _funasr_config(CFG)
    del config["encoder_conf"]["linear_units"]
    d = _write_model_dir(tmp_path / "m", _random_encoder_state(CFG), config)
    with pytest.raises(CheckpointError, match="linear_units"):
        load_paraformer_encoder(d)


def test_config_presets_and_validation():
    full, tiny = SANMEncoderConfig.full(), SANMEncoderConfig.tiny()
    assert (full.output_size, full.attention_heads, full.linear_units, full.num_blocks) == (512, 4, 2048, 50)
    assert (full.overlap_rows, full.kv_drop_rows, full.kv_cache_frames) == (5, 5, 16)
    assert full.d_k == 128 and tiny.output_size == 64 and tiny.num_blocks == 2
    assert SANMStreamingEncoder(tiny).cfg is tiny
    with pytest.raises(InvalidInputError, match="chunk_size"):
        SANMEncoderConfig(chunk_size=(0, 4, 0))
    with pytest.raises(InvalidInputError, match="chunk_size"):
        SANMEncoderConfig(chunk_size=4)
    with pytest.raises(InvalidInputError, match="num_blocks"):
        SANMEncoderConfig(num_blocks=0)
    with pytest.raises(InvalidInputError, match="encoder_chunk_look_back"):
        SANMEncoderConfig(encoder_chunk_look_back=-2)
    with pytest.raises(InvalidInputError, match="sanm_shfit"):
        SANMEncoderConfig(sanm_shfit=6)
    with pytest.raises(InvalidInputError, match="encoder_conf"):
        SANMEncoderConfig.from_funasr_config({"encoder": "SANMEncoderChunkOpt"})


def test_full_config_state_dict_matches_spec_key_count():
    # spec §8.5: 50 x 13 + 2 = 652 encoder tensors (meta device: no memory for 200 M params).
    with torch.device("meta"):
        module = SANMStreamingEncoder(SANMEncoderConfig.full())
    sd = module.state_dict()
    assert len(sd) == 652
    assert tuple(sd["encoders0.0.self_attn.linear_q_k_v.weight"].shape) == (1536, 560)
    assert tuple(sd["encoders.48.self_attn.fsmn_block.weight"].shape) == (512, 1, 11)
    assert tuple(sd["encoders.48.feed_forward.w_1.weight"].shape) == (2048, 512)


# -- centroids -------------------------------------------------------------------------
def test_centroids_roundtrip_and_width_check(tmp_path):
    table = np.random.default_rng(0).standard_normal((16, 32)).astype("<f4")
    np.save(tmp_path / "c.npy", table)
    got = load_centroids(tmp_path / "c.npy", output_size=32)
    assert got.dtype == torch.float32 and torch.equal(got, torch.from_numpy(table))
    with pytest.raises(CheckpointError, match="width 32 does not match the encoder output size 64"):
        load_centroids(tmp_path / "c.npy", output_size=64)


def test_centroids_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="linguistic_tokenizer.npy"):
        load_centroids(tmp_path / "missing.npy")
    np.save(tmp_path / "flat.npy", np.zeros(8, dtype=np.float32))
    with pytest.raises(CheckpointError, match="2-D"):
        load_centroids(tmp_path / "flat.npy")
    bad = np.zeros((4, 8), dtype=np.float32)
    bad[1, 2] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(CheckpointError, match="NaN"):
        load_centroids(tmp_path / "nan.npy")
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_centroids(tmp_path / "junk.npy")
