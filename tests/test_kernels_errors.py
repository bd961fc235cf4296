"""Every bad input of the contract raises ValueError/TypeError naming the argument."""

import pytest
import torch

from exprl.kernels import entropy_pg_loss, logprobs_and_entropy

N, V = 4, 10


def _call(**changes):
    args = dict(logits=torch.randn(N, V), target_ids=torch.randint(0, V, (N,)), advantages=torch.randn(N))
    args.update(changes)
    return entropy_pg_loss(args.pop("logits"), args.pop("target_ids"), args.pop("advantages"), **args)


BAD_INPUTS = [
    (dict(logits=torch.randint(0, 5, (N, V))), TypeError, "logits"),
    (dict(logits=torch.randn(V)), ValueError, "logits"),
    (dict(logits=[[0.0] * V] * N), TypeError, "logits"),
    (dict(target_ids=torch.zeros(N)), TypeError, "target_ids"),
    (dict(target_ids=torch.zeros(N + 1, dtype=torch.long)), ValueError, "target_ids"),
    (dict(target_ids=torch.tensor([0, 1, V, 2])), ValueError, "target_ids"),
    (dict(target_ids=torch.tensor([0, -1, 2, 3])), ValueError, "target_ids"),
    (dict(advantages=torch.randn(N + 1)), ValueError, "advantages"),
    (dict(advantages=torch.ones(N, dtype=torch.long)), TypeError, "advantages"),
    (dict(mask=torch.ones(N - 1)), ValueError, "mask"),
    (dict(old_logprobs=torch.zeros(2, 2)), ValueError, "old_logprobs"),
    (dict(ref_logprobs=torch.zeros(N, dtype=torch.long), kl_coef=0.1), TypeError, "ref_logprobs"),
    (dict(kl_coef=0.1), ValueError, "ref_logprobs"),
    (dict(kl_coef=-1.0, ref_logprobs=torch.zeros(N)), ValueError, "kl_coef"),
    (dict(kl_estimator="k4"), ValueError, "kl_estimator"),
    (dict(loss_agg="sum"), ValueError, "loss_agg"),
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(clip_low=-0.1), ValueError, "clip_low"),
    (dict(clip_high="0.2"), TypeError, "clip_high"),
    (dict(dual_clip=1.0), ValueError, "dual_clip"),
    (dict(entropy_coef=None), TypeError, "entropy_coef"),
    (dict(norm_tokens=-3), ValueError, "norm_tokens"),
    (
        dict(norm_tokens=5, loss_agg="seq-mean-token-sum", cu_seqlens=torch.tensor([0, N])),
        ValueError,
        "norm_tokens",
    ),
    (
        dict(max_len=0, loss_agg="seq-mean-token-sum-norm", cu_seqlens=torch.tensor([0, N])),
        ValueError,
        "max_len",
    ),
    (dict(max_len=8), ValueError, "max_len"),
    (dict(loss_agg="seq-mean-token-mean"), ValueError, "cu_seqlens"),
    (dict(cu_seqlens=torch.tensor([0, 3, 2, N])), ValueError, "cu_seqlens"),
    (dict(cu_seqlens=torch.tensor([0, 2])), ValueError, "cu_seqlens"),
    (dict(cu_seqlens=torch.tensor([0.0, 4.0])), TypeError, "cu_seqlens"),
    (dict(backend="cuda"), ValueError, "backend"),
]


@pytest.mark.parametrize(("changes", "error", "name"), BAD_INPUTS, ids=lambda x: str(x)[:40])
def test_bad_input_raises_naming_the_argument(changes, error, name):
    with pytest.raises(error, match=name):
        _call(**changes)


def test_cu_seqlens_rejected_for_batched_logits():
    with pytest.raises(ValueError, match="cu_seqlens"):
        entropy_pg_loss(
            torch.randn(2, 3, V),
            torch.zeros(2, 3, dtype=torch.long),
            torch.randn(2),
            cu_seqlens=torch.tensor([0, 6]),
        )


def test_logprobs_and_entropy_validates_too():
    with pytest.raises(TypeError, match="logits"):
        logprobs_and_entropy(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="target_ids"):
        logprobs_and_entropy(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="temperature"):
        logprobs_and_entropy(torch.zeros(2, 3), torch.tensor([0, 1]), temperature=0)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="backend"):
        _call(backend="triton")


def test_per_sequence_advantages_as_long_as_the_tokens_are_refused_as_ambiguous():
    # 4 sequences over 4 tokens, two of them empty: (4,) could be per token or per sequence
    with pytest.raises(ValueError, match=r"advantages .* ambiguous.*\(4, 1\)"):
        _call(cu_seqlens=torch.tensor([0, 0, 2, 4, 4]), loss_agg="seq-mean-token-mean")


def test_one_token_per_sequence_is_not_ambiguous():
    # every sequence of length 1: per token and per sequence are the same reading
    out = _call(cu_seqlens=torch.arange(N + 1), loss_agg="seq-mean-token-sum")
    assert torch.isfinite(out.loss)
