"""Where upstream's install puts each file (spec §1), and one check that names every missing one.

    <root>/Step-Audio-EditX/                 config.json, model*.safetensors (+ index), tokenizer.model
    <root>/Step-Audio-EditX/CosyVoice-300M-25Hz/   cosyvoice.yaml, flow.pt, hift.pt, campplus.onnx
    <root>/Step-Audio-Tokenizer/             linguistic_tokenizer.npy, speech_tokenizer_v1.onnx,
        dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online/
                                             config.yaml, model.pt, am.mvn

`path` may be the root, or the `Step-Audio-EditX` folder itself with the tokenizer beside it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError

LLM_DIR = "Step-Audio-EditX"
COSYVOICE_DIR = "CosyVoice-300M-25Hz"
TOKENIZER_DIR = "Step-Audio-Tokenizer"
PARAFORMER_DIR = "dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online"


@dataclass(frozen=True)
class ModelFiles:
    """Absolute paths of every file the runtime reads from an upstream install."""

    llm_dir: Path
    text_tokenizer: Path
    cosyvoice_dir: Path
    campplus_onnx: Path
    tokenizer_root: Path
    paraformer_dir: Path
    centroids: Path
    vq06_onnx: Path
    cmvn: Path

    def required(self) -> dict[str, Path]:
        """name -> path of every file that must exist."""
        return {
            "LLM config": self.llm_dir / "config.json",
            "text tokenizer": self.text_tokenizer,
            "flow/vocoder config": self.cosyvoice_dir / "cosyvoice.yaml",
            "flow weights": self.cosyvoice_dir / "flow.pt",
            "vocoder weights": self.cosyvoice_dir / "hift.pt",
            "speaker encoder": self.campplus_onnx,
            "vq02 config": self.paraformer_dir / "config.yaml",
            "vq02 weights": self.paraformer_dir / "model.pt",
            "vq02 CMVN": self.cmvn,
            "vq02 centroids": self.centroids,
            "vq06 tokenizer": self.vq06_onnx,
        }


def _llm_root(path: Path) -> tuple[Path, Path]:
    """(Step-Audio-EditX dir, install root) for a root or an LLM-dir path."""
    if (path / LLM_DIR).is_dir():
        return path / LLM_DIR, path
    if (path / "config.json").is_file() and (path / COSYVOICE_DIR).is_dir():
        return path, path.parent
    raise CheckpointError(
        f"{path} is not an upstream install: expected {path / LLM_DIR} (with {TOKENIZER_DIR}/ beside it) "
        f"or a {LLM_DIR} folder holding config.json and {COSYVOICE_DIR}/"
    )


def resolve_layout(path: str | Path, check: bool = True) -> ModelFiles:
    """Find every file of an upstream install; with `check`, raise one error listing all missing files."""
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise CheckpointError(f"model path {p} does not exist")
    llm_dir, root = _llm_root(p)
    cosy = llm_dir / COSYVOICE_DIR
    tok = root / TOKENIZER_DIR
    para = tok / PARAFORMER_DIR
    files = ModelFiles(
        llm_dir=llm_dir, text_tokenizer=llm_dir / "tokenizer.model", cosyvoice_dir=cosy,
        campplus_onnx=cosy / "campplus.onnx", tokenizer_root=tok, paraformer_dir=para,
        centroids=tok / "linguistic_tokenizer.npy", vq06_onnx=tok / "speech_tokenizer_v1.onnx",
        cmvn=para / "am.mvn",
    )
    if check:
        missing = [f"{name}: {f}" for name, f in files.required().items() if not f.is_file()]
        if not any(llm_dir.glob("*.safetensors")):
            missing.append(f"LLM weights: {llm_dir}/*.safetensors")
        if missing:
            raise CheckpointError("incomplete Step-Audio-EditX install, missing:\n  " + "\n  ".join(missing))
    return files
