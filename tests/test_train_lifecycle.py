"""The trainer's before/after evaluation reads prompts the way the policy is trained on them."""

import contextlib
import functools
import json

import pytest
from train_helpers import make_tiny_model, tiny_config

from exprl.data import load_problems
from exprl.train import lifecycle, rollout
from exprl.train.engine import init_distributed

# A chat template made of characters the task tokenizer spells exactly, so decoding restores the text.
CHAT_TEMPLATE = "{% for m in messages %}[user] {{ m['content'] }}\n{% endfor %}[assistant] "


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    from transformers import AutoTokenizer

    path = make_tiny_model(tmp_path_factory.mktemp("chat"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("chat_template", ["auto", "never"])
def test_evaluate_policy_formats_prompts_like_training(chat_model, tmp_path, monkeypatch, chat_template):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    init_distributed()  # a world of one, as a plain `exprl train` runs
    cfg = tiny_config(
        chat_model,
        tmp_path,
        f"model.chat_template={chat_template}",
        "eval.enabled=true",
        "eval.problems=[builtin:all:1:test:2, builtin:all:1:ood:1]",
        "eval.n=2",
        "eval.ks=[1, 2]",
        "eval.max_new_tokens=4",
        "eval.batch_size=2",  # one problem per generation call: each call's rows are one prompt
    )
    tokenizer = AutoTokenizer.from_pretrained(chat_model)
    model = AutoModelForCausalLM.from_pretrained(chat_model)
    read: list[str] = []
    forward = model.forward

    @functools.wraps(forward)
    def spy(input_ids=None, attention_mask=None, **kwargs):
        # a prefill (a cache, several tokens): the sampler runs each prompt once for its n rows
        if kwargs.get("cache") is not None and input_ids.shape[1] > 1:
            for row, mask in zip(input_ids, attention_mask, strict=True):
                read.append(tokenizer.decode(row[mask.bool()].tolist()))
        return forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    # the evaluation's view of the engine: the policy module, parameters gathered (here: a plain model)
    monkeypatch.setattr(
        rollout, "generation_mode", lambda engine, gather_parameters: contextlib.nullcontext(model)
    )

    result = lifecycle.evaluate_policy(engine=None, tokenizer=tokenizer, cfg=cfg, stage="before")

    problems = [p for source in cfg.eval.problems for p in load_problems(source)]
    if chat_template == "auto":
        expected = [f"[user] {p.prompt}\n[assistant] " for p in problems]
    else:
        expected = [p.prompt for p in problems]
    assert read == expected
    assert set(result["splits"]) == {"test", "ood"}
    assert json.loads((cfg.run_dir / "eval_before.json").read_text()) == result
