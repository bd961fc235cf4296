"""The backend interface (`exprl.kernels.backend.LossBackend.sweep`) that the op and the fused-linear op
call on blocks of rows: values and the written gradient match the fp64 reference, on strided blocks
and in place; and the options object crosses the custom op's schema unchanged."""

import dataclasses

import pytest
import torch

from exprl.kernels import LossOptions, TokenInputs, load_backend, reference, triton_backend

# the Triton interpreter evaluates both branches of tl.where in numpy: 0 * inf in the branch not taken
# (the kernel's -inf and masked-row guards) warns there, never on a GPU
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

B, T, V = 2, 3, 37
OPTIONS = LossOptions(temperature=0.8, clip_high=0.28, dual_clip=3.0, kl_coef=0.1, entropy_coef=0.05)


@pytest.fixture(autouse=True)
def small_triton_blocks(monkeypatch):
    monkeypatch.setattr(triton_backend, "MAX_BLOCK_V", 16)


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * 3
    targets = torch.randint(0, V, (B * T,), generator=g)
    targets[4] = -100
    # as reference.token_weights gives them: 0 on ignore_index targets
    weights = torch.rand(B * T, generator=g) * (targets != -100)
    weights[1] = 0.0
    advantages = torch.randn(B * T, generator=g)
    true_logp, _ = reference.logprobs_and_entropy(logits.reshape(-1, V).double(), targets, temperature=0.8)
    old = (true_logp + 0.3 * torch.randn(B * T, generator=g)).float()
    ref = (true_logp + 0.3 * torch.randn(B * T, generator=g)).float()
    return logits, TokenInputs(targets, weights, advantages, old, ref)


def _expected(logits: torch.Tensor, tokens: TokenInputs):
    """logp, entropy and d(sum_t w_t l_t)/dlogits from the fp64 reference: a float mask of w_t and a
    token count of 1 make the reference's weights exactly w_t on the valid tokens."""
    x64 = logits.reshape(-1, V).double().requires_grad_()
    out = reference.entropy_pg_loss(
        x64,
        tokens.targets,
        tokens.advantages.double(),
        mask=tokens.weights.double(),
        old_logprobs=tokens.old_logprobs,
        ref_logprobs=tokens.ref_logprobs,
        norm_tokens=1,
        **dataclasses.asdict(OPTIONS),
    )
    out.loss.backward()
    return out.logprobs, out.entropy, x64.grad.reshape(B, T, V)


def _close(actual, expected, atol=1e-5):
    torch.testing.assert_close(actual.double(), expected, rtol=0, atol=atol)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_sweep_reads_and_writes_strided_blocks(backend):
    logits, tokens = _problem()
    # a row stride larger than V and a batch stride that is not T * row stride: no (rows, V) view exists
    storage = torch.full((B, T + 1, V + 3), float("nan"))
    storage[:, :T, :V] = logits
    strided = storage[:, :T, :V]
    grad_storage = torch.full((B, T + 2, V + 5), 7.0)
    grad = grad_storage[:, 1 : T + 1, :V]
    logp, entropy = load_backend(backend).sweep(strided, tokens, OPTIONS, grad)
    want_logp, want_entropy, want_grad = _expected(logits, tokens)
    _close(logp, want_logp)
    _close(entropy, want_entropy)
    _close(grad, want_grad)
    assert (grad[0, 1] == 0).all()  # w = 0: an exact 0
    untouched = torch.ones_like(grad_storage, dtype=torch.bool)
    untouched[:, 1 : T + 1, :V] = False
    assert (grad_storage[untouched] == 7.0).all()


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_sweep_writes_the_gradient_over_the_logits_in_place(backend):
    logits, tokens = _problem(seed=1)
    buffer = logits.to(torch.bfloat16)
    want_logp, want_entropy, want_grad = _expected(buffer.float(), tokens)
    logp, entropy = load_backend(backend).sweep(buffer, tokens, OPTIONS, buffer)
    _close(logp, want_logp)
    _close(entropy, want_entropy)
    _close(buffer, want_grad, atol=1.6e-2 * float(want_grad.abs().max()))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_forward_only_sweep_needs_targets_only(backend):
    logits, tokens = _problem(seed=2)
    flat = logits.reshape(-1, V)
    logp, entropy = load_backend(backend).sweep(flat, TokenInputs(tokens.targets), OPTIONS)
    want_logp, want_entropy = reference.logprobs_and_entropy(flat.double(), tokens.targets, temperature=0.8)
    _close(logp, want_logp)
    _close(entropy, want_entropy)


def test_options_cross_the_op_schema_unchanged():
    options = LossOptions(
        temperature=0.7,
        dual_clip=2.5,
        kl_estimator="k2",
        loss_agg="seq-mean-token-sum-norm",
        max_len=9,
        entropy_coef=1e-4,
    )
    assert LossOptions.decode(options.encode()) == options


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("temperature", 0, ValueError),
        ("clip_low", "0.1", TypeError),
        ("kl_estimator", "k9", ValueError),
        ("max_len", 3, ValueError),
    ],  # fmt: skip
)
def test_options_are_checked_on_construction_naming_the_field(field, value, error):
    with pytest.raises(error, match=field):
        LossOptions(**{field: value})


def test_unknown_backend_name_is_rejected():
    with pytest.raises(ValueError, match="fused backend"):
        load_backend("eager")
