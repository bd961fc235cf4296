"""The policy's prompt: a system prompt joins the chat template; a plain prompt keeps its own format."""

from exprl.data import load_problems
from exprl.models import PAPER_SYSTEM_PROMPT, prompt_text


class ChatTokenizer:
    """Renders messages as "<role>content" lines, as a chat template would."""

    chat_template = "role-lines"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert not tokenize and add_generation_prompt
        return "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + "<assistant>"


class PlainTokenizer:
    chat_template = None


PROBLEM = load_problems("builtin:all:1:train:1")[0]


def test_system_prompt_goes_first_in_the_chat():
    text = prompt_text(PROBLEM, ChatTokenizer(), "auto", PAPER_SYSTEM_PROMPT)
    assert text == f"<system>{PAPER_SYSTEM_PROMPT}\n<user>{PROBLEM.prompt}\n<assistant>"
    assert "\\boxed{}" in PAPER_SYSTEM_PROMPT and "step by step" in PAPER_SYSTEM_PROMPT
    assert prompt_text(PROBLEM, ChatTokenizer(), "auto") == f"<user>{PROBLEM.prompt}\n<assistant>"


def test_plain_prompts_keep_the_task_format():
    assert prompt_text(PROBLEM, PlainTokenizer(), "auto", PAPER_SYSTEM_PROMPT) == PROBLEM.prompt
    assert prompt_text(PROBLEM, ChatTokenizer(), "never", PAPER_SYSTEM_PROMPT) == PROBLEM.prompt
