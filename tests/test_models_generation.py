"""generation.sample: order, shapes, left padding, eos and truncation, seeding, argument checks."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from exprl.models.generation import sample
from exprl.models.tokenizer import build_tokenizer

PROMPTS = ["Q: 1+2\nA: ", "Q: (12+34)*5-6\nA: ", "Q: Ann has 5 pens.\nA: "]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture()
def model(tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.5,  # well-separated logits: greedy choices do not hinge on rounding
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config).eval()


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
