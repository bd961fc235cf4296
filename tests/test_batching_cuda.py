"""CUDA kernels of exprl._C against the PyTorch reference at realistic sizes (B*G = 1024, prompts
64-512, responses up to 4096 tokens) and on edge cases. Run on a GPU machine by
benchmarks/gpu_check.sh (`pytest -m cuda`); skipped elsewhere."""

import pytest
import torch

import exprl.batching as batching
from exprl.batching import reference

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    pytest.mark.skipif(
        batching.backend("cuda") != "ext",
        reason=f"exprl._C has no CUDA kernels ({batching.extension_error()})",
    ),
]
ops = torch.ops.exprl


def offsets(lengths, device="cuda"):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.long, device=device)


def ragged(batch, prompt_range, max_response, seed):
    generator = torch.Generator().manual_seed(seed)
    prompt_lengths = torch.randint(*prompt_range, (batch,), generator=generator).tolist()
    response_lengths = (torch.rand(batch, generator=generator) ** 3 * max_response).long().tolist()
    prompt_ids = torch.randint(0, 150_000, (sum(prompt_lengths),), generator=generator)
    response_ids = torch.randint(0, 150_000, (sum(response_lengths),), generator=generator)
    return prompt_ids, prompt_lengths, response_ids, response_lengths


def assert_same(got, expected):
    for index, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a.is_cuda and a.dtype == b.dtype and a.shape == b.shape, index
        assert torch.equal(a.cpu(), b.cpu()), index


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("left", [False, True])
@pytest.mark.parametrize("sizes", [(1024, (64, 513), 4096, 0), (1, (0, 2), 3, 1), (17, (0, 4), 2, 2)])
def test_rollout_batch_matches_reference(packed, left, sizes):
    batch, prompt_range, max_response, seed = sizes
    prompt_ids, prompt_lengths, response_ids, response_lengths = ragged(
        batch, prompt_range, max_response, seed
    )
    max_len = max(p + r for p, r in zip(prompt_lengths, response_lengths, strict=True)) + 1
    args = (offsets(prompt_lengths, "cpu"), offsets(response_lengths, "cpu"), 5, max_len, packed, left)
    expected = reference.rollout_batch(prompt_ids, args[0], response_ids, args[1], *args[2:])
    got = ops.rollout_batch(prompt_ids.cuda(), args[0].cuda(), response_ids.cuda(), args[1].cuda(), *args[2:])
    assert_same(got, expected)


def generation(batch, width, prompt_width, seed, eos=2):
    generator = torch.Generator().manual_seed(seed)
    sequences = torch.randint(0, 40, (batch, width), generator=generator)  # eos appears often
    prompt_lengths = torch.randint(0, prompt_width + 1, (batch,), generator=generator)
    no_eos = torch.rand(batch, generator=generator) < 0.2
    responses = sequences[:, prompt_width:]
    responses[no_eos] = torch.where(responses[no_eos] == eos, eos + 1, responses[no_eos])
    return sequences, prompt_lengths


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("sizes", [(1024, 4096, 512, 0), (3, 5, 5, 1), (4, 6, 0, 2), (1, 300, 100, 3)])
def test_generation_ops_match_reference(packed, sizes):
    batch, width, prompt_width, seed = sizes
    sequences, prompt_lengths = generation(batch, width, prompt_width, seed)
    expected_lengths = reference.generation_lengths(sequences, prompt_width, 2)
    lengths = ops.generation_lengths(sequences.cuda(), prompt_width, 2)
    assert_same(lengths, expected_lengths)
    max_len = int((prompt_lengths + expected_lengths[0]).max())
    args = (prompt_width, 0, max_len, packed, False)
    expected = reference.rollout_from_generation(sequences, prompt_lengths, expected_lengths[0], *args)
    got = ops.rollout_from_generation(sequences.cuda(), prompt_lengths.cuda(), lengths[0], *args)
    assert_same(got, expected)


def test_batch_from_generation_on_cuda_equals_cpu():
    sequences, prompt_lengths = generation(256, 2048, 256, 4)
    got = batching.batch_from_generation(sequences.cuda(), prompt_lengths.cuda(), 256, 2, 0, "packed")
    with batching.use_backend("torch"):
        expected = batching.batch_from_generation(sequences, prompt_lengths, 256, 2, 0, "packed")
    for name in batching.TrainingBatch.tensor_fields:
        assert torch.equal(getattr(got, name).cpu(), getattr(expected, name)), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.int64, torch.bool])
@pytest.mark.parametrize("left", [False, True])
def test_unpack_repack_match_reference(dtype, left):
    generator = torch.Generator().manual_seed(5)
    lengths = (torch.rand(1024, generator=generator) ** 3 * 4096).long().tolist()
    values = torch.randn(sum(lengths), 2, generator=generator).mul(5).to(dtype)
    cu_seqlens = offsets(lengths, "cpu")
    max_len = max(lengths) + 3
    expected = reference.unpack(values, cu_seqlens, max_len, 1, left)
    padded = ops.unpack(values.cuda(), cu_seqlens.cuda(), max_len, 1, left)
    assert_same([padded], [expected])
    assert_same([ops.repack(padded, cu_seqlens.cuda(), left)], [values])


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("scale", [False, True])
@pytest.mark.parametrize("group_size", [1, 8, 16])
def test_group_advantages_match_reference(scale, group_size, masked):
    generator = torch.Generator().manual_seed(6)
    rewards = torch.randint(0, 5, (1024,), generator=generator).float() / 4
    valid = torch.rand(1024, generator=generator) < 0.7 if masked else None
    expected = reference.group_advantages(rewards, valid, group_size, scale, 1e-6)
    got = ops.group_advantages(
        rewards.cuda(), None if valid is None else valid.cuda(), group_size, scale, 1e-6
    )
    torch.testing.assert_close(got.cpu(), expected)


@pytest.mark.parametrize("mode", ["delta", "end", "group"])
def test_segment_advantages_match_reference(mode):
    generator = torch.Generator().manual_seed(7)
    batch, width = 1024, 12
    scores = torch.rand(batch, width, generator=generator)
    num_segments = torch.randint(0, width + 1, (batch,), generator=generator)
    lengths = (torch.rand(batch, generator=generator) ** 3 * 4096).long().tolist()
    segment_ids = torch.cat(
        [torch.randint(-1, int(num_segments[b]), (n,), generator=generator) for b, n in enumerate(lengths)]
    )
    group_size = 8 if mode == "group" else 1
    args = (offsets(lengths, "cpu"), scores, num_segments, batching.SEGMENT_MODES[mode], group_size, 1e-6)
    expected = reference.segment_advantages(segment_ids, *args)
    got = ops.segment_advantages(segment_ids.cuda(), *[a.cuda() if torch.is_tensor(a) else a for a in args])
    torch.testing.assert_close(got.cpu(), expected)


def test_cuda_ops_validate_offsets():
    ids = torch.arange(4, device="cuda")
    with pytest.raises(RuntimeError, match=r"prompt_cu\[-1\] = 5 but there are 4 values"):
        ops.rollout_batch(ids, offsets([5]), ids, offsets([4]), 0, 9, True, False)
    with pytest.raises(RuntimeError, match="sequence|max_len"):
        ops.unpack(ids, offsets([4]), 2, 0, False)
    with pytest.raises(RuntimeError, match=r"response_lengths\[0\] = 9 is outside"):
        ops.rollout_from_generation(
            ids[None],
            torch.tensor([1], device="cuda"),
            torch.tensor([9], device="cuda"),
            1,
            0,
            9,
            True,
            False,
        )


def test_empty_inputs_on_cuda():
    empty = torch.empty(0, dtype=torch.long, device="cuda")
    got = ops.rollout_batch(empty, offsets([0, 0]), empty, offsets([0, 0]), 0, 0, False, False)
    assert [tuple(t.shape) for t in got] == [(2, 0)] * 5
    assert ops.generation_lengths(torch.empty(0, 4, dtype=torch.long, device="cuda"), 2, 2)[0].shape == (0,)
    assert ops.group_advantages(torch.empty(0, device="cuda"), None, 4, True, 1e-6).shape == (0,)
