"""Text tokenizer, prompt builders, interleave: behaviours and error paths (real tokenizer.model)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from editx.errors import CheckpointError, InvalidInputError
from editx.models.interleave import (
    audio_token_str,
    interleave_mixed,
    interleave_vq0206,
    is_audio_llm_id,
    llm_ids_to_mixed,
    mixed_to_llm_ids,
)
from editx.models.text import (
    BOS_ID,
    EDIT_OPTIONS,
    TextTokenizer,
    build_edit_instruction,
    clone_speaker_id,
    encode_clone_prompt,
    encode_edit_prompt,
    load_text_tokenizer,
)


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return load_text_tokenizer()


# -- tokenizer -------------------------------------------------------------------------------
def test_audio_ids_and_specials(tok):
    assert tok.audio_token_id(0) == 65536 and tok.audio_token_id(5119) == 70655
    assert tok.piece(65536 + 77) == "<audio_77>"
    assert tok.encode("<audio_5><|EOT|><|BOT|>") == [BOS_ID, 65541, 3, 4]
    assert tok.encode("x", add_bos=False) == tok.encode("x")[1:]
    assert tok.encode("") == [BOS_ID]


def test_added_tokens_split_inside_words(tok):
    ids = tok.encode("ab<audio_12>cd")
    assert ids[1:ids.index(65548)] == tok.encode("ab")[1:]
    assert tok.decode(ids[ids.index(65548) + 1:]) == "cd"


def test_only_the_segment_at_offset_zero_gets_a_space_prefix(tok):
    assert tok.encode("\n") == [BOS_ID, 324, 78]  # "▁" prepended
    assert tok.encode("<audio_3>\n") == [BOS_ID, 65539, 78]  # segment after an added token: none
    assert tok.encode(" x") == tok.encode("x")  # a leading space is the prefix: no second one


def test_unknown_characters_fall_back_to_bytes(tok):
    text = "\U0001F600"  # not in the vocabulary
    ids = tok.encode(text, add_bos=False)
    byte_ids = [tok.token_id(f"<0x{b:02X}>") for b in text.encode("utf-8")]
    assert ids[-len(byte_ids):] == byte_ids
    assert tok.decode(ids) == text


@pytest.mark.parametrize("text", ["Hello there.", "我总觉得，有人在跟着我。", "a\nb  c", "guo4 [Laughter]"])
def test_decode_roundtrip(tok, text):
    assert tok.decode(tok.encode(text, add_bos=False)) == text


def test_decode_skips_special_tokens_on_request(tok):
    ids = tok.encode("hi") + [3]
    assert tok.decode(ids, skip_special_tokens=True) == "hi"
    assert "<|EOT|>" in tok.decode(ids)


def test_tokenizer_errors(tok, tmp_path):
    with pytest.raises(InvalidInputError, match="text"):
        tok.encode(123)
    with pytest.raises(InvalidInputError, match="ids"):
        tok.decode([tok.vocab_size])
    with pytest.raises(InvalidInputError, match="k"):
        tok.audio_token_id(9216)
    with pytest.raises(CheckpointError, match="missing"):
        TextTokenizer(tmp_path / "absent.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"\x0a\xff\xff\xff\xff\x0f")
    with pytest.raises(CheckpointError):
        TextTokenizer(bad)


# -- instructions ---------------------------------------------------------------------------------
def test_every_documented_option_builds():
    for edit_type, options in EDIT_OPTIONS.items():
        for info in options or (None,):
            text = "[Laughter]hi" if edit_type == "paralinguistic" else None
            line = build_edit_instruction(edit_type, info, " some text ", text)
            assert line.endswith("\n")
            if edit_type in ("emotion", "style", "speed", "paralinguistic"):
                assert "some text\n" in line and " some text \n" not in line


def test_literal_quirks():
    assert "more more faster." in build_edit_instruction("speed", "more faster", "t")
    para = build_edit_instruction("paralinguistic", None, "old", "new [Sigh]")
    assert para == ("Add some non-verbal sounds to make the audio more natural, the new text is : new [Sigh]\n"
                    "  The text corresponding to the audio is: old\n")
    assert build_edit_instruction("denoise", None, "", None).startswith("Remove any noise")
    assert build_edit_instruction("vad", None, None, None).startswith("Remove any silent")


@pytest.mark.parametrize("args,arg_name", [
    (("pitch", "up", "t", None), "edit_type"),
    ((None, "happy", "t", None), "edit_type"),
    (("emotion", "joyful", "t", None), "edit_info"),
    (("emotion", None, "t", None), "edit_info"),
    (("style", "faster", "t", None), "edit_info"),
    (("speed", "remove", "t", None), "edit_info"),
    (("emotion", "happy", "   ", None), "audio_text"),
    (("style", "whisper", None, None), "audio_text"),
    (("paralinguistic", None, "t", None), "text"),
    (("paralinguistic", None, "t", "  "), "text"),
    (("paralinguistic", None, "", "[Sigh]"), "audio_text"),
])
def test_instruction_errors_name_the_argument(args, arg_name):
    with pytest.raises(InvalidInputError, match=rf"^{arg_name}:"):
        build_edit_instruction(*args)


def test_unknown_edit_type_lists_allowed_values():
    with pytest.raises(InvalidInputError) as err:
        build_edit_instruction("pitch", None, "t")
    assert all(t in str(err.value) for t in EDIT_OPTIONS)


# -- prompt ids -------------------------------------------------------------------------------------
def test_edit_prompt_layout(tok):
    audio = audio_token_str([1, 2], [3, 4, 5])
    ids = encode_edit_prompt(tok, "Do it.\n", audio)
    assert ids[:3] == [1, 4, 1] and ids[-4:] == [4, 1, 15886, 78]
    assert ids.count(3) == 2 and [65537, 65538, 66563, 66564, 66565] == ids[ids.index(65537):ids.index(65537) + 5]


def test_clone_prompt_target_has_no_bos_or_dummy_prefix(tok):
    audio = audio_token_str([1, 2], [3, 4, 5])
    ids = encode_clone_prompt(tok, "Hello there.", "prompt", "clone_x", audio)
    human = ids.index(4623)
    assert ids[human + 2:human + 5] == [20574, 1352, 326] and ids[human + 5:human + 7] == [3, 4]


def test_prompt_errors(tok):
    with pytest.raises(InvalidInputError, match="audio_token_str"):
        encode_edit_prompt(tok, "x\n", "  ")
    with pytest.raises(InvalidInputError, match="target_text"):
        encode_clone_prompt(tok, " ", "p", "s", "<audio_1>")
    with pytest.raises(InvalidInputError, match="prompt_text"):
        encode_clone_prompt(tok, "t", None, "s", "<audio_1>")


# -- speaker id ---------------------------------------------------------------------------------------
def test_speaker_id_accepts_tensor_and_array():
    wav = torch.linspace(-1, 1, 5000).view(1, -1)
    a = clone_speaker_id("text", wav)
    assert a == clone_speaker_id("text", wav.numpy()) and a.startswith("clone_") and len(a) == 22
    assert a != clone_speaker_id("text2", wav)
    # Only the first and last 1000 samples count.
    changed = wav.clone()
    changed[0, 2500] = 0.123
    assert clone_speaker_id("text", changed) == a


def test_speaker_id_errors():
    with pytest.raises(InvalidInputError, match="waveform"):
        clone_speaker_id("t", np.zeros((1, 0), np.float32))
    with pytest.raises(InvalidInputError, match="prompt_text"):
        clone_speaker_id(None, np.zeros((1, 10), np.float32))


# -- interleave -----------------------------------------------------------------------------------------
def test_interleave_layout_and_inverse():
    vq02, vq06 = [10, 11, 12, 13, 14], [0, 1, 2, 3, 4, 5, 4095]
    mixed = interleave_mixed(vq02, vq06)
    assert mixed == [10, 11, 1024, 1025, 1026, 12, 13, 1027, 1028, 1029]
    llm = interleave_vq0206(torch.tensor(vq02), np.array(vq06))
    assert llm == mixed_to_llm_ids(mixed) and all(is_audio_llm_id(i) for i in llm)
    assert llm_ids_to_mixed(llm) == mixed
    assert torch.equal(llm_ids_to_mixed(torch.tensor([llm])), torch.tensor([mixed]))
    assert audio_token_str(vq02, vq06) == "".join(f"<audio_{k}>" for k in mixed)
    assert llm_ids_to_mixed([3]) == [3 - 65536]  # like upstream: no audio-range check


@pytest.mark.parametrize("vq02,vq06,name", [
    ([1024, 0], [0, 0, 0], "vq02_codes"), ([0, 0], [0, -1, 0], "vq06_codes"),
    ("12", [0, 0, 0], "vq02_codes"), ([0, 0], torch.zeros(3), "vq06_codes"),
])
def test_interleave_errors(vq02, vq06, name):
    with pytest.raises(InvalidInputError, match=name):
        interleave_vq0206(vq02, vq06)
