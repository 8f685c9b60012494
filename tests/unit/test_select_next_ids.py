"""`select_next_ids` (the engine's per-step sampling: rows warped in blocks of equal parameters, draws
over the top-k ids only): a request draws the same ids whoever shares its step, and the draws follow
softmax of the warped scores over the whole vocabulary (upstream's pipeline, the reference)."""
from __future__ import annotations

import torch

from editx.engine.generate import audio_logit_bias
from editx.engine.request import Request, _draw, select_next_ids
from editx.engine.sampling import SampledVocab, SamplingParams, apply_temperature, apply_top_k, draw_rows

VOCAB = 1037  # odd, and smaller than the real 74k for speed; the ops are row-wise either way


def make_request(i: int, params: SamplingParams, history: int) -> Request:
    g = torch.Generator().manual_seed(100 + i)
    prompt = torch.randint(0, VOCAB, (7,), generator=g).tolist()
    req = Request(id=i, prompt_ids=prompt, params=params, generator=torch.Generator().manual_seed(i),
                  t2w=None, text="")
    req.generated = torch.randint(0, VOCAB, (history,), generator=g).tolist()
    return req


def reference_probs(scores: torch.Tensor, temperature: float, top_k: int) -> torch.Tensor:
    """Upstream's distribution: temperature, top-k (ties kept), softmax over the whole vocabulary."""
    return torch.softmax(apply_top_k(apply_temperature(scores, temperature), top_k), dim=-1)


def test_blocks_of_equal_parameters_draw_what_each_request_draws_alone():
    mix = [SamplingParams(), SamplingParams(temperature=1.3, top_k=7), SamplingParams(greedy=True),
           SamplingParams(), SamplingParams(top_k=0), SamplingParams(temperature=1.3, top_k=7), SamplingParams()]
    for step in range(5):
        logits = torch.randn(len(mix), VOCAB, generator=torch.Generator().manual_seed(step)) * 3
        reqs = [make_request(i, p, history=3 * i) for i, p in enumerate(mix)]
        twins = [make_request(i, p, history=3 * i) for i, p in enumerate(mix)]
        got = select_next_ids(logits, reqs)
        want = [select_next_ids(logits[i:i + 1], [twins[i]])[0] for i in range(len(mix))]
        assert got == want, f"step {step}"


def test_the_whole_batch_in_one_block_when_parameters_agree():
    reqs = [make_request(i, SamplingParams(), history=12) for i in range(6)]
    twins = [make_request(i, SamplingParams(), history=12) for i in range(6)]
    logits = torch.randn(6, VOCAB, generator=torch.Generator().manual_seed(9))
    assert select_next_ids(logits, reqs) == [select_next_ids(logits[i:i + 1], [t])[0] for i, t in enumerate(twins)]


def test_draws_over_the_kept_ids_follow_the_full_vocabulary_distribution():
    """20,000 draws (one generator each) from one row with a tie at the k-th value: only kept ids come
    out (the tied ones included) and their frequencies match the reference probabilities within 5
    standard errors (sqrt(p(1-p)/N) <= 0.0036 here): a draw over the wrong support or with the wrong
    weights is off by far more."""
    scores = torch.randn(1, 40, generator=torch.Generator().manual_seed(3)) * 2
    top = scores.topk(6).values[0]
    scores[0, 35] = top[-1]  # a second id at the 6th value: top_k=6 keeps 7 ids
    probs = reference_probs(scores, 0.8, 6)[0]
    n = 20000
    ids = _draw(scores.expand(n, -1), 0.8, 6, [torch.Generator().manual_seed(s) for s in range(n)])
    freq = torch.bincount(ids, minlength=40).double() / n
    assert set(ids.tolist()) == set(torch.nonzero(probs).view(-1).tolist()) and len(set(ids.tolist())) == 7
    tolerance = 5 * (probs.double() * (1 - probs.double()) / n).sqrt() + 1e-9
    assert ((freq - probs.double()).abs() <= tolerance).all(), (freq, probs)


def test_top_k_off_draws_over_the_whole_vocabulary():
    scores = torch.randn(1, 30, generator=torch.Generator().manual_seed(4))
    n = 20000
    ids = _draw(scores.expand(n, -1), 1.3, 0, [torch.Generator().manual_seed(s) for s in range(n)])
    probs = reference_probs(scores, 1.3, 0)[0].double()
    freq = torch.bincount(ids, minlength=30).double() / n
    assert ((freq - probs).abs() <= 5 * (probs * (1 - probs) / n).sqrt() + 1e-9).all()


def test_rows_with_and_without_ties_in_one_block_keep_their_own_supports():
    plain = torch.randn(1, 40, generator=torch.Generator().manual_seed(5))
    tied = plain.clone()
    tied[0, 3] = tied.topk(4).values[0, -1]  # an extra id at the 4th value of this row only
    n = 4000
    block = torch.cat([tied.expand(n, -1), plain.expand(n, -1)])
    ids = _draw(block, 0.7, 4, [torch.Generator().manual_seed(s) for s in range(2 * n)])
    for row, drawn in ((tied, ids[:n]), (plain, ids[n:])):
        support = set(torch.nonzero(reference_probs(row, 0.7, 4)[0]).view(-1).tolist())
        assert set(drawn.tolist()) == support
    assert len(set(ids[:n].tolist())) == 5 and len(set(ids[n:].tolist())) == 4


def test_compact_vocabulary_columns_draw_the_ids_the_full_biased_logits_draw():
    """The engine's audio-only path: logits of the allowed ids only ([S, n], `SampledVocab`) give the
    ids the full logits + bias give (random scores have no ties, so even the draws coincide); the
    repetition ban maps the last id to its column, and an id outside the subset is never banned."""
    bias = audio_logit_bias(VOCAB, 3, first_audio_id=501, num_audio_ids=333)
    vocab = SampledVocab.from_bias(bias)
    assert vocab.ids.tolist() == [3] + list(range(501, 834)) and int(vocab.column_of[501]) == 1
    params = [SamplingParams(), SamplingParams(greedy=True), SamplingParams(temperature=1.1, top_k=9)]
    for step in range(4):
        logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(20 + step)) * 3
        full, compact = ([make_request(i, p, history=4 * step) for i, p in enumerate(params)] for _ in range(2))
        for r, t in zip(full, compact):  # a repeated allowed id at the end: the ban must hit its column
            r.generated = t.generated = r.generated[:2] + [600] * 3
        want = select_next_ids(logits, full, bias)
        got = select_next_ids(logits[:, vocab.ids], compact, bias, vocab)
        assert got == want and all(i in vocab.ids.tolist() for i in got), f"step {step}"
        assert 600 not in got


def test_a_row_draws_the_same_ids_whatever_ties_its_block_holds():
    """Each row consumes one uniform per step whatever its block holds (`draw_rows`), so a row beside a
    row with extra ties at its k-th value (which widens the block) draws, step after step from its one
    generator, the ids it draws alone."""
    plain = torch.randn(1, 40, generator=torch.Generator().manual_seed(6))
    tied = plain.clone()
    tied[0, 9] = tied[0, 11] = tied.topk(5).values[0, -1]  # two extra ids at the 5th value
    for seed in range(5):
        alone_gen, beside_gen, other = (torch.Generator().manual_seed(s) for s in (seed, seed, 1000 + seed))
        alone = [int(_draw(plain, 0.9, 5, [alone_gen])[0]) for _ in range(30)]
        beside = [int(_draw(torch.cat([tied, plain]), 0.9, 5, [other, beside_gen])[1]) for _ in range(30)]
        assert beside == alone, seed


def test_draw_rows_follows_softmax_and_skips_masked_columns():
    """The batched inverse-CDF draw alone: frequencies of softmax(scores) within 5 standard errors of
    20,000 draws; -inf columns (not kept), including the first and the last, never come out."""
    scores = torch.randn(1, 9, generator=torch.Generator().manual_seed(8)) * 1.5
    scores[0, [0, 4, 8]] = float("-inf")
    n = 20000
    picks = draw_rows(scores.expand(n, -1), [torch.Generator().manual_seed(s) for s in range(n)])
    probs = torch.softmax(scores[0].double(), dim=-1)
    freq = torch.bincount(picks, minlength=9).double() / n
    assert freq[[0, 4, 8]].sum() == 0
    assert ((freq - probs).abs() <= 5 * (probs * (1 - probs) / n).sqrt() + 1e-12).all(), (freq, probs)


def test_a_tiny_change_of_the_logits_rarely_changes_the_draw():
    """Batched and single-row LLM steps give logits ~2e-6 apart (measured on dummy:tiny), so the draw must
    be continuous in the scores for concurrent requests to draw what they draw alone: with a 1e-4
    perturbation at most 1% of 2,000 draws may change (measured 0.35%; per-row multinomial 0.55%).
    A draw that depended on the scores' exact bits (seeding from them, say) would change about all."""
    n = 2000
    scores = torch.randn(n, 300, generator=torch.Generator().manual_seed(12))
    nudged = scores + 1e-4 * torch.randn(n, 300, generator=torch.Generator().manual_seed(13))
    first = _draw(scores, 0.7, 50, [torch.Generator().manual_seed(s) for s in range(n)])
    second = _draw(nudged, 0.7, 50, [torch.Generator().manual_seed(s) for s in range(n)])
    assert (first != second).float().mean() <= 0.01
