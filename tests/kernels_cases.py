"""Shared inputs and comparison for the loss-op tests: scenarios, and a check of one backend against
`exprl.kernels.reference` evaluated in float64 on the very same (dtype-rounded) logits."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from exprl.kernels import entropy_pg_loss, reference


@dataclass
class Case:
    logits: torch.Tensor  # fp32 master copy; each test rounds it to its dtype
    target_ids: torch.Tensor
    advantages: torch.Tensor
    options: dict = field(default_factory=dict)  # keyword arguments of entropy_pg_loss
    # old/ref log-probs = true log-probs + N(mean, sigma): {name: sigma} or {name: (sigma, mean)}
    perturb: dict = field(default_factory=dict)


def _logits(shape, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def _targets(shape, vocab, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, shape, generator=g)


def _normal(shape, seed=2):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def make_case(name: str) -> Case:
    """Scenarios that together cover every option, aggregation mode and input layout of docs/design.md §3."""
    if name == "on-policy-flat-ragged-V":
        n, v = 12, 300  # V = 300 is not a multiple of any block size
        return Case(_logits((n, v)), _targets((n,), v), _normal((n,)))
    if name == "off-policy-dual-clip-seq-mean-token-mean":
        b, t, v = 3, 5, 70
        targets = _targets((b, t), v)
        targets[0, 4] = -100
        mask = torch.ones(b, t)
        mask[1] = 0  # a fully masked sequence
        mask[2, 0] = 0.5  # float masks weight tokens
        return Case(
            _logits((b, t, v)),
            targets,
            torch.tensor([1.5, 0.3, -2.0]),  # (B,) broadcast over T
            dict(mask=mask, clip_low=0.2, clip_high=0.28, dual_clip=3.0, loss_agg="seq-mean-token-mean"),
            perturb=dict(old_logprobs=(1.0, -1.0)),  # ratios ~ e: dual clip active
        )
    if name == "k1-entropy-temperature-seq-sum":
        b, t, v = 2, 6, 50
        return Case(
            _logits((b, t, v)),
            _targets((b, t), v),
            _normal((b, t)),
            dict(
                kl_coef=0.1,
                kl_estimator="k1",
                entropy_coef=0.05,
                temperature=0.7,
                loss_agg="seq-mean-token-sum",
            ),
            perturb=dict(old_logprobs=0.3, ref_logprobs=0.3),
        )
    if name == "k2-neg-inf-sum-norm":
        n, v = 10, 40
        logits = _logits((n, v))
        targets = _targets((n,), v)
        logits[:, 0] = float("-inf")  # e.g. a banned token
        logits[3, 5:20] = float("-inf")
        targets[targets < 20] = 25
        return Case(
            logits,
            targets,
            _normal((n,)),
            dict(
                kl_coef=0.5,
                kl_estimator="k2",
                entropy_coef=0.02,
                loss_agg="seq-mean-token-sum-norm",
                max_len=7,
                cu_seqlens=torch.tensor([0, 4, 10]),
            ),
            perturb=dict(ref_logprobs=0.5),
        )
    if name == "k3-packed-per-sequence-advantages":
        n, v = 11, 64
        targets = _targets((n,), v)
        targets[[0, 7]] = -100
        return Case(
            _logits((n, v)),
            targets,
            torch.tensor([0.7, -1.2, 0.0, 2.0]),  # one per packed sequence, one of them empty
            dict(
                kl_coef=0.2,
                kl_estimator="k3",
                entropy_coef=0.01,
                loss_agg="seq-mean-token-mean",
                cu_seqlens=torch.tensor([0, 3, 3, 8, 11]),
                dual_clip=2.5,
            ),
            perturb=dict(old_logprobs=0.4, ref_logprobs=0.2),
        )
    if name == "huge-logits-norm-tokens":
        b, t, v = 2, 4, 33
        logits = _logits((b, t, v), scale=1.0)
        logits[..., ::2] = 1e4
        logits[..., 1::3] = -1e4
        return Case(
            logits,
            _targets((b, t), v),
            _normal((b, t)),
            dict(temperature=1.3, entropy_coef=0.1, norm_tokens=20, kl_coef=1e-3, kl_estimator="k3"),
            perturb=dict(old_logprobs=0.2, ref_logprobs=0.2),
        )
    if name == "all-masked":
        n, v = 5, 20
        return Case(_logits((n, v)), torch.full((n,), -100), _normal((n,)), dict(entropy_coef=0.1))
    raise KeyError(name)


CASES = (
    "on-policy-flat-ragged-V",
    "off-policy-dual-clip-seq-mean-token-mean",
    "k1-entropy-temperature-seq-sum",
    "k2-neg-inf-sum-norm",
    "k3-packed-per-sequence-advantages",
    "huge-logits-norm-tokens",
    "all-masked",
)

# Inputs are rounded to the dtype first and the reference sees the same rounded values in fp64, so
# logprobs, entropy and loss differ only by the backends' fp32 accumulation: log-sum-exp over V <= 300
# terms (relative error ~1e-6) plus rounding of z itself (~6e-8 |z|, up to 6e-4 at |z| = 1e4).
# The gradient is stored in the logits' dtype, so it is also rounded once: 2^-8 relative for bf16,
# 2^-11 for fp16 (tolerance a few ulps of the row's largest entry), and ~1e-6 for fp32.
GRAD_RTOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def with_behaviour_logprobs(case: Case, logits: torch.Tensor) -> dict:
    """The case's options with old/ref log-probs placed near the true log-probs (so ratios get clipped
    on both sides without overflowing)."""
    options = dict(case.options)
    true_logp, _ = reference.logprobs_and_entropy(
        logits.double(), case.target_ids, temperature=options.get("temperature", 1.0)
    )
    for i, (key, spread) in enumerate(case.perturb.items()):
        sigma, mean = spread if isinstance(spread, tuple) else (spread, 0.0)
        noise = _normal(true_logp.shape, seed=10 + i).to(true_logp.device)
        options[key] = (true_logp + mean + sigma * noise).float()
    return options


def _to(value, device):
    return value.to(device) if isinstance(value, torch.Tensor) else value


def check_against_reference(case: Case, dtype: torch.dtype, backend: str, device: str = "cpu") -> None:
    """Runs `backend` on `device` and the reference in fp64 on the same rounded inputs; compares all."""
    case = Case(
        case.logits.to(device),
        case.target_ids.to(device),
        case.advantages.to(device),
        {k: _to(v, device) for k, v in case.options.items()},
        case.perturb,
    )
    logits = case.logits.to(dtype)
    options = with_behaviour_logprobs(case, logits)
    x64 = logits.double().requires_grad_()
    expected = reference.entropy_pg_loss(x64, case.target_ids, case.advantages, **options)
    expected.loss.backward()
    x = logits.clone().requires_grad_()
    got = entropy_pg_loss(x, case.target_ids, case.advantages, backend=backend, **options)
    got.loss.backward()

    finite = logits[torch.isfinite(logits)].abs()
    z_scale = float(finite.max()) / options.get("temperature", 1.0) if finite.numel() else 1.0
    value_atol = 2e-5 + 2e-7 * z_scale

    def close(actual, wanted, rtol, atol, what):
        torch.testing.assert_close(
            actual.double(), wanted.double(), rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}"
        )

    close(got.logprobs, expected.logprobs, 0, value_atol, "logprobs")
    close(got.entropy, expected.entropy, 0, value_atol, "entropy")
    # loss terms pass logp through exp (ratio, k3): relative error of the same order as logp's
    close(got.loss, expected.loss, 5 * value_atol, value_atol, "loss")
    for key, value in expected.stats.items():
        close(got.stats[key], value, 5 * value_atol, value_atol, f"stats[{key}]")
    assert got.logprobs.dtype == torch.float32 and got.entropy.dtype == torch.float32
    assert x.grad.dtype == dtype and x.grad.shape == x.shape
    close(x.grad, x64.grad, 0, grad_atol(x64, dtype, case.target_ids, case.advantages, options), "dlogits")


def grad_atol(x64: torch.Tensor, dtype: torch.dtype, target_ids, advantages, options: dict) -> float:
    """Absolute tolerance for dlogits = w/T (g (onehot - p) - h p (z - mu)) in x64's original dtype.

    Two sources: rounding the result to the logits' dtype (GRAD_RTOL of the largest entry), and fp32
    rounding inside, relative to the size of the terms before they cancel: p carries a relative error
    of ~eps32 |z|, multiplied by |w g / T| (g = dl/dlogp), e.g. where p_target ~ 1 makes g (1 - p) tiny.
    """
    if x64.grad is None or x64.grad.numel() == 0:
        return 1e-6
    scale = float(x64.grad.abs().max())
    finite = x64.detach()[torch.isfinite(x64.detach())].abs()
    z_max = float(finite.max()) / options.get("temperature", 1.0) if finite.numel() else 1.0
    temperature = options.get("temperature", 1.0)
    logp, entropy = reference.logprobs_and_entropy(x64.detach(), target_ids, temperature=temperature)
    logp = logp.requires_grad_()
    fields = {f.name for f in dataclasses.fields(reference.LossOptions)}
    objective = reference.LossOptions(**{k: v for k, v in options.items() if k in fields})
    parts = reference.token_objective(
        logp,
        entropy,
        reference.expand_advantages(advantages, target_ids.shape, options.get("cu_seqlens")).double(),
        None if options.get("old_logprobs") is None else options["old_logprobs"].double(),
        None if options.get("ref_logprobs") is None else options["ref_logprobs"].double(),
        objective,
    )
    (g,) = torch.autograd.grad(parts["l"].sum(), logp)
    m = (target_ids != -100).double()
    if options.get("mask") is not None:
        m = m * options["mask"].double()
    token_options = {k: options.get(k) for k in ("norm_tokens", "max_len", "cu_seqlens")}
    w = reference.token_weights(m, options.get("loss_agg", "token-mean"), **token_options)
    term = float((w * g).nan_to_num(0).abs().max()) / temperature
    term = max(term, float(w.abs().max()) * abs(objective.entropy_coef) * z_max)
    return GRAD_RTOL[dtype] * scale + 16 * 6e-8 * (1 + z_max) * term + 1e-7
