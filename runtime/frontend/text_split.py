"""Long text → pieces of whole sentences, each short enough for one request.

Why: one request holds prompt + output within max_length (8,192 ids upstream): ~7,800 audio ids,
about 3 minutes of speech, and upstream's model was trained on utterances far shorter than that.
Longer text is spoken as consecutive requests in the same voice (`Runtime.stream_clone(...,
split=True)`). Upstream never splits: a text that fits one request is only split when asked.

Rules: cut after sentence ends (. ! ? ; … and their CJK forms 。！？；, optionally followed by closing
quotes/brackets) and at line breaks; pack consecutive sentences into pieces of at most `max_chars`;
a sentence longer than that is cut at clause marks (, ， 、 : ：), then at spaces, then hard.
"""
from __future__ import annotations

import re

from ..errors import InvalidInputError

# A sentence ends at terminal punctuation (+ closing quotes/brackets), then whitespace, or directly for
# CJK punctuation (no spaces in Chinese/Japanese text); line breaks end one too.
_CLOSERS = r"\"'”’」』）)\]"
_SENTENCE_END = re.compile(rf"(?<=[.!?;…][{_CLOSERS}])\s+|(?<=[.!?;…])\s+|(?<=[。！？；][{_CLOSERS}])"
                           rf"|(?<=[。！？；])(?![{_CLOSERS}])|\n+")
_CLAUSE_END = re.compile(r"(?<=[,，、:：])\s*")


def split_text(text: str, max_chars: int) -> list[str]:
    """text → pieces of whole sentences, each non-empty and at most `max_chars` characters."""
    if not isinstance(text, str):
        raise InvalidInputError(f"text: expected a string, got {type(text).__name__}")
    if max_chars < 8:
        raise InvalidInputError(f"max_chars: {max_chars} is too small to hold a sentence (need >= 8)")
    sentences = [s.strip() for s in _SENTENCE_END.split(text)]
    units = [part for s in sentences if s for part in _fit(s, max_chars)]
    return _pack(units, max_chars)


def _fit(sentence: str, max_chars: int) -> list[str]:
    """One sentence as parts of at most max_chars: clauses, then words, then hard cuts."""
    if len(sentence) <= max_chars:
        return [sentence]
    parts: list[str] = []
    for clause in (c.strip() for c in _CLAUSE_END.split(sentence)):
        if not clause:
            continue
        if len(clause) <= max_chars:
            parts.append(clause)
            continue
        for word in clause.split():
            parts.extend(word[i:i + max_chars] for i in range(0, len(word), max_chars))
    return _pack(parts, max_chars)


def _pack(units: list[str], max_chars: int) -> list[str]:
    """Greedily join consecutive units with a space while the piece stays within max_chars. CJK units
    are joined without a space (the text had none)."""
    pieces: list[str] = []
    for unit in units:
        if pieces:
            glue = "" if _cjk(pieces[-1][-1]) or _cjk(unit[0]) else " "
            if len(pieces[-1]) + len(glue) + len(unit) <= max_chars:
                pieces[-1] += glue + unit
                continue
        pieces.append(unit)
    return pieces


def _cjk(ch: str) -> bool:
    code = ord(ch)
    return 0x3000 <= code <= 0x9FFF or 0xFF00 <= code <= 0xFFEF or 0xAC00 <= code <= 0xD7AF
