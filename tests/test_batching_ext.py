"""The compiled ops `torch.ops.exprl.*` (exprl._C, CPU) equal the PyTorch reference op for op, and
reject malformed arguments themselves (TORCH_CHECK naming the argument), without the Python checks."""

import os

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import exprl.batching as batching
from exprl.batching import reference


def test_extension_is_built_when_required():
    """CI sets EXPRL_REQUIRE_EXT=1 so that a missing build fails instead of skipping the tests below."""
    if os.environ.get("EXPRL_REQUIRE_EXT") != "1":
        pytest.skip("EXPRL_REQUIRE_EXT is not 1")
    assert batching.extension_error() is None, batching.extension_error()
    assert batching.backend("cpu") == "ext"


pytestmark_ext = pytest.mark.skipif(
    batching.backend("cpu") != "ext", reason=f"exprl._C is not built: {batching.extension_error()}"
)
ops = torch.ops.exprl


def offsets(lengths: list[int], dtype=torch.long) -> torch.Tensor:
    return torch.tensor([sum(lengths[:i]) for i in range(len(lengths) + 1)], dtype=dtype)


def assert_all_equal(got, expected):
    assert len(got) == len(expected)
    for index, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a.dtype == b.dtype and a.shape == b.shape, index
        assert torch.equal(a, b), index


@st.composite
def ragged_pairs(draw):
    batch = draw(st.integers(0, 8))
    prompt_lengths = draw(st.lists(st.integers(0, 9), min_size=batch, max_size=batch))
    response_lengths = draw(st.lists(st.integers(0, 9), min_size=batch, max_size=batch))
    seed = draw(st.integers(0, 2**16))
    generator = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(0, 1000, (sum(prompt_lengths),), generator=generator)
    response_ids = torch.randint(0, 1000, (sum(response_lengths),), generator=generator)
    return prompt_ids, prompt_lengths, response_ids, response_lengths


@pytestmark_ext
@settings(max_examples=60, deadline=None)
@given(
    data=ragged_pairs(),
    packed=st.booleans(),
    left=st.booleans(),
    extra=st.integers(0, 3),
    cu_dtype=st.sampled_from([torch.int32, torch.long]),
)
def test_rollout_batch_equals_reference(data, packed, left, extra, cu_dtype):
    prompt_ids, prompt_lengths, response_ids, response_lengths = data
    lengths = [p + r for p, r in zip(prompt_lengths, response_lengths, strict=True)]
    args = (
        prompt_ids,
        offsets(prompt_lengths, cu_dtype),
        response_ids,
        offsets(response_lengths, cu_dtype),
        7,
        max(lengths, default=0) + extra,
        packed,
        left,
    )
    assert_all_equal(ops.rollout_batch(*args), reference.rollout_batch(*args))


@pytestmark_ext
@settings(max_examples=40, deadline=None)
@given(data=ragged_pairs(), packed=st.booleans(), left=st.booleans())
def test_rollout_batch_lists_equals_flat_op(data, packed, left):
    prompt_ids, prompt_lengths, response_ids, response_lengths = data
    assume(prompt_lengths)  # an empty Tensor[] has no device to dispatch on; the API never passes one
    prompts = list(prompt_ids.split(prompt_lengths))
    # A strided tensor in the list must be read as its values, not its storage.
    responses = [torch.stack([r, r]).t()[:, 1] for r in response_ids.split(response_lengths)]
    max_len = max((p + r for p, r in zip(prompt_lengths, response_lengths, strict=True)), default=0)
    expected = reference.rollout_batch(
        prompt_ids, offsets(prompt_lengths), response_ids, offsets(response_lengths), 3, max_len, packed, left
    )
    assert_all_equal(ops.rollout_batch_lists(prompts, responses, 3, packed, left), expected)


@st.composite
def generation_outputs(draw):
    batch = draw(st.integers(0, 8))
    prompt_width = draw(st.integers(0, 6))
    responses = draw(st.integers(0, 12))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    # Few distinct tokens so that eos (2) appears at all kinds of places, or not at all.
    sequences = torch.randint(
        0, draw(st.sampled_from([3, 8, 50])), (batch, prompt_width + responses), generator=generator
    )
    prompt_lengths = torch.randint(0, prompt_width + 1, (batch,), generator=generator)
    return sequences, prompt_lengths, prompt_width


@pytestmark_ext
@settings(max_examples=60, deadline=None)
@given(data=generation_outputs(), packed=st.booleans(), left=st.booleans())
def test_generation_ops_equal_reference(data, packed, left):
    sequences, prompt_lengths, prompt_width = data
    lengths = ops.generation_lengths(sequences, prompt_width, 2)
    assert_all_equal(lengths, reference.generation_lengths(sequences, prompt_width, 2))
    max_len = int((prompt_lengths + lengths[0]).max()) if len(sequences) else 0
    args = (sequences, prompt_lengths, lengths[0], prompt_width, 0, max_len, packed, left)
    assert_all_equal(ops.rollout_from_generation(*args), reference.rollout_from_generation(*args))


@pytestmark_ext
@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 7), max_size=8),
    rest=st.sampled_from([(), (1,), (3,), (2, 3)]),
    dtype=st.sampled_from(
        [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.bool]
    ),
    left=st.booleans(),
    extra=st.integers(0, 3),
)
def test_unpack_and_repack_equal_reference(lengths, rest, dtype, left, extra):
    values = torch.randn(sum(lengths), *rest).mul(10).to(dtype)
    cu_seqlens = offsets(lengths)
    max_len = max(lengths, default=0) + extra
    pad = True if dtype == torch.bool else -3
    padded = ops.unpack(values, cu_seqlens, max_len, pad, left)
    assert_all_equal([padded], [reference.unpack(values, cu_seqlens, max_len, pad, left)])
    assert_all_equal([ops.repack(padded, cu_seqlens, left)], [reference.repack(padded, cu_seqlens, left)])


@pytestmark_ext
@settings(max_examples=40, deadline=None)
@given(
    groups=st.integers(0, 6),
    group_size=st.integers(1, 9),
    scale=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    seed=st.integers(0, 2**16),
    masked=st.booleans(),
)
def test_group_advantages_equal_reference(groups, group_size, scale, dtype, seed, masked):
    generator = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 5, (groups * group_size,), generator=generator).to(dtype) / 4
    valid = torch.rand(rewards.shape, generator=generator) < 0.7 if masked else None
    got = ops.group_advantages(rewards, valid, group_size, scale, 1e-6)
    torch.testing.assert_close(got, reference.group_advantages(rewards, valid, group_size, scale, 1e-6))


@pytestmark_ext
@settings(max_examples=60, deadline=None)
@given(
    mode=st.sampled_from(["delta", "end", "group"]),
    groups=st.integers(0, 4),
    width=st.integers(0, 5),
    seed=st.integers(0, 2**16),
)
def test_segment_advantages_equal_reference(mode, groups, width, seed):
    generator = torch.Generator().manual_seed(seed)
    group_size = 3 if mode == "group" else 1
    batch = groups * group_size
    scores = torch.rand(batch, width, generator=generator)
    num_segments = torch.randint(0, width + 1, (batch,), generator=generator)
    lengths = torch.randint(0, 10, (batch,), generator=generator).tolist()
    segment_ids = torch.cat(
        [torch.randint(-1, int(num_segments[b]), (n,), generator=generator) for b, n in enumerate(lengths)]
        or [torch.empty(0, dtype=torch.long)]
    )
    args = (
        segment_ids,
        offsets(lengths),
        scores,
        num_segments,
        batching.SEGMENT_MODES[mode],
        group_size,
        1e-6,
    )
    torch.testing.assert_close(ops.segment_advantages(*args), reference.segment_advantages(*args))


@pytestmark_ext
def test_ops_on_large_inputs():
    """Long sequences and many rows (beyond one parallel chunk) give the reference's tensors."""
    generator = torch.Generator().manual_seed(0)
    prompt_lengths = torch.randint(0, 300, (300,), generator=generator).tolist()
    response_lengths = (torch.rand(300, generator=generator) ** 4 * 3000).long().tolist()
    prompt_ids = torch.randint(0, 50_000, (sum(prompt_lengths),), generator=generator)
    response_ids = torch.randint(0, 50_000, (sum(response_lengths),), generator=generator)
    longest = max(p + r for p, r in zip(prompt_lengths, response_lengths, strict=True))
    for packed in (False, True):
        args = (
            prompt_ids,
            offsets(prompt_lengths),
            response_ids,
            offsets(response_lengths),
            0,
            longest,
            packed,
            True,
        )
        assert_all_equal(ops.rollout_batch(*args), reference.rollout_batch(*args))


@pytestmark_ext
@pytest.mark.parametrize(
    ("packed", "left", "pad_id"), [(False, False, 0), (False, True, 0), (False, False, 5), (True, False, 0)]
)
def test_large_outputs_are_ordinary_tensors(packed, left, pad_id):
    """Padded outputs of 2 MiB and more live in freshly mapped huge-page-aligned memory whose zero padding
    is not written again (packed ones come from at::empty): either way they equal the reference, share
    nothing, and can be written, resized and freed like any tensor."""
    generator = torch.Generator().manual_seed(1)
    prompt_lengths = torch.randint(1, 400, (300,), generator=generator).tolist()
    response_lengths = torch.randint(0, 3000, (300,), generator=generator).tolist()
    prompts = [torch.randint(0, 1000, (n,), generator=generator) for n in prompt_lengths]
    responses = [torch.randint(0, 1000, (n,), generator=generator) for n in response_lengths]
    outputs = ops.rollout_batch_lists(prompts, responses, pad_id, packed, left)
    flat = (torch.cat(prompts), offsets([len(p) for p in prompts]), torch.cat(responses))
    longest = max(len(p) + len(r) for p, r in zip(prompts, responses, strict=True))
    args = (*flat, offsets([len(r) for r in responses]), pad_id, longest, packed, left)
    assert_all_equal(outputs, reference.rollout_batch(*args))
    # large enough for the mapped path
    assert min(t.numel() * t.element_size() for t in outputs[:3]) >= 2 << 20
    assert len({t.untyped_storage().data_ptr() for t in outputs}) == 5
    input_ids = outputs[0]
    before = input_ids.clone()
    input_ids.view(-1)[-1] = 123
    assert torch.equal(input_ids.view(-1)[:-1], before.view(-1)[:-1]) and input_ids.view(-1)[-1] == 123
    grown = input_ids.view(-1).resize_(input_ids.numel() + 7)
    assert torch.equal(grown[: before.numel() - 1], before.view(-1)[:-1])
    del outputs, input_ids, grown  # the custom deleter frees them (a crash here would fail the run)


# ---- the ops check their own arguments (callers other than exprl.batching) ---------------------------


@pytestmark_ext
def test_rollout_batch_checks_offsets_and_sizes():
    ids = torch.arange(4)
    with pytest.raises(RuntimeError, match=r"prompt_cu\[-1\] = 5 but there are 4 values"):
        ops.rollout_batch(ids, torch.tensor([0, 5]), ids, torch.tensor([0, 4]), 0, 9, False, False)
    with pytest.raises(RuntimeError, match="response_cu must be non-decreasing"):
        ops.rollout_batch(ids, torch.tensor([0, 4, 4]), ids, torch.tensor([0, 3, 2]), 0, 9, False, False)
    with pytest.raises(RuntimeError, match="prompt_cu has 1 sequences but response_cu has 2"):
        ops.rollout_batch(ids, torch.tensor([0, 4]), ids, torch.tensor([0, 2, 4]), 0, 9, False, False)
    with pytest.raises(RuntimeError, match="max_len 7 is shorter than the longest sequence"):
        ops.rollout_batch(ids, torch.tensor([0, 4]), ids, torch.tensor([0, 4]), 0, 7, False, False)
    with pytest.raises(RuntimeError, match="prompt_ids must be int64"):
        ops.rollout_batch(ids.int(), torch.tensor([0, 4]), ids, torch.tensor([0, 4]), 0, 9, False, False)
    with pytest.raises(RuntimeError, match="prompt_cu must be int32 or int64"):
        ops.rollout_batch(ids, torch.tensor([0.0, 4.0]), ids, torch.tensor([0, 4]), 0, 9, False, False)


@pytestmark_ext
def test_rollout_batch_lists_checks_each_tensor():
    good = torch.arange(3)
    with pytest.raises(ValueError, match="prompts has 1 sequences but responses has 2"):
        ops.rollout_batch_lists([good], [good, good], 0, True, False)
    with pytest.raises(TypeError, match=r"responses\[1\] must be int64 token ids"):
        ops.rollout_batch_lists([good, good], [good, good.float()], 0, True, False)
    with pytest.raises(ValueError, match=r"prompts\[0\] must be 1-D"):
        ops.rollout_batch_lists([good[None]], [good], 0, True, False)
    with pytest.raises(ValueError, match=r"responses\[2\] contains negative token ids"):
        ops.rollout_batch_lists([good] * 3, [good, good, good - 1], 0, False, True)


@pytestmark_ext
def test_generation_ops_check_lengths():
    sequences = torch.tensor([[1, 2, 3, 4]])
    with pytest.raises(RuntimeError, match=r"prompt_lengths\[0\] = 3 is outside \[0, prompt_width=2\]"):
        ops.rollout_from_generation(sequences, torch.tensor([3]), torch.tensor([1]), 2, 0, 9, True, False)
    with pytest.raises(RuntimeError, match=r"response_lengths\[0\] = 3 is outside \[0, 2\]"):
        ops.rollout_from_generation(sequences, torch.tensor([1]), torch.tensor([3]), 2, 0, 9, True, False)
    with pytest.raises(RuntimeError, match="prompt_width must lie in"):
        ops.generation_lengths(sequences, 5, 2)


@pytestmark_ext
def test_unpack_repack_and_advantage_ops_check_arguments():
    with pytest.raises(RuntimeError, match="sequence 0 has 3 values but max_len is 2"):
        ops.unpack(torch.zeros(3), torch.tensor([0, 3]), 2, 0, False)
    with pytest.raises(RuntimeError, match="cu_seqlens has 2 sequences but padded has 1 rows"):
        ops.repack(torch.zeros(1, 3), torch.tensor([0, 1, 2]), False)
    with pytest.raises(RuntimeError, match="group_size 4 must be positive and divide the 6 rewards"):
        ops.group_advantages(torch.zeros(6), None, 4, True, 1e-6)
    with pytest.raises(RuntimeError, match="valid must be a bool tensor shaped like rewards"):
        ops.group_advantages(torch.zeros(6), torch.ones(6), 3, True, 1e-6)
    with pytest.raises(
        RuntimeError, match=r"segment_ids\[1\] = 2 is neither -1 nor below num_segments\[0\] = 2"
    ):
        ops.segment_advantages(
            torch.tensor([0, 2]), torch.tensor([0, 2]), torch.zeros(1, 2), torch.tensor([2]), 0, 1, 1e-6
        )
    with pytest.raises(RuntimeError, match=r"num_segments\[0\] = 3 is outside \[0, 2\]"):
        ops.segment_advantages(
            torch.tensor([0]), torch.tensor([0, 1]), torch.zeros(1, 2), torch.tensor([3]), 0, 1, 1e-6
        )
