"""The "hf" judge on real tiny checkpoints from a local path: a grader trained to answer "Score: 4"
(real generations that parse) and an untrained random model (real generations that do not)."""

import pytest
from rewards_tiny_model import save_tiny_llama

from exprl.data import builtin_problems
from exprl.models import load_model_and_tokenizer
from exprl.rewards import Rollout, build_reward
from exprl.rewards.prompts import outcome_messages, parse_score, render_plain

PROBLEMS = builtin_problems("chain", 2, "train", 3, seed=11)


@pytest.fixture(scope="module")
def grader_path(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("grader"), says="Score: 4")


@pytest.fixture(scope="module")
def random_path(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("random"), seed=1)


def test_outcome_grades_come_from_the_models_generations(grader_path):
    judge = build_reward("hf", path=str(grader_path), max_new_tokens=16, batch_size=2)
    batch = [Rollout(p, p.reference) for p in PROBLEMS] + [Rollout(PROBLEMS[0], "")]
    assert judge.score(batch) == [0.75, 0.75, 0.75, 0.0]  # "Score: 4" -> (4-1)/4; empty -> grade 1
    assert judge.counters["requests"] == 3 and judge.counters["unparsed"] == 0


def test_process_grades_every_non_empty_segment(grader_path):
    judge = build_reward("hf", path=str(grader_path), mode="process", max_new_tokens=16)
    problem = PROBLEMS[0]
    response = f"{problem.steps[0]} ### ### Answer: {problem.answer}"
    assert judge.score([Rollout(problem, response)]) == [[0.75, 0.25, 0.75]]  # empty step: grade 2
    assert judge.counters["requests"] == 2


def test_unparsable_generations_are_none_and_counted(random_path):
    judge = build_reward("hf", path=str(random_path), max_new_tokens=16)
    batch = [Rollout(p, p.reference) for p in PROBLEMS]
    raw = judge.complete([outcome_messages(p, p.reference, "###") for p in PROBLEMS])
    assert all(isinstance(text, str) and parse_score(text) is None for text in raw)  # gibberish
    assert judge.score(batch) == [None, None, None]
    assert judge.counters["unparsed"] == 3 and judge.counters["ungraded"] == 3


def test_prompts_too_long_for_the_model_are_none_and_counted(grader_path):
    judge = build_reward("hf", path=str(grader_path), max_new_tokens=16, max_prompt_tokens=50)
    assert judge.score([Rollout(PROBLEMS[0], PROBLEMS[0].reference)]) == [None]
    assert judge.counters["too_long"] == 1 and judge.counters["ungraded"] == 1


def test_a_loaded_model_can_be_shared(grader_path):
    model, tokenizer = load_model_and_tokenizer(grader_path)
    judge = build_reward("hf", model=model, tokenizer=tokenizer, max_new_tokens=16)
    assert judge.model is model and not any(p.requires_grad for p in model.parameters())
    assert judge.score([Rollout(PROBLEMS[1], "wrong")]) == [0.75]


def test_a_tokenizer_without_chat_template_gets_plain_prompts(random_path):
    model, tokenizer = load_model_and_tokenizer(random_path)
    tokenizer.chat_template = None  # like a base model's tokenizer
    judge = build_reward("hf", model=model, tokenizer=tokenizer, max_new_tokens=4)
    messages = outcome_messages(PROBLEMS[0], "x=1", "###")
    assert judge.render(messages) == render_plain(messages)
    assert render_plain(messages).endswith("Grader:") and messages[1]["content"] in render_plain(messages)
    (output,) = judge.complete([messages])
    assert isinstance(output, str)


def test_bad_options_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="path="):
        build_reward("hf")
    with pytest.raises(FileNotFoundError, match="path: .* not a local Hugging Face model directory"):
        build_reward("hf", path=str(tmp_path))
    with pytest.raises(ValueError, match="dtype"):
        build_reward("hf", path=str(tmp_path), dtype="int8")
