"""Offline (non-streaming) end-to-end benchmark: stage times, decode tok/s, RTF -> JSON.

    python benchmarks/e2e/bench_offline.py --model dummy:tiny                       # CPU smoke run
    python benchmarks/e2e/bench_offline.py --model dummy:full --device cuda --dtype bf16 --tokens 500

Stages: front end (vq02 + vq06 + CAM++ + prompt mel), LLM prefill of a clone prompt, LLM
decode (a fixed number of audio tokens: the stop id is masked so every run decodes the same
count), flow matching and the HiFT vocoder on the generated tokens. Decode is measured three
ways in the same run: an upstream-style baseline (dynamic concatenated KV cache and the full
sqrt-ALiBi bias matrix rebuilt every step, as upstream's HF path does), our eager static-cache
step, and (CUDA only) our CUDA-graphed step. Against the measured copy bandwidth it reports
the batch-1 roofline (`llm_bw_util`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import (DEFAULT_PROMPT, PROMPT_TEXT, copy_bandwidth_gbs,  # noqa: E402
                    environment, finish, progress, result_path, sync, time_ms)

from editx import Runtime  # noqa: E402
from editx.engine.generate import audio_logit_bias, generate, prefill  # noqa: E402
from editx.engine.kv_cache import KVCache  # noqa: E402
from editx.engine.model_runner import GraphedDecoder  # noqa: E402
from editx.engine.sampling import SamplingParams  # noqa: E402
from editx.engine.voice import encode_voice  # noqa: E402
from editx.layers import set_kernel_backend  # noqa: E402
from editx.models.flow import reshape_mixed_tokens  # noqa: E402
from editx.models.step1 import alibi_bias_reference  # noqa: E402
from editx.models.text import clone_speaker_id, encode_clone_prompt  # noqa: E402

DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog, and then it runs far away into the green forest."
AUDIO_TOKENS_PER_S = 41.667


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="dummy:tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="LLM dtype (default bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--decoder-dtype", default="float32")
    p.add_argument("--prompt-audio", default=str(DEFAULT_PROMPT))
    p.add_argument("--prompt-text", default=PROMPT_TEXT)
    p.add_argument("--text", default=DEFAULT_TEXT)
    p.add_argument("--tokens", type=int, default=200, help="audio tokens to decode (41.67 per second of audio)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-baseline", action="store_true", help="skip the slow upstream-style decode")
    p.add_argument("--kernels", default="auto", choices=["auto", "reference", "triton"],
                   help="fused-op backend (editx.layers.set_kernel_backend); compare runs to see the kernels' gain")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/offline_<device>.json)")
    return p.parse_args(argv)


# -- upstream-style decode baseline (dynamic cache, full bias matrix every step) -------------
def upstream_style_generate(model, ids: list[int], n_tokens: int, bias_vec: torch.Tensor) -> list[int]:
    """Greedy decode the way upstream's HF path computes it: K/V concatenated per step and the
    [H, K, K] sqrt-ALiBi matrix rebuilt in every layer (then its last row used)."""
    dev, dt = model.device, model.dtype
    slopes = model.slopes(dev)
    caches: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(model.model.layers)
    x = torch.tensor([ids], device=dev)
    out: list[int] = []
    for _ in range(n_tokens):
        h = model.model.embed_tokens(x)
        for i, layer in enumerate(model.model.layers):
            attn = layer.self_attn
            q, k, v = attn._project(layer.input_layernorm(h), fused=False)  # upstream's three GEMMs
            if caches[i] is not None:
                k, v = torch.cat([caches[i][0], k], dim=2), torch.cat([caches[i][1], v], dim=2)
            caches[i] = (k, v)
            rep = attn.num_heads // attn.num_groups
            bias = alibi_bias_reference(slopes, k.shape[2], q.shape[2], dt)
            o = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                               attn_mask=bias)
            h = layer._mlp_block(h + attn._output(o), fused=False)
        logits = model.lm_head(model.model.norm(h[:, -1])).float() + bias_vec
        nxt = int(logits.argmax(-1))
        out.append(nxt)
        x = torch.tensor([[nxt]], device=dev)
    return out


def decode_bytes_per_step(model, context: int) -> int:
    """Bytes one batch-1 decode step must read: every weight but the embedding table (a gather) + the KV cache."""
    cfg = model.config
    weights = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embed_tokens" not in n)
    kv = 2 * cfg.num_hidden_layers * cfg.num_attention_groups * cfg.head_dim * context * model.lm_head.weight.element_size()
    return weights + kv


def main(argv=None) -> dict:
    args = parse_args(argv)
    set_kernel_backend(args.kernels)
    rt = Runtime.from_pretrained(args.model, device=args.device, dtype=args.dtype, decoder_dtype=args.decoder_dtype)
    dev, comps = rt.config.device, rt.components
    llm, results = comps.llm, {}
    progress(f"loaded {args.model} on {dev}")

    # Front end: cold (first call), warm but uncached (median), and a voice-cache hit.
    wav, sr = rt._load(args.prompt_audio, "prompt")
    uncached = lambda: encode_voice(comps, wav, sr, dither=rt.config.vq02_dither)  # noqa: E731
    results["frontend_cold_ms"] = time_ms(uncached, dev, warmup=0, repeats=1)["median_ms"]
    results["frontend_ms"] = time_ms(uncached, dev, repeats=args.repeats)["median_ms"]
    voice = rt.encode_voice(args.prompt_audio)
    results["frontend_cached_ms"] = time_ms(lambda: rt.encode_voice(args.prompt_audio), dev,
                                            repeats=args.repeats)["median_ms"]
    ids = encode_clone_prompt(comps.text, args.text, args.prompt_text, clone_speaker_id(args.prompt_text, wav),
                              voice.token_str)
    n = args.tokens
    results.update(prompt_tokens=len(ids), decode_tokens=n)
    progress(f"front end: cold {results['frontend_cold_ms']:.1f} ms, cached {results['frontend_cached_ms']:.2f} ms")

    # Prefill.
    capacity = len(ids) + n + 1
    cache = KVCache.for_model(llm, 1, capacity)
    with torch.inference_mode():
        results["prefill_ms"] = time_ms(lambda: prefill(llm, [ids], cache, 512), dev, repeats=args.repeats)["median_ms"]

    # Decode: mask the stop id so every variant decodes exactly n tokens (greedy: same ids).
    bias = audio_logit_bias(llm.config.vocab_size, llm.config.eos_token_id, dev)
    bias[llm.config.eos_token_id] = float("-inf")
    params = SamplingParams(greedy=True, max_new_tokens=n, max_length=capacity)

    def decode_tok_s(run) -> float:
        total = time_ms(run, dev, warmup=1, repeats=args.repeats)["median_ms"]
        return (n - 1) / ((total - results["prefill_ms"]) / 1e3)  # n ids = 1 from prefill + n-1 steps

    progress(f"prefill {results['prefill_ms']:.1f} ms ({len(ids)} ids)")
    eager_ids = generate(llm, ids, params, logit_bias=bias).raw_ids
    results["llm_decode_tok_s_eager"] = decode_tok_s(lambda: generate(llm, ids, params, logit_bias=bias))
    if dev.type == "cuda":
        runner = GraphedDecoder(llm, 1, capacity)
        run = lambda: generate(llm, ids, params, logit_bias=bias, cache=runner.cache, decode_step=runner.step)  # noqa: E731
        results["llm_decode_tok_s_graph"] = decode_tok_s(run)
        results["graph_ids_match_eager"] = run().raw_ids == eager_ids
    if not args.skip_baseline:
        with torch.inference_mode():
            base_n = min(n, 100)
            t = time_ms(lambda: upstream_style_generate(llm, ids, base_n, bias), dev, warmup=0, repeats=1)
        results["llm_decode_tok_s_upstream_style"] = base_n / (t["median_ms"] / 1e3)  # includes its prefill
    best = results.get("llm_decode_tok_s_graph", results["llm_decode_tok_s_eager"])
    progress(f"decode {best:.1f} tok/s (eager {results['llm_decode_tok_s_eager']:.1f})")
    results["llm_decode_tok_s"] = best
    step_bytes = decode_bytes_per_step(llm, len(ids) + n // 2)
    bw = copy_bandwidth_gbs(dev, 1024 if dev.type == "cuda" else 256)
    results.update(copy_bandwidth_gbs=bw, decode_bytes_per_step=step_bytes,
                   llm_decode_ceiling_tok_s=bw * 1e9 / step_bytes, llm_bw_util=best * step_bytes / (bw * 1e9))

    # Decoder: flow matching + HiFT on the decoded tokens.
    mixed = torch.tensor(eager_ids[:-1]) - 65536
    pairs = reshape_mixed_tokens(mixed)[None].to(dev)
    cond = voice.conditioning
    flow_args = (pairs, cond.prompt_pairs.to(dev), cond.prompt_feat.to(dev), cond.embedding.to(dev), rt.decoder.noise)
    flow_t = time_ms(lambda: comps.flow.inference(*flow_args), dev, repeats=args.repeats)["median_ms"]
    mel = comps.flow.inference(*flow_args)
    gen = torch.Generator(device=dev).manual_seed(0)
    hift_t = time_ms(lambda: comps.hift.inference(mel, generator=gen), dev, repeats=args.repeats)["median_ms"]
    audio_s = mel.shape[2] * 480 / 24000
    results.update(flow_ms=flow_t, hift_ms=hift_t, audio_s=audio_s,
                   t2w_ms_per_audio_s=(flow_t + hift_t) / audio_s)
    decode_ms = (n - 1) / best * 1e3
    progress(f"flow {flow_t:.1f} ms, hift {hift_t:.1f} ms for {audio_s:.2f} s of audio")
    total = results["frontend_ms"] + results["prefill_ms"] + decode_ms + flow_t + hift_t
    results["rtf_stage_sum"] = total / 1e3 / audio_s

    # One real clone call through the public API (its own length: EOS allowed here).
    sync(dev)
    audio = rt.clone(args.prompt_audio, args.prompt_text, args.text, seed=0,
                     sampling=rt.default_sampling(max_new_tokens=n), stream=False)
    results["clone_call"] = {k: audio.info[k] for k in ("generated_tokens", "llm_s", "token2wav_s", "audio_s")}

    payload = {"benchmark": "e2e/offline", "model": args.model, "dtype": str(llm.dtype), "kernels": args.kernels,
               "decoder_dtype": str(comps.flow.dtype), "env": environment(dev), "results": results}
    out = result_path(args.out, "offline", dev, args.model)
    return finish(out, payload, [(k, f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in results.items()])


if __name__ == "__main__":
    main()
