"""Sparse verifiers, answer extraction and user reward functions."""

import threading

import pytest

from exprl.data import Problem
from exprl.rewards import Rollout, build_reward, extract_answer


def problem(answer: str) -> Problem:
    return Problem(id="t/0", prompt="Q: ?\nA: ", answer=answer)


def grade(name: str, answer: str, response: str, **options) -> float | None:
    return build_reward(name, **options).score([Rollout(problem(answer), response)])[0]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("17+5=22 ### 22*3=66 ### Answer: 66", "66"),
        ("so the answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("\\boxed{\\sqrt{\\frac{a}{b}}}", "\\sqrt{\\frac{a}{b}}"),  # nested braces
        ("Answer: 3\nwait, no.\nAnswer: 4", "4"),  # the last one counts
        ("\\boxed{3} ... final answer: 5", "5"),  # whichever comes later
        ("answer: 5 ... then \\boxed{6}", "6"),
        ("Answer: \\boxed{7}", "7"),
        ("ANSWER:   12  ", "12"),
        ("no final answer here", None),
        ("Answer:", None),
        ("\\boxed{unclosed", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_rejects_non_str():
    with pytest.raises(TypeError, match="text"):
        extract_answer(None)


@pytest.mark.parametrize(
    "answer, response, expected",
    [
        ("62", "Answer: 62", 1.0),
        ("62", "Answer:   62 ", 1.0),  # whitespace
        ("62", "Answer: 62.", 1.0),  # trailing period
        ("62", "Answer: 62.0", 1.0),  # same number
        ("62", "Answer: $62$", 1.0),
        ("62", "\\boxed{62}", 1.0),
        ("-3", "Answer: -3", 1.0),
        ("62", "Answer: 63", 0.0),
        ("62", "Answer: 620", 0.0),
        ("62", "17+5=22 ### 66-4=62", 0.0),  # right number, no final answer
        ("62", "", 0.0),
    ],
)
def test_exact_verifier(answer, response, expected):
    assert grade("exact", answer, response) == expected


def test_exact_verifier_counts_missing_answers():
    verifier = build_reward("exact")
    verifier.score([Rollout(problem("1"), "no answer"), Rollout(problem("1"), "Answer: 1")])
    assert verifier.counters["no_answer"] == 1


@pytest.mark.parametrize(
    "answer, response",
    [
        ("1/2", "Answer: 0.5"),
        ("0.5", "\\boxed{\\frac{1}{2}}"),
        ("\\frac{1}{2}", "The result is \\boxed{\\dfrac12}."),
        ("\\frac{2}{4}", "Answer: 1/2"),
        ("62", "Answer:  62 "),
        ("2", "\\boxed{\\sqrt{4}}"),
        ("2x+1", "Answer: 1 + 2x"),
        ("x^2", "\\boxed{x \\cdot x}"),
        ("1000", "Answer: 1,000"),
        ("\\{1,2\\}", "\\boxed{\\{2, 1\\}}"),
        ("50\\%", "Answer: 0.5"),
        ("3", "Answer: x = 3"),
    ],
)
def test_math_verifier_accepts_equivalent_answers(answer, response):
    assert grade("math", answer, response) == 1.0


@pytest.mark.parametrize(
    "answer, response",
    [
        ("1/2", "Answer: 0.6"),
        ("1/3", "Answer: 0.333"),  # rounding is not equality
        ("2x+1", "\\boxed{2x-1}"),
        ("62", "Answer: 63"),
        ("62", "the result is 62"),  # missing box and answer line
        ("62", "\\boxed{}"),
    ],
)
def test_math_verifier_rejects_non_equivalent_answers(answer, response):
    assert grade("math", answer, response) == 0.0


def test_math_verifier_works_off_the_main_thread():
    # math-verify's own timeout needs SIGALRM (main thread only); trainers may score in worker threads.
    verifier = build_reward("math")
    result = []
    batch = [Rollout(problem("1/2"), "Answer: 0.5")]
    worker = threading.Thread(target=lambda: result.append(verifier.score(batch)))
    worker.start()
    worker.join()
    assert result == [[1.0]]
    assert verifier.counters["no_timeout"] == 1


def write(tmp_path, source: str):
    path = tmp_path / "my_reward.py"
    path.write_text(source)
    return path


def test_python_reward_calls_the_user_function(tmp_path):
    path = write(
        tmp_path,
        "def reward(problem, response):\n"
        "    if 'skip' in response:\n"
        "        return None\n"
        "    return 1.0 if problem.answer in response else 0.25\n",
    )
    reward = build_reward("python", path=f"{path}:reward")
    batch = [Rollout(problem("7"), r) for r in ("it is 7", "it is 8", "skip")]
    assert reward.score(batch) == [1.0, 0.25, None]
    assert reward.counters["ungraded"] == 1


@pytest.mark.parametrize(
    "spec, error, message",
    [
        ("no_colon.py", ValueError, "file.py:function"),
        ("{dir}/missing.py:reward", FileNotFoundError, "missing.py"),
        ("{dir}/my_reward.py:nope", ValueError, "my_reward.py.*nope"),
        ("{dir}/my_reward.txt:reward", ValueError, "file.py:function"),
    ],
)
def test_python_reward_errors_name_the_path(tmp_path, spec, error, message):
    write(tmp_path, "def reward(problem, response):\n    return 1.0\n")
    with pytest.raises(error, match=message):
        build_reward("python", path=spec.format(dir=tmp_path))


@pytest.mark.parametrize(
    "body, error, message",
    [
        ("return 'yes'", TypeError, "returned str"),
        ("return 1.5", ValueError, "outside"),
        ("raise KeyError('boom')", RuntimeError, "raised on problem 't/0'"),
    ],
)
def test_python_reward_bad_results_raise_naming_the_function(tmp_path, body, error, message):
    path = write(tmp_path, f"def reward(problem, response):\n    {body}\n")
    reward = build_reward("python", path=f"{path}:reward")
    with pytest.raises(error, match=message) as info:
        reward.score([Rollout(problem("1"), "x")])
    assert "my_reward.py:reward" in str(info.value)
