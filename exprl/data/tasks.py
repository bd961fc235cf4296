"""Built-in multi-step task families with verifiable answers and step-by-step reference solutions.

Every family has difficulty levels 1..4 (more steps or more digits as the level rises) and three splits:
"train" and "test" draw from the same distribution and never share a problem (a problem's split is fixed
by a hash of its prompt), while "ood" problems at level L lie outside every training level: a surface form
that "train"/"test" never produce (chain: a two-digit starting number; add: a first number one digit
longer than the second; linear: the unknown on the right-hand side; word: unseen names, items and verbs),
and, except for linear, one step more than level L.
Generation is a pure function of (family, level, split, seed, n).
"""

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import replace

from exprl.data.problem import Problem, format_reference

FAMILIES: tuple[str, ...] = ("chain", "add", "linear", "word")
LEVELS: tuple[int, ...] = (1, 2, 3, 4)
SPLITS: tuple[str, ...] = ("train", "test", "ood")
TEST_FRACTION_DENOMINATOR = 5  # one in five in-distribution problems belongs to "test"

# A generator draws one problem body: (question text, steps, answer).
_Draw = tuple[str, tuple[str, ...], str]


def _chain(rng: random.Random, level: int, ood: bool) -> _Draw:
    """Chained arithmetic evaluated left to right, parenthesised so Python's precedence agrees."""
    n_ops = level + 1 + int(ood)
    value = rng.randint(10, 19) if ood else rng.randint(1, 9)
    expr, top_level_add_sub = str(value), False
    steps = []
    for _ in range(n_ops):
        choices = [("+", b) for b in range(1, 10) if value + b <= 99]
        choices += [("-", b) for b in range(1, min(9, value) + 1)]
        if value >= 2:
            choices += [("*", b) for b in range(2, 10) if value * b <= 99]
        op, b = rng.choice(choices)
        new = value + b if op == "+" else value - b if op == "-" else value * b
        if op == "*" and top_level_add_sub:
            expr = f"({expr})"
        expr += f"{op}{b}"
        top_level_add_sub = op in "+-"
        steps.append(f"{value}{op}{b}={new}")
        value = new
    return expr, tuple(steps), str(value)


def _add(rng: random.Random, level: int, ood: bool) -> _Draw:
    """Column addition; each step adds one column and its carry ("ood": the first number has one digit
    more than the second, whose missing digit is written as 0 in the top column's step)."""
    digits = level + 1
    a = rng.randint(10 ** (digits - 1 + ood), 10 ** (digits + ood) - 1)
    b = rng.randint(10 ** (digits - 1), 10**digits - 1)
    steps, carry = [], 0
    for da, db in zip(reversed(str(a)), reversed(str(b).rjust(len(str(a)), "0")), strict=True):
        total = int(da) + int(db) + carry
        steps.append(f"{da}+{db}+1={total}" if carry else f"{da}+{db}={total}")
        carry = total // 10
    return f"{a}+{b}", tuple(steps), str(a + b)


def _coef(a: int) -> str:
    return "x" if a == 1 else f"{a}x"


def _linear(rng: random.Random, level: int, ood: bool) -> _Draw:
    """Linear equations in x solved by undoing one operation per step; "ood" swaps the two sides."""
    x = rng.randint(0, 30 if level == 1 else 12)
    if level == 1:
        b = rng.randint(1, 30)
        lhs, rhs, steps = f"x+{b}", str(x + b), (f"{x + b}-{b}={x}",)
    elif level == 2:
        a, b = rng.randint(2, 9), rng.randint(1, 20)
        c = a * x + b
        lhs, rhs, steps = f"{a}x+{b}", str(c), (f"{c}-{b}={a * x}", f"{a * x}/{a}={x}")
    elif level == 3:
        a = rng.randint(3, 9)
        c, b = rng.randint(1, a - 1), rng.randint(1, 20)
        d = (a - c) * x + b
        lhs, rhs = f"{_coef(a)}+{b}", f"{_coef(c)}+{d}"
        steps = (f"{a}-{c}={a - c}", f"{d}-{b}={d - b}", f"{d - b}/{a - c}={x}")
    else:
        a, b, c = rng.randint(2, 9), rng.randint(1, 9), rng.randint(1, 20)
        d = a * (x + b) + c
        lhs, rhs = f"{a}(x+{b})+{c}", str(d)
        steps = (f"{d}-{c}={d - c}", f"{d - c}/{a}={x + b}", f"{x + b}-{b}={x}")
    equation = f"{rhs}={lhs}" if ood else f"{lhs}={rhs}"
    return equation, steps, str(x)


# Word problems: the "ood" split uses names, items and verbs that never occur in train/test.
_WORD_VOCAB = {
    False: {
        "names": (("Ann", "She"), ("Sue", "She"), ("Bob", "He"), ("Tom", "He")),
        "items": ("pens", "cards", "eggs", "coins"),
        "gain": ("gets", "finds"),
        "lose": ("loses", "gives away"),
    },
    True: {
        "names": (("Eve", "She"), ("Max", "He")),
        "items": ("shells", "stamps"),
        "gain": ("buys",),
        "lose": ("sells",),
    },
}


def _word(rng: random.Random, level: int, ood: bool) -> _Draw:
    """A count that changes through ``level`` events (one more for "ood"), phrased from templates."""
    vocab = _WORD_VOCAB[ood]
    name, pronoun = rng.choice(vocab["names"])
    item = rng.choice(vocab["items"])
    value = rng.randint(1, 20)
    sentences, steps = [f"{name} has {value} {item}."], []
    for _ in range(level + int(ood)):
        if value >= 1 and rng.random() < 0.5:
            n = rng.randint(1, min(9, value))
            sentences.append(f"{pronoun} {rng.choice(vocab['lose'])} {n}.")
            steps.append(f"{value}-{n}={value - n}")
            value -= n
        else:
            n = rng.randint(1, 9)
            sentences.append(f"{pronoun} {rng.choice(vocab['gain'])} {n}.")
            steps.append(f"{value}+{n}={value + n}")
            value += n
    sentences.append(f"How many {item} now?")
    return " ".join(sentences), tuple(steps), str(value)


_GENERATORS: dict[str, Callable[[random.Random, int, bool], _Draw]] = {
    "chain": _chain,
    "add": _add,
    "linear": _linear,
    "word": _word,
}


def word_vocabulary() -> list[str]:
    """Every word the word-problem templates can produce (the tokenizer gives each a single token)."""
    words = {"has", "How", "many", "now"}
    for vocab in _WORD_VOCAB.values():
        for name, pronoun in vocab["names"]:
            words |= {name, pronoun}
        for key in ("items", "gain", "lose"):
            for phrase in vocab[key]:
                words |= set(phrase.split())
    return sorted(words)


def format_prompt(question: str) -> str:
    """The built-in prompt the policy completes with a reference-style solution."""
    return f"Q: {question}\nA: "


def in_test_split(prompt: str) -> bool:
    """Whether an in-distribution prompt belongs to "test" (a stable hash, independent of any seed)."""
    digest = hashlib.sha256(prompt.encode()).digest()
    return int.from_bytes(digest[:8], "big") % TEST_FRACTION_DENOMINATOR == 0


def _check(family: str | None, level: int, split: str) -> None:
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES} or None, got {family!r}")
    if isinstance(level, bool) or not isinstance(level, int) or level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _draw(rng: random.Random, family: str, level: int, split: str) -> tuple[str, _Draw]:
    """Draw until the problem belongs to ``split`` (train/test rejection by prompt hash)."""
    while True:
        question, steps, answer = _GENERATORS[family](rng, level, split == "ood")
        prompt = format_prompt(question)
        if split == "ood" or in_test_split(prompt) == (split == "test"):
            return prompt, (question, steps, answer)


def iter_problems(family: str | None, level: int, split: str, seed: int) -> Iterator[Problem]:
    """An endless seeded stream of problems (repeats possible); ``family=None`` mixes all families."""
    _check(family, level, split)
    rng = random.Random(f"exprl:{family}:{level}:{split}:{seed}")
    index = 0
    while True:
        fam = family if family is not None else rng.choice(FAMILIES)
        prompt, (_, steps, answer) = _draw(rng, fam, level, split)
        yield Problem(
            id=f"{family or 'all'}/L{level}/{split}/{index:06d}",
            prompt=prompt,
            answer=answer,
            reference=format_reference(steps, answer),
            steps=steps,
            family=fam,
            level=level,
            split=split,
        )
        index += 1


def builtin_problems(family: str | None, level: int, split: str, n: int, seed: int) -> list[Problem]:
    """``n`` distinct problems (no repeated prompt) of one family (None: all mixed), level and split.

    Reproducible: the same arguments always give the same list. "train" and "test" never share a
    prompt whatever the seeds. Raises ValueError when fewer than ``n`` distinct problems exist.
    """
    _check(family, level, split)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    problems: list[Problem] = []
    seen: set[str] = set()
    stream = iter_problems(family, level, split, seed)
    max_draws = 20 * n + 1000  # enough to collect nearly every problem of a small space
    for _ in range(max_draws):
        if len(problems) == n:
            break
        problem = next(stream)
        if problem.prompt not in seen:
            seen.add(problem.prompt)
            problems.append(problem)
    if len(problems) < n:
        raise ValueError(
            f"n={n} exceeds the distinct problems found for family={family!r}, level={level}, "
            f"split={split!r} after {max_draws} draws"
        )
    prefix = f"{family or 'all'}/L{level}/{split}/"
    return [replace(p, id=f"{prefix}{i:06d}") for i, p in enumerate(problems)]  # ids count distinct ones
