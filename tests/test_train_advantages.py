"""The advantage registry: GRPO and the process estimators, against values computed by hand."""

import statistics

import pytest
import torch

from exprl.train import advantages


def test_registry_lists_the_five_estimators():
    assert set(advantages.ADVANTAGES) == {
        "grpo",
        "process-delta",
        "process-delta-charge",
        "process-end",
        "process-group",
    }
    with pytest.raises(ValueError, match="unknown estimator 'vtrace'"):
        advantages.get("vtrace")


def test_only_the_process_estimators_need_segments():
    needs = {name for name, estimator in advantages.ADVANTAGES.items() if estimator.needs_segments}
    assert needs == {"process-delta", "process-delta-charge", "process-end", "process-group"}


def test_registering_a_taken_name_is_an_error():
    with pytest.raises(ValueError, match=r"'grpo' is already registered \(exprl\.train\.advantages\.grpo\)"):
        advantages.register("grpo")(lambda scores, group_size, **_: [])
    assert advantages.ADVANTAGES["grpo"].fn is advantages.grpo


def test_grpo_std_scaling_on_every_token():
    scores = [1.0, 0.0, 0.5, 0.5, 0.25, 0.75]
    out = advantages.get("grpo")(scores, 3, response_lengths=[2, 1, 3, 1, 1, 4])
    for group in (scores[:3], scores[3:]):
        assert len(group) == 3
    mean, std = statistics.mean(scores[:3]), statistics.stdev(scores[:3])
    assert torch.allclose(out[0], torch.full((2,), (1.0 - mean) / (std + 1e-6)))
    assert torch.allclose(out[2], torch.full((3,), (0.5 - mean) / (std + 1e-6)))
    mean2, std2 = statistics.mean(scores[3:]), statistics.stdev(scores[3:])
    assert torch.allclose(out[5], torch.full((4,), (0.75 - mean2) / (std2 + 1e-6)))


def test_grpo_without_scaling_subtracts_the_mean():
    out = advantages.get("grpo")([1.0, 0.0], 2, response_lengths=[1, 2], scale="none")
    assert out[0].tolist() == [0.5] and out[1].tolist() == [-0.5, -0.5]


def test_grpo_leaves_dropped_rollouts_out_of_the_group():
    out = advantages.get("grpo")([1.0, None, 0.0, 0.0], 4, response_lengths=[1, 2, 1, 1], scale="none")
    mean = 1.0 / 3
    assert out[0].item() == pytest.approx(1 - mean) and out[2].item() == pytest.approx(-mean)
    assert out[1].tolist() == [0.0, 0.0]


def test_grpo_group_with_a_single_graded_rollout_gets_zero():
    out = advantages.get("grpo")([None, 1.0], 2, response_lengths=[1, 1])
    assert out[1].item() == 0.0


def test_process_delta_by_hand():
    # segments: tokens [0,0,1,2] of a 3-segment response scored s = (0.25, 0.75, 0.5)
    out = advantages.get("process-delta")(
        [[0.25, 0.75, 0.5]], 1, response_lengths=[4], token_segment_ids=[torch.tensor([0, 0, 1, 2])]
    )
    s1, s2, s3 = 0.25, 0.75, 0.5
    assert out[0].tolist() == pytest.approx([s1 - s3, s1 - s3, s2 - s1, s3 - s2])


def test_process_end_by_hand():
    out = advantages.get("process-end")(
        [[0.25, 0.75, 0.5]], 1, response_lengths=[3], token_segment_ids=[torch.tensor([0, 1, 2])]
    )
    assert out[0].tolist() == pytest.approx([0.25 - 0.5, 0.75 - 0.5, 0.0])


def test_process_one_segment_delta_keeps_its_score_end_gives_zero():
    kwargs = {"response_lengths": [2], "token_segment_ids": [torch.tensor([0, 0])]}
    assert advantages.get("process-delta")([[0.75]], 1, **kwargs)[0].tolist() == [0.75, 0.75]
    assert advantages.get("process-end")([[0.75]], 1, **kwargs)[0].tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("process-delta", [0.0, 0.0, 0.0]),
        ("process-end", [-0.75, -0.75, -0.75]),
        ("process-delta-charge", [-1.0, -1.0, -1.0]),
    ],
)
def test_truncated_process_rollout(name, expected):
    # the judge's scores (0.25, 0.75) of a truncated rollout: delta zeroes them; end is 0 - s_T per token,
    # delta-charge the largest drop, -1
    out = advantages.get(name)(
        [[0.25, 0.75], [0.25, 0.75]],
        1,
        response_lengths=[3, 3],
        token_segment_ids=[torch.tensor([0, 1, 1])] * 2,
        truncated=[True, False],
    )
    assert out[0].tolist() == expected
    untruncated = advantages.get(name)(
        [[0.25, 0.75]], 1, response_lengths=[3], token_segment_ids=[torch.tensor([0, 1, 1])]
    )
    assert out[1].tolist() == untruncated[0].tolist()


def test_process_delta_charge_is_delta_on_finished_rollouts():
    scores = [[0.25, 0.75, 0.5], [1.0], [0.5, 0.0]]
    kwargs = {
        "response_lengths": [4, 2, 3],
        "token_segment_ids": [torch.tensor([0, 0, 1, 2]), torch.tensor([0, 0]), torch.tensor([0, 1, 1])],
    }
    charged = advantages.get("process-delta-charge")(scores, 1, **kwargs)
    delta = advantages.get("process-delta")(scores, 1, **kwargs)
    assert [c.tolist() for c in charged] == [d.tolist() for d in delta]


def test_truncated_process_group_counts_as_zero_scores():
    seg = [torch.tensor([0, 1]), torch.tensor([0, 1])]
    out = advantages.get("process-group")(
        [[1.0, 1.0], [0.0, 1.0]], 2, response_lengths=[2, 2], token_segment_ids=seg, truncated=[True, False]
    )
    zeroed = advantages.get("process-group")(
        [[0.0, 0.0], [0.0, 1.0]], 2, response_lengths=[2, 2], token_segment_ids=seg
    )
    assert [t.tolist() for t in out] == [t.tolist() for t in zeroed]


def test_process_dropped_rollout_gets_zero_and_mismatch_raises():
    out = advantages.get("process-delta")(
        [None, [1.0]], 1, response_lengths=[2, 1], token_segment_ids=[torch.tensor([0, 1]), torch.tensor([0])]
    )
    assert out[0].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="reach segment 1 but it has 1 scores"):
        advantages.get("process-delta")(
            [[1.0]], 1, response_lengths=[2], token_segment_ids=[torch.tensor([0, 1])]
        )
    with pytest.raises(TypeError, match="response-level score"):
        advantages.get("process-delta")([1.0], 1, response_lengths=[1], token_segment_ids=[torch.tensor([0])])
    with pytest.raises(TypeError, match="per-segment scores"):
        advantages.get("grpo")([[1.0], [0.0]], 2, response_lengths=[1, 1])
