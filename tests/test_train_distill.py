"""On-policy self-distillation (method: distill): the teacher is the frozen base model shown the reference
solution; every response token's advantage is logp_teacher - logp_student."""

import math

import pytest
import torch
from train_helpers import read_records, tiny_config

from exprl.data import Problem, load_problems
from exprl.models import load_model_and_tokenizer, prompt_text, teacher_problem
from exprl.models.generation import sample
from exprl.train import run
from exprl.train.loop import distill_advantages
from exprl.train.rollout import RolloutGroups

PROBLEMS = load_problems("builtin:chain:2:train:3")


def test_the_teacher_sees_the_reference_and_the_question_last():
    problem = PROBLEMS[0]
    shown = teacher_problem(problem)
    assert problem.reference in shown.prompt and shown.prompt.endswith(problem.prompt)
    assert problem.reference not in problem.prompt  # the policy's own prompt never shows it
    with pytest.raises(ValueError, match="no reference"):
        teacher_problem(Problem(id="x", prompt="Q", answer="1"))


def by_hand(model, prompt: list[int], response: list[int], temperature: float) -> torch.Tensor:
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(response)[:, None])[:, 0]


def test_advantages_are_teacher_minus_student_logprobs(tiny_models, tmp_path):
    student, tokenizer = load_model_and_tokenizer(tiny_models["plain"])
    teacher, _ = load_model_and_tokenizer(tiny_models["digits"])  # another model: the two differ
    cfg = tiny_config(tiny_models["plain"], tmp_path, "method=distill", "algo.micro_batch_size=3")
    prompts = [prompt_text(p, tokenizer, "auto") for p in PROBLEMS]
    samples = sample(student, tokenizer, prompts, 2, max_new_tokens=6, generator_seed=0)
    ro = RolloutGroups(
        [PROBLEMS[s.prompt_index] for s in samples],
        [s.prompt_ids for s in samples],
        [s.response_ids for s in samples],
        [s.text for s in samples],
        [s.truncated for s in samples],
    )
    got = distill_advantages(student, teacher, ro, tokenizer, cfg)
    for i, problem in enumerate(ro.problems):
        response = ro.response_ids[i].tolist()
        teacher_prompt = tokenizer(prompt_text(teacher_problem(problem), tokenizer, "auto"))["input_ids"]
        t = by_hand(teacher, teacher_prompt, response, cfg.rollout.temperature)
        s = by_hand(student, ro.prompt_ids[i].tolist(), response, cfg.rollout.temperature)
        torch.testing.assert_close(got[i], t - s, rtol=1e-4, atol=1e-5)
    assert any(bool(a.abs().gt(1e-3).any()) for a in got)


@pytest.mark.slow
def test_a_distill_run_trains_and_logs_the_gap(tiny_models, tmp_path):
    records = read_records(
        run(tiny_config(tiny_models["plain"], tmp_path, "method=distill", "algo.kl_coef=0"))
    )
    assert len(records) == 2
    for record in records:
        assert record["tokens"] > 0 and record["grad_norm"] > 0
        assert math.isfinite(record["distill/reverse_kl"])
    # step 1 samples from the base model, which is also the teacher: only the reference in its prompt differs
    assert records[0]["distill/reverse_kl"] != 0.0
