"""exprl.batching public API, on both backends (the compiled ops and the PyTorch reference), against
expectations written out by hand or built one token at a time in plain Python."""

import math
import statistics

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import exprl.batching as batching

IGNORE = -100


@pytest.fixture(params=["torch", "ext"])
def backend(request):
    """Runs the test once with the reference ops and once with exprl._C (skipped when not built).

    It only selects the ops, which no example changes, so hypothesis may reuse it across examples."""
    if request.param == "ext" and batching.extension_error() is not None:
        pytest.skip(f"compiled ops unavailable: {batching.extension_error()}")
    with batching.use_backend(request.param):
        yield request.param


def ids(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def expected_sequences(prompts, responses):
    """Per sequence: tokens, position ids, next-token targets and response mask, one token at a time."""
    rows = []
    for prompt, response in zip(prompts, responses, strict=True):
        tokens = prompt.tolist() + response.tolist()
        n_prompt = len(prompt)
        targets, mask = [], []
        for t in range(len(tokens)):
            is_target = t + 1 < len(tokens) and t + 1 >= n_prompt
            targets.append(tokens[t + 1] if is_target else IGNORE)
            mask.append(is_target)
        rows.append((tokens, list(range(len(tokens))), targets, mask))
    return rows


def expected_batch(prompts, responses, pad_id, layout, side):
    rows = expected_sequences(prompts, responses)
    if layout == "packed":
        flat = [sum((row[k] for row in rows), []) for k in range(4)]
        return {
            "input_ids": flat[0],
            "attention_mask": [1] * len(flat[0]),
            "position_ids": flat[1],
            "target_ids": flat[2],
            "response_mask": flat[3],
        }
    width = max((len(row[0]) for row in rows), default=0)
    out = {key: [] for key in ("input_ids", "attention_mask", "position_ids", "target_ids", "response_mask")}
    for tokens, positions, targets, mask in rows:
        pad = width - len(tokens)

        def place(values, fill, pad=pad):
            return [fill] * pad + values if side == "left" else values + [fill] * pad

        out["input_ids"].append(place(tokens, pad_id))
        out["attention_mask"].append(place([1] * len(tokens), 0))
        out["position_ids"].append(place(positions, 0))
        out["target_ids"].append(place(targets, IGNORE))
        out["response_mask"].append(place(mask, False))
    return out


ragged = st.lists(st.integers(0, 6), max_size=8)


@st.composite
def prompt_response_lists(draw, max_batch=6):
    batch = draw(st.integers(0, max_batch))
    prompt_lengths = draw(st.lists(st.integers(0, 6), min_size=batch, max_size=batch))
    response_lengths = draw(st.lists(st.integers(0, 6), min_size=batch, max_size=batch))
    token = st.integers(0, 50)
    prompts = [
        torch.tensor(draw(st.lists(token, min_size=n, max_size=n)), dtype=torch.long) for n in prompt_lengths
    ]
    responses = [
        torch.tensor(draw(st.lists(token, min_size=n, max_size=n)), dtype=torch.long)
        for n in response_lengths
    ]
    return prompts, responses


def test_build_rollout_batch_by_hand(backend):
    batch = batching.build_rollout_batch([ids(1, 2), ids(3)], [ids(4, 5), ids()], pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 4, 5], [3, 0, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [1, 0, 0, 0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3], [0, 0, 0, 0]]
    assert batch.target_ids.tolist() == [[IGNORE, 4, 5, IGNORE], [IGNORE] * 4]
    assert batch.response_mask.tolist() == [[False, True, True, False], [False] * 4]
    assert batch.cu_seqlens.tolist() == [0, 4, 5]
    assert batch.cu_seqlens.dtype == torch.int32
    assert batch.response_mask.dtype == torch.bool
    assert batch.prompt_lengths.tolist() == [2, 1] and batch.response_lengths.tolist() == [2, 0]
    assert batch.truncated.tolist() == [False, False]


def test_packed_rollout_batch_by_hand(backend):
    batch = batching.build_rollout_batch(
        [ids(1, 2), ids()], [ids(4), ids(6, 7, 8)], pad_id=0, layout="packed"
    )
    assert batch.input_ids.tolist() == [1, 2, 4, 6, 7, 8]
    assert batch.position_ids.tolist() == [0, 1, 2, 0, 1, 2]
    # A response without a prompt: its first token is predicted by nothing, so it is not a target.
    assert batch.target_ids.tolist() == [IGNORE, 4, IGNORE, 7, 8, IGNORE]
    assert batch.attention_mask.tolist() == [1] * 6
    assert batch.cu_seqlens.tolist() == [0, 3, 6]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=40, deadline=None)
@given(
    data=prompt_response_lists(),
    layout=st.sampled_from(["padded", "packed"]),
    side=st.sampled_from(["left", "right"]),
    pad_id=st.integers(0, 60),
)
def test_build_rollout_batch_matches_token_by_token_construction(backend, data, layout, side, pad_id):
    prompts, responses = data
    batch = batching.build_rollout_batch(prompts, responses, pad_id, layout=layout, pad_side=side)
    expected = expected_batch(prompts, responses, pad_id, layout, side)
    for key, values in expected.items():
        assert getattr(batch, key).tolist() == values, key
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses, strict=True)]
    assert batch.cu_seqlens.tolist() == [sum(lengths[:i]) for i in range(len(lengths) + 1)]


def test_truncated_flags_are_carried(backend):
    batch = batching.build_rollout_batch([ids(1), ids(2)], [ids(3), ids(4)], 0, truncated=[True, False])
    assert batch.truncated.tolist() == [True, False]


def test_pad_sequences_left_and_right(backend):
    seqs = [ids(5, 6, 7), ids(), ids(8)]
    right_ids, right_mask = batching.pad_sequences(seqs, pad_id=9)
    assert right_ids.tolist() == [[5, 6, 7], [9, 9, 9], [8, 9, 9]]
    assert right_mask.tolist() == [[1, 1, 1], [0, 0, 0], [1, 0, 0]]
    left_ids, left_mask = batching.pad_sequences(seqs, pad_id=9, side="left")
    assert left_ids.tolist() == [[5, 6, 7], [9, 9, 9], [9, 9, 8]]
    assert left_mask.tolist() == [[1, 1, 1], [0, 0, 0], [0, 0, 1]]


def test_pack_sequences_restarts_positions(backend):
    flat, cu_seqlens, positions = batching.pack_sequences([ids(5, 6, 7), ids(), ids(8, 9)])
    assert flat.tolist() == [5, 6, 7, 8, 9]
    assert cu_seqlens.tolist() == [0, 3, 3, 5] and cu_seqlens.dtype == torch.int32
    assert positions.tolist() == [0, 1, 2, 0, 1]


def test_empty_batch_and_empty_sequences(backend):
    for layout in ("padded", "packed"):
        empty = batching.build_rollout_batch([], [], 0, layout=layout)
        assert empty.input_ids.numel() == 0 and empty.cu_seqlens.tolist() == [0]
        blank = batching.build_rollout_batch([ids(), ids()], [ids(), ids()], 0, layout=layout)
        assert blank.input_ids.numel() == 0 and blank.cu_seqlens.tolist() == [0, 0, 0]
    assert batching.pad_sequences([], 0)[0].shape == (0, 0)


def test_large_single_sequence(backend):
    prompt = torch.arange(1000)
    response = torch.arange(200_000) % 5000
    batch = batching.build_rollout_batch([prompt], [response], 0, layout="packed")
    assert torch.equal(batch.target_ids[999:-1], response)
    assert bool((batch.target_ids[:999] == IGNORE).all()) and int(batch.target_ids[-1]) == IGNORE
    assert torch.equal(batch.position_ids, torch.arange(201_000))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=30, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 5), max_size=6),
    rest=st.sampled_from([(), (3,), (2, 2)]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.int64, torch.bool, torch.uint8]),
    side=st.sampled_from(["left", "right"]),
    extra=st.integers(0, 2),
)
def test_unpack_places_each_sequence_and_repack_inverts_it(backend, lengths, rest, dtype, side, extra):
    total = sum(lengths)
    values = (torch.arange(total * math.prod(rest)).reshape(total, *rest) % 7 + 1).to(dtype)
    cu_seqlens = torch.tensor([sum(lengths[:i]) for i in range(len(lengths) + 1)], dtype=torch.int32)
    width = max(lengths, default=0) + extra
    padded = batching.unpack(values, cu_seqlens, pad_value=0, side=side, max_len=width)
    assert padded.shape == (len(lengths), width, *rest) and padded.dtype == dtype
    for row, n in enumerate(lengths):
        start = sum(lengths[:row])
        real = padded[row, width - n :] if side == "left" else padded[row, :n]
        pad = padded[row, : width - n] if side == "left" else padded[row, n:]
        assert torch.equal(real, values[start : start + n])
        assert not bool(pad.bool().any())
    assert torch.equal(batching.repack(padded, cu_seqlens, side=side), values)


def test_unpack_pad_value(backend):
    out = batching.unpack(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 1, 3]), pad_value=-1.5)
    assert out.tolist() == [[1.0, -1.5], [2.0, 3.0]]


def expected_group_advantages(rewards, group_size, scale, eps, valid=None):
    valid = valid or [True] * len(rewards)
    out = []
    for start in range(0, len(rewards), group_size):
        group = list(zip(rewards[start : start + group_size], valid[start : start + group_size], strict=True))
        kept = [r for r, v in group if v]
        mean = statistics.fmean(kept) if kept else 0.0
        std = statistics.stdev(kept) if len(kept) > 1 else 0.0
        for r, v in group:
            out.append(0.0 if not v else (r - mean) / (std + eps) if scale == "std" else r - mean)
    return out


def test_group_advantages_by_hand(backend):
    adv = batching.group_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), group_size=2)
    # Group [1, 0]: mean 0.5, sample std sqrt(0.5); group [1, 1]: no spread, advantage 0.
    expected = 0.5 / (math.sqrt(0.5) + 1e-6)
    assert adv.tolist() == pytest.approx([expected, -expected, 0.0, 0.0])
    assert adv.dtype == torch.float32


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=30, deadline=None)
@given(
    groups=st.integers(0, 5),
    group_size=st.integers(1, 6),
    scale=st.sampled_from(["std", "none"]),
    data=st.data(),
)
def test_group_advantages_match_statistics_module(backend, groups, group_size, scale, data):
    rewards = data.draw(
        st.lists(
            st.sampled_from([0.0, 0.25, 0.5, 1.0]), min_size=groups * group_size, max_size=groups * group_size
        )
    )
    adv = batching.group_advantages(torch.tensor(rewards, dtype=torch.float64), group_size, scale=scale)
    expected = expected_group_advantages(rewards, group_size, scale, 1e-6)
    assert adv.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    valid = data.draw(st.lists(st.booleans(), min_size=len(rewards), max_size=len(rewards)))
    masked = batching.group_advantages(
        torch.tensor(rewards, dtype=torch.float64),
        group_size,
        scale=scale,
        valid=torch.tensor(valid, dtype=torch.bool),
    )
    assert masked.tolist() == pytest.approx(
        expected_group_advantages(rewards, group_size, scale, 1e-6, valid), rel=1e-5, abs=1e-5
    )


def test_group_advantages_skip_invalid_rewards(backend):
    rewards = torch.tensor([1.0, float("nan"), 0.0, 3.0, float("nan"), 5.0])
    valid = torch.tensor([True, False, True, True, False, False])
    adv = batching.group_advantages(rewards, 3, valid=valid)
    # Group [1, -, 0]: mean 0.5, sample std sqrt(0.5); group [3, -, -]: one reward, no baseline.
    expected = 0.5 / (math.sqrt(0.5) + 1e-6)
    assert adv.tolist() == pytest.approx([expected, 0.0, -expected, 0.0, 0.0, 0.0])


def test_segment_advantages_delta_and_end_by_hand(backend):
    segment_ids = torch.tensor([[-1, 0, 0, 1, 2], [-1, 0, 1, -1, -1]])
    scores = torch.tensor([[0.25, 0.5, 1.0], [0.75, 0.5, 0.0]])
    num_segments = torch.tensor([3, 2])
    delta = batching.segment_advantages(segment_ids, scores, "delta", num_segments=num_segments)
    expected_delta = [[0, 0.25 - 1.0, 0.25 - 1.0, 0.5 - 0.25, 1.0 - 0.5], [0, 0.75 - 0.5, 0.5 - 0.75, 0, 0]]
    torch.testing.assert_close(delta, torch.tensor(expected_delta))
    end = batching.segment_advantages(segment_ids, scores, "end", num_segments=num_segments)
    expected_end = [[0, 0.25 - 1.0, 0.25 - 1.0, 0.5 - 1.0, 0.0], [0, 0.75 - 0.5, 0.0, 0, 0]]
    torch.testing.assert_close(end, torch.tensor(expected_end))


@pytest.mark.parametrize("mode", ["delta", "end"])
def test_segment_advantages_edge_cases(backend, mode):
    # one segment (delta keeps s_1, end gives the last segment 0), a row with no segments, equal scores,
    # and two segments where the first is the last one's baseline
    segment_ids = torch.tensor([[0, 0, 0], [-1, -1, -1], [0, 1, 1], [0, 1, -1]])
    scores = [torch.tensor([0.75]), torch.zeros(0), torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0])]
    adv = batching.segment_advantages(segment_ids, scores, mode)
    if mode == "delta":
        expected = [[0.75] * 3, [0.0] * 3, [0.0] * 3, [0.0 - 1.0, 1.0 - 0.0, 0.0]]
    else:
        expected = [[0.0] * 3, [0.0] * 3, [0.0] * 3, [0.0 - 1.0, 0.0, 0.0]]
    torch.testing.assert_close(adv, torch.tensor(expected))


def test_segment_advantages_group_normalises_over_the_group(backend):
    segment_ids = torch.tensor([[0, 1], [0, 0], [0, -1], [0, 0]])
    scores = [torch.tensor([1.0, 0.0]), torch.tensor([0.5]), torch.tensor([0.0]), torch.tensor([1.0])]
    adv = batching.segment_advantages(segment_ids, scores, "group", group_size=2)
    group = [1.0, 0.0, 0.5]
    mean, std = statistics.fmean(group), statistics.stdev(group)
    first = [(s - mean) / (std + 1e-6) for s in group]
    second_std = statistics.stdev([0.0, 1.0])
    second = 0.5 / (second_std + 1e-6)
    expected = [[first[0], first[1]], [first[2], first[2]], [-second, 0.0], [second, second]]
    torch.testing.assert_close(adv, torch.tensor(expected))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=30, deadline=None)
@given(data=st.data(), mode=st.sampled_from(["delta", "end", "group"]))
def test_segment_advantages_packed_equals_padded(backend, data, mode):
    batch = data.draw(st.sampled_from([0, 2, 4]))
    counts = data.draw(st.lists(st.integers(0, 4), min_size=batch, max_size=batch))
    lengths = data.draw(st.lists(st.integers(0, 6), min_size=batch, max_size=batch))
    scores = [torch.tensor(data.draw(st.lists(st.floats(0, 1), min_size=c, max_size=c))) for c in counts]
    rows = [
        torch.tensor(data.draw(st.lists(st.integers(-1, c - 1), min_size=n, max_size=n)), dtype=torch.long)
        for c, n in zip(counts, lengths, strict=True)
    ]
    group_size = 2 if mode == "group" else None
    flat = torch.cat(rows) if rows else torch.empty(0, dtype=torch.long)
    cu_seqlens = torch.tensor([sum(lengths[:i]) for i in range(batch + 1)])
    packed = batching.segment_advantages(flat, scores, mode, cu_seqlens=cu_seqlens, group_size=group_size)
    width = max(lengths, default=0)
    padded_ids = (
        torch.stack([torch.cat([row, torch.full((width - len(row),), -1)]) for row in rows])
        if rows
        else (torch.empty(0, 0, dtype=torch.long))
    )
    padded = batching.segment_advantages(padded_ids, scores, mode, group_size=group_size)
    for row, n in enumerate(lengths):
        assert torch.equal(padded[row, :n], packed[cu_seqlens[row] : cu_seqlens[row + 1]])
        assert not bool(padded[row, n:].any())


def generation_output():
    """Three rows from `generate`: prompts left-padded to width 3, 4 response columns, eos 2, pad 0."""
    sequences = torch.tensor(
        [
            [0, 11, 12, 21, 22, 2, 0],  # stops after 3 tokens
            [13, 14, 15, 23, 24, 25, 26],  # never stops: truncated
            [0, 0, 16, 2, 0, 0, 0],  # stops at once: the response is just eos
        ]
    )
    return sequences, torch.tensor([2, 3, 1])


def test_split_generation_by_hand(backend):
    sequences, prompt_lengths = generation_output()
    split = batching.split_generation(sequences, prompt_lengths, prompt_width=3, eos_id=2)
    assert [p.tolist() for p in split.prompts] == [[11, 12], [13, 14, 15], [16]]
    assert [r.tolist() for r in split.responses] == [[21, 22, 2], [23, 24, 25, 26], [2]]
    assert split.truncated.tolist() == [False, True, False]
    assert split.response_lengths.tolist() == [3, 4, 1]


def test_split_generation_stops_at_any_of_several_eos_ids(backend):
    sequences, prompt_lengths = generation_output()
    split = batching.split_generation(sequences, prompt_lengths, prompt_width=3, eos_id=[9, 24])
    # Row 0 stops at 2 only when 2 is an eos id: here it runs on; row 1 stops at its 24.
    assert [r.tolist() for r in split.responses] == [[21, 22, 2, 0], [23, 24], [2, 0, 0, 0]]
    assert split.truncated.tolist() == [True, False, True]
    both = batching.split_generation(sequences, prompt_lengths, prompt_width=3, eos_id=[24, 2])
    assert [r.tolist() for r in both.responses] == [[21, 22, 2], [23, 24], [2]]
    with pytest.raises(ValueError, match="eos_id must be a non-negative int or a non-empty list"):
        batching.split_generation(sequences, prompt_lengths, prompt_width=3, eos_id=[])


def test_split_generation_without_response_columns(backend):
    split = batching.split_generation(torch.tensor([[5, 6], [0, 7]]), torch.tensor([2, 1]), 2, eos_id=2)
    assert [r.tolist() for r in split.responses] == [[], []]
    assert split.truncated.tolist() == [True, True]


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_from_generation_equals_batch_of_the_split(backend, layout, side):
    sequences, prompt_lengths = generation_output()
    split = batching.split_generation(sequences, prompt_lengths, 3, eos_id=2)
    expected = batching.build_rollout_batch(split.prompts, split.responses, 0, layout, side, split.truncated)
    batch = batching.batch_from_generation(
        sequences, prompt_lengths, 3, eos_id=2, pad_id=0, layout=layout, pad_side=side
    )
    for name in batching.TrainingBatch.tensor_fields:
        assert torch.equal(getattr(batch, name), getattr(expected, name)), name


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=30, deadline=None)
@given(data=st.data(), layout=st.sampled_from(["padded", "packed"]))
def test_batch_from_generation_random(backend, data, layout):
    batch = data.draw(st.integers(0, 5))
    width = data.draw(st.integers(0, 4))
    responses = data.draw(st.integers(0, 5))
    sequences = torch.tensor(
        data.draw(
            st.lists(
                st.lists(st.integers(0, 4), min_size=width + responses, max_size=width + responses),
                min_size=batch,
                max_size=batch,
            )
        ),
        dtype=torch.long,
    ).reshape(batch, width + responses)
    prompt_lengths = torch.tensor(
        data.draw(st.lists(st.integers(0, width), min_size=batch, max_size=batch)), dtype=torch.long
    )
    split = batching.split_generation(sequences, prompt_lengths, width, eos_id=2)
    for row, response in enumerate(split.responses):
        full = sequences[row, width:].tolist()
        stop = full.index(2) + 1 if 2 in full else len(full)
        assert response.tolist() == full[:stop]
        assert bool(split.truncated[row]) == (2 not in full)
    expected = batching.build_rollout_batch(
        split.prompts, split.responses, 0, layout, truncated=split.truncated
    )
    got = batching.batch_from_generation(sequences, prompt_lengths, width, 2, 0, layout)
    for name in batching.TrainingBatch.tensor_fields:
        assert torch.equal(getattr(got, name), getattr(expected, name)), name


# ---- bad input: each error names the argument -------------------------------------------------------


def test_mismatched_prompt_and_response_counts(backend):
    with pytest.raises(ValueError, match="prompts has 2 sequences but responses has 1"):
        batching.build_rollout_batch([ids(1), ids(2)], [ids(3)], 0)


def test_token_lists_must_be_int64_1d_lists(backend):
    with pytest.raises(TypeError, match=r"responses\[1\] must be int64"):
        batching.build_rollout_batch([ids(1), ids(2)], [ids(3), torch.tensor([1.0])], 0)
    with pytest.raises(ValueError, match=r"prompts\[0\] must be 1-D"):
        batching.build_rollout_batch([torch.ones(2, 2, dtype=torch.long)], [ids(3)], 0)
    with pytest.raises(TypeError, match="prompts must be a list"):
        batching.build_rollout_batch(torch.ones(2, 2, dtype=torch.long), [ids(3)], 0)
    with pytest.raises(TypeError, match=r"seqs\[0\] must be a torch.Tensor"):
        batching.pad_sequences([[1, 2]], 0)


def test_negative_ids_are_rejected(backend):
    with pytest.raises(ValueError, match=r"responses(\[0\])? contains negative token ids"):
        batching.build_rollout_batch([ids(1)], [ids(3, -1)], 0)
    with pytest.raises(ValueError, match="pad_id must be a non-negative int"):
        batching.build_rollout_batch([ids(1)], [ids(3)], -5)
    with pytest.raises(ValueError, match="sequences contains negative token ids"):
        batching.split_generation(torch.tensor([[1, -3]]), torch.tensor([1]), 1, eos_id=2)


def test_device_mix_is_rejected(backend):
    meta = torch.empty(2, dtype=torch.long, device="meta")
    with pytest.raises(ValueError, match=r"responses\[0\] is on meta but the batch is on cpu"):
        batching.build_rollout_batch([ids(1)], [meta], 0)


def test_bad_layout_and_side():
    with pytest.raises(ValueError, match="layout must be"):
        batching.build_rollout_batch([ids(1)], [ids(2)], 0, layout="ragged")
    with pytest.raises(ValueError, match="pad_side must be"):
        batching.build_rollout_batch([ids(1)], [ids(2)], 0, pad_side="up")
    with pytest.raises(ValueError, match="side must be"):
        batching.pad_sequences([ids(1)], 0, side="middle")


def test_group_size_must_divide_the_batch():
    with pytest.raises(ValueError, match="group_size 4 does not divide the 6 rewards"):
        batching.group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="group_size must be a positive int"):
        batching.group_advantages(torch.zeros(6), 0)
    with pytest.raises(TypeError, match="rewards must be a floating-point tensor"):
        batching.group_advantages(torch.zeros(6, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="rewards contains NaN"):
        batching.group_advantages(torch.tensor([0.0, float("nan")]), 2)
    with pytest.raises(ValueError, match="scale must be"):
        batching.group_advantages(torch.zeros(2), 2, scale="max")
    with pytest.raises(TypeError, match="valid must be a bool tensor of shape"):
        batching.group_advantages(torch.zeros(2), 2, valid=torch.ones(2))


def test_segment_advantages_errors():
    scores = torch.tensor([[0.5, 1.0]])
    with pytest.raises(ValueError, match="token_segment_ids must be -1 or a segment index"):
        batching.segment_advantages(torch.tensor([[0, 2]]), scores)
    with pytest.raises(ValueError, match="token_segment_ids must be -1 or a segment index"):
        batching.segment_advantages(torch.tensor([[0, 1]]), scores, num_segments=torch.tensor([1]))
    with pytest.raises(ValueError, match="mode must be one of"):
        batching.segment_advantages(torch.tensor([[0]]), scores, "mean")
    with pytest.raises(ValueError, match="group_size 2 does not divide the 1 rows"):
        batching.segment_advantages(torch.tensor([[0]]), scores, "group", group_size=2)
    with pytest.raises(ValueError, match="cu_seqlens is required"):
        batching.segment_advantages(torch.tensor([0, 1]), scores)
    with pytest.raises(ValueError, match="cu_seqlens.* does not match"):
        batching.segment_advantages(torch.tensor([0, 1]), scores, cu_seqlens=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="token_segment_ids has 2 rows but segment_scores has 1"):
        batching.segment_advantages(torch.zeros(2, 2, dtype=torch.long), scores)
    with pytest.raises(TypeError, match="token_segment_ids must be an int64"):
        batching.segment_advantages(torch.zeros(1, 2), scores)
    with pytest.raises(ValueError, match="num_segments must lie in"):
        batching.segment_advantages(torch.tensor([[0]]), scores, num_segments=torch.tensor([3]))


def test_unpack_and_repack_errors():
    with pytest.raises(ValueError, match=r"cu_seqlens\[-1\] = 4 does not match the 3 packed values"):
        batching.unpack(torch.zeros(3), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="cu_seqlens must start at 0 and be non-decreasing"):
        batching.unpack(torch.zeros(3), torch.tensor([0, 2, 1, 3]))
    with pytest.raises(TypeError, match="cu_seqlens must be an int32 or int64"):
        batching.unpack(torch.zeros(3), torch.tensor([0.0, 3.0]))
    with pytest.raises(ValueError, match="max_len must be an int >= the longest sequence"):
        batching.unpack(torch.zeros(3), torch.tensor([0, 3]), max_len=2)
    with pytest.raises(ValueError, match="cu_seqlens has 2 sequences but padded has 1 rows"):
        batching.repack(torch.zeros(1, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="padded has L=3"):
        batching.repack(torch.zeros(1, 3), torch.tensor([0, 4]))


def test_generation_errors():
    sequences = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"prompt_lengths must lie in \[0, prompt_width=1\]"):
        batching.split_generation(sequences, torch.tensor([2]), 1, eos_id=2)
    with pytest.raises(ValueError, match="prompt_width must be an int in"):
        batching.split_generation(sequences, torch.tensor([1]), 4, eos_id=2)
    with pytest.raises(ValueError, match=r"prompt_lengths must have shape \(1,\)"):
        batching.batch_from_generation(sequences, torch.tensor([1, 1]), 1, 2, 0)
    with pytest.raises(TypeError, match="sequences must be an int64 tensor"):
        batching.split_generation(sequences.float(), torch.tensor([1]), 1, eos_id=2)
    with pytest.raises(ValueError, match="truncated must hold one flag per response"):
        batching.build_rollout_batch([ids(1)], [ids(2)], 0, truncated=[True, False])


def test_use_backend_selects_and_restores():
    default = batching.backend()
    with batching.use_backend("torch"):
        assert batching.backend() == "torch"
    assert batching.backend() == default
    with pytest.raises(ValueError, match="backend must be"), batching.use_backend("numpy"):
        pass
