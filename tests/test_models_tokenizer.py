"""The task tokenizer: real Hugging Face files, exact round trip, short sequences."""

import string

from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from exprl.data import FAMILIES, LEVELS, SPLITS, builtin_problems
from exprl.models import tiny_base_path
from exprl.models.tokenizer import build_tokenizer

TOKENIZER = build_tokenizer()


def test_saved_files_load_with_auto_tokenizer(tmp_path):
    TOKENIZER.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "Q: (17+5)*3-4\nA: 17+5=22 ### 22*3=66 ### 66-4=62 ### Answer: 62"
    assert loaded(text)["input_ids"] == TOKENIZER(text)["input_ids"]
    assert (loaded.pad_token, loaded.eos_token) == ("<pad>", "<eos>")
    assert loaded.pad_token_id != loaded.eos_token_id


def test_shipped_tokenizer_is_the_built_one():
    shipped = AutoTokenizer.from_pretrained(tiny_base_path())
    assert shipped.get_vocab() == TOKENIZER.get_vocab()


def test_round_trip_is_exact_on_all_task_text_and_sequences_stay_short():
    longest = 0
    for family in FAMILIES:
        for level in LEVELS:
            for split in SPLITS:
                for p in builtin_problems(family, level, split, 10, 0):
                    text = p.prompt + p.reference
                    ids = TOKENIZER(text)["input_ids"]
                    assert TOKENIZER.decode(ids) == text
                    longest = max(longest, len(ids) + 1)  # + eos
    assert longest <= 112


def test_delimiter_answer_and_template_words_are_single_tokens():
    tokens = TOKENIZER.convert_ids_to_tokens(TOKENIZER("Ann has 3 pens. ### Answer: 3")["input_ids"])
    assert tokens == ["Ann", " has", " ", "3", " pens", ".", " ", "###", " ", "Answer:", " ", "3"]
    # digits are always separate tokens, so numbers are spelled digit by digit
    assert TOKENIZER.convert_ids_to_tokens(TOKENIZER("1234")["input_ids"]) == ["1", "2", "3", "4"]


def test_eos_is_skipped_in_decoding_and_no_special_tokens_are_added():
    ids = TOKENIZER("5+3=8")["input_ids"]
    assert TOKENIZER.decode([*ids, TOKENIZER.eos_token_id], skip_special_tokens=True) == "5+3=8"
    assert TOKENIZER.eos_token_id not in ids


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=string.printable, max_size=60))
def test_round_trip_is_exact_on_any_printable_ascii(text):
    assert TOKENIZER.decode(TOKENIZER(text)["input_ids"]) == text
