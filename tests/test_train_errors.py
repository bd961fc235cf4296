"""Bad input never hangs: a clear error naming what is wrong, or a dropped rollout where the contract says."""

import json
import pathlib
import re

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


def test_a_reward_that_cannot_be_built_fails_before_the_model_loads(tmp_path):
    cfg = tiny_config(
        tmp_path / "no-such-model", tmp_path, "reward.name=python", "reward.options={path: 'no.py:f'}"
    )
    with pytest.raises(
        FileNotFoundError, match=r"^<defaults>: reward.options of 'python': reward function file"
    ):
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
def test_ungraded_rollouts_are_dropped_counted_and_the_run_goes_on(model, tmp_path, capfd):
    reward = tmp_path / "judge.py"
    # every other call is ungraded: 4 of the 8 rollouts of each step (one worker serves the whole run)
    reward.write_text(
        "calls = [0]\ndef half(problem, response):\n    calls[0] += 1\n    return calls[0] % 2 or None\n"
    )
    cfg = tiny_config(
        model,
        tmp_path,
        "reward.name=python",
        f"reward.options={{path: '{reward}:half'}}",
        "reward.warn_drop_rate=0.25",
    )
    records = read_records(run(cfg))
    assert [r["dropped_rollouts"] for r in records] == [4.0, 4.0]
    assert [r["dropped/ungraded"] for r in records] == [4.0, 4.0]
    assert [r["dropped/timeout"] for r in records] == [0.0, 0.0]
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1  # once, although both steps pass the rate
    assert re.fullmatch(
        r"warning: step 1: reward 'python' dropped 4 of 8 rollouts \(ungraded 4\); first failure: reward "
        rf"function '{re.escape(str(reward))}:half' returned None on problem '[^']+' "
        r"\(reward.warn_drop_rate=0.25\)",
        warnings[0],
    ), warnings


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


def fake_checkpoint(ckpt_dir, step: int) -> pathlib.Path:
    directory = ckpt_dir / checkpoint.tag_for(step)
    directory.mkdir(parents=True)
    (directory / "trainer_state.json").write_text(json.dumps({"step": step}))
    (directory / "model_states.pt").write_bytes(bytes(range(256)) * 4)
    checkpoint.write_manifest(directory)
    return directory


def test_resume_takes_the_newest_intact_checkpoint_and_says_why(tmp_path):
    assert checkpoint.newest_intact(tmp_path) == (None, [])
    for step in (1, 2, 3, 4):
        fake_checkpoint(tmp_path, step)
    (tmp_path / "latest").write_text("step_000005")  # names a checkpoint that is gone
    (tmp_path / "tmp-step_000006").mkdir()  # a save that never finished
    (tmp_path / "step_000004" / "model_states.pt").write_bytes(b"x" * 100)  # truncated
    (tmp_path / "step_000003" / "trainer_state.json").write_text('{"step": 4}')  # same size, changed
    tag, passed_over = checkpoint.newest_intact(tmp_path)
    changed = tmp_path / "step_000003" / "trainer_state.json"
    assert tag == "step_000002"
    assert passed_over == [
        f"step_000005: {tmp_path / 'step_000005'} is missing (named by {tmp_path / 'latest'})",
        f"step_000004: {tmp_path / 'step_000004' / 'model_states.pt'} holds 100 bytes, 1024 were written",
        f"step_000003: {changed} differs from what was written (sha256)",
    ]


def test_a_checkpoint_without_its_manifest_is_not_intact(tmp_path):
    (fake_checkpoint(tmp_path, 1) / "manifest.json").unlink()
    assert checkpoint.newest_intact(tmp_path) == (
        None,
        [f"step_000001: {tmp_path / 'step_000001' / 'manifest.json'} is missing"],
    )


def test_score_keeps_a_truncated_reward_when_told():
    # Stage II as published: a right answer whose response hit the length limit is still rewarded
    ro = toy_rollouts(["a", "b"], [True, True])
    score(ro, FixedJudge([1.0, 0.0]), FixedJudge([1.0, 0.0]), truncation="keep")
    assert ro.scores == [1.0, 0.0]
    score(ro, FixedJudge([1.0, 0.0]), FixedJudge([1.0, 0.0]))
    assert ro.scores == [0.0, 0.0]
