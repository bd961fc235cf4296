"""Self-distillation: which samples are kept, and a real SFT stage on them."""

import json

import pytest
from eval_helpers import bigram_policy, problems
from safetensors.torch import load_file

from exprl.data import Problem, load_problems
from exprl.experiment.config import StageSettings
from exprl.experiment.rft import collect_correct_samples, write_records
from exprl.experiment.stages import StageSpec, rft_stage


def test_keeps_each_distinct_verified_completion_once():
    model, tokenizer = bigram_policy(0.75)  # writes "Answer:7" or "Answer:3", 3 tokens each
    data = collect_correct_samples(
        model, tokenizer, problems(4, 2), group_size=8, max_new_tokens=8, temperature=1.0, seed=0
    )
    assert data.samples == 6 * 8 and data.sampled_tokens == 6 * 8 * 3
    # Test problems (answer 7) are solved by "Answer:7"; OOD ones (answer 5) never are.
    assert all(r["reference"] == "Answer:7" and r["answer"] == "7" for r in data.records)
    assert sorted(r["id"].split("/")[0] for r in data.records) == [
        f"t{i}" for i in range(data.problems_solved)
    ] or (data.problems_solved == len(data.records))
    assert data.problems_solved == len(data.records) == 4  # P(no 7 in 8 draws) = 0.25^8


def test_truncated_completions_are_not_kept():
    model, tokenizer = bigram_policy(1.0)
    data = collect_correct_samples(
        model, tokenizer, problems(2, 0), group_size=2, max_new_tokens=2, temperature=1.0, seed=0
    )
    assert data.records == [] and data.problems_solved == 0


def test_records_load_as_problems_and_repeat_to_a_full_batch(tmp_path):
    records = [{"id": "a/self-0", "problem": "Q: 1\nA: ", "answer": "7", "reference": "Answer:7"}]
    assert write_records(records, tmp_path / "d.jsonl", min_records=3) == 3
    loaded = load_problems(str(tmp_path / "d.jsonl"))
    assert [p.reference for p in loaded] == ["Answer:7"] * 3 and loaded[0].prompt == "Q: 1\nA: "
    with pytest.raises(ValueError, match="records"):
        write_records([], tmp_path / "e.jsonl", min_records=1)


@pytest.mark.slow
def test_rft_stage_trains_on_the_models_own_correct_answers(tmp_path):
    model, tokenizer = bigram_policy(0.5)
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    train = [Problem(id=f"p{i}", prompt=f"Q: {i}+7-{i}\nA: ", answer="7") for i in range(4)]
    (tmp_path / "train.jsonl").write_text(
        "".join(json.dumps({"id": p.id, "problem": p.prompt, "answer": p.answer}) + "\n" for p in train)
    )
    (tmp_path / "sft.yaml").write_text("method: sft\nsft: {batch_size: 4, micro_batch_size: 4}\n")
    overrides = [
        f"data.train={tmp_path / 'train.jsonl'}", "rollout.prompts_per_step=2", "rollout.group_size=4",
        "rollout.max_new_tokens=8", "optim.lr=1e-2", "progress=false",
    ]  # fmt: skip
    spec = StageSpec(
        "rft", 1, tmp_path / "base", tmp_path / "runs" / "stage1",
        StageSettings(config=tmp_path / "sft.yaml", kind="rft"), 2, 0, overrides,
    )  # fmt: skip
    result = rft_stage(spec)

    # 2 steps x 2 prompts x 4 samples drawn; only "Answer:7" is correct, kept once per problem.
    assert result.extra["samples"] == 16 and result.extra["sampled tokens"] == 48
    kept = [json.loads(x) for x in (spec.run_dir / "rft.jsonl").read_text().splitlines()]
    assert {r["reference"] for r in kept} == {"Answer:7"} and len(kept) == max(result.extra["kept"], 4)
    steps = [json.loads(x)["step"] for x in result.metrics_path.read_text().splitlines()]
    assert steps == [1, 2]
    base, trained = (
        load_file(tmp_path / "base" / "model.safetensors"),
        load_file(result.model_dir / "model.safetensors"),
    )
    assert any(not (base[k] == trained[k]).all() for k in base)
