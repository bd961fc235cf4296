"""Bad input never hangs: a clear error naming what is wrong, or a dropped rollout where the contract says."""

import pytest
import torch
from train_helpers import read_records, tiny_config

from exprl.data import load_problems
from exprl.train import checkpoint, run
from exprl.train.loop import micro_batches
from exprl.train.rollout import RolloutGroups, score


@pytest.fixture
def model(tiny_models):
    return tiny_models["plain"]


def test_missing_model_path_names_the_key(tmp_path):
    cfg = tiny_config(tmp_path / "no-such-model", tmp_path)
    with pytest.raises(FileNotFoundError, match="model.path: .*no-such-model"):
        run(cfg)


def test_unreadable_data_line_names_file_and_line(model, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"problem": "Q: 1+1\\nA: ", "answer": "2"}\n{"problem": oops\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: invalid JSON"):
        run(tiny_config(model, tmp_path, f"data.train={data}"))


def test_too_few_training_problems(model, tmp_path):
    with pytest.raises(
        ValueError, match="data.train: .* holds 1 problems, fewer than rollout.prompts_per_step=2"
    ):
        run(tiny_config(model, tmp_path, "data.train=builtin:all:1:train:1"))


@pytest.mark.slow
def test_ungraded_rollouts_are_dropped_and_the_run_goes_on(model, tmp_path):
    reward = tmp_path / "judge.py"
    reward.write_text("def never(problem, response):\n    return None\n")
    cfg = tiny_config(model, tmp_path, "reward.name=python", f"reward.options={{path: '{reward}:never'}}")
    records = read_records(run(cfg))
    assert [r["dropped_rollouts"] for r in records] == [8.0, 8.0]  # 2 prompts x 4 samples, every step
    assert all(r["loss"] == 0.0 and r["grad_norm"] == 0.0 for r in records)  # nothing left to learn from


@pytest.mark.slow
def test_a_judge_that_raises_stops_the_run_with_its_error(model, tmp_path):
    reward = tmp_path / "judge.py"
    reward.write_text("def broken(problem, response):\n    raise KeyError('rubric')\n")
    cfg = tiny_config(model, tmp_path, "reward.name=python", f"reward.options={{path: '{reward}:broken'}}")
    with pytest.raises(RuntimeError, match="judge.py:broken"):
        run(cfg)


class FixedJudge:
    def __init__(self, scores, granularity="response"):
        self.name, self.granularity, self.delimiter = "fixed", granularity, "###"
        self.scores, self.counters = scores, {}

    def score(self, batch):
        return list(self.scores)


def toy_rollouts(texts, truncated):
    problems = load_problems("builtin:all:1:train:1")
    n = len(texts)
    return RolloutGroups(
        problems * n,
        [torch.tensor([5, 6, 7])] * n,
        [torch.tensor([9] * (i + 1)) for i in range(n)],
        list(texts),
        list(truncated),
    )


def test_score_applies_truncation_and_drop_rules():
    ro = toy_rollouts(["a", "b", "c"], [False, True, False])
    score(ro, FixedJudge([0.75, 0.75, None]), FixedJudge([1.0, 0.0, None]))
    assert ro.scores == [0.75, 0.0, None]  # truncated -> 0; ungraded -> dropped
    assert ro.correct == [1.0, 0.0, 0.0]


def test_score_keeps_truncated_segment_scores_and_drops_mismatched_lists():
    # the length-limit rule of per-segment scores belongs to the process estimator (EndNorm's differs)
    ro = toy_rollouts(["a ### b", "a ### b", "a ### b"], [False, True, False])
    judge = FixedJudge([[0.5, 1.0], [0.25, 1.0], [1.0]], granularity="segment")
    score(ro, judge, FixedJudge([0.0] * 3))
    assert ro.scores == [[0.5, 1.0], [0.25, 1.0], None]
    assert judge.counters["segment_mismatch"] == 1


def test_micro_batches_mask_dropped_rollouts_and_place_advantages():
    ro = toy_rollouts(["x", "y", "z"], [False] * 3)
    ro.scores = [1.0, None, 0.0]
    adv = [torch.tensor([0.5]), torch.tensor([2.0, 2.0]), torch.tensor([-1.0, -2.0, -3.0])]
    (mb,) = micro_batches(ro, adv, pad_id=0, size=3, device=torch.device("cpu"))
    # prompt of 3 tokens: position 2 predicts the first response token
    assert mb.advantages[0, 2].item() == 0.5 and mb.advantages[2, 2:5].tolist() == [-1.0, -2.0, -3.0]
    assert mb.mask[0].sum() == 1 and mb.mask[1].sum() == 0 and mb.mask[2].sum() == 3
    assert mb.tokens == 4 and mb.sequences == 2
    assert (mb.advantages[~mb.batch.response_mask] == 0).all()


def test_latest_ignores_incomplete_checkpoints(tmp_path):
    assert checkpoint.latest(tmp_path) is None
    (tmp_path / "step_000002").mkdir()
    (tmp_path / "step_000002" / "trainer_state.json").write_text("{}")
    (tmp_path / "latest").write_text("step_000002")
    assert checkpoint.latest(tmp_path) == "step_000002"
    (tmp_path / "latest").write_text("step_000004")  # names a tag that never completed
    assert checkpoint.latest(tmp_path) is None


def test_score_keeps_a_truncated_reward_when_told():
    # Stage II as published: a right answer whose response hit the length limit is still rewarded
    ro = toy_rollouts(["a", "b"], [True, True])
    score(ro, FixedJudge([1.0, 0.0]), FixedJudge([1.0, 0.0]), truncation="keep")
    assert ro.scores == [1.0, 0.0]
    score(ro, FixedJudge([1.0, 0.0]), FixedJudge([1.0, 0.0]))
    assert ro.scores == [0.0, 0.0]
