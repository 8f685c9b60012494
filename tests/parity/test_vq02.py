"""Parity: vq02 Paraformer encoder weights, streaming encoder, k-means (fixtures README §5.9/§5.10).

Everything (weights dir, centroid file, dims, tolerances) comes from each case's
manifest entry, so any fixture set with other dims/seeds runs through the same code.
"""
from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from editx.loading.state_dict import read_torch_state_dict
from editx.models.vq02 import kmeans_codes, load_centroids, load_paraformer_encoder
from editx.models.vq02_encoder import UPSTREAM_CHUNK_SIZE, UPSTREAM_ENCODER_LOOK_BACK
from fixture_sets import assert_matches, cases_where, named

DEFAULT_WEIGHTS = "weights/paraformer"
DEFAULT_CENTROIDS = "tokenizer/linguistic_tokenizer.npy"


@lru_cache(maxsize=4)
def _load(weights_dir: str, chunk_size: tuple[int, ...], look_back: int):
    return load_paraformer_encoder(
        weights_dir, device="cpu", dtype=torch.float32, chunk_size=chunk_size, encoder_chunk_look_back=look_back
    )


def _encoder(weights_dir: str, params: dict | None = None):
    """Encoder + config with the case's streaming call parameters (upstream's when absent)."""
    params = params or {}
    chunk_size = tuple(params.get("chunk_size", UPSTREAM_CHUNK_SIZE))
    return _load(weights_dir, chunk_size, int(params.get("encoder_chunk_look_back", UPSTREAM_ENCODER_LOOK_BACK)))


def _centroids(case, output_size: int | None = None) -> torch.Tensor:
    return load_centroids(case.path(case.params.get("centroids", DEFAULT_CENTROIDS)), output_size)


def _first_batch_row(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Our [B=1, ...] result shaped like a reference stored without the batch axis."""
    return t[0] if t.dim() == ref.dim() + 1 else t


# -- weights --------------------------------------------------------------------------
@pytest.mark.parametrize("case", cases_where(named("vq02_encoder_weights")))
def test_vq02_encoder_weights(case):
    expected = case.json_value()
    pt_file = case.path(case.spec["inputs"]["model_pt"]["file"])
    raw = read_torch_state_dict(pt_file, what="Paraformer weights")
    tensors = expected["tensors"]

    assert_matches(list(raw), [t["key"] for t in tensors], case.tolerance("keys"), "model.pt keys in file order")
    encoder, _ = _encoder(str(pt_file.parent))
    ours = {"encoder." + k: v for k, v in encoder.state_dict().items()}
    encoder_keys = [t["key"] for t in tensors if t["key"].startswith("encoder.")]
    assert sorted(ours) == sorted(encoder_keys), "our module's keys differ from the file's encoder.* keys"

    for meta in tensors:
        key = meta["key"]
        file_tensor = raw[key]
        assert_matches(list(file_tensor.shape), meta["shape"], case.tolerance("shape"), f"{key} shape")
        assert str(file_tensor.dtype).removeprefix("torch.") == meta["dtype"], f"{key} stored dtype"
        sources = [("file", file_tensor)]
        if key in ours:
            assert ours[key].dtype == torch.float32, f"{key}: loaded parameter is {ours[key].dtype}, expected float32"
            sources.append(("loaded", ours[key]))
        for label, t in sources:
            t64 = t.double()
            assert_matches(t64.sum().item(), meta["sum"], case.tolerance("sum"), f"{key} ({label}) sum")
            assert_matches(t64.abs().sum().item(), meta["abs_sum"], case.tolerance("abs_sum"), f"{key} ({label}) abs_sum")

    if "num_params" in expected:
        assert sum(t.numel() for t in raw.values()) == expected["num_params"]


@pytest.mark.parametrize("case", cases_where(named("vq02_encoder_weights")))
def test_vq02_config_matches_manifest_encoder_conf(case):
    conf = case.params.get("encoder_conf") or case.json_value().get("encoder_conf")
    if not conf:
        pytest.skip("case lists no encoder_conf")
    pt_file = case.path(case.spec["inputs"]["model_pt"]["file"])
    _, cfg = _encoder(str(pt_file.parent))
    for key in ("output_size", "attention_heads", "linear_units", "num_blocks", "kernel_size", "sanm_shfit"):
        if key in conf:
            assert getattr(cfg, key) == conf[key], f"config {key}"


# -- streaming encoder ----------------------------------------------------------------
def _check_encoder_params(case, cfg) -> None:
    """Our config must agree with every streaming/model parameter the case states."""
    p = case.params
    if "chunk_size" in p:
        assert list(cfg.chunk_size) == list(p["chunk_size"])
    if "encoder_chunk_look_back" in p:
        assert cfg.encoder_chunk_look_back == p["encoder_chunk_look_back"]
    if "overlap_rows" in p:
        assert cfg.overlap_rows == p["overlap_rows"]
    if "kv_cache_frames" in p:
        assert cfg.kv_cache_frames == p["kv_cache_frames"]
    for key in ("output_size", "attention_heads", "num_blocks"):
        if key in p:
            assert getattr(cfg, key) == p[key], key
    if "layernorm_eps" in p:
        assert cfg.layernorm_eps == p["layernorm_eps"]


@pytest.mark.parametrize("case", cases_where(named("vq02_encoder_forward")))
def test_vq02_encoder_forward(case):
    encoder, cfg = _encoder(str(case.weights(DEFAULT_WEIGHTS)), case.params)
    _check_encoder_params(case, cfg)
    enc_out = encoder.encode(case.input("feats"), case.input("chunk_lengths"))
    assert_matches(enc_out, case.output("enc_out"), case.tolerance("enc_out"), "enc_out")


@pytest.mark.parametrize("case", cases_where(named("vq02_kmeans")))
def test_vq02_kmeans(case):
    enc_out = case.input("enc_out")
    codes, top2 = kmeans_codes(enc_out, _centroids(case, enc_out.shape[-1]))
    ref_codes, ref_top2 = case.output("codes"), case.output("top2_dist")
    assert_matches(_first_batch_row(codes, ref_codes), ref_codes, case.tolerance("codes"), "codes")
    assert_matches(_first_batch_row(top2, ref_top2), ref_top2, case.tolerance("top2_dist"), "top2_dist")


@pytest.mark.parametrize("case", cases_where(named("vq02_wav_to_codes")))
def test_vq02_wav_to_codes_from_stored_feats(case):
    """The encoder + k-means half of the chain, from the case's stored feats/chunk_lengths.

    (wav -> feats is the front end's parity test.)
    """
    encoder, cfg = _encoder(str(case.weights(DEFAULT_WEIGHTS)), case.params)
    _check_encoder_params(case, cfg)
    feats, chunk_lengths = case.output("feats"), case.output("chunk_lengths")
    assert int(chunk_lengths.sum()) == feats.shape[1]
    enc_out = encoder.encode(feats, chunk_lengths)
    assert_matches(enc_out, case.output("enc_out"), case.tolerance("enc_out"), "enc_out")

    codes, top2 = kmeans_codes(enc_out, _centroids(case, cfg.output_size))
    ref_codes, ref_top2 = case.output("codes"), case.output("top2_dist")
    assert_matches(_first_batch_row(codes, ref_codes), ref_codes, case.tolerance("codes"), "codes")
    assert_matches(_first_batch_row(top2, ref_top2), ref_top2, case.tolerance("top2_dist"), "top2_dist")
    if "num_codes" in case.params:
        assert codes.shape[-1] == case.params["num_codes"]
