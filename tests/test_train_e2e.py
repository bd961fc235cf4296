"""End to end on a tiny random Llama: each method runs, learns where learning is certain, and leaves a
complete run directory (metrics, checkpoint, export)."""

import math
import pathlib
import statistics

import pytest
import torch
from train_helpers import read_records, tiny_config, toy_overrides

from exprl.train import advantages, rollout, run

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
STEP_KEYS = (
    "reward/judge",
    "reward/sparse",
    "pass_rate",
    "entropy",
    "kl",
    "clip_frac",
    "grad_norm",
    "loss",
    "response_length",
    "truncation_rate",
    "dropped_rollouts",
    "prompts/unsolved_became_solved",
    "throughput/generated_tokens_per_s",
    "rollout/wasted_decode_share",
    "time/generation",
    "time/scoring",
    "time/training",
)


@pytest.mark.slow
def test_grpo_raises_the_toy_reward(tiny_models, tmp_path):
    cfg = tiny_config(tiny_models["digits"], tmp_path, "steps=8", *toy_overrides(tiny_models["reward"]))
    records = read_records(run(cfg))
    rewards = [r["reward/judge"] for r in records]
    # a random policy earns ~0.35; 8 GRPO steps at this learning rate reach ~0.7
    assert statistics.mean(rewards[-3:]) > statistics.mean(rewards[:3]) + 0.15, rewards


@pytest.mark.slow
def test_an_estimator_registered_in_one_place_trains(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setattr(advantages, "ADVANTAGES", dict(advantages.ADVANTAGES))  # unregistered afterwards
    calls = []

    @advantages.register("rloo", needs_groups=True)
    def leave_one_out(scores, group_size, *, response_lengths, token_segment_ids, scale):
        """RLOO: each rollout's reward minus the mean reward of the other G-1 rollouts of its prompt."""
        calls.append(token_segment_ids)
        out = []
        for i, (score, n) in enumerate(zip(scores, response_lengths, strict=True)):
            group = scores[i - i % group_size : i - i % group_size + group_size]
            baseline = (sum(group) - score) / (group_size - 1)
            out.append(torch.full((n,), score - baseline))
        return out

    cfg = tiny_config(
        tiny_models["digits"],
        tmp_path,
        "steps=8",
        *toy_overrides(tiny_models["reward"]),
        "algo.advantage=rloo",
    )
    records = read_records(run(cfg))
    assert calls == [None] * 8  # once per step; no segment ids for an estimator that does not need them
    rewards = [r["reward/judge"] for r in records]
    assert statistics.mean(rewards[-3:]) > statistics.mean(rewards[:3]) + 0.15, rewards


class StopDigitSegments:
    """A process judge for the toy task: every segment of a response gets its stop-digit reward."""

    name, granularity = "stop-digit-segments", "segment"
    delimiter = "###"

    def __init__(self):
        self.counters = {}

    def score(self, batch):
        from exprl.rewards import split_segments

        out = []
        for r in batch:
            text = r.response.strip()
            s = int(text[-1]) / 9 if text and text[-1].isdigit() else 0.0
            out.append([s] * len(split_segments(r.response, self.delimiter)))
        return out


@pytest.mark.slow
def test_process_group_raises_the_toy_reward(tiny_models, tmp_path, monkeypatch):
    real = rollout.build_rewards
    monkeypatch.setattr(rollout, "build_rewards", lambda cfg, *_: (StopDigitSegments(), real(cfg)[1]))
    cfg = tiny_config(
        tiny_models["digits"],
        tmp_path,
        "steps=8",
        *toy_overrides(tiny_models["reward"]),
        "reward.name=rubric",
        "reward.options={}",
        "reward.mode=process",
        "algo.advantage=process-group",
    )
    records = read_records(run(cfg))
    rewards = [r["reward/judge"] for r in records]
    assert statistics.mean(rewards[-3:]) > statistics.mean(rewards[:3]) + 0.15, rewards


@pytest.mark.slow
@pytest.mark.parametrize(
    "config", ["exprl_outcome_tiny.yaml", "exprl_process_tiny.yaml", "grpo_sparse_tiny.yaml"]
)
def test_shipped_rl_configs_run_and_log_every_metric(tiny_models, tmp_path, config):
    from exprl.train.config import load_config

    cfg = load_config(
        CONFIGS / config,
        [
            f"model.path={tiny_models['plain']}",
            f"output_dir={tmp_path}",
            "steps=2",
            "checkpoint_every=1",
            "progress=false",
            "rollout.prompts_per_step=2",
            "rollout.group_size=4",
            "rollout.max_new_tokens=16",
            "algo.micro_batch_size=4",
            "export=false",
            "eval.enabled=false",
        ],
    )
    run_dir = run(cfg)
    records = read_records(run_dir)
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        for key in STEP_KEYS:
            assert math.isfinite(record[key]), (key, record)
        assert 0 <= record["pass_rate"] <= 1 and 0 <= record["truncation_rate"] <= 1
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_000002"
    assert not list((run_dir / "checkpoints").glob("tmp-*"))
    assert (run_dir / "config.yaml").is_file() and list((run_dir / "plots").glob("*.png"))


@pytest.mark.slow
def test_export_holds_the_trained_weights_and_eval_table(tiny_models, tmp_path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = tiny_config(
        tiny_models["plain"],
        tmp_path,
        "steps=1",
        "export=true",
        "eval.enabled=true",
        "eval.problems=[builtin:all:1:test:2, builtin:all:1:ood:2]",
        "eval.n=2",
        "eval.ks=[1, 2]",
        "eval.max_new_tokens=8",
    )
    run_dir = run(cfg)
    exported = AutoModelForCausalLM.from_pretrained(run_dir / "export")
    AutoTokenizer.from_pretrained(run_dir / "export")
    # independent path to the same weights: DeepSpeed's own consolidation of the ZeRO-3 checkpoint
    consolidated = get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"), tag="step_000001")
    initial = AutoModelForCausalLM.from_pretrained(tiny_models["plain"]).state_dict()
    state = exported.state_dict()
    for name, value in consolidated.items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=0)
    assert any(not torch.equal(state[n], initial[n]) for n in consolidated)  # it did train
    table = (run_dir / "summary.md").read_text()
    assert "| test | pass@1 |" in table and "| ood | pass@2 |" in table
    assert (run_dir / "eval_before.json").is_file() and (run_dir / "eval_after.json").is_file()


@pytest.mark.slow
def test_sft_lowers_its_loss(tiny_models, tmp_path):
    from exprl.train.config import load_config

    cfg = load_config(
        CONFIGS / "sft_tiny.yaml",
        [
            f"model.path={tiny_models['plain']}",
            f"output_dir={tmp_path}",
            "steps=8",
            "progress=false",
            "export=false",
            "eval.enabled=false",
            "data.train=builtin:all:1:train:16",
            "sft.batch_size=8",
            "sft.micro_batch_size=4",
            "optim.lr=1e-2",
            "checkpoint_every=0",
        ],
    )
    records = read_records(run(cfg))
    losses = [r["loss"] for r in records]
    assert len(losses) == 8
    assert losses[-1] < 0.8 * losses[0], losses

    # `tokens` and `entropy` mean what the RL loop's do: the loss tokens (reference + eos) of the step,
    # and the policy's mean entropy on them. Recomputed here for step 1 (the untrained model) from the
    # unpadded sequences, one at a time.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from exprl.data import load_problems, step_prompts
    from exprl.models import prompt_text

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["plain"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["plain"], dtype=torch.float32)
    problems = load_problems(cfg.data.train, seed=cfg.seed)
    for step, record in enumerate(records):
        picked = [problems[i] for i in step_prompts(len(problems), 8, step, cfg.seed, cfg.data.shuffle)]
        answers = [tokenizer(p.reference, add_special_tokens=False)["input_ids"] for p in picked]
        assert record["tokens"] == sum(len(a) + 1 for a in answers)
        if step > 0:
            continue
        entropies, nlls = [], []
        for problem, answer in zip(picked, answers, strict=True):
            prompt = tokenizer(prompt_text(problem, tokenizer, cfg.model.chat_template))["input_ids"]
            ids = torch.tensor([prompt + answer + [tokenizer.eos_token_id]])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].double()
            logp = logits.log_softmax(-1)
            entropies.append(-(logp.exp() * logp).sum(-1))
            nlls.append(-logp.gather(-1, ids[0, len(prompt) :, None])[:, 0])
        assert record["entropy"] == pytest.approx(float(torch.cat(entropies).mean()), rel=1e-4)
        assert record["loss"] == pytest.approx(float(torch.cat(nlls).mean()), rel=1e-4)
