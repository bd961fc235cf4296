"""The fused backends (`torch`, and `triton` under TRITON_INTERPRET=1 on CPU) match the float64
reference: values, stats and gradients, for every option, aggregation mode, dtype and layout."""

import math

import pytest
import torch
from kernels_cases import CASES, check_against_reference, make_case

from exprl.kernels import entropy_pg_loss, logprobs_and_entropy, reference, triton_backend

# the Triton interpreter evaluates both branches of tl.where in numpy: 0 * inf in the branch not taken
# (the kernel's -inf and masked-row guards) warns there, never on a GPU
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@pytest.fixture(autouse=True)
def small_triton_blocks(monkeypatch):
    # several blocks per row, the last one ragged, even at the tiny V the interpreter can afford
    monkeypatch.setattr(triton_backend, "MAX_BLOCK_V", 32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_backend_matches_fp64_reference(backend, case, dtype):
    check_against_reference(make_case(case), dtype, backend)


@pytest.mark.parametrize("backend", ["torch", "triton", "eager"])
def test_logprobs_and_entropy_match_reference(backend):
    logits = torch.randn(3, 4, 77, dtype=torch.bfloat16) * 4
    logits[0, 0, 3] = float("-inf")
    targets = torch.randint(0, 77, (3, 4))
    targets[2, 1] = -100
    want_logp, want_entropy = reference.logprobs_and_entropy(logits.double(), targets, temperature=0.8)
    logp, entropy = logprobs_and_entropy(logits, targets, temperature=0.8, backend=backend)
    assert logp.shape == entropy.shape == (3, 4) and logp.dtype == entropy.dtype == torch.float32
    torch.testing.assert_close(logp.double(), want_logp, rtol=0, atol=1e-5)
    torch.testing.assert_close(entropy.double(), want_entropy, rtol=0, atol=1e-5)
    assert logp[2, 1] == 0


def test_entropy_of_uniform_logits_is_log_vocab():
    logits = torch.zeros(2, 1000)
    _, entropy = logprobs_and_entropy(logits, torch.zeros(2, dtype=torch.long), backend="torch")
    torch.testing.assert_close(entropy, torch.full((2,), math.log(1000)))


@pytest.mark.parametrize("backend", ["torch", "triton", "eager"])
def test_nan_logits_give_nan_outputs(backend):
    logits = torch.randn(4, 50)
    logits[1, 7] = float("nan")
    x = logits.requires_grad_()
    out = entropy_pg_loss(x, torch.tensor([1, 2, 3, 4]), torch.ones(4), entropy_coef=0.1, backend=backend)
    out.loss.backward()
    assert torch.isnan(out.loss)
    assert torch.isnan(out.logprobs[1]) and torch.isnan(out.entropy[1])
    assert torch.isfinite(out.logprobs[[0, 2, 3]]).all()
    assert torch.isnan(x.grad[1]).any()
    assert torch.isfinite(x.grad[[0, 2, 3]]).all()


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_no_grad_returns_values_without_gradient_buffer(backend):
    logits = torch.randn(6, 40, requires_grad=True)
    targets = torch.randint(0, 40, (6,))
    adv = torch.randn(6)
    with torch.no_grad():
        out = entropy_pg_loss(logits, targets, adv, entropy_coef=0.1, backend=backend)
    want = reference.entropy_pg_loss(logits.detach().double(), targets, adv.double(), entropy_coef=0.1)
    assert not out.loss.requires_grad
    torch.testing.assert_close(out.loss.double(), want.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logprobs.double(), want.logprobs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_backward_scales_by_incoming_gradient(backend):
    logits = torch.randn(5, 30)
    targets = torch.randint(0, 30, (5,))
    adv = torch.randn(5)
    grads = []
    for factor in (1.0, -2.5):
        x = logits.clone().requires_grad_()
        (factor * entropy_pg_loss(x, targets, adv, entropy_coef=0.2, backend=backend).loss).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], -2.5 * grads[0])


@pytest.mark.slow
def test_loss_works_inside_torch_compile():
    logits = torch.randn(2, 5, 40)
    targets = torch.randint(0, 40, (2, 5))
    adv = torch.randn(2)

    def step(x):
        return entropy_pg_loss(x, targets, adv, entropy_coef=0.1, backend="torch").loss * 2

    x_eager = logits.clone().requires_grad_()
    step(x_eager).backward()
    x_compiled = logits.clone().requires_grad_()
    # fullgraph: the custom op is opaque to dynamo, no graph break around the loss
    torch.compile(step, backend="aot_eager", fullgraph=True)(x_compiled).backward()
    torch.testing.assert_close(x_compiled.grad, x_eager.grad)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("offset", [1e4, -1e4])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fp32_logprobs_near_1e4_are_as_exact_as_eager_fp32(backend, offset, temperature):
    # eager fp32 rounds by ~|x| eps (~6e-4 at 1e4) in its log-sum-exp; scaling every logit to base 2
    # before subtracting the max rounded as much again, subtracting first leaves x - max exact
    g = torch.Generator().manual_seed(0)
    logits = offset + 3 * torch.randn(16, 300, generator=g)
    targets = torch.randint(0, 300, (16,), generator=g)
    exact, _ = reference.logprobs_and_entropy(logits.double(), targets, temperature=temperature)
    eager, _ = reference.logprobs_and_entropy(logits, targets, temperature=temperature)
    got, _ = logprobs_and_entropy(logits, targets, temperature=temperature, backend=backend)
    eager_error = float((eager.double() - exact).abs().max())
    assert float((got.double() - exact).abs().max()) <= eager_error


@pytest.mark.parametrize("backend", ["torch", "triton", "eager"])
def test_per_sequence_advantages_in_explicit_column_form_are_spread_over_their_tokens(backend):
    logits = torch.randn(4, 30)
    targets = torch.randint(0, 30, (4,))
    cu_seqlens = torch.tensor([0, 0, 3, 4, 4])  # S == N == 4: (4,) would be ambiguous
    per_sequence = torch.tensor([[0.5], [-1.0], [2.0], [3.0]])
    per_token = torch.tensor([-1.0, -1.0, -1.0, 2.0])  # by hand: sequence 1 has 3 tokens, sequence 2 one
    options = dict(cu_seqlens=cu_seqlens, loss_agg="seq-mean-token-mean", entropy_coef=0.1)
    got = entropy_pg_loss(logits, targets, per_sequence, backend=backend, **options)
    want = reference.entropy_pg_loss(logits.double(), targets, per_token.double(), **options)
    torch.testing.assert_close(got.loss.double(), want.loss, rtol=1e-5, atol=1e-6)
