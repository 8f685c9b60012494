"""Parity: text tokenizer, edit/clone prompt ids, clone speaker id, vq02/vq06 interleave.

Every case of every fixture set; everything (texts, codes, expected ids, audio files)
comes from the set's files, and the tokenizer is the set's own `tokenizer.model`.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import soundfile as sf
import torch

from editx.models.interleave import audio_token_str, interleave_vq0206
from editx.models.text import (
    AUDIO_EDIT_CLONE_SYSTEM_PROMPT_TPL,
    AUDIO_EDIT_SYSTEM_PROMPT,
    build_edit_instruction,
    clone_speaker_id,
    encode_clone_prompt,
    encode_edit_prompt,
    load_text_tokenizer,
)
from fixture_sets import Case, assert_matches, cases_where, named


def tokenizer_of(case: Case):
    rel = (case.manifest.get("weights", {}).get("tokenizer", {}) or {}).get("dir", "tokenizer")
    return load_text_tokenizer(str(case.path(rel) / "tokenizer.model"))


def whole_file(case: Case) -> dict:
    return json.loads(case.path(case.spec["file"].split("#", 1)[0]).read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", cases_where(named("tokenizer_encode")))
def test_tokenizer_encode(case):
    tok = tokenizer_of(case)
    entries = case.json_value()
    assert entries, "no encode entries"
    for entry in entries:
        assert_matches(tok.encode(entry["text"]), entry["ids"], case.tolerance("ids"), f"encode({entry['text']!r})")


@pytest.mark.parametrize("case", cases_where(named("prompt_edit_")))
def test_prompt_edit(case):
    tok = tokenizer_of(case)
    entry = case.json_value()
    system = whole_file(case).get("system_prompts", {})
    if "AUDIO_EDIT_SYSTEM_PROMPT" in system:
        assert AUDIO_EDIT_SYSTEM_PROMPT == system["AUDIO_EDIT_SYSTEM_PROMPT"], "edit system prompt differs"
    instruction = build_edit_instruction(entry["edit_type"], entry["edit_info"], entry["audio_text"], entry["text"])
    audio = audio_token_str(entry["vq02_codes"], entry["vq06_codes"])
    assert_matches(instruction, entry["instruction"], case.tolerance("instruction"), "instruction")
    assert_matches(audio, entry["audio_token_str"], case.tolerance("audio_token_str"), "audio_token_str")
    assert_matches(encode_edit_prompt(tok, instruction, audio), entry["ids"], case.tolerance("ids"), "ids")


@pytest.mark.parametrize("case", cases_where(named("prompt_clone_")))
def test_prompt_clone(case):
    tok = tokenizer_of(case)
    entry = case.json_value()
    system = whole_file(case).get("system_prompts", {})
    if "AUDIO_EDIT_CLONE_SYSTEM_PROMPT_TPL" in system:
        assert AUDIO_EDIT_CLONE_SYSTEM_PROMPT_TPL == system["AUDIO_EDIT_CLONE_SYSTEM_PROMPT_TPL"], "clone template differs"
    audio = audio_token_str(entry["vq02_codes"], entry["vq06_codes"])
    assert_matches(audio, entry["audio_token_str"], case.tolerance("audio_token_str"), "audio_token_str")
    ids = encode_clone_prompt(tok, entry["target_text"], entry["prompt_text"], entry["speaker"], audio)
    assert_matches(ids, entry["ids"], case.tolerance("ids"), "ids")


def load_waveform(case: Case, entry: dict) -> torch.Tensor:
    """The waveform exactly as upstream's torchaudio.load gave it: float32, channels-first [C, N]."""
    if entry.get("audio_file"):
        data, rate = sf.read(str(case.audio_dir / entry["audio_file"]), dtype="float32", always_2d=True)
        if entry.get("sample_rate") is not None:
            assert rate == entry["sample_rate"], "sample rate"
        return torch.from_numpy(np.ascontiguousarray(data.T))
    match = re.fullmatch(r"\s*linspace\(([^,]+),([^,]+),([^,)]+)\).*", entry.get("waveform", ""))
    if match is None:
        pytest.fail(f"cannot rebuild the synthetic waveform {entry.get('waveform')!r}")
    start, stop, count = float(match[1]), float(match[2]), int(match[3])
    return torch.linspace(start, stop, count, dtype=torch.float32).view(1, -1)


@pytest.mark.parametrize("case", cases_where(named("clone_speaker_id")))
def test_clone_speaker_id(case):
    entries = case.json_value()
    assert entries, "no speaker entries"
    for entry in entries:
        wav = load_waveform(case, entry)
        if "loaded_shape" in entry:
            assert list(wav.shape) == entry["loaded_shape"], f"{entry.get('audio_file')}: loaded shape"
        got = clone_speaker_id(entry["prompt_text"], wav)
        assert_matches(got, entry["speaker"], case.tolerance("speaker"), f"speaker of {entry.get('audio_file')}")


@pytest.mark.parametrize("case", cases_where(named("vq0206_interleave")))
def test_vq0206_interleave(case):
    tok = tokenizer_of(case)
    data = case.json_value()
    entries = data["cases"] if isinstance(data, dict) else data
    assert entries, "no interleave entries"
    for i, entry in enumerate(entries):
        vq02, vq06 = entry["vq02_codes"], entry["vq06_codes"]
        assert_matches(interleave_vq0206(vq02, vq06), entry["llm_ids"], case.tolerance("llm_ids"), f"[{i}] llm_ids")
        text = audio_token_str(vq02, vq06)
        assert_matches(text, entry["audio_token_str"], case.tolerance("audio_token_str"), f"[{i}] audio_token_str")
        if "tokenizer_ids_of_str" in entry:  # the rendered string tokenizes back to the same ids
            prefix = len(tok.encode("\n"))
            assert tok.encode("\n" + text)[prefix:] == entry["tokenizer_ids_of_str"], f"[{i}] tokenized string"
