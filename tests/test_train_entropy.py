"""The adaptive entropy coefficient holds a policy's entropy near its target on a toy bandit, where the
policy gradient alone collapses the policy onto the rewarded token."""

import math

import pytest
import torch

from exprl.kernels import entropy_pg_loss
from exprl.train.config import load_config
from exprl.train.entropy import EntropyController

VOCAB, SAMPLES = 8, 256


def train_bandit(
    controller: EntropyController, steps: int, lr: float = 2.0
) -> tuple[list[float], list[float]]:
    """REINFORCE with a group baseline on one categorical distribution, reward 1 for token 0; returns the
    entropy (nats) and the coefficient of every step."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.zeros(VOCAB, requires_grad=True)
    entropies, coefs = [], []
    for _ in range(steps):
        probs = torch.softmax(logits.detach(), -1)
        tokens = torch.multinomial(probs, SAMPLES, replacement=True, generator=generator)
        rewards = (tokens == 0).float()
        coef = controller.coef
        out = entropy_pg_loss(
            logits.expand(SAMPLES, VOCAB),
            tokens,
            rewards - rewards.mean(),
            entropy_coef=coef,
            backend="eager",
        )
        (grad,) = torch.autograd.grad(out.loss, logits)
        with torch.no_grad():
            logits -= lr * grad
        entropy = float(-(probs * probs.clamp_min(1e-30).log()).sum())
        entropies.append(entropy)
        coefs.append(coef)
        controller.update(entropy)
    return entropies, coefs


def test_without_a_target_the_bandit_collapses():
    entropies, coefs = train_bandit(EntropyController(coef=0.0), 300)
    assert entropies[0] == pytest.approx(math.log(VOCAB)) and entropies[-1] < 0.2
    assert set(coefs) == {0.0}


def test_the_controller_holds_the_target():
    target = 1.0
    controller = EntropyController(coef=0.0, target=target, rate=0.05, low=0.0, high=2.0)
    entropies, coefs = train_bandit(controller, 400, lr=1.0)
    tail = entropies[-100:]
    assert abs(sum(tail) / len(tail) - target) < 0.02
    assert max(abs(e - target) for e in tail) < 0.1
    assert 0.0 < coefs[-1] < 2.0  # held by the controller, not by a bound


def test_the_coefficient_stays_within_its_bounds():
    controller = EntropyController(coef=0.01, target=2.0, rate=1.0, low=0.005, high=0.02)
    assert controller.update(0.0) == 0.02  # far below the target: clamped high
    assert controller.update(10.0) == 0.005  # far above: clamped low
    fixed = EntropyController(coef=0.003)
    assert fixed.update(0.0) == 0.003  # no target: fixed


def test_controller_and_config_reject_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="target"):
        EntropyController(coef=0.0, target=0.0)
    with pytest.raises(ValueError, match="bounds"):
        EntropyController(coef=0.0, low=0.2, high=0.1)
    with pytest.raises(ValueError, match="algo.entropy_target"):
        load_config(None, ["algo.entropy_target=-1"])
    with pytest.raises(ValueError, match="algo.entropy_coef_bounds"):
        load_config(None, ["algo.entropy_coef_bounds=[0.1, 0.01]"])
    with pytest.raises(ValueError, match="algo.entropy_coef: the starting"):
        load_config(None, ["algo.entropy_target=0.5", "algo.entropy_coef=1.0"])
    cfg = load_config(None, ["algo.entropy_target=0.5", "algo.entropy_coef=0.002"])
    controller = EntropyController.from_config(cfg.algo)
    assert (controller.coef, controller.target) == (0.002, 0.5)
    assert EntropyController.from_config(cfg.algo, 0.004).coef == 0.004  # a resumed run's coefficient


def test_the_trainer_adapts_logs_and_resumes_the_coefficient(tiny_models, tmp_path):
    from train_helpers import read_records, tiny_config

    from exprl.train import run

    options = ["algo.entropy_target=10.0", "algo.entropy_rate=0.002", "algo.entropy_coef=0.001"]
    options += ["algo.entropy_coef_bounds=[0.0, 0.1]", "checkpoint_every=0"]
    run(tiny_config(tiny_models["plain"], tmp_path, "steps=3", *options))
    records = read_records(run(tiny_config(tiny_models["plain"], tmp_path, "steps=5", *options)))  # resumes
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert records[0]["entropy_coef"] == 0.001
    for before, after in zip(records, records[1:], strict=False):
        expected = min(max(before["entropy_coef"] + 0.002 * (10.0 - before["entropy"]), 0.0), 0.1)
        assert after["entropy_coef"] == pytest.approx(expected, rel=1e-9)
    assert records[-1]["entropy_coef"] > records[0]["entropy_coef"]  # entropy below target: a stronger bonus
