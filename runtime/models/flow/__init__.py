"""Flow-matching decoder of Step-Audio-EditX (CosyVoice2-style `CausalMaskedDiffWithXvec`).

Mixed LLM audio ids → `reshape_mixed_tokens` → token pairs → `FlowModel.inference`
(non-streaming) or `setup_stream` + `inference_chunk` (streaming) → 80-bin mel at 50 Hz.
"""
from .cfm import CausalConditionalCFM, EstimatorStreamCache, cosine_time_span
from .config import DiTConfig, FlowConfig, FlowEncoderConfig
from .dit import DiT, DiTCache
from .embedding import DualCodebookEmbedding
from .encoder import EncoderChunkCache, UpsampleConformerEncoderV2, block_causal_mask
from .flow import FlowModel, align_prompt_mel, load_flow
from .streaming import (
    FlowStreamState,
    StreamAction,
    inference_chunk,
    next_stream_action,
    plan_stream_chunks,
    setup_stream,
)
from .tokens import check_pair_ids, mixed_len, reshape_mixed_tokens

__all__ = [
    "CausalConditionalCFM", "DiT", "DiTCache", "DiTConfig", "DualCodebookEmbedding", "EncoderChunkCache",
    "EstimatorStreamCache", "FlowConfig", "FlowEncoderConfig", "FlowModel", "FlowStreamState", "StreamAction",
    "UpsampleConformerEncoderV2", "align_prompt_mel", "block_causal_mask", "check_pair_ids", "cosine_time_span",
    "inference_chunk", "load_flow", "mixed_len", "next_stream_action", "plan_stream_chunks",
    "reshape_mixed_tokens", "setup_stream",
]
