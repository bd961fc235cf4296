"""evaluate() on a policy whose next-token distribution is set by hand.

The policy is a real Hugging Face Llama whose attention and MLP outputs are zeroed, so its logits depend
only on the current token: a bigram Markov chain with transition log-probs we choose. After the prompt
(which ends in " ") it writes "Answer:" then "7" with probability p or "3" with 1 - p, then eos. So every
response is 3 tokens, a test problem with answer "7" is solved per sample with probability p, and the
mean token entropy at temperature T is H(q) / 3 with q = p^(1/T) / (p^(1/T) + (1-p)^(1/T)), independent
of what was sampled.
"""

import json
import math

import pytest
from eval_helpers import bigram_policy, problems

from exprl.eval import evaluate, pass_at_k
from exprl.eval.cli import main as eval_main


def binary_entropy(q: float) -> float:
    return -(q * math.log(q) + (1 - q) * math.log(1 - q))


def test_certain_policy_solves_test_never_ood():
    model, tokenizer = bigram_policy(1.0)
    report = evaluate(
        model, tokenizer, problems(3, 2), n=4, ks=[1, 4], temperature=1.0, max_new_tokens=8, seed=0,
        batch_size=8, progress=False,
    )  # fmt: skip
    assert list(report.splits) == ["test", "ood"]
    test, ood = report.splits["test"], report.splits["ood"]
    assert test.pass_at_k == {1: 1.0, 4: 1.0} and test.never_solved == 0.0
    assert ood.pass_at_k == {1: 0.0, 4: 0.0} and ood.never_solved == 1.0
    assert test.mean_response_length == 3.0 and ood.mean_response_length == 3.0
    assert test.mean_entropy == pytest.approx(0.0, abs=1e-5)
    assert test.truncated == 0.0 and test.num_problems == 3 and ood.num_problems == 2


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_stochastic_policy_counts_and_entropy(temperature):
    p, n = 0.75, 16
    model, tokenizer = bigram_policy(p)
    report = evaluate(
        model, tokenizer, problems(6, 2), n=n, ks=[1, 4, 16], temperature=temperature, max_new_tokens=8,
        seed=3, batch_size=32, progress=False,
    )  # fmt: skip
    q = p ** (1 / temperature) / (p ** (1 / temperature) + (1 - p) ** (1 / temperature))
    test = report.splits["test"]
    counts = [r.correct for r in report.problems if r.split == "test"]
    # The per-split numbers are the estimator applied to the per-problem counts.
    for k in (1, 4, 16):
        assert test.pass_at_k[k] == pytest.approx(sum(pass_at_k(n, c, k) for c in counts) / len(counts))
    assert test.never_solved == sum(c == 0 for c in counts) / len(counts)
    # 96 draws with success probability q: the share correct lies well within 5 standard deviations.
    share = sum(counts) / (len(counts) * n)
    assert abs(share - q) < 5 * math.sqrt(q * (1 - q) / (len(counts) * n))
    # Entropy does not depend on the draws: only the "Answer:" -> digit step is uncertain.
    assert test.mean_entropy == pytest.approx(binary_entropy(q) / 3, rel=1e-4)
    assert report.splits["ood"].mean_entropy == pytest.approx(binary_entropy(q) / 3, rel=1e-4)
    assert report.settings["entropy_temperature"] == temperature


def test_greedy_takes_the_likely_answer_and_measures_entropy_at_temperature_one():
    model, tokenizer = bigram_policy(0.75)
    report = evaluate(
        model, tokenizer, problems(2, 2), n=2, ks=[1], temperature=0.0, max_new_tokens=8, seed=0,
        batch_size=4, progress=False,
    )  # fmt: skip
    assert report.splits["test"].pass_at_k[1] == 1.0
    assert report.splits["ood"].pass_at_k[1] == 0.0
    assert report.splits["test"].mean_entropy == pytest.approx(binary_entropy(0.75) / 3, rel=1e-4)


def test_same_seed_same_report_and_batch_size_one_works():
    model, tokenizer = bigram_policy(0.5)
    kwargs = dict(n=4, ks=[1, 2], temperature=1.0, max_new_tokens=8, seed=11, progress=False)
    a = evaluate(model, tokenizer, problems(4, 1), batch_size=8, **kwargs)
    b = evaluate(model, tokenizer, problems(4, 1), batch_size=8, **kwargs)
    assert a.to_dict() == b.to_dict()
    c = evaluate(model, tokenizer, problems(4, 1), batch_size=1, **kwargs)
    assert c.splits["test"].mean_response_length == 3.0


def test_truncated_responses_are_counted():
    model, tokenizer = bigram_policy(1.0)
    report = evaluate(
        model, tokenizer, problems(2, 0), n=2, ks=[1], temperature=1.0, max_new_tokens=2, seed=0,
        batch_size=4, progress=False,
    )  # fmt: skip
    test = report.splits["test"]
    assert test.truncated == 1.0 and test.mean_response_length == 2.0
    assert test.pass_at_k[1] == 1.0  # "Answer:7" is complete even without its eos


def test_report_round_trips_and_renders(tmp_path):
    model, tokenizer = bigram_policy(1.0)
    report = evaluate(
        model, tokenizer, problems(2, 1), n=2, ks=[1, 2], temperature=1.0, max_new_tokens=8, seed=0,
        batch_size=4, progress=False,
    )  # fmt: skip
    again = type(report).from_json(report.to_json())
    assert again == report
    md = report.to_markdown()
    assert "| test | 2 | 1.000 | 1.000 | 0.000 | 3.0 |" in md
    assert "| ood | 1 | 0.000 | 0.000 | 1.000 | 3.0 |" in md


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(n=0), ValueError, "^n "),
        (dict(ks=[8]), ValueError, "^ks"),
        (dict(ks=[]), ValueError, "^ks"),
        (dict(temperature=-1.0), ValueError, "^temperature"),
        (dict(batch_size=0), ValueError, "^batch_size"),
        (dict(max_new_tokens=0), ValueError, "^max_new_tokens"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    model, tokenizer = bigram_policy(1.0)
    args = dict(n=4, ks=[1], temperature=1.0, max_new_tokens=8, seed=0, batch_size=4, progress=False)
    with pytest.raises(error, match=match):
        evaluate(model, tokenizer, problems(1, 0), **{**args, **kwargs})
    with pytest.raises(TypeError, match=r"problems\[0\]"):
        evaluate(model, tokenizer, ["not a problem"], **args)


def test_cli_writes_json_and_markdown(tmp_path):
    model, tokenizer = bigram_policy(1.0)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"problem": "Q: 3+4\nA: ", "answer": "7"}) + "\n")
    out = tmp_path / "out"
    argv = ["--model", str(tmp_path / "model"), "--problems", str(tasks), "--n", "2", "--k", "1,2"]
    assert eval_main([*argv, "--max-new-tokens", "8", "--out", str(out), "--no-progress"]) == 0
    data = json.loads((out / "eval.json").read_text())
    (split,) = data["splits"]
    assert data["splits"][split]["pass_at_k"] == {"1": 1.0, "2": 1.0}
    assert "pass@2" in (out / "eval.md").read_text()
    assert eval_main([*argv[:-2], "--k", "1,4"]) == 2  # k > n is refused, naming --k


def test_format_prompt_decides_what_the_model_reads():
    model, tokenizer = bigram_policy(1.0)
    # With "Answer:" already in the prompt the chain continues "7", eos: no "Answer:" line, so wrong.
    report = evaluate(
        model, tokenizer, problems(2, 0), n=2, ks=[1], temperature=1.0, max_new_tokens=8, seed=0,
        batch_size=4, progress=False, format_prompt=lambda p: p.prompt + "Answer:",
    )  # fmt: skip
    assert report.splits["test"].mean_response_length == 2.0
    assert report.splits["test"].pass_at_k[1] == 0.0


def test_cli_names_the_file_and_line_of_undecodable_problems(tmp_path, capsys):
    tasks = tmp_path / "b.jsonl"
    tasks.write_bytes(b'{"problem":"x\xff","answer":"2"}\n')
    assert eval_main(["--problems", str(tasks), "--no-progress"]) == 2
    assert f"{tasks}:1: not valid UTF-8" in capsys.readouterr().err
