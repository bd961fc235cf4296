"""The `exprl` command: one sub-command per module, imported only when it runs."""

import importlib
import sys

from exprl.errors import run_command

# sub-command -> (module, function, one-line help); the function takes argv and returns an exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("exprl.train.cli", "main", "ExpRL or sparse GRPO (no arguments: the embedded default)"),
    "sft": ("exprl.train.cli", "sft_main", "the SFT baseline on the reference solutions"),
    "eval": ("exprl.eval.cli", "main", "pass@k of a model on task splits"),
    "experiment": ("exprl.experiment.cli", "main", "the comparison of SFT, GRPO and ExpRL, stage I then II"),
    "pretrain": ("exprl.train.pretrain", "main", "train the tiny base model shipped in the package"),
    "bench": ("exprl.bench", "main", "run the kernel and training microbenchmarks against eager PyTorch"),
}


def _usage() -> str:
    lines = ["usage: exprl <command> [options]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "`exprl <command> --help` describes a command's options."]
    lines += ["An error is one line on stderr (exit status 2); add --debug to see its traceback."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"exprl: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[name]
    return run_command(f"exprl {name}", getattr(importlib.import_module(module), function), rest)


if __name__ == "__main__":
    sys.exit(main())
