"""`exprl eval`: sample N completions per problem, grade them, report pass@k per split (JSON + Markdown).

The flags are the fields of `EvalSettings`, with its defaults (the trainer's `eval:` section has the same).
"""

import argparse
import sys
from pathlib import Path

from exprl.eval.settings import EvalSettings, check_eval_settings
from exprl.models import TINY

FLAGS = {"ks": "--k"}  # EvalSettings fields whose flag is not --<field with dashes>


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
    default = EvalSettings()
    parser = argparse.ArgumentParser(
        prog="exprl eval",
        description="Estimate pass@k (unbiased estimator) of a model on held-out and OOD problems.",
    )
    parser.add_argument(
        "--model", default=TINY, help="Hugging Face model directory (default: tiny, the shipped model)"
    )
    parser.add_argument(
        "--problems",
        default=",".join(default.problems),
        help="comma-separated problem sources: builtin:<family|all>:<level>:<split>:<n>[:<seed>] "
        f"or .jsonl/.parquet files (default: {','.join(default.problems)})",
    )
    parser.add_argument("--n", type=int, default=default.n, help=f"samples per problem (default {default.n})")
    parser.add_argument(
        "--k",
        default=",".join(map(str, default.ks)),
        help=f"comma-separated k values, each <= n (default {','.join(map(str, default.ks))})",
    )
    parser.add_argument(
        "--temperature", type=float, default=default.temperature, help="sampling temperature; 0 = greedy"
    )
    parser.add_argument("--max-new-tokens", type=int, default=default.max_new_tokens)
    parser.add_argument("--seed", type=int, default=default.seed)
    parser.add_argument(
        "--batch-size", type=int, default=default.batch_size, help="sequences per generation batch"
    )
    parser.add_argument(
        "--verifier", default=default.verifier, help="the sparse verifier that decides a correct sample"
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


def settings_from_args(args: argparse.Namespace) -> EvalSettings:
    """The EvalSettings the flags name; ValueError naming the flag for a bad value."""
    settings = EvalSettings(
        problems=[spec.strip() for spec in args.problems.split(",") if spec.strip()],
        n=args.n,
        ks=parse_ks(args.k),
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        verifier=args.verifier,
    )

    def fail(key: str, why: str) -> None:
        raise ValueError(f"{FLAGS.get(key, '--' + key.replace('_', '-'))}: {why}")

    check_eval_settings(settings, fail)
    return settings


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValueError as e:
        print(f"exprl eval: {e}", file=sys.stderr)
        return 2

    from exprl.eval.evaluation import evaluate_model_dir
    from exprl.models import resolve_model_path

    try:
        model_path = resolve_model_path(args.model, key="--model")
        settings.load_problems()  # a bad source is a usage error, reported before any model is loaded
    except (ValueError, FileNotFoundError) as e:
        print(f"exprl eval: {e}", file=sys.stderr)
        return 2
    report = evaluate_model_dir(
        model_path, settings, chat_template=args.chat_template, progress=not args.no_progress
    )
    report.settings.update(
        model=str(model_path), problems=settings.problems, chat_template=args.chat_template
    )
    out = Path(args.out) if args.out else Path("runs") / "eval" / model_path.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(report.to_json() + "\n")
    problems = ", ".join(f"`{source}`" for source in settings.problems)
    markdown = f"# exprl eval: {model_path}\n\nproblems: {problems}\n\n" + report.to_markdown()
    (out / "eval.md").write_text(markdown)
    print(markdown)
    print(f"wrote {out / 'eval.json'} and {out / 'eval.md'}")
    return 0
