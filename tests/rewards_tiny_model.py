"""Test support: tiny LlamaForCausalLM checkpoints saved with the project's real `tokenizers`-built
tokenizer and a minimal chat template, loadable by judges and `transformers serve` like any checkpoint.

`save_tiny_llama(dir)` keeps random weights (its greedy output is gibberish); with `says="Score: 4"` the
model is first trained for a few seconds to answer every judge prompt with that text, so a judge's whole
path (prompt rendering, generation, decoding, parsing) can be checked on real generations.
"""

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from exprl.data import builtin_problems
from exprl.models.tokenizer import build_tokenizer
from exprl.rewards.prompts import outcome_messages, process_messages

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def _judge_prompts(tokenizer) -> list[str]:
    problems = builtin_problems(None, 2, "train", 4, seed=1)
    conversations = [outcome_messages(p, p.reference, "###") for p in problems]
    conversations += [process_messages(p, [], p.steps[0], "###") for p in problems]
    render = tokenizer.apply_chat_template
    return [render(c, tokenize=False, add_generation_prompt=True) for c in conversations]


def _train_to_say(model, tokenizer, says: str, steps: int = 80) -> None:
    target = tokenizer(" " + says, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    prompts = _judge_prompts(tokenizer)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        prompt = tokenizer(prompts[step % len(prompts)], add_special_tokens=False)["input_ids"]
        input_ids = torch.tensor([prompt + target])
        labels = input_ids.clone()
        labels[0, : len(prompt)] = -100  # learn the answer only
        loss = model(input_ids=input_ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def save_tiny_llama(directory: Path, seed: int = 0, says: str | None = None) -> Path:
    tokenizer = build_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 4096  # judge prompts are ~1100 tokens of this character-level vocabulary
    # Smaller than the shipped base (exprl.train.pretrain.tiny_config) so it learns "says" in ~2 s, and
    # with room for judge prompts (~1100 tokens), which the shipped base's 256 positions cannot hold.
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if says is not None:
        _train_to_say(model, tokenizer, says)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
