"""`exprl pretrain`: the tiny base model trained from scratch, seeded, and graded with the shared answer
extraction and pass@k."""

import json

import torch
from safetensors.torch import load_file

from exprl.data import FAMILIES, LEVELS, builtin_problems
from exprl.models import load_model_and_tokenizer
from exprl.models.generation import Sample
from exprl.train import pretrain
from exprl.train.pretrain import main, train


def test_pretraining_is_deterministic_by_seed():
    weights = [train(steps=3, batch_size=4, lr=1e-3, seed=s, log_every=0)[0].state_dict() for s in (5, 5, 6)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_pretrain_command_writes_a_loadable_model(tmp_path):
    argv = ["--out", str(tmp_path), "--steps", "2", "--batch-size", "4", "--eval-n", "1", "--eval-k", "2"]
    argv += ["--eval-max-new-tokens", "8"]
    assert main(argv) == 0
    model, tokenizer = load_model_and_tokenizer(tmp_path)
    reloaded = load_file(tmp_path / "model.safetensors")
    assert all(torch.equal(reloaded[k], v) for k, v in model.state_dict().items() if k in reloaded)
    results = json.loads((tmp_path / "eval.json").read_text())
    assert set(results) == {"L1", "L2", "L3", "L4"} and results["L1"]["problems"] == 4
    assert "--steps 2" in (tmp_path / "PROVENANCE.md").read_text()


def test_evaluation_grades_final_answers_and_estimates_pass_at_k(monkeypatch):
    """Two problems per level, k = 4 samples each: the first problem gets one right answer (in a form
    only the shared answer comparison accepts: lower case, a trailing period), the second none."""
    family = FAMILIES[0]
    answers = {p.prompt: p.answer for level in LEVELS for p in builtin_problems(family, level, "test", 2, 0)}

    def fake_sample(model, tokenizer, prompts, k, **options):
        out = []
        for index, prompt in enumerate(prompts):
            right = [f"so the answer: {answers[prompt]}.", "Answer: nope", "", "no answer line"]
            texts = right if index == 0 else ["Answer: nope"] * k
            out += [Sample(index, torch.zeros(1), torch.zeros(1), text, False) for text in texts]
        return out

    monkeypatch.setattr(pretrain, "FAMILIES", (family,))
    monkeypatch.setattr(pretrain, "sample", fake_sample)
    results = pretrain.evaluate_levels(None, None, n_per_family=2, k=4, seed=0)
    assert set(results) == {f"L{level}" for level in LEVELS}
    for level in results.values():
        # problem 0: 1 of 4 correct -> pass@1 1/4, pass@4 1; problem 1: none; the mean over the two
        assert level == {"pass@1": 0.125, "pass@4": 0.5, "problems": 2}
