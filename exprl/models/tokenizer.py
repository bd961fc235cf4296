"""The tiny base model's tokenizer: a `tokenizers` WordLevel vocabulary over the task alphabet.

Every printable ASCII character is a token, so any ASCII text round-trips exactly; on top of that the
process delimiter "###", "Answer:" and the words of the word-problem templates (with and without a
leading space) are single tokens, which keeps sequences short (a level-4 problem plus its solution is
well under 100 tokens). Digits are always single tokens, which arithmetic needs.
"""

import re
import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from exprl.data.problem import ANSWER_PREFIX, SEGMENT_DELIMITER
from exprl.data.tasks import word_vocabulary

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
MULTI_CHAR_TOKENS = (SEGMENT_DELIMITER, ANSWER_PREFIX.strip())


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh tokenizer (deterministic: same vocabulary and ids every call); pad id 0, eos id 1."""
    words = word_vocabulary()
    vocab_tokens = [PAD, EOS, UNK, *MULTI_CHAR_TOKENS]
    vocab_tokens += [w for word in words for w in (word, " " + word)]
    vocab_tokens += [c for c in string.printable if c not in vocab_tokens]
    vocab = {token: i for i, token in enumerate(vocab_tokens)}
    # Longest alternatives first: the regex engine takes the first alternative that matches.
    words_alt = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    specials = "|".join(re.escape(t) for t in MULTI_CHAR_TOKENS)
    pattern = rf"{specials}| ?(?:{words_alt})\b|[\s\S]"
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()  # tokens are exact substrings: concatenation restores the text
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=256,
    )
