"""Process segments: split_segments, token_segment_ids, and their agreement with
exprl.batching.segment_advantages (the per-token advantages the trainer uses)."""

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from exprl.batching import segment_advantages
from exprl.data import builtin_problems
from exprl.models.tokenizer import build_tokenizer
from exprl.rewards import Rollout, build_reward, split_segments, token_segment_ids

RESPONSES = [
    "17+5=22 ### 22*3=66 ### 66-4=62 ### Answer: 62",
    "17+5=22###22*3=67 ###67-4=63### Answer: 63",
    "17+5=22 ### 22*3=66 ###",  # ends with a delimiter: the last segment is empty
    "### 17+5=22 ###  ### Answer: 62",  # empty first and third segments
    "no delimiter at all, Answer: 62",
    "####",  # "###" + "#": one delimiter, then "#"
    "",
]


@pytest.mark.parametrize(
    "text, delimiter, expected",
    [
        ("a=1 ### b=2 ### Answer: 2", "###", ["a=1", "b=2", "Answer: 2"]),
        ("a=1 ### b=2 ###", "###", ["a=1", "b=2", ""]),
        ("", "###", [""]),
        ("a ||b|| c", "||", ["a", "b", "c"]),
        ("####", "###", ["", "#"]),
    ],
)
def test_split_segments(text, delimiter, expected):
    assert split_segments(text, delimiter) == expected


def test_split_segments_rejects_bad_arguments():
    with pytest.raises(ValueError, match="delimiter"):
        split_segments("a", "")
    with pytest.raises(TypeError, match="text"):
        split_segments(b"a")


def byte_level_bpe() -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE, where a delimiter may merge with the spaces around it."""
    corpus = [p.reference for p in builtin_problems(None, 3, "train", 200, seed=0)] + RESPONSES
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>")


TOKENIZERS = {"task": build_tokenizer(), "byte-bpe": byte_level_bpe()}


def encode(tokenizer, text: str) -> torch.Tensor:
    """Response ids as generation returns them: the text's tokens, then eos."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


@pytest.mark.parametrize("tokenizer_name", sorted(TOKENIZERS))
@pytest.mark.parametrize("text", RESPONSES)
def test_token_segment_ids_count_the_delimiters_before_each_token(tokenizer_name, text):
    tokenizer = TOKENIZERS[tokenizer_name]
    ids = encode(tokenizer, text)
    segment_ids = token_segment_ids(ids, tokenizer)
    assert segment_ids.shape == ids.shape and segment_ids.dtype == torch.long
    expected = [tokenizer.decode(ids[:i], skip_special_tokens=True).count("###") for i in range(len(ids))]
    assert segment_ids.tolist() == expected
    assert int(segment_ids.max()) < len(split_segments(tokenizer.decode(ids, skip_special_tokens=True)))


@pytest.mark.parametrize("text", RESPONSES)
def test_token_segment_ids_partition_the_text_into_its_segments(text):
    tokenizer = TOKENIZERS["task"]  # no token straddles a delimiter's end ("###" is one token)
    ids = encode(tokenizer, text)
    segment_ids = token_segment_ids(ids, tokenizer)
    for k, segment in enumerate(split_segments(text)):
        # the text of segment k's tokens, cut at the delimiter that closes it, is segment k
        own = tokenizer.decode(ids[segment_ids == k], skip_special_tokens=True)
        assert split_segments(own)[0] == segment


def test_token_segment_ids_put_the_delimiter_in_the_segment_it_closes():
    tokenizer = TOKENIZERS["task"]  # "###" is one token, every other character one token
    ids = encode(tokenizer, "1=1 ### 2=2")
    tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
    assert tokens == ["1", "=", "1", " ", "###", " ", "2", "=", "2", "<eos>"]
    assert token_segment_ids(ids, tokenizer).tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]


def test_token_segment_ids_rejects_bad_ids():
    tokenizer = TOKENIZERS["task"]
    with pytest.raises(ValueError, match="response_ids"):
        token_segment_ids(torch.zeros(2, 3, dtype=torch.long), tokenizer)
    with pytest.raises(TypeError, match="response_ids"):
        token_segment_ids(torch.zeros(3, dtype=torch.int32), tokenizer)


def test_process_rewards_map_to_token_advantages_as_segment_advantages_does():
    """Rubric process scores + token_segment_ids through segment_advantages ("delta") equal the
    DeltaNorm advantages computed by hand from each token's character offset."""
    tokenizer = TOKENIZERS["task"]  # tokens are exact substrings: a token's offset is the sum before it
    problem = builtin_problems("chain", 3, "train", 1, seed=5)[0]
    steps = problem.steps
    responses = [
        problem.reference,
        f"{steps[0]} ### {steps[0]} ### Answer: {problem.answer}",
        f"{steps[0]} ### 1+1=3 ###",
        "",
    ]
    scores = build_reward("rubric", mode="process").score([Rollout(problem, r) for r in responses])
    ids = [encode(tokenizer, r) for r in responses]
    segment_ids = [token_segment_ids(i, tokenizer) for i in ids]
    width = max(len(i) for i in ids)
    padded = torch.full((len(ids), width), -1, dtype=torch.long)
    for row, s in enumerate(segment_ids):
        padded[row, : len(s)] = s
    advantages = segment_advantages(padded, [torch.tensor(s) for s in scores], "delta")

    for row, (response, token_ids) in enumerate(zip(responses, ids, strict=True)):
        s = scores[row]
        assert len(s) == len(split_segments(response))
        offset = 0
        for column, token in enumerate(tokenizer.convert_ids_to_tokens(token_ids.tolist())):
            k = response[:offset].count("###")  # delimiters wholly before this token
            expected = s[k] - s[k - 1] if k > 0 else s[0] - (s[-1] if len(s) > 1 else 0.0)
            assert advantages[row, column].item() == pytest.approx(expected)
            offset += 0 if token == tokenizer.eos_token else len(token)
        assert (advantages[row, len(token_ids) :] == 0).all()
