"""Build every model the runtime needs, from an upstream install or a dummy preset.

`load_components("dummy:tiny" | "dummy:full" | <path>, config)` returns a `Components`
bundle of shared, read-only models. Real installs are read with strict key/shape checks
(every size comes from the files: config.json, cosyvoice.yaml, config.yaml); dummy
presets use the same classes with random weights (`random_init.randomize_`), the
vendored real text tokenizer, and random stand-ins for the two front-end ONNX graphs.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import torch

from ..config import RuntimeConfig
from ..errors import CheckpointError, InvalidInputError
from ..frontend.mel import MelConfig
from ..frontend.vq02_features import Vq02FrontendConfig
from ..models.campplus import SpeakerEncoder
from ..models.flow import FlowConfig, FlowModel, load_flow
from ..models.hift import HiFTConfig, HiFTGenerator, load_hift
from ..models.interleave import AUDIO_ID_OFFSET, VQ02_CODEBOOK, VQ06_CODEBOOK
from ..models.onnx_session import OnnxGraph, choose_providers, intra_op_threads
from ..models.step1 import Step1Config, Step1Model, build_step1, load_step1
from ..models.text import TextTokenizer, load_text_tokenizer
from ..models.vq02 import SANMEncoderConfig, SANMStreamingEncoder, load_centroids, load_paraformer_encoder
from ..models.vq06 import Vq06Tokenizer
from .am_mvn import Cmvn, read_am_mvn
from .dummy_onnx import campplus_standin, vq06_standin
from .dummy_vq06_full import vq06_full_standin_file
from .layout import resolve_layout
from .random_init import randomize_
from .yaml_config import node, read_yaml

log = logging.getLogger("editx")

VENDORED_TOKENIZER = Path(__file__).resolve().parents[1] / "assets" / "tokenizer.model"
DUMMY_PRESETS = ("dummy:tiny", "dummy:full")


@dataclass
class Components:
    """Every shared model of one runtime (read-only after construction)."""

    llm: Step1Model
    text: TextTokenizer
    flow: FlowModel
    hift: HiFTGenerator
    vq02: SANMStreamingEncoder
    centroids: torch.Tensor       # [1024, D] vq02 k-means centroids
    cmvn: Cmvn | None
    vq02_frontend: Vq02FrontendConfig
    vq06: Vq06Tokenizer
    speaker: SpeakerEncoder
    mel: MelConfig
    source: str                   # the path or preset name it came from
    default_max_new_tokens: int | None = None  # dummy presets cap random-weight generation


def load_components(source: str | Path, config: RuntimeConfig) -> Components:
    """Load from an upstream install path, or build a dummy preset (see module doc)."""
    start = time.perf_counter()
    name = str(source)
    if name.startswith("dummy:"):
        if name not in DUMMY_PRESETS:
            raise InvalidInputError(f"model: unknown preset {name!r}; use one of {', '.join(DUMMY_PRESETS)} or a path")
        comps = _build_dummy(name, config)
    else:
        comps = _load_install(Path(name), config)
    log.info("loaded %s on %s in %.1f s", name, config.device, time.perf_counter() - start)
    return comps


def check_vocab(cfg: Step1Config) -> None:
    """The LLM must have ids for every `<audio_N>` the prompts and outputs use."""
    need = AUDIO_ID_OFFSET + VQ02_CODEBOOK + VQ06_CODEBOOK
    if cfg.vocab_size < need:
        raise CheckpointError(
            f"LLM vocab_size {cfg.vocab_size} cannot hold the audio ids {AUDIO_ID_OFFSET}..{need - 1} "
            "(is this a Step-Audio-EditX checkpoint?)"
        )


# ---------------------------------------------------------------------------------------
def _load_install(path: Path, config: RuntimeConfig) -> Components:
    files = resolve_layout(path)
    dev = config.device
    llm, _ = load_step1(files.llm_dir, dev, config.dtype)
    flow, hift, vq02 = _install_stage_models(files, config)
    vq02_cfg = vq02.cfg
    para_yaml = read_yaml(files.paraformer_dir / "config.yaml", "vq02 config.yaml")
    cosy_yaml = read_yaml(files.cosyvoice_dir / "cosyvoice.yaml", "cosyvoice.yaml")
    return Components(
        llm=llm,
        text=load_text_tokenizer(files.text_tokenizer),
        flow=flow,
        hift=hift,
        vq02=vq02,
        centroids=load_centroids(files.centroids, vq02_cfg.output_size).to(dev),
        cmvn=read_am_mvn(files.cmvn),
        vq02_frontend=Vq02FrontendConfig.from_frontend_conf(para_yaml.get("frontend_conf") or {}),
        vq06=Vq06Tokenizer(_graph(files.vq06_onnx, config, "vq06 tokenizer")),
        speaker=SpeakerEncoder(_graph(files.campplus_onnx, config, "CAM++ speaker encoder")),
        mel=MelConfig.from_mel_conf(node(cosy_yaml, "mel_conf", what="cosyvoice.yaml")),
        source=str(path),
    )


def _install_stage_models(files, config: RuntimeConfig):
    dev = config.device
    flow, _ = load_flow(files.cosyvoice_dir, dev, config.decoder_dtype)
    hift = load_hift(files.cosyvoice_dir, device=dev, dtype=config.decoder_dtype)
    vq02, _ = load_paraformer_encoder(files.paraformer_dir, dev, config.frontend_dtype)
    return flow, hift, vq02


def load_stage_models(source: str | Path, config: RuntimeConfig) -> tuple[FlowModel, HiFTGenerator, SANMStreamingEncoder]:
    """Only (flow, HiFT, vq02 encoder), built exactly as `load_components` builds them (no LLM):
    what `editx export` needs."""
    name = str(source)
    if name.startswith("dummy:"):
        if name not in DUMMY_PRESETS:
            raise InvalidInputError(f"model: unknown preset {name!r}; use one of {', '.join(DUMMY_PRESETS)} or a path")
        return _dummy_stage_models(dummy_spec(name), config)
    return _install_stage_models(resolve_layout(Path(name)), config)


def _graph(model: Path | bytes, config: RuntimeConfig, what: str) -> OnnxGraph:
    providers = choose_providers(config.onnx_provider, config.device.type, what)
    return OnnxGraph(model, providers, what, intra_op_threads(providers, config.onnx_threads))


# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DummySpec:
    llm: Step1Config
    flow: FlowConfig
    hift: HiFTConfig
    vq02: SANMEncoderConfig
    max_new_tokens: int
    vq06_graph: Callable[[int], "bytes | Path"] = vq06_standin  # seed -> ONNX bytes or file


def dummy_spec(name: str) -> DummySpec:
    """Sizes of a dummy preset: `dummy:full` has every real dimension, `dummy:tiny` runs in seconds on CPU."""
    if name == "dummy:full":
        return DummySpec(Step1Config.full(), FlowConfig.full(), HiFTConfig.full(), SANMEncoderConfig.full(), 1024,
                         vq06_full_standin_file)
    # ~250 tokens = 6 s of audio: random weights rarely sample the stop id, so cap the length.
    return DummySpec(Step1Config.tiny(), FlowConfig.tiny(), HiFTConfig.tiny(), SANMEncoderConfig.tiny(), 250)


def _build_dummy(name: str, config: RuntimeConfig) -> Components:
    spec = dummy_spec(name)
    dev, seed = config.device, config.seed
    if name == "dummy:full" and dev.type == "cpu":
        log.warning("dummy:full on CPU allocates ~%.0f GB and runs very slowly; it is meant for GPU benchmarks",
                    7 if config.dtype != torch.float32 else 14)
    llm = build_dummy_llm(spec.llm, dev, config.dtype, seed)
    flow, hift, vq02 = _dummy_stage_models(spec, config)
    gen = torch.Generator().manual_seed(seed + 4)
    centroids = torch.randn(1024, spec.vq02.output_size, generator=gen).to(dev)
    return Components(
        llm=llm,
        text=load_text_tokenizer(VENDORED_TOKENIZER),
        flow=flow,
        hift=hift,
        vq02=vq02,
        centroids=centroids,
        cmvn=_dummy_cmvn(),
        vq02_frontend=Vq02FrontendConfig(),
        vq06=Vq06Tokenizer(_graph(spec.vq06_graph(seed), config, "vq06 tokenizer (random stand-in)")),
        speaker=SpeakerEncoder(_graph(campplus_standin(seed), config, "CAM++ (random stand-in)")),
        mel=MelConfig(),
        source=name,
        default_max_new_tokens=spec.max_new_tokens,
    )


def build_dummy_llm(cfg: Step1Config, device, dtype, seed: int, fuse: bool = True) -> Step1Model:
    """The dummy presets' LLM: built on its final device and dtype, seeded random weights, then (like
    `load_step1`) fused projections. Benchmarks use it with cut-down configs."""
    llm = randomize_(build_step1(cfg, device, dtype), seed, depth=cfg.num_hidden_layers)
    return llm.fuse_projections() if fuse else llm


def _dummy_stage_models(spec: DummySpec, config: RuntimeConfig):
    dev, seed = config.device, config.seed
    flow = _random(FlowModel(spec.flow), dev, config.decoder_dtype, seed + 1, spec.flow.dit.depth)
    hift = _random(HiFTGenerator(spec.hift), dev, config.decoder_dtype, seed + 2, 3)
    vq02 = _random(SANMStreamingEncoder(spec.vq02), dev, config.frontend_dtype, seed + 3, spec.vq02.num_blocks)
    return flow, hift, vq02


def _random(module: torch.nn.Module, device: torch.device, dtype: torch.dtype, seed: int, depth: int):
    module = module.to(device=device)
    randomize_(module, seed, depth)
    return module.to(dtype=dtype).eval().requires_grad_(False)


def _dummy_cmvn() -> Cmvn:
    """Log-mel fbank of speech at int16 scale sits around 8..16 (nats): centre and scale it to ~N(0, 1)."""
    dim = 80 * 7
    return Cmvn(shift=torch.full((dim,), -12.0), scale=torch.full((dim,), 0.33))

