"""`graph_hazards`: what would break a CUDA-graph capture, found on the CPU. First that it names each
kind of hazard (so a clean result means something), then that the DiT slot pool's solves, the steps
`DiTSlots` captures on a GPU, have none."""
from __future__ import annotations

import pytest
import torch

from decoder_testing import loaded_pool_solve, tiny_flow

from editx.models.graph_safety import HOST_METHODS, graph_hazards

BUF = torch.arange(7.0)
MASK = BUF > 2.5

HAZARDOUS_STEPS = {  # a step each, and the op the checker must name
    "item": (lambda: BUF.sum().item(), "Tensor.item"),
    "python if": (lambda: BUF * 2 if BUF.max() > 0 else BUF, "Tensor.__bool__"),
    "int()": (lambda: BUF[: int(BUF[3])], "Tensor.__int__"),
    "float()": (lambda: float(BUF[3]) * BUF, "Tensor.__float__"),
    "range()": (lambda: [BUF[i] for i in range(torch.arange(7)[2])], "Tensor.__index__"),
    "torch.equal": (lambda: torch.equal(BUF, BUF), "equal"),
    "nonzero": (lambda: BUF.nonzero(), "nonzero"),
    "boolean mask": (lambda: BUF[MASK], "index"),
    "masked_select": (lambda: BUF.masked_select(MASK), "masked_select"),
    "torch.tensor": (lambda: BUF + torch.tensor([1.0]), "lift_fresh"),
    "randn": (lambda: BUF + torch.randn(7), "randn"),
    "tolist": (lambda: BUF.tolist(), "Tensor.tolist"),
    "numpy": (lambda: BUF.numpy(), "Tensor.numpy"),
    "unique": (lambda: BUF.unique(), "_unique2"),
}


@pytest.mark.parametrize("inference", [False, True], ids=["grad_mode", "inference_mode"])
@pytest.mark.parametrize("kind", sorted(HAZARDOUS_STEPS))
def test_each_kind_of_hazard_is_named_with_our_line(kind, inference):
    """Also under inference_mode, where the runtime's solves run (and where a scalar read skips the
    dispatch modes: the checker must catch it at the Tensor method)."""
    step, op = HAZARDOUS_STEPS[kind]
    with torch.inference_mode(inference):
        hazards = graph_hazards(step)
    assert [h.op for h in hazards] == [op], kind
    assert hazards[0].where.startswith("test_graph_safety.py:"), hazards[0].where  # the step's line, not torch's
    assert hazards[0].why


def test_static_buffer_work_is_clean_and_methods_are_restored():
    out = torch.empty(7)
    index = torch.tensor([4, 0, 6])

    def step():  # what a capturable step does: fixed shapes, in-place writes, index ops on device indices
        torch.mul(BUF, 3.0, out=out)
        out.index_add_(0, index, BUF[:3])
        return torch.where(MASK, out, -out).softmax(0) @ BUF.index_select(0, index).repeat(3)[:7]

    originals = {name: getattr(torch.Tensor, name) for name in HOST_METHODS}
    assert graph_hazards(step) == []
    assert all(getattr(torch.Tensor, name) is method for name, method in originals.items())  # unpatched again


def test_hazards_in_a_failing_step_propagate_and_restore():
    def step():
        BUF.tolist()
        raise RuntimeError("boom")

    original = torch.Tensor.tolist
    with pytest.raises(RuntimeError, match="boom"):
        graph_hazards(step)
    assert torch.Tensor.tolist is original  # restored although the step raised
    assert graph_hazards(lambda: BUF + 1) == []


# Odd widths and a padded batch bucket (3 rows in bucket 4); chunks and set-ups.
@pytest.mark.parametrize("ring, batch, width", [(True, 1, 30), (True, 3, 47), (False, 1, 61), (False, 2, 160)])
def test_dit_slot_pool_solves_are_capturable(ring, batch, width):
    with torch.inference_mode():
        _, step = loaded_pool_solve(tiny_flow(), ring, batch, width)
        hazards = graph_hazards(step)
    assert hazards == [], "\n".join(map(str, hazards))


def test_cpu_only_host_reads_are_not_reported_but_the_rest_is():
    from editx.models.graph_safety import cpu_only_host_reads

    def step():
        with cpu_only_host_reads():  # e.g. Step1's id range check, skipped for CUDA tensors
            int(BUF.max())
        return BUF.sum().item()

    assert [h.op for h in graph_hazards(step)] == ["Tensor.item"]
