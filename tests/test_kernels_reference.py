"""The eager reference is the spec: its values, weights and gradient checked against hand computations."""

import math

import pytest
import torch

from exprl.kernels import entropy_pg_loss, reference

# the Triton interpreter evaluates both branches of tl.where in numpy: 0 * inf in the branch not taken
# (the kernel's -inf and masked-row guards) warns there, never on a GPU
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def _loops_weights(mask_rows, mode, max_len=None):
    """w_t by explicit loops over sequences (rows of lists), independent of reference.token_weights."""
    counts = [sum(row) for row in mask_rows]
    active = max(1, sum(1 for c in counts if c > 0))
    out = []
    for row, count in zip(mask_rows, counts, strict=True):
        for m in row:
            if mode == "seq-mean-token-mean":
                out.append(m / (active * count) if count > 0 else 0.0)
            elif mode == "seq-mean-token-sum":
                out.append(m / active)
            else:
                out.append(m / (active * max_len))
    return out


MASK_ROWS = [[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.5, 1.0, 1.0, 1.0]]


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_per_sequence_weights_of_a_padded_batch(mode):
    m = torch.tensor(MASK_ROWS, dtype=torch.float64)
    w = reference.token_weights(m, mode)
    expected = _loops_weights(MASK_ROWS, mode, max_len=4)  # max_len defaults to T
    assert w.reshape(-1).tolist() == pytest.approx(expected)


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_per_sequence_weights_of_packed_input(mode):
    rows = [[1.0, 1.0], [], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0, 1.0, 1.0]]
    flat = torch.tensor([m for row in rows for m in row], dtype=torch.float64)
    cu = torch.tensor([0, 2, 2, 5, 10])
    w = reference.token_weights(flat, mode, max_len=8 if mode.endswith("norm") else None, cu_seqlens=cu)
    assert w.tolist() == pytest.approx(_loops_weights(rows, mode, max_len=8))


def test_packed_sum_norm_defaults_to_longest_sequence():
    flat = torch.ones(7, dtype=torch.float64)
    w = reference.token_weights(flat, "seq-mean-token-sum-norm", cu_seqlens=torch.tensor([0, 2, 7]))
    assert w.tolist() == pytest.approx([1 / (2 * 5)] * 7)


def test_token_mean_uses_global_token_count_when_given():
    m = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    assert reference.token_weights(m, "token-mean").tolist() == [[1 / 3, 0], [1 / 3, 1 / 3]]
    assert reference.token_weights(m, "token-mean", norm_tokens=12).tolist() == [
        [1 / 12, 0],
        [1 / 12, 1 / 12],
    ]
    assert reference.token_weights(m * 0, "token-mean").abs().sum() == 0  # max(count, 1): no 0/0


def _two_token_vocab():
    """logits [0, ln 3]: p = [1/4, 3/4]; the target is token 1."""
    logits = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    logp = math.log(0.75)
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    return logits, torch.tensor([1]), logp, entropy


def test_logprob_and_entropy_by_hand():
    logits, targets, logp, entropy = _two_token_vocab()
    got_logp, got_entropy = reference.logprobs_and_entropy(logits, targets)
    assert float(got_logp) == pytest.approx(logp)
    assert float(got_entropy) == pytest.approx(entropy)


@pytest.mark.parametrize(
    ("advantage", "dual_clip", "expected"),
    [
        (1.0, None, -1.28),  # ratio 2 > 1 + clip_high: clipped at 1.28
        (-1.0, None, 2.0),  # negative advantage: the unclipped -A r is the max
        (-1.0, 1.5, 1.5),  # dual clip caps -A r at -A c
    ],
)
def test_clipped_objective_by_hand(advantage, dual_clip, expected):
    logits, targets, logp, _ = _two_token_vocab()
    out = reference.entropy_pg_loss(
        logits,
        targets,
        torch.tensor([advantage], dtype=torch.float64),
        old_logprobs=torch.tensor([logp - math.log(2.0)]),  # ratio exactly 2
        clip_low=0.2,
        clip_high=0.28,
        dual_clip=dual_clip,
    )
    assert float(out.loss) == pytest.approx(expected)
    assert float(out.stats["ratio"]) == pytest.approx(2.0)
    assert float(out.stats["clip_frac"]) == (0.0 if expected == 2.0 else 1.0)


@pytest.mark.parametrize(("estimator", "kl"), [("k1", -0.5), ("k2", 0.125), ("k3", math.exp(0.5) - 1.5)])
def test_kl_estimators_by_hand(estimator, kl):
    logits, targets, logp, entropy = _two_token_vocab()
    out = reference.entropy_pg_loss(
        logits,
        targets,
        torch.zeros(1, dtype=torch.float64),
        ref_logprobs=torch.tensor([logp + 0.5]),  # d = ref - logp = 0.5
        kl_coef=0.1,
        kl_estimator=estimator,
        entropy_coef=0.01,
    )
    assert float(out.stats["kl"]) == pytest.approx(kl)
    assert float(out.loss) == pytest.approx(0.1 * kl - 0.01 * entropy)


def test_reference_gradient_is_the_closed_form_of_the_design():
    """dlogits = w/T (g (onehot - p) - h p (z - mu)), g = -A r + kl_coef (1 - e^d), h = -entropy_coef,
    where no clip is active (wide clip bounds)."""
    torch.manual_seed(0)
    n, v, temperature, kl_coef, entropy_coef = 6, 9, 0.8, 0.3, 0.05
    logits = torch.randn(n, v, dtype=torch.float64)
    targets = torch.randint(0, v, (n,))
    adv = torch.randn(n, dtype=torch.float64)
    old = torch.randn(n, dtype=torch.float64) * 0.3 - 2
    ref = torch.randn(n, dtype=torch.float64) * 0.3 - 2
    x = logits.clone().requires_grad_()
    out = reference.entropy_pg_loss(
        x,
        targets,
        adv,
        old_logprobs=old,
        ref_logprobs=ref,
        temperature=temperature,
        clip_low=1.0,
        clip_high=100.0,
        kl_coef=kl_coef,
        entropy_coef=entropy_coef,
    )
    out.loss.backward()

    z = logits / temperature
    p = torch.softmax(z, -1)
    mu = (p * z).sum(-1, keepdim=True)
    logp = torch.log_softmax(z, -1).gather(-1, targets[:, None]).squeeze(-1)
    g = -adv * torch.exp(logp - old) + kl_coef * (1 - torch.exp(ref - logp))
    onehot = torch.nn.functional.one_hot(targets, v).double()
    expected = (g[:, None] * (onehot - p) + entropy_coef * p * (z - mu)) / (n * temperature)
    torch.testing.assert_close(x.grad, expected)


@pytest.mark.parametrize("backend", ["eager", "torch", "triton"])
def test_masked_tokens_contribute_nothing(backend):
    logits = torch.randn(3, 5)
    x = logits.requires_grad_()
    out = entropy_pg_loss(
        x, torch.tensor([0, 1, 2]), torch.ones(3), mask=torch.tensor([1.0, 0.0, 1.0]), backend=backend
    )
    out.loss.backward()
    assert (x.grad[1] == 0).all() and (x.grad[[0, 2]] != 0).any()


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fused_backends_zero_masked_rows_even_when_infinite(backend):
    # the eager reference is plain autograd: there a masked +inf row gets 0 * inf = nan gradients
    logits = torch.randn(3, 5)
    logits[1] = float("inf")
    x = logits.requires_grad_()
    out = entropy_pg_loss(
        x, torch.tensor([0, 1, 2]), torch.ones(3), mask=torch.tensor([1.0, 0.0, 1.0]), backend=backend
    )
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert (x.grad[1] == 0).all()
