"""The Triton backend on a real CUDA device (run by benchmarks/gpu_check.sh; skipped without CUDA)."""

import pytest
import torch
from kernels_cases import CASES, check_against_reference, make_case

from exprl.kernels import entropy_pg_loss, logprobs_and_entropy, reference

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

VOCAB = 151936  # Qwen-sized vocabulary of the H100 target


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES)
def test_triton_on_cuda_matches_fp64_reference(case, dtype):
    check_against_reference(make_case(case), dtype, "triton", device="cuda")


def _target_problem(n, vocab, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    logits = (torch.randn(n, vocab, device="cuda", generator=g) * 4).to(torch.bfloat16)
    targets = torch.randint(0, vocab, (n,), device="cuda", generator=g)
    targets[::17] = -100
    advantages = torch.randn(n, device="cuda", generator=g)
    with torch.no_grad():
        true_logp, _ = logprobs_and_entropy(logits, targets, backend="triton")
    options = dict(
        old_logprobs=true_logp + 0.3 * torch.randn(n, device="cuda", generator=g),
        ref_logprobs=true_logp + 0.3 * torch.randn(n, device="cuda", generator=g),
        kl_coef=1e-3,
        entropy_coef=1e-3,
        clip_high=0.28,
        dual_clip=3.0,
        temperature=0.9,
        # a global count: each row's gradient is then independent of the rows around it
        norm_tokens=float((targets != -100).sum()),
    )
    return logits, targets, advantages, options


def _rows_match_reference(logits, targets, advantages, options, grad, out, rows):
    sub = {k: (v[rows] if isinstance(v, torch.Tensor) else v) for k, v in options.items()}
    x64 = logits[rows].detach().double().requires_grad_()
    want = reference.entropy_pg_loss(x64, targets[rows], advantages[rows], **sub)
    want.loss.backward()
    torch.testing.assert_close(out.logprobs[rows].double(), want.logprobs, rtol=0, atol=1e-4)
    torch.testing.assert_close(out.entropy[rows].double(), want.entropy, rtol=0, atol=1e-4)
    scale = float(x64.grad.abs().max())
    torch.testing.assert_close(grad[rows].double(), x64.grad, rtol=0, atol=1.6e-2 * scale)


def test_target_shape_values_gradient_and_no_fp32_temporary():
    n = 8192
    logits, targets, advantages, options = _target_problem(n, VOCAB)
    x = logits.requires_grad_()
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = entropy_pg_loss(x, targets, advantages, backend="triton", **options)
    out.loss.backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - baseline
    grad_bytes = x.numel() * x.element_size()
    # the bf16 gradient plus O(N) vectors; an fp32 N x V temporary would add 2x grad_bytes
    assert extra < grad_bytes + 64 * 2**20, f"peak {extra / 2**20:.0f} MiB above inputs"
    rows = torch.tensor([0, 1, 17, 4000, n - 1], device="cuda")
    _rows_match_reference(logits, targets, advantages, options, x.grad, out, rows)


def test_offsets_past_two_to_the_31():
    n = 16384  # n * V > 2^31: row offsets must be 64-bit
    assert n * VOCAB > 2**31
    logits, targets, advantages, options = _target_problem(n, VOCAB, seed=1)
    x = logits.requires_grad_()
    out = entropy_pg_loss(x, targets, advantages, backend="triton", **options)
    out.loss.backward()
    rows = torch.tensor([n - 2, n - 1], device="cuda")
    _rows_match_reference(logits, targets, advantages, options, x.grad, out, rows)


def _peak_fwd_bwd_mib(logits, targets, advantages, options) -> float:
    x = logits.requires_grad_()
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    entropy_pg_loss(x, targets, advantages, backend="triton", **options).loss.backward()
    torch.cuda.synchronize()
    x.grad = None
    return (torch.cuda.max_memory_allocated() - baseline) / 2**20


def test_shifted_logits_cost_no_copy_and_no_more_memory_than_contiguous():
    b, t = 4, 1024
    g = torch.Generator(device="cuda").manual_seed(2)
    shifted = (torch.randn(b, t + 1, VOCAB, device="cuda", generator=g) * 4).to(torch.bfloat16)
    contiguous = shifted[:, :t].contiguous()
    targets = torch.randint(0, VOCAB, (b, t), device="cuda", generator=g)
    advantages = torch.randn(b, t, device="cuda", generator=g)
    options = dict(entropy_coef=1e-3, clip_high=0.28, dual_clip=3.0)
    peak_contiguous = _peak_fwd_bwd_mib(contiguous, targets, advantages, options)
    peak_shifted = _peak_fwd_bwd_mib(shifted, targets, advantages, options)
    extra_rows_mib = b * VOCAB * 2 / 2**20  # the (B, T+1, V) gradient has B rows more
    # + 4 MiB: the caching allocator rounds large blocks to 2 MiB
    assert peak_shifted <= peak_contiguous + extra_rows_mib + 4, (peak_shifted, peak_contiguous)

    x = shifted.clone().requires_grad_()
    out = entropy_pg_loss(x, targets, advantages, backend="triton", **options)
    out.loss.backward()
    assert (x.grad[:, t] == 0).all()
    rows = torch.tensor([0, 5, t - 1], device="cuda")
    for batch in range(b):
        x64 = shifted[batch, rows].double().requires_grad_()
        # token-mean over all B*T tokens: each row's gradient is w = 1/(B*T) times its own term
        want = reference.entropy_pg_loss(
            x64, targets[batch, rows], advantages[batch, rows], norm_tokens=b * t, **options
        )
        want.loss.backward()
        torch.testing.assert_close(out.logprobs[batch, rows].double(), want.logprobs, rtol=0, atol=1e-4)
        scale = float(x64.grad.abs().max())
        torch.testing.assert_close(x.grad[batch, rows].double(), x64.grad, rtol=0, atol=1.6e-2 * scale)
