"""Loading an upstream install layout built from a fixture set's upstream-format files.

The fixture sets hold upstream's on-disk formats (HF safetensors + config.json, flow.pt,
hift.pt with weight-norm keys, cosyvoice.yaml with `!new:` tags, a FunASR Paraformer dir
with fp16 model.pt, am.mvn, the real tokenizer and centroids). Arranged as upstream's
install (spec §1), with our random ONNX stand-ins for the two front-end graphs the sets
do not include, they must load through the same code path as a real checkpoint.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from editx import CheckpointError, Runtime, RuntimeConfig
from editx.engine.voice import encode_voice
from editx.frontend import load_audio
from editx.loading.components import load_components
from editx.loading.dummy_onnx import campplus_standin, vq06_standin
from editx.loading.layout import COSYVOICE_DIR, LLM_DIR, PARAFORMER_DIR, TOKENIZER_DIR, resolve_layout
from fixture_sets import cases_where, fixture_roots, named

ROOTS = fixture_roots()
pytestmark = pytest.mark.skipif(not ROOTS, reason="no fixture set")


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)


def build_install(fixtures: Path, root: Path) -> Path:
    """Arrange a fixture set's files as upstream's install folder under `root`."""
    llm, cosy = root / LLM_DIR, root / LLM_DIR / COSYVOICE_DIR
    tok, para = root / TOKENIZER_DIR, root / TOKENIZER_DIR / PARAFORMER_DIR
    for f in (fixtures / "weights" / "llm").iterdir():
        _link(f, llm / f.name)
    _link(fixtures / "tokenizer" / "tokenizer.model", llm / "tokenizer.model")
    for name in ("cosyvoice.yaml", "flow.pt", "hift.pt"):
        _link(fixtures / "weights" / "cosyvoice" / name, cosy / name)
    (cosy / "campplus.onnx").write_bytes(campplus_standin(0))
    for f in (fixtures / "weights" / "paraformer").iterdir():
        _link(f, para / f.name)
    _link(fixtures / "tokenizer" / "linguistic_tokenizer.npy", tok / "linguistic_tokenizer.npy")
    (tok / "speech_tokenizer_v1.onnx").write_bytes(vq06_standin(0))
    return root


@pytest.fixture(scope="module", params=ROOTS, ids=lambda p: p.name)
def install(request, tmp_path_factory):
    return build_install(request.param, tmp_path_factory.mktemp("install"))


@pytest.fixture(scope="module")
def components(install):
    return load_components(install, RuntimeConfig(vq02_dither=0.0))


def test_every_component_loads_from_upstream_formats(components):
    c = components
    assert c.flow.cfg.encoder.num_blocks > 0 and c.hift.config.base_channels > 0
    assert c.centroids.shape == (1024, c.vq02.cfg.output_size)
    assert c.cmvn is not None and c.cmvn.dim == 560
    assert c.text.encode("human\n")[0] == 1  # BOS prepended as upstream


def test_runtime_refuses_an_llm_without_audio_ids(install):
    # The fixture LLM is tiny (vocab 2048): it cannot emit <audio_N> ids; the error must say so.
    with pytest.raises(CheckpointError, match="vocab_size"):
        Runtime.from_pretrained(install)


def test_llm_dir_itself_is_accepted(install):
    files = resolve_layout(install / LLM_DIR)
    assert files.tokenizer_root == (install / TOKENIZER_DIR).resolve()


def test_missing_files_are_all_named(install, tmp_path):
    broken = build_install(ROOTS[0], tmp_path / "broken")
    (broken / LLM_DIR / COSYVOICE_DIR / "hift.pt").unlink()
    (broken / TOKENIZER_DIR / "speech_tokenizer_v1.onnx").unlink()
    with pytest.raises(CheckpointError) as err:
        resolve_layout(broken)
    assert "hift.pt" in str(err.value) and "speech_tokenizer_v1.onnx" in str(err.value)


def test_not_an_install(tmp_path):
    with pytest.raises(CheckpointError, match="not an upstream install"):
        resolve_layout(tmp_path)


@pytest.mark.parametrize("case", cases_where(named("vq02_wav_to_codes")))
def test_runtime_front_end_reproduces_upstream_vq02_codes(case, tmp_path):
    """The whole chain the Runtime runs on a prompt (load, peak guard, 16 kHz, trim, fbank/LFR/CMVN,
    streaming encoder, k-means) gives upstream's codes for the case's speech file (dither 0)."""
    comps = load_components(build_install(case.root, tmp_path / "inst"), RuntimeConfig(vq02_dither=0.0))
    audio = case.audio_dir / case.spec["inputs"]["audio_file"]["name"]
    wav, sr = load_audio(audio)
    voice = encode_voice(comps, wav, sr, dither=float(case.params.get("dither", 0.0)))
    assert voice.vq02 == case.output("codes").tolist()
