"""Every case of every fixture set must be claimed by a parity test.

The parity tests select cases by name (exact or prefix) through `fixture_sets.named`;
this table mirrors those selections. A fixture set with a case no test handles fails
here instead of being silently skipped.
"""
from __future__ import annotations

import pytest

from fixture_sets import all_cases, fixture_roots

# name or prefix -> the test module that runs it
CLAIMS = {
    "tokenizer_encode": "test_text.py",
    "prompt_edit_": "test_text.py",
    "prompt_clone_": "test_text.py",
    "clone_speaker_id": "test_text.py",
    "vq0206_interleave": "test_text.py",
    "llm_forward": "test_llm.py",          # also llm_forward_bf16
    "llm_incremental": "test_llm.py",
    "llm_greedy_generate": "test_llm.py",
    "llm_sampling_processors": "test_llm.py",
    "repetition_processor": "test_llm.py",
    "frontend_": "test_frontend.py",
    "vq02_": "test_vq02.py",                # encoder weights/forward, kmeans, wav_to_codes
    "token_reshape": "test_flow.py",
    "dual_codebook_embedding": "test_flow.py",
    "flow_encoder": "test_flow.py",
    "dit_estimator_": "test_flow.py",
    "flow_inference": "test_flow.py",
    "hift_": "test_hift.py",
    "token2wav_": "test_token2wav.py",
}


def test_fixture_sets_present():
    assert fixture_roots(), "no fixture set found: set EDITX_FIXTURES or place ../shared/fixtures beside the repo"


@pytest.mark.parametrize("case", all_cases(), ids=lambda c: c.id)
def test_case_is_claimed(case):
    claimed = [f for p, f in CLAIMS.items() if case.name == p or case.name.startswith(p)]
    assert claimed, f"fixture case {case.id} ({case.spec.get('function')}) has no parity test"
