"""editx: a fast runtime for Step-Audio-EditX (voice cloning and speech editing).

    import editx
    rt = editx.Runtime.from_pretrained("dummy:tiny")       # or an upstream install folder
    audio = rt.clone("prompt.wav", "prompt transcript", "Text to speak.")
    audio.save("out.wav")
"""
__version__ = "0.1.0"

from .api import Runtime
from .config import RuntimeConfig
from .engine.sampling import SamplingParams
from .errors import AudioFormatError, BackendUnavailableError, CheckpointError, EditXError, InvalidInputError
from .types import Audio, AudioChunk, StreamUsage

__all__ = [
    "Runtime", "RuntimeConfig", "SamplingParams", "Audio", "AudioChunk", "StreamUsage",
    "EditXError", "InvalidInputError", "AudioFormatError", "CheckpointError", "BackendUnavailableError",
]
