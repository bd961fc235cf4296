"""The shipped tiny base model and the model loader."""

import json

import pytest
from transformers import LlamaForCausalLM

from exprl.data import builtin_problems
from exprl.models import load_model_and_tokenizer, tiny_base_path
from exprl.models.generation import sample
from exprl.rewards.answers import extract_answer, same_answer


def test_shipped_model_is_small_and_has_provenance():
    path = tiny_base_path()
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "PROVENANCE.md",
    ):
        assert (path / name).is_file(), name
    assert (path / "model.safetensors").stat().st_size < 8 * 2**20
    provenance = (path / "PROVENANCE.md").read_text()
    assert "exprl pretrain" in provenance and "seed" in provenance and "pass@1" in provenance


def test_shipped_model_loads_and_solves_easy_problems_greedily():
    model, tokenizer = load_model_and_tokenizer(tiny_base_path())
    assert isinstance(model, LlamaForCausalLM) and not model.training
    assert model.config._attn_implementation == "sdpa"
    problems = builtin_problems(None, 1, "test", 16, 123)
    samples = sample(model, tokenizer, [p.prompt for p in problems], 1, max_new_tokens=64, greedy=True)
    answers = [extract_answer(s.text) for s in samples]
    solved = sum(a is not None and same_answer(a, p.answer) for a, p in zip(answers, problems, strict=True))
    assert solved >= 12, solved
    assert all(not s.truncated and s.response_ids[-1] == tokenizer.eos_token_id for s in samples)


def test_shipped_model_shows_the_coverage_gap():
    """The recorded evaluation (written by `exprl pretrain`): easy levels solved, the hard ones (3, which
    the default ExpRL run trains on, and 4) rarely but not never, and pass@8 well above pass@1."""
    results = json.loads((tiny_base_path() / "eval.json").read_text())
    assert results["L1"]["pass@1"] > 0.5 and results["L2"]["pass@1"] > 0.5
    for hard in ("L3", "L4"):
        assert 0.03 <= results[hard]["pass@1"] <= 0.3
        assert results[hard]["pass@8"] > 2 * results[hard]["pass@1"]


def test_load_model_rejects_a_directory_without_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"path: .* \(no config.json there\)"):
        load_model_and_tokenizer(tmp_path)
