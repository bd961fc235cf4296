"""exprl inside TRL's GRPOTrainer (exprl.integrations.trl): the loss agrees with TRL's stock loss where
the two mean the same, exprl's rewards and per-token advantages feed TRL's loop, bad options are refused.

TRL comes from the `trl` extra (scripts/setup.sh installs it). The runs use the shipped tiny base model,
fp32 (bf16=False: TRL's default autocast would round both paths differently) and 2 steps.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from exprl.data import builtin_problems
from exprl.integrations.trl import LOSS_AGG_OF_LOSS_TYPE, ExpRLGRPOTrainer, exprl_reward
from exprl.models import tiny_base_path
from tests.rewards_tiny_model import save_tiny_llama
from tests.test_rewards_http import server  # noqa: F401  (the chat-server fixture)

TINY = str(tiny_base_path())
LOSS_TYPES = sorted(LOSS_AGG_OF_LOSS_TYPE)
REFERENCE = "5*3=15 ### 15*6=90 ### Answer: 90"


def problems_dataset(n: int = 4) -> Dataset:
    rows = builtin_problems("chain", 1, "train", n, seed=0)
    return Dataset.from_list(
        [{"prompt": p.prompt, "reference": p.reference, "answer": p.answer} for p in rows]
    )


def config(tmp_path: Path, **options) -> GRPOConfig:
    defaults = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        max_steps=2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        seed=0,
        learning_rate=5e-2,
        disable_tqdm=True,
    )
    return GRPOConfig(**{**defaults, **options})


def tiny_model_ending_at_space() -> torch.nn.Module:
    """The tiny base, generating until eos or a space, so that completion lengths differ and the loss
    types' normalisations tell apart."""
    model = AutoModelForCausalLM.from_pretrained(TINY)
    tokenizer = AutoTokenizer.from_pretrained(TINY)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(" ")]
    return model


def digit_reward(completions, **_) -> list[float]:
    """A reward that differs between samples of the tiny model, so advantages are not all 0."""
    return [sum(ch.isdigit() for ch in c) / 8 for c in completions]


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def loss_and_grads(loss_fn, model) -> tuple[float, list[torch.Tensor]]:
    loss = loss_fn()
    return loss.item(), list(torch.autograd.grad(loss, trainable(model), retain_graph=True))


def max_grad_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


def crafted_batch(trainer: GRPOTrainer, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch with ragged completions, left-padded prompts, old log-probs off by up to ~e^±1 (so the
    clip and the dual clip act) and reference log-probs that differ from the policy's."""
    g = torch.Generator().manual_seed(seed)
    batch, prompt_len, length = 4, 5, trainer.max_completion_length
    prompt_ids = torch.randint(3, 150, (batch, prompt_len), generator=g)
    prompt_mask = torch.ones(batch, prompt_len, dtype=torch.long)
    prompt_mask[0, :2] = 0
    completion_ids = torch.randint(3, 150, (batch, length), generator=g)
    lengths = torch.tensor([length, 5, 2, length - 1])
    completion_mask = (torch.arange(length)[None] < lengths[:, None]).long()
    with torch.no_grad():
        logp, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model,
            torch.cat([prompt_ids, completion_ids], 1),
            torch.cat([prompt_mask, completion_mask], 1),
            length,
        )
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.tensor([1.5, -2.0, 0.7, -0.4]),
        "num_items_in_batch": completion_mask.sum() * 3,  # the generation batch is 3 such batches
        "old_per_token_logps": logp + 0.6 * torch.randn(batch, length, generator=g),
        "ref_per_token_logps": logp + 0.4 * torch.randn(batch, length, generator=g),
    }


def crafted_trainer(tmp_path: Path, loss_type: str, **options) -> ExpRLGRPOTrainer:
    options = dict(
        loss_type=loss_type,
        gradient_accumulation_steps=2,
        steps_per_generation=3,
        max_completion_length=10,
        **options,
    )
    trainer = ExpRLGRPOTrainer(
        model=TINY,
        reward_funcs=digit_reward,
        args=config(tmp_path, **options),
        train_dataset=problems_dataset(),
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 2  # the Trainer sets it per accumulation window
    return trainer


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_loss_and_gradients_match_trl_on_an_off_policy_batch(tmp_path, loss_type):
    # every mapped option on at once: KL (k3), asymmetric clip, dual clip, temperature, accumulation
    trainer = crafted_trainer(
        tmp_path,
        loss_type,
        beta=0.05,
        use_bias_correction_kl=False,
        epsilon=0.1,
        epsilon_high=0.15,
        delta=1.3,
        temperature=0.7,
    )
    inputs = crafted_batch(trainer)
    model = trainer.model
    stock, stock_grads = loss_and_grads(lambda: GRPOTrainer._compute_loss(trainer, model, inputs), model)
    ours, our_grads = loss_and_grads(lambda: trainer._compute_loss(model, inputs), model)
    assert trainer._metrics["train"]["exprl/clip_frac"][-1] > 0.2  # the clips are exercised
    assert ours == pytest.approx(stock, rel=1e-6, abs=1e-7)
    scale = max(g.abs().max().item() for g in stock_grads)
    assert max_grad_diff(stock_grads, our_grads) <= 1e-5 * scale


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_entropy_bonus_is_aggregated_like_the_policy_term(tmp_path, loss_type):
    coef = 0.3
    trainer = crafted_trainer(tmp_path, loss_type, entropy_coef=coef)
    inputs = crafted_batch(trainer)
    model = trainer.model
    with torch.no_grad():
        plain = GRPOTrainer._compute_loss(trainer, model, inputs)  # TRL with its token-mean bonus
        ours = trainer._compute_loss(model, inputs)
        _, entropy, _ = trainer._get_per_token_logps_and_entropies(
            model,
            torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
            torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1),
            inputs["completion_ids"].size(1),
            compute_entropy=True,
        )
    m = inputs["completion_mask"].float()
    token_mean_bonus = (entropy * m).sum() / m.sum() / 2  # TRL's: token mean / accumulation steps
    weights = {  # the policy term's normalisation of each loss type, written out
        "grpo": m / m.sum(1, keepdim=True) / 4 / 2,
        "bnpo": m / m.sum() / 2,
        "dapo": m / (inputs["num_items_in_batch"] * 2 / 3),
        "dr_grpo": m / (4 * trainer.max_completion_length) / 2,
    }[loss_type]
    policy_term = plain + coef * token_mean_bonus
    assert ours.item() == pytest.approx((policy_term - coef * (weights * entropy).sum()).item(), abs=1e-6)
    if loss_type == "bnpo":  # the one loss type whose policy normalisation is TRL's bonus's token mean
        assert ours.item() == pytest.approx(plain.item(), abs=1e-6)


class RecordingTrainer(ExpRLGRPOTrainer):
    """Computes TRL's stock loss and exprl's on every training batch and records how far apart they
    are: |loss difference|, |stock loss|, max |gradient difference|, max |stock gradient|. Trains on
    exprl's."""

    def _compute_loss(self, model, inputs):
        stock, stock_grads = loss_and_grads(lambda: GRPOTrainer._compute_loss(self, model, inputs), model)
        loss = super()._compute_loss(model, inputs)
        our_grads = torch.autograd.grad(loss, trainable(model), retain_graph=True)
        scale = max(g.abs().max().item() for g in stock_grads)
        grad_diff = max_grad_diff(stock_grads, our_grads)
        self.differences.append((abs(loss.item() - stock), abs(stock), grad_diff, scale))
        return loss


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_two_step_run_matches_trl_stock_loss_per_step(tmp_path, loss_type):
    # num_iterations=2: step 2 reuses step 1's completions after an update, so its ratios are not 1
    args = config(
        tmp_path,
        loss_type=loss_type,
        num_iterations=2,
        beta=0.04,
        use_bias_correction_kl=False,
        epsilon=0.05,
        temperature=2.5,  # the tiny model's samples differ, so do the rewards
    )
    trainer = RecordingTrainer(
        model=tiny_model_ending_at_space(),
        reward_funcs=digit_reward,
        args=args,
        train_dataset=problems_dataset(),
    )
    trainer.differences = []
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    print(f"{loss_type}: per step (|loss diff|, |loss|, max |grad diff|, max |grad|) = {trainer.differences}")
    assert len(trainer.differences) == 2
    for loss_diff, loss, grad_diff, grad_scale in trainer.differences:
        assert grad_scale > 0
        assert loss_diff <= 1e-6 * max(loss, 1.0)
        assert grad_diff <= 1e-5 * grad_scale
    assert any((p - b).abs().max() > 0 for p, b in zip(trainer.model.parameters(), before, strict=True))
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert logs[0]["completions/min_length"] < logs[0]["completions/max_length"]
    first, second = (log["exprl/ratio"] for log in logs)
    assert first == pytest.approx(1.0, abs=1e-5) and second != pytest.approx(1.0, abs=1e-3)


def test_run_with_entropy_bonus_and_rubric_judge_trains_and_logs_exprl_stats(tmp_path):
    dataset = problems_dataset()
    trainer = ExpRLGRPOTrainer(
        model=TINY,
        reward_funcs=[exprl_reward("rubric"), digit_reward],
        args=config(tmp_path, entropy_coef=0.01, temperature=2.5),
        train_dataset=dataset,
    )
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 2
    for log in logs:
        for key in ("exprl/entropy", "exprl/clip_frac", "exprl/kl", "exprl/ratio", "rewards/rubric/mean"):
            assert torch.isfinite(torch.tensor(log[key])), key
        assert log["exprl/entropy"] > 0
        assert log["rubric/ungraded"] == 0
    assert any((p - b).abs().max() > 0 for p, b in zip(trainer.model.parameters(), before, strict=True))
    # the policy was prompted with the prompt column only; the references went to the judge
    assert set(trainer._logs["prompt"]) <= set(dataset["prompt"])
    assert not any(ref in prompt for prompt in trainer._logs["prompt"] for ref in dataset["reference"])


def test_exprl_reward_grades_against_the_reference_column():
    reward = exprl_reward("rubric")
    # rubric outcome grades (exprl.rewards.rubric): the reference is right and sufficient, 5 -> 1.0;
    # "5*3=15" establishes one of the two intermediate results and gives no answer, 3 -> 0.5; empty, 1 -> 0
    scores = reward(
        prompts=["Q: 5*3*6\nA: "] * 3,
        completions=[REFERENCE, "5*3=15", ""],
        completion_ids=[[1]] * 3,
        reference=[REFERENCE] * 3,
        answer=["90"] * 3,
    )
    assert scores == [1.0, 0.5, 0.0]
    assert reward.__name__ == "rubric" and reward.granularity == "response"


def test_judge_failure_is_a_missing_reward_counted_not_scored_zero(tmp_path):
    # a randomly initialised judge never writes "Score: k": every grade is missing
    judge = exprl_reward("hf", path=str(save_tiny_llama(tmp_path / "judge")), max_new_tokens=4)
    trainer = ExpRLGRPOTrainer(
        model=TINY,
        reward_funcs=[judge, digit_reward],
        args=config(tmp_path / "run", max_steps=1, temperature=2.5),
        train_dataset=problems_dataset(),
    )
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["hf/ungraded"] == 4  # the 4 completions of the step
    assert log["rewards/hf/mean"] is None  # TRL's missing reward (NaN), not a 0
    assert log["rewards/digit_reward/std"] == log["reward_std"]  # the reward is digit_reward's alone
    assert judge.source.counters["ungraded"] == 4


def fixed_rollout(completions: list[str]):
    """A TRL rollout_func returning `completions` (each ending with eos) for the batch's prompts."""

    def rollout(prompts, trainer):
        tokenizer = trainer.processing_class
        ids = [tokenizer.encode(c, add_special_tokens=False) + [tokenizer.eos_token_id] for c in completions]
        return {
            "prompt_ids": [tokenizer.encode(p) for p in prompts],
            "completion_ids": ids,
            "logprobs": [[0.0] * len(c) for c in ids],
        }

    return rollout


def scored_batch(tmp_path, reward_funcs, completions, **trainer_options):
    """The trainer and its scored batch: one group of the fixed `completions` to the REFERENCE problem."""
    dataset = Dataset.from_list([{"prompt": "Q: 5*3*6\nA: ", "reference": REFERENCE, "answer": "90"}])
    trainer = ExpRLGRPOTrainer(
        model=TINY,
        reward_funcs=reward_funcs,
        args=config(tmp_path),
        train_dataset=dataset,
        rollout_func=fixed_rollout(completions),
        **trainer_options,
    )
    trainer.model.train()
    rows = [dict(trainer.train_dataset[0]) for _ in completions]
    return trainer, trainer._generate_and_score_completions(rows)


COMPLETIONS = [
    "5*3=16 ### 15*6=90 ### Answer: 90",
    "5*3=15 ### 15*6=91",
    "5*3=15 ### Answer: 90",
    "15*6=90 ### x",
]


def test_per_token_reward_adds_its_scores_to_the_sequence_advantage(tmp_path):
    def position_reward(completions, completion_ids, **_):
        # the last completion is ungraded: it keeps the sequence advantage alone
        return [
            None if c == COMPLETIONS[-1] else [0.1 * (t + 1) for t in range(len(ids))]
            for c, ids in zip(completions, completion_ids, strict=True)
        ]

    position_reward.granularity = "token"

    def index_reward(completions, **_):
        return [float(COMPLETIONS.index(c)) for c in completions]

    trainer, batch = scored_batch(tmp_path, [position_reward, index_reward], COMPLETIONS)
    rewards = torch.tensor([0.0, 1.0, 2.0, 3.0])
    sequence = (rewards - rewards.mean()) / (rewards.std() + 1e-4)  # TRL's group normalisation
    advantages = batch["advantages"]
    assert advantages.shape == batch["completion_ids"].shape
    lengths = batch["completion_mask"].sum(1).tolist()
    for b, n in enumerate(lengths):
        token_part = 0.1 * torch.arange(1, n + 1) if b < 3 else torch.zeros(n)
        torch.testing.assert_close(advantages[b, :n], sequence[b] + token_part, atol=1e-5, rtol=0)
    # logged: the mean over graded completions of their mean token score, not TRL's 0.0 placeholders
    logged = trainer._metrics["train"]["rewards/position_reward/mean"][-1]
    assert logged == pytest.approx(sum(0.1 * (n + 1) / 2 for n in lengths[:3]) / 3)


def test_process_judge_gives_delta_norm_advantages_per_segment(tmp_path):
    trainer, batch = scored_batch(tmp_path, exprl_reward("rubric", mode="process"), COMPLETIONS)
    tokenizer = trainer.processing_class
    # rubric process grades against 5*3=15, 15*6=90, Answer: 90, each segment alone: a contradiction is 1
    # (reward 0), an established result 5 (reward 1), a segment with no claim at all ("x") 2 (reward 0.25)
    segment_rewards = [[0.0, 1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.25]]
    for b, s in enumerate(segment_rewards):
        delta = [s[0] - s[-1]] + [s[t] - s[t - 1] for t in range(1, len(s))]  # DeltaNorm
        ids = batch["completion_ids"][b, : int(batch["completion_mask"][b].sum())].tolist()
        # a token belongs to the segment that the delimiters wholly before it open
        segments = [tokenizer.decode(ids[:i], skip_special_tokens=True).count("###") for i in range(len(ids))]
        expected = torch.tensor([delta[k] for k in segments])
        torch.testing.assert_close(batch["advantages"][b, : len(ids)], expected)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"loss_type": "cispo"}, r"loss_type='cispo' has no exprl equivalent"),
        ({"loss_type": "sapo"}, r"loss_type='sapo' has no exprl equivalent"),
        ({"loss_type": "vespo"}, r"loss_type='vespo' has no exprl equivalent"),
        ({"loss_type": "luspo", "importance_sampling_level": "sequence"}, r"loss_type='luspo'"),
        (
            {"loss_type": "grpo", "importance_sampling_level": "sequence"},
            r"importance_sampling_level='sequence'",
        ),
        ({"top_entropy_quantile": 0.2}, r"top_entropy_quantile=0.2"),
        ({"off_policy_mask_threshold": 0.5}, r"off_policy_mask_threshold=0.5"),
        ({"entropy_coef": 0.1, "use_adaptive_entropy": True}, r"use_adaptive_entropy=True"),
        ({"beta": 0.01}, r"use_bias_correction_kl=True .*set use_bias_correction_kl=False"),
        ({"delta": 1.2, "epsilon_high": 0.28}, r"delta=1.2 must be > 1 \+ epsilon_high"),
    ],
)
def test_trl_options_exprl_cannot_reproduce_are_refused(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        ExpRLGRPOTrainer(
            model=TINY,
            reward_funcs=digit_reward,
            args=config(tmp_path, **options),
            train_dataset=problems_dataset(),
        )


@pytest.mark.parametrize(
    ("trainer_options", "message"),
    [
        ({"segment_advantage": "group"}, r"segment_advantage must be one of \('delta', 'end'\)"),
        ({"loss_backend": "cuda"}, r"loss_backend must be one of"),
    ],
)
def test_bad_exprl_options_are_refused(tmp_path, trainer_options, message):
    with pytest.raises(ValueError, match=message):
        ExpRLGRPOTrainer(
            model=TINY,
            reward_funcs=digit_reward,
            args=config(tmp_path),
            train_dataset=problems_dataset(),
            **trainer_options,
        )


def test_reward_granularity_must_be_known(tmp_path):
    def words(completions, **_):
        return [[1.0] for _ in completions]

    words.granularity = "word"
    with pytest.raises(
        ValueError, match=r"granularity 'word'; use one of \('response', 'token', 'segment'\)"
    ):
        ExpRLGRPOTrainer(
            model=TINY, reward_funcs=words, args=config(tmp_path), train_dataset=problems_dataset()
        )


def test_token_scores_of_the_wrong_length_are_refused(tmp_path):
    def short(completion_ids, **_):
        return [[1.0] * (len(ids) - 1) for ids in completion_ids]

    short.granularity = "token"
    with pytest.raises(
        ValueError, match=r"'short' returned \d+ token scores for completion 0, which has \d+"
    ):
        scored_batch(tmp_path, short, COMPLETIONS)


def test_reward_reading_a_missing_column_names_it():
    reward = exprl_reward("rubric", reference_column="solution")
    with pytest.raises(
        ValueError, match=r"column 'solution', which the dataset lacks; its columns: \['answer'"
    ):
        reward(prompts=["Q"], completions=["A"], completion_ids=[[1]], answer=["1"])


def test_http_judge_sees_the_reference_column_and_its_failures_are_counted(server):  # noqa: F811
    # the echo server answers the last "[judge says: ...]" in the judge prompt: here it stands in the
    # reference column, so a grade comes back only if the reference reached the judge
    reward = exprl_reward("http", base_url=server, model="echo", backoff_s=0.01)
    logged = []
    scores = reward(
        prompts=["Q: 5*3*6\nA: "] * 2,
        completions=["5*3=15", ""],
        completion_ids=[[1]] * 2,
        reference=["5*3=15 [judge says: Score: 4]"] * 2,
        answer=["90"] * 2,
        log_metric=lambda name, value: logged.append((name, value)),
    )
    assert scores == [0.75, 0.0]  # an empty completion is graded 1 without a request
    broken = exprl_reward("http", base_url=server, model="broken", retries=0)
    columns = {"reference": [REFERENCE], "answer": ["90"], "completion_ids": [[1]]}
    assert broken(
        prompts=["Q"], completions=["5*3=15"], log_metric=lambda n, v: logged.append((n, v)), **columns
    ) == [None]
    assert logged == [("http/ungraded", 0.0), ("http/ungraded", 1.0)]
