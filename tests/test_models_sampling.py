"""The batched sampler: per-row random streams make each response independent of its batch, the draws
follow softmax(logits / temperature) (nucleus-truncated by top_p), and the decode cost is accounted."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from exprl.models.generation import sample, sample_with_stats, stream_seed
from exprl.models.tokenizer import build_tokenizer

PROMPTS = ["Q: 1+2\nA: ", "Q: (12+34)*5-6\nA: ", "Q: Ann has 5 pens.\nA: ", "Q: 7*8\nA: "]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config).eval()
    # digits end a response too, so rows finish at different steps and the batch gets compacted
    digits = tokenizer.convert_tokens_to_ids(list("0123456789"))
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, *digits]
    return model


def responses(samples) -> list[list[int]]:
    return [s.response_ids.tolist() for s in samples]


def test_a_row_draws_the_same_response_whatever_its_batch(model, tokenizer):
    seeds = [stream_seed(5, i) for i in range(len(PROMPTS))]
    together = sample(model, tokenizer, PROMPTS, 4, max_new_tokens=20, prompt_seeds=seeds)
    assert len({len(r) for r in responses(together)}) > 1  # rows finished at different steps
    alone = [
        s
        for prompt, seed in zip(PROMPTS, seeds, strict=True)
        for s in sample(model, tokenizer, [prompt], 4, max_new_tokens=20, prompt_seeds=[seed])
    ]
    reversed_order = sample(model, tokenizer, PROMPTS[::-1], 4, max_new_tokens=20, prompt_seeds=seeds[::-1])
    reordered = [s for i in reversed(range(len(PROMPTS))) for s in reversed_order[4 * i : 4 * i + 4]]
    in_threes = sample(model, tokenizer, PROMPTS, 4, max_new_tokens=20, prompt_seeds=seeds, batch_size=3)
    assert responses(alone) == responses(together)
    assert responses(reordered) == responses(together)
    assert responses(in_threes) == responses(together)


def test_compaction_does_not_change_the_responses(model, tokenizer):
    runs = [
        sample_with_stats(
            model, tokenizer, PROMPTS, 4, max_new_tokens=20, generator_seed=3, compact_fraction=f
        )
        for f in (0.01, 0.5, 1.0)
    ]
    assert responses(runs[0][0]) == responses(runs[1][0]) == responses(runs[2][0])
    assert runs[0][1].decode_positions < runs[2][1].decode_positions


def test_static_cache_decoding_draws_the_same_responses(model, tokenizer):
    """compile_decoding on CPU: the static KV cache (every column, masked), run eagerly, no compaction."""
    dynamic = sample(model, tokenizer, PROMPTS, 4, max_new_tokens=20, generator_seed=4)
    static, stats = sample_with_stats(
        model, tokenizer, PROMPTS, 4, max_new_tokens=20, generator_seed=4, compile_decoding=True
    )
    assert responses(static) == responses(dynamic)
    assert stats.decode_positions == len(static) * (max(len(r) for r in responses(static)) - 1)


def test_decode_stats_count_the_rows_kept_after_they_finished(model, tokenizer):
    samples, stats = sample_with_stats(
        model, tokenizer, PROMPTS, 4, max_new_tokens=20, generator_seed=3, compact_fraction=1.0
    )
    lengths = [len(s.response_ids) for s in samples]
    # no compaction: every row runs until the longest is done; a row of length n has finished
    # before the forward that follows its n-th token
    forwards = max(lengths) - 1
    assert stats.decode_positions == len(samples) * forwards
    assert stats.wasted_positions == sum(max(forwards - n + 1, 0) for n in lengths)
    assert stats.sampled_tokens == sum(lengths)
    _, compacted = sample_with_stats(
        model, tokenizer, PROMPTS, 4, max_new_tokens=20, generator_seed=3, compact_fraction=0.01
    )
    assert compacted.wasted_positions == 0
    assert compacted.decode_positions == sum(n - 1 for n in lengths)


def first_token_distribution(model, tokenizer, prompt: str, temperature: float, top_p: float) -> torch.Tensor:
    """The target of one draw, computed directly: softmax(logits / T) cut to the top-p nucleus."""
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        probs = torch.softmax(model(ids).logits[0, -1].double() / temperature, -1)
    ordered, order = probs.sort(descending=True)
    keep = ordered.cumsum(0) - ordered < top_p
    target = torch.zeros_like(probs)
    target[order[keep]] = ordered[keep]
    return target / target.sum()


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.6)])
def test_draws_follow_the_tempered_nucleus_distribution(model, tokenizer, temperature, top_p):
    n = 4000
    samples = sample(
        model,
        tokenizer,
        PROMPTS[:1],
        n,
        max_new_tokens=1,
        temperature=temperature,
        top_p=top_p,
        generator_seed=1,
    )
    counts = torch.bincount(torch.tensor([s.response_ids[0] for s in samples]), minlength=len(tokenizer))
    target = first_token_distribution(model, tokenizer, PROMPTS[0], temperature, top_p)
    assert not bool(counts[target == 0].any())  # nothing outside the nucleus
    # each frequency within 5 standard errors of its probability
    tolerance = 5 * (target * (1 - target) / n).sqrt() + 1e-9
    assert bool(((counts / n - target).abs() <= tolerance).all())


def test_seeds_name_the_streams(model, tokenizer):
    seeds = [stream_seed(9, i) for i in range(2)]
    first = sample(model, tokenizer, PROMPTS[:2], 3, max_new_tokens=12, prompt_seeds=seeds)
    swapped = sample(model, tokenizer, PROMPTS[:2], 3, max_new_tokens=12, prompt_seeds=seeds[::-1])
    by_generator = sample(model, tokenizer, PROMPTS[:2], 3, max_new_tokens=12, generator_seed=9)
    assert responses(first) == responses(by_generator)  # generator_seed g means prompt seeds (g, i)
    assert responses(first) != responses(swapped)


def test_bad_sampler_arguments_name_the_argument(model, tokenizer):
    with pytest.raises(ValueError, match="prompt_seeds must hold one int per prompt"):
        sample(model, tokenizer, PROMPTS, 1, max_new_tokens=2, prompt_seeds=[1])
    with pytest.raises(ValueError, match="compact_fraction must be in"):
        sample_with_stats(model, tokenizer, PROMPTS, 1, max_new_tokens=2, compact_fraction=0.0)
    with pytest.raises(ValueError, match=r"prompts\[0\] encodes to no tokens"):
        sample(model, tokenizer, [""], 1, max_new_tokens=2)
