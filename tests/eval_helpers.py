"""A policy whose next-token distribution is set by hand, for the eval tests.

A real Hugging Face Llama whose attention and MLP outputs are zeroed, so its logits depend only on the
current token: a bigram Markov chain with transition log-probs we choose. After the prompt (which ends in
" ") it writes "Answer:" then "7" with probability p or "3" with 1 - p, then eos: every response is 3 tokens.
"""

import math

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from exprl.data import Problem
from exprl.models.tokenizer import build_tokenizer

NEG = -1e4  # exp(NEG) underflows to 0 in fp32: tokens outside the chain are never drawn


def bigram_policy(p_seven: float) -> tuple[LlamaForCausalLM, object]:
    tokenizer = build_tokenizer()
    vocab = len(tokenizer)
    width = vocab + vocab % 2  # rotary embeddings need an even head size
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=4,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        tie_word_embeddings=False,
        rms_norm_eps=1e-12,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config).eval()
    ids = tokenizer.convert_tokens_to_ids
    transition = torch.full((vocab, vocab), NEG)  # transition[current, next] = log-prob
    transition[:, tokenizer.eos_token_id] = 0.0  # default: stop
    transition[ids(" ")] = NEG
    transition[ids(" "), ids("Answer:")] = 0.0
    transition[ids("Answer:")] = NEG
    if p_seven > 0:
        transition[ids("Answer:"), ids("7")] = math.log(p_seven)
    if p_seven < 1:
        transition[ids("Answer:"), ids("3")] = math.log(1 - p_seven)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        # Embedding of token c is sqrt(width) * e_c: unit RMS, so the final norm leaves it unchanged.
        model.model.embed_tokens.weight.copy_(math.sqrt(width) * torch.eye(vocab, width))
        model.lm_head.weight.zero_()
        model.lm_head.weight[:, :vocab] = transition.T / math.sqrt(width)
    return model, tokenizer


def problems(n_test: int, n_ood: int) -> list[Problem]:
    test = [Problem(id=f"t{i}", prompt=f"Q: {i}+7-{i}\nA: ", answer="7", split="test") for i in range(n_test)]
    ood = [Problem(id=f"o{i}", prompt=f"Q: {i}+5-{i}\nA: ", answer="5", split="ood") for i in range(n_ood)]
    return test + ood
