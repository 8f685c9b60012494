"""Host time to fill a decode step's static buffers (the CUDA-graph path's inputs), per engine step.

    python benchmarks/e2e/bench_decode_fill.py [--rows 1 4 16 64 256] [--rounds 5]

`rows`: the engine's previous fill (one SequenceChunk per decoding sequence, its block table as a list,
then a per-row loop filling the padded buffers) vs `_PagedStatic.load_arrays` (the plan's CSR block
tables scattered at once). Both write the same buffers (tests/unit/test_model_runner.py). This is host
work on every decode step, on the same thread that then replays the graph and samples: on a GPU it adds
to each token's latency. Sequences look like the streaming workload: a 566-id voice prompt + 40 text
ids + up to 200 generated (block size 16, ~50 blocks each). CPU numbers are the real ones here.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import environment, finish, progress, result_path  # noqa: E402

from editx.engine.model_runner import _PagedStatic  # noqa: E402
from editx.engine.paged_kv import SequenceChunk  # noqa: E402

BLOCK, MAX_BLOCKS, SCRATCH = 16, 512, 65_535  # max_model_len 8192


def step_inputs(n: int, seed: int):
    """A decode step of n sequences as the plan holds it: token ids, positions, CSR block tables."""
    rng = np.random.default_rng(seed)
    positions = rng.integers(566 + 40, 566 + 40 + 200, n).astype(np.int64)
    lengths = positions // BLOCK + 1
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    table_ids = rng.permutation(SCRATCH)[:offsets[-1]].astype(np.int32)
    return rng.integers(65_536, 70_656, n).tolist(), positions, offsets, table_ids


def per_row(static, tokens, positions, offsets, table_ids):
    chunks = [SequenceChunk([tokens[i]], int(positions[i]), table_ids[offsets[i]:offsets[i + 1]].tolist())
              for i in range(len(tokens))]
    static.load(chunks, BLOCK, SCRATCH)


def arrays(static, tokens, positions, offsets, table_ids):
    static.load_arrays(tokens, positions, offsets, table_ids, BLOCK, SCRATCH)


def time_us(fn, repeats: int = 300) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e6


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds of both fills (medians reported)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    levels, rows_out = [], []
    for n in args.rows:
        static = _PagedStatic(n, MAX_BLOCKS, torch.device("cpu"))
        inputs = step_inputs(n, n)
        times = {"rows": [], "arrays": []}
        for r in range(args.rounds):
            for name in (("rows", "arrays") if r % 2 == 0 else ("arrays", "rows")):
                fn = per_row if name == "rows" else arrays
                times[name].append(time_us(lambda: fn(static, *inputs)))
        med = {k: statistics.median(v) for k, v in times.items()}
        levels.append({"rows": n, "per_row_us": med["rows"], "arrays_us": med["arrays"],
                       "speedup": med["rows"] / med["arrays"]})
        progress(f"{n} rows: per-row {med['rows']:.1f} us, arrays {med['arrays']:.1f} us")
        rows_out.append((f"{n} rows", f"per-row {med['rows']:8.1f} us | arrays {med['arrays']:8.1f} us | "
                                      f"x{med['rows'] / med['arrays']:.2f}"))
    payload = {"benchmark": "e2e/decode_fill", "env": environment(torch.device("cpu")), "block_size": BLOCK,
               "max_blocks": MAX_BLOCKS, "levels": levels}
    return finish(result_path(args.out, "decode_fill", torch.device("cpu")), payload, rows_out)


if __name__ == "__main__":
    main()
