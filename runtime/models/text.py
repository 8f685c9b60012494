"""Text side of the audio LLM: the SentencePiece tokenizer as upstream runs it, and prompts.

Upstream loads `tokenizer.model` with `AutoTokenizer` (transformers 4.53.3), which
converts it to a `LlamaTokenizerFast` (legacy=false). That fast tokenizer differs from
SentencePiece's own `encode` (spec §11.6), so we reproduce the fast pipeline:

1. every control / user-defined / unknown piece (e.g. `<audio_123>`, `<|EOT|>`) is an
   "added token", split off the raw text first (leftmost-longest match);
2. in each remaining segment spaces become `▁`, and a `▁` is prepended only to the
   segment that starts at offset 0 of the text, unless it already starts with `▁`
   (Metaspace, prepend_scheme "first");
3. each segment goes through a unigram Viterbi over all pieces (no dummy prefix),
   unknown characters are fused and spelled as UTF-8 byte pieces (`<0x0A>` ...);
4. `encode` prepends BOS (id 1).

The prompt builders reproduce upstream's literal strings and id layout (spec §4.4):
ids are built by concatenating separate `encode()` calls, each with its own BOS.
"""
from __future__ import annotations

import hashlib
import struct
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..errors import CheckpointError, InvalidInputError
from .interleave import AUDIO_ID_OFFSET

# -- special ids (spec §4.3) ------------------------------------------------------------
UNK_ID = 0
BOS_ID = 1
EOS_ID = 2  # </s>; never produced by the audio LLM
EOT_ID = 3  # <|EOT|>: end of a turn, the generation stop id
BOT_ID = 4  # <|BOT|>: begin of a turn
NUM_AUDIO_TOKENS = 9216  # <audio_0> .. <audio_9215> (only 0..5119 carry codec codes)

DEFAULT_TOKENIZER_FILE = Path(__file__).resolve().parents[1] / "assets" / "tokenizer.model"

_SPACE = "\u2581"  # ▁, SentencePiece's whitespace symbol
_UNK_PENALTY = 10.0  # score of an unknown character = min piece score − 10 (HF Unigram)

# SentencePiece piece types (sentencepiece_model.proto)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


# =======================================================================================
# tokenizer.model reading (protobuf wire format, only the fields we need)
# =======================================================================================
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes):
    """Yield (field number, wire type, value) of one protobuf message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated protobuf message")
        yield number, wire, value


def read_sentencepiece_pieces(path: str | Path) -> list[tuple[str, float, int]]:
    """(piece, score, type) for every piece of a SentencePiece `ModelProto` file, in id order."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"missing text tokenizer: expected file {p}")
    try:
        pieces = []
        for number, wire, value in _fields(p.read_bytes()):
            if number != 1 or wire != 2:  # ModelProto.pieces
                continue
            piece, score, kind = "", 0.0, _NORMAL
            for f, w, v in _fields(value):
                if f == 1 and w == 2:
                    piece = v.decode("utf-8")
                elif f == 2 and w == 5:
                    score = struct.unpack("<f", v)[0]
                elif f == 3 and w == 0:
                    kind = v
            pieces.append((piece, score, kind))
    except (ValueError, IndexError, UnicodeDecodeError, struct.error) as exc:
        raise CheckpointError(f"cannot parse SentencePiece model {p}: {exc}") from exc
    if not pieces:
        raise CheckpointError(f"SentencePiece model {p} holds no pieces")
    return pieces


# =======================================================================================
# The tokenizer
# =======================================================================================
class _AddedTokenMatcher:
    """Leftmost-longest matching of added tokens in raw text (a character trie)."""

    def __init__(self, tokens: dict[str, int]) -> None:
        self._trie: dict[str, Any] = {}
        for text, token_id in tokens.items():
            node = self._trie
            for ch in text:
                node = node.setdefault(ch, {})
            node[""] = token_id  # "" marks the end of a token (no token is empty)

    def split(self, text: str) -> list[tuple[str, int | None, int]]:
        """[(segment, added_id or None, start offset)] covering `text` in order."""
        out: list[tuple[str, int | None, int]] = []
        seg_start = i = 0
        while i < len(text):
            node, j, match = self._trie, i, None
            while j < len(text) and text[j] in node:
                node = node[text[j]]
                j += 1
                if "" in node:
                    match = (j, node[""])
            if match is None:
                i += 1
                continue
            if seg_start < i:
                out.append((text[seg_start:i], None, seg_start))
            out.append((text[i:match[0]], match[1], i))
            i = seg_start = match[0]
        if seg_start < len(text):
            out.append((text[seg_start:], None, seg_start))
        return out


class TextTokenizer:
    """Upstream's text tokenizer (HF LlamaTokenizerFast over `tokenizer.model`), reimplemented.

    `encode(text)` -> ids with BOS; `decode(ids)` -> text; `<audio_K>` has id 65536 + K.
    """

    def __init__(self, model_file: str | Path | None = None) -> None:
        pieces = read_sentencepiece_pieces(model_file or DEFAULT_TOKENIZER_FILE)
        self._pieces = [p for p, _, _ in pieces]
        self._types = [t for _, _, t in pieces]
        self._vocab: dict[str, tuple[int, float]] = {}
        for token_id, (piece, score, _) in enumerate(pieces):
            # HF's Llama converter zeroes the scores of ids 0..2 (<unk>, <s>, </s>).
            self._vocab.setdefault(piece, (token_id, 0.0 if token_id < 3 else float(score)))
        self._max_piece_len = max(len(p) for p in self._pieces)
        self._unk_score = min(s for _, s in self._vocab.values()) - _UNK_PENALTY
        added = {p: i for i, (p, _, t) in enumerate(pieces) if t in (_UNKNOWN, _CONTROL, _USER_DEFINED)}
        self._added_ids = set(added.values())
        self._special_ids = {i for p, i in added.items() if self._types[i] in (_UNKNOWN, _CONTROL)}
        self._matcher = _AddedTokenMatcher(added)
        self._byte_ids = {}
        for b in range(256):
            entry = self._vocab.get(f"<0x{b:02X}>")
            if entry is None:
                raise CheckpointError(f"tokenizer model lacks byte piece <0x{b:02X}> (byte fallback)")
            self._byte_ids[b] = entry[0]
        self._byte_of_id = {i: b for b, i in self._byte_ids.items()}
        if len(self._pieces) < AUDIO_ID_OFFSET + NUM_AUDIO_TOKENS or self._pieces[AUDIO_ID_OFFSET] != "<audio_0>":
            raise CheckpointError("tokenizer model does not hold <audio_K> pieces at ids 65536 + K")

    # -- vocabulary ------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    def piece(self, token_id: int) -> str:
        """The piece string of `token_id`."""
        self._check_id(token_id)
        return self._pieces[token_id]

    def token_id(self, piece: str) -> int:
        """The id of a piece string (InvalidInputError when it is not in the vocabulary)."""
        entry = self._vocab.get(piece)
        if entry is None:
            raise InvalidInputError(f"piece: {piece!r} is not in the tokenizer vocabulary")
        return entry[0]

    @staticmethod
    def audio_token_id(k: int) -> int:
        """Id of `<audio_k>` (65536 + k)."""
        if not 0 <= int(k) < NUM_AUDIO_TOKENS:
            raise InvalidInputError(f"k: audio token index must lie in [0, {NUM_AUDIO_TOKENS}), got {k}")
        return AUDIO_ID_OFFSET + int(k)

    def _check_id(self, token_id: int) -> None:
        if not 0 <= token_id < len(self._pieces):
            raise InvalidInputError(f"ids: token id must lie in [0, {len(self._pieces)}), got {token_id}")

    # -- encoding --------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Text -> ids exactly as upstream's `tokenizer.encode(text)` (BOS first when add_bos)."""
        if not isinstance(text, str):
            raise InvalidInputError(f"text: expected str, got {type(text).__name__}")
        ids = [BOS_ID] if add_bos else []
        for segment, added_id, start in self._matcher.split(text):
            if added_id is not None:
                ids.append(added_id)
                continue
            segment = segment.replace(" ", _SPACE)
            if start == 0 and not segment.startswith(_SPACE):
                segment = _SPACE + segment
            ids.extend(self._encode_segment(segment))
        return ids

    def _encode_segment(self, s: str) -> list[int]:
        """Unigram Viterbi over one pre-tokenized segment, then byte fallback for unknowns."""
        n = len(s)
        best = [float("-inf")] * (n + 1)  # best path score ending at each char offset
        back: list[tuple[int, int | None]] = [(0, None)] * (n + 1)  # (start, id; None = unknown char)
        best[0] = 0.0
        for i in range(n):
            base = best[i]
            has_single_char = False
            for end in range(i + 1, min(n, i + self._max_piece_len) + 1):
                entry = self._vocab.get(s[i:end])
                if entry is None:
                    continue
                token_id, score = entry
                if base + score > best[end]:  # strictly better: the shorter piece wins ties (as HF)
                    best[end], back[end] = base + score, (i, token_id)
                has_single_char |= end == i + 1
            if not has_single_char and base + self._unk_score > best[i + 1]:
                best[i + 1], back[i + 1] = base + self._unk_score, (i, None)
        # Walk back; consecutive unknown characters are fused (HF fuse_unk) and spelled as bytes.
        pieces: list[tuple[str, int | None]] = []
        end = n
        while end > 0:
            start, token_id = back[end]
            if token_id is None and pieces and pieces[-1][1] is None:
                pieces[-1] = (s[start:end] + pieces[-1][0], None)
            else:
                pieces.append((s[start:end], token_id))
            end = start
        ids: list[int] = []
        for text, token_id in reversed(pieces):
            if token_id is None:
                ids.extend(self._byte_ids[b] for b in text.encode("utf-8"))
            else:
                ids.append(token_id)
        return ids

    # -- decoding --------------------------------------------------------------------
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Ids -> text (▁ -> space, byte pieces -> UTF-8, one leading space dropped, as HF does)."""
        parts: list[str] = []
        pending = bytearray()
        for raw in ids:
            token_id = int(raw)
            self._check_id(token_id)
            if token_id in self._byte_of_id:
                pending.append(self._byte_of_id[token_id])
                continue
            if pending:
                parts.append(pending.decode("utf-8", errors="replace"))
                pending.clear()
            if token_id in self._added_ids:
                if not (skip_special_tokens and token_id in self._special_ids):
                    parts.append(self._pieces[token_id])
            else:
                parts.append(self._pieces[token_id].replace(_SPACE, " "))
        if pending:
            parts.append(pending.decode("utf-8", errors="replace"))
        text = "".join(parts)
        return text[1:] if text.startswith(" ") else text


@lru_cache(maxsize=4)
def load_text_tokenizer(model_file: str | None = None) -> TextTokenizer:
    """A shared, immutable TextTokenizer per model file (building one takes ~0.3 s)."""
    return TextTokenizer(model_file)


# =======================================================================================
# Prompts (EX config/prompts.py, tts.py; spec §4.4) — upstream's literal strings
# =======================================================================================
AUDIO_EDIT_SYSTEM_PROMPT = (
    "As a highly skilled audio editing and tuning specialist, you excel in interpreting user instructions "
    "and applying precise adjustments to meet their needs. Your expertise spans a wide range of enhancement "
    "capabilities, including but not limited to:\n"
    "# Emotional Enhancement\n"
    "# Speaking Style Transfer\n"
    "# Non-linguistic Adjustments\n"
    "# Audio Tuning & Editing\n"
    "Note: You will receive instructions in natural language and are expected to accurately interpret and "
    "execute the most suitable audio edits and enhancements.\n"
)

# Note the trailing space after the two colons (upstream's literal template).
AUDIO_EDIT_CLONE_SYSTEM_PROMPT_TPL = (
    "Generate audio with the following timbre, prosody and speaking style\n"
    "\n"
    "[speaker_start]\n"
    "speaker name: {speaker}\n"
    "speaker prompt text: \n"
    "{prompt_text}\n"
    "speaker audio tokens: \n"
    "{prompt_wav_tokens}\n"
    "[speaker_end]\n"
)

# Allowed edit_info per edit_type (spec §2.3; EX config/edit_config.py). Types mapped to ()
# take no edit_info.
EDIT_OPTIONS: dict[str, tuple[str, ...]] = {
    "emotion": (
        "happy", "angry", "sad", "humour", "confusion", "disgusted", "empathy", "embarrass", "fear",
        "surprised", "excited", "depressed", "coldness", "admiration", "remove",
    ),
    "style": (
        "serious", "arrogant", "child", "older", "girl", "pure", "sister", "sweet", "ethereal", "whisper",
        "gentle", "recite", "generous", "act_coy", "warm", "shy", "comfort", "authority", "chat", "radio",
        "soulful", "story", "vivid", "program", "news", "advertising", "roar", "murmur", "shout", "deeply",
        "loudly", "remove", "exaggerated",
    ),
    "speed": ("faster", "slower", "more faster", "more slower"),
    "paralinguistic": (),
    "denoise": (),
    "vad": (),
}
EDIT_TYPES = tuple(EDIT_OPTIONS)
PARALINGUISTIC_TAGS = (
    "[Breathing]", "[Laughter]", "[Surprise-oh]", "[Confirmation-en]", "[Uhm]", "[Surprise-ah]",
    "[Surprise-wa]", "[Sigh]", "[Question-ei]", "[Dissatisfaction-hnn]",
)
_TYPES_USING_AUDIO_TEXT = ("emotion", "style", "speed", "paralinguistic")

_DENOISE_INSTRUCTION = (
    "Remove any noise from the given audio while preserving the voice content clearly. Ensure that the "
    "speech quality remains intact with minimal distortion, and eliminate all noise from the audio.\n"
)
_VAD_INSTRUCTION = (
    "Remove any silent portions from the given audio while preserving the voice content clearly. Ensure "
    "that the speech quality remains intact with minimal distortion, and eliminate all silence from the audio.\n"
)


def _require_str(value: Any, name: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, str):
        raise InvalidInputError(f"{name}: expected str, got {type(value).__name__}")


def build_edit_instruction(edit_type: str, edit_info: str | None, audio_text: str, text: str | None = None) -> str:
    """The instruction line of an edit prompt (upstream `_build_audio_edit_instruction`).

    `audio_text` (the transcript of the input audio) is `.strip()`ped; `text` (the new
    text with paralinguistic tags) is used as given. Literal upstream quirks kept:
    "more faster" yields "more more faster"; the paralinguistic line has " :" and two
    spaces before "The". Every instruction ends with a newline.
    """
    _require_str(edit_type, "edit_type")
    if edit_type not in EDIT_OPTIONS:
        raise InvalidInputError(f"edit_type: unknown edit type {edit_type!r}; allowed: {', '.join(EDIT_TYPES)}")
    options = EDIT_OPTIONS[edit_type]
    if options:
        _require_str(edit_info, "edit_info", allow_none=True)
        if edit_info not in options:
            raise InvalidInputError(
                f"edit_info: {edit_info!r} is not a valid {edit_type} edit; allowed: {', '.join(options)}"
            )
    _require_str(audio_text, "audio_text", allow_none=edit_type not in _TYPES_USING_AUDIO_TEXT)
    t = (audio_text or "").strip()
    if edit_type in _TYPES_USING_AUDIO_TEXT and not t:
        raise InvalidInputError(f"audio_text: the transcript of the input audio is required for {edit_type} edits")

    if edit_type in ("emotion", "speed"):
        if edit_info == "remove":
            return f"Remove any emotion in the following audio and the reference text is: {t}\n"
        return f"Make the following audio more {edit_info}. The text corresponding to the audio is: {t}\n"
    if edit_type == "style":
        if edit_info == "remove":
            return f"Remove any speaking styles in the following audio and the reference text is: {t}\n"
        return f"Make the following audio more {edit_info} style. The text corresponding to the audio is: {t}\n"
    if edit_type == "denoise":
        return _DENOISE_INSTRUCTION
    if edit_type == "vad":
        return _VAD_INSTRUCTION
    # paralinguistic
    _require_str(text, "text", allow_none=True)
    if text is None or not text.strip():
        raise InvalidInputError(
            "text: paralinguistic edits need the new text with tags such as " + " ".join(PARALINGUISTIC_TAGS[:3])
        )
    return (
        f"Add some non-verbal sounds to make the audio more natural, the new text is : {text}\n"
        f"  The text corresponding to the audio is: {t}\n"
    )


def encode_edit_prompt(tokenizer: TextTokenizer, instruction: str, audio_token_str: str) -> list[int]:
    """Prompt ids of an edit request (upstream `_encode_audio_edit_prompt`).

    [1] + [4] + enc("system\\n" + SYS) + [3] + [4] + enc("human\\n")
        + enc(instruction + "\\n" + audio_token_str.strip() + "\\n") + [3] + [4] + enc("assistant\\n")
    """
    _require_str(instruction, "instruction")
    _require_str(audio_token_str, "audio_token_str")
    if not audio_token_str.strip():
        raise InvalidInputError("audio_token_str: the input audio gave no audio tokens (too short?)")
    enc = tokenizer.encode
    ids = [BOS_ID, BOT_ID] + enc(f"system\n{AUDIO_EDIT_SYSTEM_PROMPT}") + [EOT_ID]
    ids += [BOT_ID] + enc("human\n") + enc(f"{instruction}\n{audio_token_str.strip()}\n") + [EOT_ID]
    ids += [BOT_ID] + enc("assistant\n")
    return ids


def clone_system_prompt(speaker: str, prompt_text: str, audio_token_str: str) -> str:
    """The clone system prompt with the speaker name, prompt transcript and prompt audio tokens."""
    return AUDIO_EDIT_CLONE_SYSTEM_PROMPT_TPL.format(
        speaker=speaker, prompt_text=prompt_text, prompt_wav_tokens=audio_token_str
    )


def encode_clone_prompt(
    tokenizer: TextTokenizer, target_text: str, prompt_text: str, speaker: str, audio_token_str: str
) -> list[int]:
    """Prompt ids of a clone request (upstream `_encode_audio_edit_clone_prompt`).

    [1] + [4] + enc("system\\n" + CLONE_TPL(...)) + [3] + [4] + enc("human\\n")
        + enc("\\n" + target_text)[len(enc("\\n")):] + [3] + [4] + enc("assistant\\n")
    The target slice drops the BOS and the `▁\\n` the leading newline produced, so the
    target text is encoded without a dummy prefix.
    """
    for value, name in ((target_text, "target_text"), (prompt_text, "prompt_text"), (speaker, "speaker"),
                        (audio_token_str, "audio_token_str")):
        _require_str(value, name)
    if not target_text.strip():
        raise InvalidInputError("target_text: the text to synthesize is empty")
    if not audio_token_str.strip():
        raise InvalidInputError("audio_token_str: the prompt audio gave no audio tokens (too short?)")
    enc = tokenizer.encode
    ids = [BOS_ID, BOT_ID] + enc("system\n" + clone_system_prompt(speaker, prompt_text, audio_token_str)) + [EOT_ID]
    target_ids = enc("\n" + target_text)[len(enc("\n")):]
    ids += [BOT_ID] + enc("human\n") + target_ids + [EOT_ID] + [BOT_ID] + enc("assistant\n")
    return ids


def clone_speaker_id(prompt_text: str, waveform: np.ndarray | torch.Tensor | Sequence[float]) -> str:
    """Upstream's clone speaker name: "clone_" + sha256(text utf-8 + float32 sample bytes)[:16] (hex).

    `waveform` is the audio exactly as loaded (float32, channels-first [C, N], before
    mono mixing / normalisation); its C-order flattening contributes its first and last
    1000 samples when it has more than 2000, else all samples. Other float dtypes are
    converted to float32 first (upstream always hashes float32).
    """
    _require_str(prompt_text, "prompt_text")
    if isinstance(waveform, torch.Tensor):
        samples = waveform.detach().to("cpu", torch.float32).numpy()
    else:
        try:
            samples = np.asarray(waveform, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"waveform: expected an array of samples ({exc})") from exc
    flat = np.ascontiguousarray(samples).reshape(-1)
    if flat.size == 0:
        raise InvalidInputError("waveform: the prompt audio is empty")
    if flat.size > 2000:
        flat = np.concatenate([flat[:1000], flat[-1000:]])
    hasher = hashlib.sha256()
    hasher.update(prompt_text.encode("utf-8"))
    hasher.update(flat.tobytes())
    return f"clone_{hasher.hexdigest()[:16]}"
