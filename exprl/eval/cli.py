"""`exprl eval`: sample N completions per problem, grade them, report pass@k per split (JSON + Markdown)."""

import argparse
import sys
from pathlib import Path
from typing import Any

DEFAULT_TASKS = "builtin:all:3:test:32,builtin:all:3:ood:32"


def parse_ks(text: str) -> list[int]:
    """ "1,4,16" -> [1, 4, 16]; ValueError naming --k for anything else."""
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise ValueError(f"--k must be a comma-separated list of ints, got {text!r}") from e
    if not ks:
        raise ValueError(f"--k must name at least one k, got {text!r}")
    return ks


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exprl eval",
        description="Estimate pass@k (unbiased estimator) of a model on held-out and OOD problems.",
    )
    parser.add_argument(
        "--model", default=None, help="Hugging Face model directory (default: the shipped tiny model)"
    )
    parser.add_argument(
        "--tasks",
        default=DEFAULT_TASKS,
        help="comma-separated problem sources: builtin:<family|all>:<level>:<split>:<n>[:<seed>] "
        f"or .jsonl/.parquet files (default: {DEFAULT_TASKS})",
    )
    parser.add_argument("--n", type=int, default=16, help="samples per problem (default 16)")
    parser.add_argument("--k", default="1,4,16", help="comma-separated k values, each <= n (default 1,4,16)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0 = greedy")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per generation batch")
    parser.add_argument(
        "--verifier", default="exact", help="sparse verifier name for exprl.rewards.build_reward"
    )
    parser.add_argument(
        "--chat-template",
        choices=("auto", "never"),
        default="auto",
        help="auto: wrap prompts in the tokenizer's chat template when it has one, as the trainer does",
    )
    parser.add_argument("--out", default=None, help="output directory (default: runs/eval/<model name>)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def evaluate_model_dir(model_dir: Path, problems: list, *, chat_template: str = "auto", **options: Any):
    """Load a Hugging Face model directory (on CUDA when there is one) and `evaluate` it on `problems`,
    prompts formatted as the trainer formats them (`chat_template` "auto" | "never"). `options` are the
    keyword arguments of `exprl.eval.evaluate` (n, ks, temperature, ...). Returns the EvalReport."""
    import torch

    from exprl.eval.evaluation import evaluate
    from exprl.models import load_model_and_tokenizer, prompt_text

    model, tokenizer = load_model_and_tokenizer(model_dir)
    if torch.cuda.is_available():
        model = model.cuda()
    return evaluate(
        model,
        tokenizer,
        problems,
        format_prompt=lambda p: prompt_text(p, tokenizer, chat_template),
        **options,
    )


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        ks = parse_ks(args.k)
        if args.n < 1 or any(not 1 <= k <= args.n for k in ks):
            raise ValueError(f"every --k must lie in [1, --n], got --k {args.k} with --n {args.n}")
    except ValueError as e:
        print(f"exprl eval: {e}", file=sys.stderr)
        return 2

    from exprl.data import load_problems
    from exprl.models import tiny_base_path

    model_path = Path(args.model) if args.model else tiny_base_path()
    try:
        problems = [p for spec in args.tasks.split(",") if spec.strip() for p in load_problems(spec.strip())]
    except (ValueError, FileNotFoundError) as e:
        print(f"exprl eval: --tasks: {e}", file=sys.stderr)
        return 2
    report = evaluate_model_dir(
        model_path,
        problems,
        chat_template=args.chat_template,
        n=args.n,
        ks=ks,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        batch_size=args.batch_size,
        verifier=args.verifier,
        progress=not args.no_progress,
    )
    report.settings.update(model=str(model_path), tasks=args.tasks, chat_template=args.chat_template)
    out = Path(args.out) if args.out else Path("runs") / "eval" / model_path.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(report.to_json() + "\n")
    markdown = f"# exprl eval: {model_path}\n\ntasks: `{args.tasks}`\n\n" + report.to_markdown()
    (out / "eval.md").write_text(markdown)
    print(markdown)
    print(f"wrote {out / 'eval.json'} and {out / 'eval.md'}")
    return 0
