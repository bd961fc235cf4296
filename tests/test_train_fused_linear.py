"""The trainer's fused linear path (`algo.fused_linear`): the loss and the log-prob passes from the final
hidden states and the lm_head give the same run as the logits path, with 1 rank, with 2 ranks, and across
kill and resume; which models get it; the hidden states it takes."""

import json

import pytest
import torch
from safetensors.torch import load_file
from test_train_distributed import finish, kill_at_first_checkpoint, launch, toy_config_file
from train_helpers import read_records

from exprl.errors import RunError
from exprl.train import run
from exprl.train.config import load_config
from exprl.train.engine import _free_port, deepspeed_config, fused_linear_head, through_head

# the exported parameters and these per-step metrics agree between the two paths within TOLERANCE
METRICS = ("loss", "kl", "entropy", "clip_frac", "grad_norm")
TOLERANCE = 1e-5
# the toy run with every pass the fused path replaces: reference (KL) and old-policy (2 PPO epochs)
# log-probs, the entropy bonus, and a per-sequence aggregation (the packed spans of the fused call)
ALGO = [
    "algo.kl_coef=0.01",
    "algo.entropy_coef=0.01",
    "algo.ppo_epochs=2",
    "algo.loss_agg=seq-mean-token-mean",
    "export=true",
]


@pytest.fixture(params=["digits", "untied"])
def toy(tiny_models, request):
    """The toy task on the tiny model whose lm_head is the input embedding, and on one with its own."""
    return tiny_models[request.param], tiny_models["reward"]


def partitioned(toy, tmp_path, name: str, *extra: str):
    """A toy config file whose DeepSpeed JSON is exprl's own ZeRO-3 config with every parameter partitioned:
    DeepSpeed keeps parameters below `stage3_param_persistence_threshold` whole on every rank, which would
    be all of the tiny model's (a real lm_head is far above it). Every parameter is also partitioned again
    after each use, no prefetch and no reuse distance: else, once DeepSpeed has traced a step, the lm_head
    stays whole from its forward to its backward, and the gather its backward needs would go untested."""
    cfg = load_config(toy_config_file(toy, tmp_path, name, *extra))
    ds = deepspeed_config(cfg, 1, 1, 1)
    ds["zero_optimization"].update(
        stage3_param_persistence_threshold=0, stage3_max_reuse_distance=0, stage3_prefetch_bucket_size=0
    )
    ds_file = tmp_path / f"{name}-deepspeed.json"
    ds_file.write_text(json.dumps(ds))
    return toy_config_file(toy, tmp_path, name, *extra, f"deepspeed.config={ds_file}")


def assert_same_run(fused_dir, logits_dir, steps: int) -> None:
    fused, logits = read_records(fused_dir), read_records(logits_dir)
    assert [r["step"] for r in fused] == [r["step"] for r in logits] == list(range(1, steps + 1))
    for a, b in zip(logits, fused, strict=True):
        assert a["reward/judge"] == b["reward/judge"] and a["response_length"] == b["response_length"]
        for key in METRICS:
            assert b[key] == pytest.approx(a[key], rel=TOLERANCE, abs=1e-7), (a["step"], key)
    want = load_file(logits_dir / "export" / "model.safetensors")
    got = load_file(fused_dir / "export" / "model.safetensors")
    assert got.keys() == want.keys()
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=TOLERANCE, msg=name)
    # the runs trained: the comparison is not between two untouched copies of the initial model
    assert any(abs(r["grad_norm"]) > 0 for r in fused)


@pytest.mark.slow
def test_one_rank_fused_matches_logits_path(toy, tmp_path):
    common = ["steps=3", "checkpoint_every=0", *ALGO]
    runs = {}
    for fused in (True, False):
        path = partitioned(
            toy, tmp_path, f"fused-{fused}", *common, f"algo.fused_linear={str(fused).lower()}"
        )
        runs[fused] = run(load_config(path))
    assert_same_run(runs[True], runs[False], steps=3)


@pytest.mark.slow
def test_two_ranks_fused_matches_logits_path(toy, tmp_path):
    """Under `deepspeed --num_gpus 2`, with the lm_head (tied to the embeddings or not) partitioned over the
    ranks: its gradient from the fused op lands in each rank's partition."""
    common = ["steps=2", "checkpoint_every=0", "algo.micro_batch_size=4", *ALGO]
    for fused in (True, False):
        path = partitioned(toy, tmp_path, f"two-{fused}", *common, f"algo.fused_linear={str(fused).lower()}")
        finish(
            launch(
                "--num_gpus",
                "2",
                "--master_port",  # a free one: the runs follow each other, other suites run alongside
                str(_free_port()),
                "--module",
                "exprl.train",
                "--config",
                str(path),
            )
        )
    assert_same_run(tmp_path / "two-True", tmp_path / "two-False", steps=2)


@pytest.mark.slow
def test_killed_fused_run_resumes_to_the_logits_run(toy, tmp_path):
    common = ["steps=4", "checkpoint_every=2", *ALGO]
    whole = run(load_config(partitioned(toy, tmp_path, "logits", *common, "algo.fused_linear=false")))

    path = partitioned(toy, tmp_path, "killed", *common, "algo.fused_linear=true")
    killed_at = kill_at_first_checkpoint(path, tmp_path / "killed" / "checkpoints")
    assert killed_at != "step_000004", "the run finished before it could be killed"
    resumed = run(load_config(path))
    assert_same_run(resumed, whole, steps=4)


def _llama(**config):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    shape = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=2)
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, num_hidden_layers=1, **shape, **config))


def test_fused_linear_head_is_on_for_a_plain_linear_lm_head_tied_or_not():
    for tied in (True, False):
        model = _llama(tie_word_embeddings=tied)
        assert fused_linear_head(model, "auto") and fused_linear_head(model, True)
        assert not fused_linear_head(model, False)


def test_fused_linear_head_is_off_where_the_logits_are_transformed():
    model = _llama(tie_word_embeddings=True)
    model.config.final_logit_softcapping = 30.0
    assert not fused_linear_head(model, "auto")
    with pytest.raises(ValueError, match=r"algo.fused_linear: true .*final_logit_softcapping"):
        fused_linear_head(model, True)
    model = _llama(tie_word_embeddings=True)
    model.lm_head = torch.nn.Sequential(model.lm_head)
    with pytest.raises(ValueError, match="its output layer is Sequential, not a plain torch.nn.Linear"):
        fused_linear_head(model, True)


def _batch():
    from exprl import batching

    prompts, responses = (
        [torch.tensor([3, 4, 5]), torch.tensor([6])],
        [torch.tensor([7, 8]), torch.tensor([9, 10])],
    )
    batch = batching.build_rollout_batch(prompts, responses, 0, layout="padded")
    positions = batch.response_mask.clone()
    positions[1, -1] = False  # any subset of positions
    return batch, positions


@pytest.mark.parametrize("tied", [True, False])
def test_through_head_runs_the_op_on_the_selected_rows_in_place_of_the_lm_head(tied):
    model = _llama(tie_word_embeddings=tied)
    batch, positions = _batch()
    seen = []

    def op(hidden, weight, bias):
        seen.append((hidden, weight, bias))
        return (hidden @ weight.t()).logsumexp(-1).sum()

    got = through_head(model, batch, positions, op)

    full = model.model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
    ).last_hidden_state
    [(hidden, weight, bias)] = seen
    torch.testing.assert_close(hidden, full[positions])
    assert weight is model.lm_head.weight and bias is None
    # what the op returned comes back, and backpropagates into the head and the layers below it
    want = (full[positions] @ model.lm_head.weight.t()).logsumexp(-1).sum()
    torch.testing.assert_close(got, want)
    params = [model.lm_head.weight, model.model.embed_tokens.weight, model.model.layers[0].mlp.up_proj.weight]
    for g, w in zip(torch.autograd.grad(got, params), torch.autograd.grad(want, params), strict=True):
        torch.testing.assert_close(g, w)
    assert "forward" not in vars(model.lm_head)  # the head's own forward is back
    assert model(input_ids=batch.input_ids).logits.shape == (2, batch.input_ids.shape[1], 50)


def test_through_head_refuses_a_model_that_does_not_call_its_lm_head_module():
    from transformers.modeling_outputs import CausalLMOutput

    class Bypass(torch.nn.Module):
        """Takes logits_to_keep but multiplies by the lm_head's weight itself, never calling the head."""

        def __init__(self):
            super().__init__()
            self.inner = _llama(tie_word_embeddings=False)

        def get_output_embeddings(self):
            return self.inner.lm_head

        def forward(self, logits_to_keep, **inputs):
            hidden = self.inner.model(**inputs).last_hidden_state[logits_to_keep]
            return CausalLMOutput(logits=hidden @ self.inner.lm_head.weight.t())

    model = Bypass()
    own = model.inner.lm_head.forward = lambda hidden: hidden  # a forward set on the instance comes back
    batch, positions = _batch()
    with pytest.raises(RunError, match="called its lm_head 0 times, not once.*algo.fused_linear=false"):
        through_head(model, batch, positions, lambda hidden, weight, bias: hidden.sum())
    assert vars(model.inner.lm_head)["forward"] is own
