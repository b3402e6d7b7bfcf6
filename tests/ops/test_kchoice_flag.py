"""The kernel's in-pass validation: one int32 count of invalid rows, read only when asked.

Counted under the interpreter with ``TorchDispatchMode``: the default call on the
Triton path issues one kernel launch, no aten op besides allocations and views,
and no host read (``aten._local_scalar_dense`` is what ``.item()``, ``bool()``
and ``int()`` of a tensor dispatch to: on CUDA each is a sync). The ops the
interpreter itself runs inside the launch are not counted (on a GPU they are the kernel).
"""

from __future__ import annotations

import math

import pytest
import torch
from kchoice_helpers import needs_triton
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_curate import kchoice

pytestmark = needs_triton

# Allocations and views: no kernel on a GPU, no data read.
FREE_OPS = {"aten.empty.memory_format", "aten.detach.default", "aten.view.default", "aten.slice.Tensor",
            "aten.alias.default"}
SYNC = "aten._local_scalar_dense.default"


class OpCounter(TorchDispatchMode):
    """Records the aten ops dispatched outside kernel launches, and counts the launches."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []
        self.launches = 0
        self._in_kernel = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self._in_kernel:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def counter(monkeypatch):
    import triton.runtime.interpreter as interp

    launch = interp.GridExecutor.__call__
    state = {}

    def counted(self, *args, **kwargs):
        mode = state.get("mode")
        if mode is None:
            return launch(self, *args, **kwargs)
        mode.launches += 1
        mode._in_kernel = True
        try:
            return launch(self, *args, **kwargs)
        finally:
            mode._in_kernel = False

    monkeypatch.setattr(interp.GridExecutor, "__call__", counted)

    def make():
        state["mode"] = OpCounter()
        return state["mode"]

    yield make
    state.clear()


@pytest.mark.parametrize("m, mode, extra", [
    (1, "softmax", {}),
    (1, "argmax", {}),
    (3, "softmax", {}),
    (1, "softmax", {"index_dtype": torch.int32, "log_probs": False}),
    (1, "softmax", {"seed": (5, torch.arange(64) * 3)}),
])
def test_default_call_is_one_launch_without_aten_work_or_sync(counter, m, mode, extra):
    rewards = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    kwargs = {"seed": 11, **extra}
    kchoice(rewards, 1.3, num_winners=m, mode=mode, backend="triton", **kwargs)  # warm: the flag block is zeroed
    with counter() as c:
        out = kchoice(rewards, 1.3, num_winners=m, mode=mode, backend="triton", **kwargs)
    assert c.launches == 1
    assert set(c.ops) <= FREE_OPS, sorted(set(c.ops) - FREE_OPS)
    with counter() as c:
        out.check()
    assert c.ops.count(SYNC) == 1 and c.launches == 0  # the check is one read of the flag
    with counter() as c:
        out.check()
    assert c.ops == []  # checked once: nothing left to read


def test_check_true_reads_the_flag_once(counter):
    rewards = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    kchoice(rewards, seed=1, backend="triton")
    with counter() as c:
        kchoice(rewards, seed=1, backend="triton", check=True)
    assert c.launches == 1 and c.ops.count(SYNC) == 1
    assert set(c.ops) - {SYNC} <= FREE_OPS


def test_the_flag_counts_every_kind_of_invalid_row():
    rewards = torch.randn(10, 5, generator=torch.Generator().manual_seed(2))
    rewards[1, 2] = math.nan
    rewards[4, 0] = math.inf
    rewards[6] = -math.inf
    rewards[8, 3] = 1e38  # beta * r overflows float32 at beta = 10
    out = kchoice(rewards, 10.0, seed=3, backend="triton")  # no error yet: the flag is unread
    assert int(out._pending.flag) == 4
    assert out.index.min() >= 0 and out.index.max() < 5  # a flagged row still indexes inside its row
    with pytest.raises(ValueError, match=r"rewards contains NaN or \+inf in 2 of 10 rows"):
        out.check()
    with pytest.raises(ValueError, match=r"NaN or \+inf in 2 of 10 rows"):
        out.check()  # a failed check does not clear the flag


@pytest.mark.parametrize("case, m, count, match", [
    ("all -inf", 1, 1, r"rewards has 1 of 3 rows whose candidates are all -inf"),
    ("overflow", 1, 1, r"beta \* rewards overflows torch.float32"),
    ("short", 2, 1, r"num_winners=2 but 1 of 3 rows have fewer than 2"),
    # m > 1: a NaN row fails both tests (first pass's logsumexp, last log-probability): counted twice.
    ("nan", 2, 2, r"rewards contains NaN or \+inf in 1 of 3 rows"),
])
def test_one_bad_row_is_flagged_and_named(case, m, count, match):
    rewards = torch.zeros(3, 4)
    if case == "all -inf":
        rewards[1] = -math.inf
    elif case == "overflow":
        rewards[1, 1] = 3e38
    elif case == "short":
        rewards[1, 1:] = -math.inf
    else:
        rewards[1, 1] = math.nan
    out = kchoice(rewards, 2.0, num_winners=m, seed=0, backend="triton")
    assert int(out._pending.flag) == count
    with pytest.raises(ValueError, match=match):
        out.check()


@pytest.mark.parametrize("mode", ["softmax", "argmax", "uniform"])
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("beta", [0.0, 1.5])
def test_valid_rewards_raise_no_flag(mode, m, beta):
    """-inf candidates are valid as long as each row keeps enough finite ones."""
    rewards = torch.randn(40, 7, generator=torch.Generator().manual_seed(3))
    rewards[::3, 2] = -math.inf
    out = kchoice(rewards, beta, num_winners=m, mode=mode, seed=4, backend="triton")
    assert int(out._pending.flag) == 0
    assert out.check() is out


def test_torch_path_results_need_no_check():
    out = kchoice(torch.zeros(2, 3), seed=0, backend="torch")
    assert out._pending is None and out.check() is out
    with pytest.raises(ValueError, match="NaN"):
        kchoice(torch.tensor([[0.0, math.nan]]), seed=0, backend="torch")  # checked at once, as always


def test_the_loop_reads_the_flag_before_a_round_is_stored():
    """A curation round on the Triton path (interpreter) whose beta * reward overflows is refused with the
    op's message; the round returns nothing to store."""
    from torch import nn

    from lightning_curate.loop.curation_module import CurationModule
    from lightning_curate.models.flow_matching import FlowMatching
    from lightning_curate.models.mlp import MLPVelocity

    class Huge(nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0],), 3e38)

    torch.manual_seed(0)
    generator = FlowMatching(MLPVelocity(2, 32, 2), [2], steps=2, ema_decay=0.0)
    module = CurationModule(generator=generator, reward=Huge(), num_slots=40, num_candidates=3, beta=2.0,
                            backend="triton", preview_size=10)
    with pytest.raises(ValueError, match=r"beta \* rewards overflows torch.float32"):
        module.curate_round(1, seed=0)
