"""The sampler (exprl.models.generation): order, shapes, left padding, eos and truncation, seeding,
argument checks; per-row random streams make each response independent of its batch, the draws follow
softmax(logits / temperature) (nucleus-truncated by top_p), and the decode cost is accounted."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from exprl.models import generation
from exprl.models.generation import sample, sample_tokens, sample_with_stats, stream_seed
from exprl.models.tokenizer import build_tokenizer

PROMPTS = ["Q: 1+2\nA: ", "Q: (12+34)*5-6\nA: ", "Q: Ann has 5 pens.\nA: "]
FOUR = [*PROMPTS, "Q: 7*8\nA: "]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def tiny_llama(tokenizer, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **overrides,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture()
def model(tokenizer):
    # well-separated logits: greedy choices do not hinge on rounding
    return tiny_llama(tokenizer, max_position_embeddings=64, initializer_range=0.5)


def stopping_llama(tokenizer) -> LlamaForCausalLM:
    """Digits end a response too, so rows finish at different steps and the batch gets compacted."""
    model = tiny_llama(tokenizer, max_position_embeddings=128)
    digits = tokenizer.convert_tokens_to_ids(list("0123456789"))
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, *digits]
    return model


@pytest.fixture(scope="module")
def stopping_model(tokenizer):
    return stopping_llama(tokenizer)


def _manual_greedy(model, prompt_ids: list[int], steps: int) -> list[int]:
    """Unbatched, unpadded, cache-free greedy decoding: the reference for the batched path."""
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt_ids) :]


def test_samples_are_prompt_major_with_unpadded_prompts(model, tokenizer):
    samples = sample(model, tokenizer, PROMPTS, 4, max_new_tokens=6, generator_seed=0, batch_size=5)
    assert [s.prompt_index for s in samples] == [0] * 4 + [1] * 4 + [2] * 4
    for s in samples:
        assert s.prompt_ids.dtype == s.response_ids.dtype == torch.long
        assert s.prompt_ids.tolist() == tokenizer(PROMPTS[s.prompt_index])["input_ids"]
        assert 1 <= len(s.response_ids) <= 6
        assert tokenizer.pad_token_id not in s.response_ids.tolist()
        assert s.text == tokenizer.decode(s.response_ids.tolist(), skip_special_tokens=True)


def test_left_padded_batched_greedy_matches_unbatched_decoding(model, tokenizer):
    samples = sample(model, tokenizer, PROMPTS, 1, max_new_tokens=8, greedy=True)
    assert len({len(s.prompt_ids) for s in samples}) == len(PROMPTS)  # the batch needed padding
    for s in samples:
        expected = _manual_greedy(model, s.prompt_ids.tolist(), 8)
        if tokenizer.eos_token_id in expected:
            expected = expected[: expected.index(tokenizer.eos_token_id) + 1]
        assert s.response_ids.tolist() == expected
        assert s.truncated == (tokenizer.eos_token_id not in expected)


def test_response_stops_after_eos_and_is_not_truncated(model, tokenizer):
    reference = [_manual_greedy(model, tokenizer(p)["input_ids"], 8) for p in PROMPTS]
    stop_token = reference[1][2]  # declare the third greedy token of prompt 1 to be eos
    model.generation_config.eos_token_id = stop_token
    samples = sample(model, tokenizer, PROMPTS, 2, max_new_tokens=8, greedy=True, batch_size=6)
    for s in samples:
        ref = reference[s.prompt_index]
        if stop_token in ref:
            end = ref.index(stop_token) + 1
            assert s.response_ids.tolist() == ref[:end] and not s.truncated
        else:
            assert s.response_ids.tolist() == ref and s.truncated
    assert samples[2].response_ids.tolist() == reference[1][:3]


def test_seeded_sampling_is_reproducible_and_leaves_global_rng_alone(model, tokenizer):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = sample(model, tokenizer, PROMPTS, 3, max_new_tokens=10, generator_seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    second = sample(model, tokenizer, PROMPTS, 3, max_new_tokens=10, generator_seed=7)
    other = sample(model, tokenizer, PROMPTS, 3, max_new_tokens=10, generator_seed=8)
    assert [s.response_ids.tolist() for s in first] == [s.response_ids.tolist() for s in second]
    assert [s.response_ids.tolist() for s in first] != [s.response_ids.tolist() for s in other]


def test_model_training_mode_is_restored(model, tokenizer):
    model.train()
    sample(model, tokenizer, PROMPTS[:1], 1, max_new_tokens=2, generator_seed=0)
    assert model.training


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"num_samples": 0}, ValueError, "num_samples"),
        ({"max_new_tokens": 0}, ValueError, "max_new_tokens"),
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"top_p": 1.5}, ValueError, "top_p"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"prompts": "Q: 1+1\nA: "}, TypeError, "prompts"),
    ],
)
def test_bad_arguments_name_the_argument(model, tokenizer, kwargs, error, name):
    args = {"prompts": PROMPTS, "num_samples": 1, "max_new_tokens": 4} | kwargs
    with pytest.raises(error, match=name):
        sample(model, tokenizer, args.pop("prompts"), args.pop("num_samples"), **args)


def responses(samples) -> list[list[int]]:
    return [s.response_ids.tolist() for s in samples]


def test_a_row_draws_the_same_response_whatever_its_batch(stopping_model, tokenizer):
    seeds = [stream_seed(5, i) for i in range(len(FOUR))]
    together = sample(stopping_model, tokenizer, FOUR, 4, max_new_tokens=20, prompt_seeds=seeds)
    assert len({len(r) for r in responses(together)}) > 1  # rows finished at different steps
    alone = [
        s
        for prompt, seed in zip(FOUR, seeds, strict=True)
        for s in sample(stopping_model, tokenizer, [prompt], 4, max_new_tokens=20, prompt_seeds=[seed])
    ]
    reversed_order = sample(
        stopping_model, tokenizer, FOUR[::-1], 4, max_new_tokens=20, prompt_seeds=seeds[::-1]
    )
    reordered = [s for i in reversed(range(len(FOUR))) for s in reversed_order[4 * i : 4 * i + 4]]
    in_threes = sample(
        stopping_model, tokenizer, FOUR, 4, max_new_tokens=20, prompt_seeds=seeds, batch_size=3
    )
    assert responses(alone) == responses(together)
    assert responses(reordered) == responses(together)
    assert responses(in_threes) == responses(together)


def test_compaction_does_not_change_the_responses(stopping_model, tokenizer):
    runs = [
        sample_with_stats(
            stopping_model, tokenizer, FOUR, 4, max_new_tokens=20, generator_seed=3, compact_fraction=f
        )
        for f in (0.01, 0.5, 1.0)
    ]
    assert responses(runs[0][0]) == responses(runs[1][0]) == responses(runs[2][0])
    assert runs[0][1].decode_positions < runs[2][1].decode_positions


def test_static_cache_decoding_draws_the_same_responses(stopping_model, tokenizer):
    """compile_decoding on CPU: the static KV cache (every column, masked), run eagerly, no compaction."""
    dynamic = sample(stopping_model, tokenizer, FOUR, 4, max_new_tokens=20, generator_seed=4)
    static, stats = sample_with_stats(
        stopping_model, tokenizer, FOUR, 4, max_new_tokens=20, generator_seed=4, compile_decoding=True
    )
    assert responses(static) == responses(dynamic)
    assert stats.decode_positions == len(static) * (max(len(r) for r in responses(static)) - 1)


def test_decode_stats_count_the_rows_kept_after_they_finished(stopping_model, tokenizer):
    samples, stats = sample_with_stats(
        stopping_model, tokenizer, FOUR, 4, max_new_tokens=20, generator_seed=3, compact_fraction=1.0
    )
    lengths = [len(s.response_ids) for s in samples]
    # no compaction: every row runs until the longest is done; a row of length n has finished
    # before the forward that follows its n-th token
    forwards = max(lengths) - 1
    assert stats.decode_positions == len(samples) * forwards
    assert stats.wasted_positions == sum(max(forwards - n + 1, 0) for n in lengths)
    assert stats.sampled_tokens == sum(lengths)
    _, compacted = sample_with_stats(
        stopping_model, tokenizer, FOUR, 4, max_new_tokens=20, generator_seed=3, compact_fraction=0.01
    )
    assert compacted.wasted_positions == 0
    assert compacted.decode_positions == sum(n - 1 for n in lengths)


@pytest.mark.parametrize(
    ("temperature", "top_p", "greedy"), [(1.0, 1.0, False), (0.7, 0.6, False), (1.0, 1.0, True)]
)
def test_entropy_is_that_of_the_tempered_distribution_at_each_response_token(
    stopping_model, tokenizer, temperature, top_p, greedy
):
    """with_entropy: at every response token, the entropy of softmax(logits / T) before the nucleus cut,
    recomputed here from one unpadded, cache-free forward over prompt + response."""
    samples = sample(
        stopping_model, tokenizer, FOUR, 3, max_new_tokens=20, temperature=temperature, top_p=top_p,
        greedy=greedy, generator_seed=6, with_entropy=True,
    )  # fmt: skip
    assert len({len(s.response_ids) for s in samples}) > 1  # rows finished (and were cut out) apart
    for s in samples:
        ids = torch.cat([s.prompt_ids, s.response_ids])[None]
        with torch.no_grad():
            logits = stopping_model(ids).logits[0, len(s.prompt_ids) - 1 : -1].double() / temperature
        expected = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
        assert s.entropy.dtype == torch.float32 and s.entropy.shape == s.response_ids.shape
        torch.testing.assert_close(s.entropy.double(), expected, atol=1e-5, rtol=1e-5)
    assert sample(stopping_model, tokenizer, FOUR[:1], 1, max_new_tokens=4)[0].entropy is None


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
def test_draws_follow_the_tempered_nucleus_distribution(stopping_model, tokenizer, temperature, top_p):
    n = 4000
    samples = sample(
        stopping_model,
        tokenizer,
        FOUR[:1],
        n,
        max_new_tokens=1,
        temperature=temperature,
        top_p=top_p,
        generator_seed=1,
    )
    counts = torch.bincount(torch.tensor([s.response_ids[0] for s in samples]), minlength=len(tokenizer))
    target = first_token_distribution(stopping_model, tokenizer, FOUR[0], temperature, top_p)
    assert not bool(counts[target == 0].any())  # nothing outside the nucleus
    # each frequency within 5 standard errors of its probability
    tolerance = 5 * (target * (1 - target) / n).sqrt() + 1e-9
    assert bool(((counts / n - target).abs() <= tolerance).all())


def test_seeds_name_the_streams(stopping_model, tokenizer):
    seeds = [stream_seed(9, i) for i in range(2)]
    first = sample(stopping_model, tokenizer, FOUR[:2], 3, max_new_tokens=12, prompt_seeds=seeds)
    swapped = sample(stopping_model, tokenizer, FOUR[:2], 3, max_new_tokens=12, prompt_seeds=seeds[::-1])
    by_generator = sample(stopping_model, tokenizer, FOUR[:2], 3, max_new_tokens=12, generator_seed=9)
    assert responses(first) == responses(by_generator)  # generator_seed g means prompt seeds (g, i)
    assert responses(first) != responses(swapped)


def test_bad_sampler_arguments_name_the_argument(stopping_model, tokenizer):
    with pytest.raises(ValueError, match="prompt_seeds must hold one int per prompt"):
        sample(stopping_model, tokenizer, FOUR, 1, max_new_tokens=2, prompt_seeds=[1])
    with pytest.raises(ValueError, match="compact_fraction must be in"):
        sample_with_stats(stopping_model, tokenizer, FOUR, 1, max_new_tokens=2, compact_fraction=0.0)
    with pytest.raises(ValueError, match=r"prompts\[0\] encodes to no tokens"):
        sample(stopping_model, tokenizer, [""], 1, max_new_tokens=2)
    args = {"pad_id": 0, "prompt_seeds": [0], "max_new_tokens": 1}
    with pytest.raises(ValueError, match="eos_ids must name at least one token"):
        sample_tokens(stopping_model, [torch.tensor([3])], 1, eos_ids=[], **args)
    with pytest.raises(TypeError, match=r"prompt_ids\[0\] must be a 1-D int64 tensor"):
        sample_tokens(stopping_model, [torch.tensor([[3]])], 1, eos_ids=[1], **args)


def test_a_draw_next_to_one_stays_inside_the_nucleus(stopping_model):
    """A uniform draw just below 1 rounds to 1.0 in float32: it must still pick a token of the nucleus
    (its last one), never one past it."""
    decoder = generation._Decoder(stopping_model, [1], 0, 1, 1.0, 0.5, False, 0.25, False)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    # probabilities 0.64, 0.24, 0.09, 0.03: top-p 0.5 keeps token 0; the uniform row keeps tokens 0 and 1
    assert decoder._pick(logits, [1 - 2**-40, 1 - 2**-40]).tolist() == [0, 1]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_compiled_decoding_on_cuda_draws_the_same_responses(tokenizer):
    """compile_decoding on CUDA: the static cache's decode steps through torch.compile (CUDA graphs),
    recorded by the first call and replayed by the second; the same responses as the default path."""
    model = stopping_llama(tokenizer).cuda()
    plain = sample(model, tokenizer, FOUR, 4, max_new_tokens=20, generator_seed=4)
    compiled = [
        sample(model, tokenizer, FOUR, 4, max_new_tokens=20, generator_seed=4, compile_decoding=True)
        for _ in range(2)
    ]
    assert responses(compiled[0]) == responses(plain)
    assert responses(compiled[1]) == responses(plain)
