"""`linear_entropy_pg_loss` and `linear_logprobs_and_entropy` equal `entropy_pg_loss` and
`logprobs_and_entropy` on the materialised logits hidden @ weight.T + bias: values, stats and the gradients
of hidden, weight and bias, for every scenario of kernels_cases (every option, aggregation mode and layout,
packed input included), each dtype and backend; tied weights; chunking; bad inputs."""

import math

import pytest
import torch
import torch.nn.functional as F
from kernels_cases import CASES, make_case, with_behaviour_logprobs
from torch.utils._python_dispatch import TorchDispatchMode

from exprl.kernels import (
    default_chunk_size,
    entropy_pg_loss,
    linear_entropy_pg_loss,
    linear_logprobs_and_entropy,
    logprobs_and_entropy,
    triton_backend,
)
from exprl.kernels import linear_op as linear_op_module

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
HIDDEN = 24


@pytest.fixture(autouse=True)
def small_triton_blocks(monkeypatch):
    # several blocks per row, the last one ragged, even at the tiny V the interpreter can afford
    monkeypatch.setattr(triton_backend, "MAX_BLOCK_V", 32)


def linear_inputs(shape, vocab: int, dtype: torch.dtype, bias: bool = True, seed: int = 0):
    """hidden (*shape, H), weight (V, H), bias (V,) or None: logits of scale ~3, rounded to dtype."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*shape, HIDDEN, generator=g)
    weight = torch.randn(vocab, HIDDEN, generator=g) * (3 / math.sqrt(HIDDEN))
    b = torch.randn(vocab, generator=g) if bias else None
    return tuple(None if x is None else x.to(dtype) for x in (hidden, weight, b))


def leaves(*tensors):
    return [None if x is None else x.clone().requires_grad_() for x in tensors]


def assert_close(actual, expected, what, dtype, scale=None):
    """fp32: to ~1e-5 relative; 16-bit: a few ulps of the largest entry (the gradients are stored in the
    inputs' dtype, and dweight is summed over chunks in it)."""
    actual, expected = actual.double(), expected.double()
    magnitude = float(expected.abs().max()) if scale is None and expected.numel() else (scale or 1.0)
    rtol = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}[dtype]
    torch.testing.assert_close(
        actual, expected, rtol=rtol, atol=rtol * magnitude + 1e-6, msg=lambda m: f"{what}: {m}"
    )


def check_parity(case_name, dtype, backend, chunk_size, with_bias=True, grad_scale=1.0):
    case = make_case(case_name)
    targets = case.target_ids
    hidden, weight, bias = linear_inputs(targets.shape, case.logits.shape[-1], dtype, with_bias)
    options = with_behaviour_logprobs(case, F.linear(hidden, weight, bias))

    want_leaves = leaves(hidden, weight, bias)
    expected = entropy_pg_loss(F.linear(*want_leaves), targets, case.advantages, backend=backend, **options)
    (expected.loss * grad_scale).backward()
    got_leaves = leaves(hidden, weight, bias)
    got = linear_entropy_pg_loss(
        got_leaves[0],
        got_leaves[1],
        targets,
        case.advantages,
        bias=got_leaves[2],
        chunk_size=chunk_size,
        backend=backend,
        **options,
    )
    (got.loss * grad_scale).backward()

    assert got.logprobs.shape == targets.shape and got.logprobs.dtype == torch.float32
    assert_close(got.logprobs, expected.logprobs, "logprobs", dtype, scale=10.0)
    assert_close(got.entropy, expected.entropy, "entropy", dtype, scale=5.0)
    assert_close(got.loss, expected.loss, "loss", dtype, scale=1.0)
    for key, value in expected.stats.items():
        assert_close(got.stats[key], value, f"stats[{key}]", dtype, scale=1.0)
    for name, x, want in zip(("hidden", "weight", "bias"), got_leaves, want_leaves, strict=True):
        if want is None:
            continue
        assert x.grad is not None and x.grad.dtype == dtype and x.grad.shape == x.shape, name
        assert_close(x.grad, want.grad, f"d{name}", dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", ["torch", "triton", "eager"])
def test_matches_entropy_pg_loss_on_materialised_logits(backend, case, dtype):
    # chunks of 4 rows: several chunks, the last one ragged, in every case
    check_parity(case, dtype, backend, chunk_size=4)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("chunk_size", [1, 5, None, 1000])
def test_chunk_size_does_not_change_the_result(backend, chunk_size):
    check_parity("k3-packed-per-sequence-advantages", torch.float32, backend, chunk_size)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_without_bias_and_with_a_scaled_loss(backend):
    check_parity("k1-entropy-temperature-seq-sum", torch.float32, backend, 3, with_bias=False, grad_scale=2.5)


@pytest.mark.parametrize("backend", ["torch", "triton", "eager"])
def test_tied_weights_sum_both_gradients(backend):
    """An embedding whose matrix is also the lm_head: its gradient is the sum over both uses."""
    vocab, batch, time = 40, 3, 6
    g = torch.Generator().manual_seed(3)
    table = torch.randn(vocab, HIDDEN, generator=g)
    mix = torch.randn(HIDDEN, HIDDEN, generator=g) / math.sqrt(HIDDEN)
    ids = torch.randint(0, vocab, (batch, time), generator=g)
    targets = torch.randint(0, vocab, (batch, time), generator=g)
    advantages = torch.randn(batch, generator=g)
    grads = []
    for fused in (False, True):
        emb = table.clone().requires_grad_()
        hidden = torch.tanh(F.embedding(ids, emb) @ mix)
        kwargs = dict(entropy_coef=0.05, loss_agg="seq-mean-token-mean", backend=backend)
        if fused:
            out = linear_entropy_pg_loss(hidden, emb, targets, advantages, chunk_size=4, **kwargs)
        else:
            out = entropy_pg_loss(hidden @ emb.t(), targets, advantages, **kwargs)
        out.loss.backward()
        grads.append(emb.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


def test_frozen_weight_gets_no_gradient_and_hidden_gets_its_own():
    hidden, weight, bias = linear_inputs((9,), 30, torch.float32)
    targets = torch.randint(0, 30, (9,), generator=torch.Generator().manual_seed(1))
    advantages = torch.randn(9, generator=torch.Generator().manual_seed(2))
    h = hidden.clone().requires_grad_()
    linear_entropy_pg_loss(h, weight, targets, advantages, bias=bias, chunk_size=2).loss.backward()
    h_want = hidden.clone().requires_grad_()
    entropy_pg_loss(F.linear(h_want, weight, bias), targets, advantages).loss.backward()
    assert weight.grad is None and bias.grad is None
    torch.testing.assert_close(h.grad, h_want.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", ["torch", "triton", "eager"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_forward_only_matches_logprobs_and_entropy(backend, dtype):
    hidden, weight, bias = linear_inputs((3, 5), 45, dtype)
    targets = torch.randint(0, 45, (3, 5), generator=torch.Generator().manual_seed(4))
    targets[1, 2] = -100
    got = linear_logprobs_and_entropy(
        hidden, weight, targets, bias=bias, temperature=0.7, chunk_size=4, backend=backend
    )
    want = logprobs_and_entropy(F.linear(hidden, weight, bias), targets, temperature=0.7, backend=backend)
    for g, w, what in zip(got, want, ("logprobs", "entropy"), strict=True):
        assert g.shape == targets.shape and g.dtype == torch.float32
        assert_close(g, w, what, dtype, scale=10.0)
    assert got[0][1, 2] == 0


def test_no_gradient_when_grad_mode_is_off():
    hidden, weight, bias = leaves(*linear_inputs((6,), 20, torch.float32))
    with torch.no_grad():
        out = linear_entropy_pg_loss(hidden, weight, torch.arange(6), torch.ones(6), bias=bias)
    assert not out.loss.requires_grad


class _LargestAllocation(TorchDispatchMode):
    """Records the largest tensor (in bytes) that any op returns while the mode is active (the Triton
    interpreter's host copies are uint8 tensors: counted in bytes, they weigh what they copy)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in out if isinstance(out, tuple | list) else (out,):
            if isinstance(x, torch.Tensor):
                self.largest = max(self.largest, x.nbytes)
        return out


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_never_holds_more_than_one_chunk_of_logits(backend):
    """No fp32 tensor of the forward+gradient pass is larger than chunk x V (here >= N x H and >= V x H)."""
    n, vocab, chunk = 128, 100, 32
    hidden, weight, bias = linear_inputs((n,), vocab, torch.float32)
    targets = torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(5))
    ones = torch.ones(n)
    options = '{"entropy_coef": 0.1}'
    recorder = _LargestAllocation()
    with recorder:
        outputs = linear_op_module._linear_loss_forward(
            hidden,
            weight,
            bias,
            targets,
            ones / n,
            ones,
            None,
            None,
            options,
            backend,
            chunk,
            True,
            True,
            True,
        )
    assert outputs[6].shape == hidden.shape and outputs[7].shape == weight.shape
    assert 0 < recorder.largest <= 4 * chunk * vocab < 4 * n * vocab


def test_default_chunk_size_tracks_the_hidden_states():
    # T = 1024 at Qwen's sizes: N * H = 21M elements < 2^25, so the chunk holds 2^25 logits
    assert default_chunk_size(8192, 2560, 151936) == math.ceil(2**25 / 151936)
    # T = 4096: the hidden states (84M elements) are larger, a chunk of logits matches them
    assert default_chunk_size(32768, 2560, 151936) == math.ceil(32768 * 2560 / 151936)
    assert default_chunk_size(100, 512, 32768) == 100  # never more rows than there are
    assert default_chunk_size(0, 512, 32768) == 1


def test_empty_input_gives_zero_loss():
    hidden, weight, bias = leaves(*linear_inputs((0,), 20, torch.float32))
    out = linear_entropy_pg_loss(hidden, weight, torch.zeros(0, dtype=torch.long), torch.zeros(0), bias=bias)
    out.loss.backward()
    assert float(out.loss.detach()) == 0 and out.logprobs.shape == (0,)
    assert float(weight.grad.abs().sum()) == 0


def _call(**overrides):
    hidden, weight, bias = linear_inputs((2, 3), 10, torch.float32)
    args = dict(hidden=hidden, weight=weight, target_ids=torch.zeros(2, 3, dtype=torch.long))
    args.update(advantages=torch.ones(2), bias=bias)
    args.update(overrides)
    return linear_entropy_pg_loss(
        args.pop("hidden"), args.pop("weight"), args.pop("target_ids"), args.pop("advantages"), **args
    )


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        (dict(hidden=[[1.0]]), TypeError, "hidden must be a torch.Tensor"),
        (dict(hidden=torch.ones(2, 3, 24, dtype=torch.long)), TypeError, "hidden must be float32"),
        (dict(hidden=torch.ones(24)), ValueError, r"hidden must have shape \(N, H\) or \(B, T, H\)"),
        (dict(weight=torch.ones(10, 23)), ValueError, r"weight must have shape \(V, H\) = \(V, 24\)"),
        (
            dict(weight=torch.ones(10, 24, dtype=torch.float64)),
            TypeError,
            "weight must have the dtype of hidden",
        ),
        (dict(bias=torch.ones(11)), ValueError, r"bias must have shape \(V,\) = \(10,\)"),
        (dict(bias=torch.ones(10, dtype=torch.bfloat16)), TypeError, "bias must have the dtype of hidden"),
        (dict(bias="zero"), TypeError, "bias must be a torch.Tensor"),
        (
            dict(target_ids=torch.zeros(2, 4, dtype=torch.long)),
            ValueError,
            r"target_ids must have shape \(2, 3\)",
        ),
        (dict(target_ids=torch.full((2, 3), 10)), ValueError, r"target_ids must lie in \[0, 10\)"),
        (dict(chunk_size=0), ValueError, "chunk_size must be a positive integer"),
        (dict(chunk_size=2.5), ValueError, "chunk_size must be a positive integer"),
        (dict(chunk_size=True), ValueError, "chunk_size must be a positive integer"),
        (dict(mask=torch.ones(3, 2)), ValueError, "mask must have the shape of target_ids"),
        (dict(kl_coef=0.1), ValueError, "ref_logprobs is required when kl_coef > 0"),
        (dict(loss_agg="sum"), ValueError, "loss_agg must be one of"),
        (dict(backend="cuda"), ValueError, "backend must be one of"),
    ],
)
def test_bad_input_is_rejected_naming_the_argument(overrides, error, match):
    with pytest.raises(error, match=match):
        _call(**overrides)


def test_forward_only_rejects_bad_input():
    hidden, weight, _ = linear_inputs((4,), 10, torch.float32)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        linear_logprobs_and_entropy(hidden, weight, torch.zeros(4, dtype=torch.long), temperature=0)
    with pytest.raises(ValueError, match=r"weight must have shape \(V, H\)"):
        linear_logprobs_and_entropy(hidden, weight.t(), torch.zeros(4, dtype=torch.long))
