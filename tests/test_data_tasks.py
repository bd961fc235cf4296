"""Built-in task families: answers, references, splits, determinism, OOD definition."""

import re

import pytest

from exprl.data import FAMILIES, LEVELS, SPLITS, Problem, builtin_problems, parse_reference_steps

N = 40


def _all(split: str, seed: int = 0) -> list[Problem]:
    return [p for f in FAMILIES for lv in LEVELS for p in builtin_problems(f, lv, split, N, seed)]


def _question(problem: Problem) -> str:
    assert problem.prompt.startswith("Q: ") and problem.prompt.endswith("\nA: ")
    return problem.prompt[3:-4]


def _solve_linear(equation: str) -> int:
    """Brute force over integers: the independent check of a linear equation's solution."""
    lhs, rhs = equation.replace("x", "*x").replace("(*x", "(x").split("=")
    lhs, rhs = re.sub(r"^\*x", "x", lhs), re.sub(r"^\*x", "x", rhs)
    lhs, rhs = lhs.replace("(", "*("), rhs.replace("(", "*(")
    solutions = [x for x in range(-20, 60) if eval(lhs, {"x": x}) == eval(rhs, {"x": x})]
    assert len(solutions) == 1, equation
    return solutions[0]


def _word_answer(question: str) -> int:
    """Replay the story's events from the text alone."""
    value = int(re.search(r"has (\d+)", question).group(1))
    for verb, n in re.findall(r"(gets|finds|buys|loses|gives away|sells) (\d+)", question):
        value += int(n) if verb in ("gets", "finds", "buys") else -int(n)
    return value


@pytest.mark.parametrize("split", SPLITS)
def test_answers_are_right(split):
    for p in _all(split):
        q = _question(p)
        if p.family in ("chain", "add"):
            expected = eval(q)  # the expression is plain Python with the intended precedence
        elif p.family == "linear":
            expected = _solve_linear(q)
        else:
            expected = _word_answer(q)
        assert p.answer == str(expected), p


def test_every_step_is_true_arithmetic_and_reference_matches_steps():
    for p in _all("train") + _all("ood"):
        assert p.reference == " ### ".join(p.steps) + f" ### Answer: {p.answer}"
        assert parse_reference_steps(p.reference) == p.steps
        for step in p.steps:
            lhs, rhs = step.split("=")
            assert eval(lhs) == int(rhs), (p.id, step)  # "/" steps divide exactly


def test_steps_chain_into_the_answer():
    for p in _all("test"):
        if p.family in ("chain", "word", "linear"):
            assert p.steps[-1].split("=")[1] == p.answer
        if p.family in ("chain", "word"):  # each step starts from the previous result
            for prev, nxt in zip(p.steps, p.steps[1:], strict=False):
                assert re.match(rf"{prev.split('=')[1]}[-+*]", nxt), (prev, nxt)


def test_addition_steps_are_columns_with_carries():
    for p in builtin_problems("add", 4, "train", N, 1):
        a, b = _question(p).split("+")
        carry, digits = 0, []
        for column, step in zip(zip(reversed(a), reversed(b), strict=True), p.steps, strict=True):
            total = int(column[0]) + int(column[1]) + carry
            assert step == f"{column[0]}+{column[1]}" + ("+1" if carry else "") + f"={total}"
            digits.append(str(total % 10))
            carry = total // 10
        assert p.answer == (str(carry) if carry else "") + "".join(reversed(digits))


def test_level_raises_the_number_of_steps():
    for family in FAMILIES:
        mean_steps = [
            sum(len(p.steps) for p in builtin_problems(family, lv, "train", N, 0)) / N for lv in LEVELS
        ]
        assert mean_steps == sorted(mean_steps) and mean_steps[-1] > mean_steps[0], (family, mean_steps)


def test_train_and_test_never_share_a_prompt_across_seeds():
    train = {p.prompt for seed in (0, 1, 2) for p in _all("train", seed)}
    test = {p.prompt for seed in (0, 1, 2) for p in _all("test", seed)}
    assert train and test and not train & test


def test_ood_never_shares_a_prompt_with_any_training_level():
    in_distribution = {p.prompt for seed in (0, 1) for p in _all("train", seed) + _all("test", seed)}
    assert not in_distribution & {p.prompt for seed in (0, 1) for p in _all("ood", seed)}


def test_ood_is_harder_and_unseen_by_its_definition():
    train, ood = _all("train"), _all("ood")
    for family in ("chain", "add", "word"):  # one step more than the same level in training
        for lv in LEVELS:
            train_steps = {len(p.steps) for p in train if p.family == family and p.level == lv}
            ood_steps = {len(p.steps) for p in ood if p.family == family and p.level == lv}
            assert min(ood_steps) == max(train_steps) + 1, (family, lv)
    first_number = lambda p: int(re.match(r"\(*(\d+)", _question(p)).group(1))
    assert all(first_number(p) < 10 for p in train if p.family == "chain")
    assert all(10 <= first_number(p) < 20 for p in ood if p.family == "chain")
    operand_lengths = lambda p: tuple(len(t) for t in _question(p).split("+"))
    assert all(a == b for a, b in map(operand_lengths, (p for p in train if p.family == "add")))
    assert all(a == b + 1 for a, b in map(operand_lengths, (p for p in ood if p.family == "add")))
    assert all("x" in _question(p).split("=")[0] for p in train if p.family == "linear")
    assert all("x" in _question(p).split("=")[1] for p in ood if p.family == "linear")
    train_words = {w for p in train if p.family == "word" for w in re.findall(r"[A-Za-z]+", p.prompt)}
    for p in ood:
        if p.family == "word":  # name, item and verbs never seen in training
            name, item = re.match(r"(\w+) has \d+ (\w+)", _question(p)).groups()
            verbs = set(re.findall(r"(\w+) \d+\.", _question(p)))
            assert not ({name, item} | verbs) & train_words, p.prompt


def test_generation_is_deterministic_by_seed():
    assert builtin_problems(None, 3, "train", N, 7) == builtin_problems(None, 3, "train", N, 7)
    assert builtin_problems(None, 3, "train", N, 7) != builtin_problems(None, 3, "train", N, 8)


def test_ids_are_unique_and_problems_distinct():
    problems = builtin_problems(None, 2, "test", 200, 0)
    assert len({p.id for p in problems}) == len({p.prompt for p in problems}) == 200
    assert problems[17].id == "all/L2/test/000017"
    assert {p.family for p in problems} == set(FAMILIES)
    assert all(p.level == 2 and p.split == "test" for p in problems)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="family"):
        builtin_problems("poetry", 1, "train", 1, 0)
    with pytest.raises(ValueError, match="level"):
        builtin_problems("add", 9, "train", 1, 0)
    with pytest.raises(ValueError, match="split"):
        builtin_problems("add", 1, "dev", 1, 0)
    with pytest.raises(ValueError, match="n="):
        builtin_problems("linear", 1, "test", 1000, 0)  # far more than the distinct level-1 equations
