"""A miniature `exprl experiment` with the real trainer: every method, both stages, every evaluation.

Base model: a randomly initialised one-layer Llama with the built-in tasks' tokenizer (seconds to train).
Three optimizer steps per stage, two prompts x four samples per step, three test and three OOD problems.
"""

import json
import re

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from exprl.experiment.cli import main
from exprl.models.tokenizer import build_tokenizer

TRAINER_CONFIGS = {
    # 8 references per optimizer step: as many sequences as an RL step trains on (2 prompts x 4 samples)
    "sft.yaml": "method: sft\nsft: {batch_size: 8, micro_batch_size: 8}\n",
    "grpo.yaml": "reward: {name: exact}\nalgo: {advantage: grpo}\n",
    "outcome.yaml": "reward: {name: rubric, mode: outcome}\nalgo: {advantage: grpo}\n",
    "process.yaml": "reward: {name: rubric, mode: process}\nalgo: {advantage: process-delta}\n",
    "distill.yaml": "method: distill\nreward: {name: exact}\n",
}


def experiment_yaml(tmp_path) -> str:
    return f"""
name: mini
out_dir: {tmp_path / "report"}
work_dir: {tmp_path / "runs"}
base_model: {tmp_path / "base"}
seed: 0
steps: 3
overrides: ["data.train=builtin:all:1:train:8", rollout.prompts_per_step=2, rollout.group_size=4,
            rollout.max_new_tokens=12, algo.micro_batch_size=8, optim.lr=1e-3, progress=false]
stage1:
  none: {{}}
  sft: {{config: {tmp_path / "sft.yaml"}}}
  grpo: {{config: {tmp_path / "grpo.yaml"}}}
  exprl-outcome: {{config: {tmp_path / "outcome.yaml"}}}
  exprl-process: {{config: {tmp_path / "process.yaml"}}}
  self-distill: {{config: {tmp_path / "distill.yaml"}}}
  rft: {{config: {tmp_path / "sft.yaml"}, kind: rft}}
stage2: {{config: {tmp_path / "grpo.yaml"}}}
eval: {{problems: ["builtin:all:1:test:3", "builtin:all:1:ood:3"], n: 4, ks: [1, 4], max_new_tokens: 12,
        batch_size: 16}}
report:
  reward_metric: reward/sparse
  token_counts:
    trained tokens: [tokens]
"""


@pytest.mark.slow
def test_miniature_experiment_end_to_end(tmp_path):
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    for name, text in TRAINER_CONFIGS.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "exp.yaml").write_text(experiment_yaml(tmp_path))

    assert main(["--config", str(tmp_path / "exp.yaml"), "--no-progress"]) == 0

    out = tmp_path / "report"
    md = (out / "report.md").read_text()
    table = md.split("## pass@k after Stage I and after Stage II\n", 1)[1].strip().split("\n\n")[0]
    header, _, *rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()]
    assert len(header) == 1 + 2 * 2 * 2  # (pass@1, pass@4) x (test, ood) x (Stage I, Stage II)
    assert [r[0] for r in rows] == [
        "none",
        "sft",
        "grpo",
        "exprl-outcome",
        "exprl-process",
        "self-distill",
        "rft",
    ]
    for row in rows:
        assert len(row) == len(header) and all(re.fullmatch(r"[01]\.\d{3}", c) for c in row[1:]), row
    # The random base model never answers correctly: RFT has nothing to imitate, keeps the
    # base model, and the report says so. Every other run logged its 3 optimizer steps.
    assert "Budget mismatch**: these runs logged a number of steps other than 3: rft stage 1: 0." in md
    assert "rft stage 1, outside the trainer's metrics: samples 24" in md
    across = md.split("## Across seeds: mean [95% interval]\n", 1)[1].split("\n## ", 1)[0]
    assert across.count("| self-distill |") == 2 and "Training seeds 0;" in across
    for name in ("passk", "reward", "entropy"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 0
    # Every trained run, SFT included, logs its loss tokens as `tokens`: no fallback, nothing missing.
    compute = md.split("## Compute (measured)\n", 1)[1].strip().split("\n\n")[0]
    _, _, *compute_rows = [[c.strip() for c in line.strip("|").split("|")] for line in compute.splitlines()]
    for row in compute_rows:
        stage1_tokens, stage2_tokens = row[-2:]
        assert row[0] in ("none", "rft") or float(stage1_tokens) > 0, row
        assert float(stage2_tokens) > 0, row
    assert "fallback" not in md

    results = json.loads((out / "results.json").read_text())
    assert len(results["evals"]) == 1 + 7 + 7  # base, Stage I x 7 (none = base), Stage II x 7
    base = load_file(tmp_path / "base" / "model.safetensors")
    for method in ("sft", "grpo", "exprl-outcome", "exprl-process", "self-distill"):
        for stage in (1, 2):
            export = tmp_path / "runs" / method / f"stage{stage}" / "export" / "model.safetensors"
            trained = load_file(export)
            assert any(not torch.equal(base[k], trained[k]) for k in base), (method, stage)

    # Rerunning resumes: everything is done, so nothing is trained or evaluated again.
    stamp = (out / "evals" / "grpo-stage2.json").stat().st_mtime_ns
    assert main(["--config", str(tmp_path / "exp.yaml"), "--no-progress"]) == 0
    assert (out / "evals" / "grpo-stage2.json").stat().st_mtime_ns == stamp
