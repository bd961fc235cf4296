"""Training configuration: YAML files loaded into validated dataclasses, with `key=value` overrides.

A config is a tree of dataclasses (`TrainConfig` at the root). `load_config(path, overrides)` reads the
YAML, applies overrides such as `rollout.group_size=4` or `algo.kl_coef=0`, and checks every key and
type; an unknown key, a wrong type or an out-of-range value is a `ValueError` naming the key and the
file (or "override" for command-line values). Names (reward sources, advantage estimators, loss
aggregations, KL estimators, loss backends) are checked against the registries that define them.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from exprl import kernels, rewards
from exprl.data import SEGMENT_DELIMITER
from exprl.eval.settings import EvalSettings, check_eval_settings
from exprl.models import TINY
from exprl.train import advantages

# field metadata of the keys a resumed run may change: they take effect from the step it resumes at, and
# the change is recorded in runs/<name>/config_changes.jsonl. Every other key is fixed for a run's life.
CHANGEABLE = {"changeable_on_resume": True}


@dataclass
class ModelConfig:
    path: str = TINY  # a local Hugging Face directory; "tiny" = the model shipped in exprl/assets
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 where supported
    attn_implementation: str = "auto"  # auto: flash_attention_2 if installed on CUDA, else sdpa
    gradient_checkpointing: bool = field(default=False, metadata=CHANGEABLE)
    chat_template: Literal["auto", "never"] = "auto"  # auto: wrap prompts when the tokenizer has one


@dataclass
class DataConfig:
    train: str = "builtin:all:3:train:256"  # exprl.data.load_problems source
    shuffle: bool = True
    # a problem whose prompt + rollout.max_new_tokens exceeds the model's positions: error, or skip it
    skip_too_long: bool = False


@dataclass
class RewardConfig:
    name: str = "rubric"  # a registered reward (exprl.rewards.reward_names())
    mode: Literal["outcome", "process"] = "outcome"  # used by judges only (exprl.rewards.is_judge)
    delimiter: str = SEGMENT_DELIMITER
    # process judges: grade each segment alone (as published) or with the segments before it
    process_context: Literal["segment", "prefix"] = "segment"
    options: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for build_reward
    # "reference": the hf judge grades with the trainer's own frozen reference engine (the base model, already
    # loaded and ZeRO-3 sharded, gathered while scoring) instead of loading another copy from options.path
    judge_model: Literal["own", "reference"] = "own"
    # a truncated rollout's reward: "zero" (Stage I as published) or "keep" what the reward gives (Stage II:
    # a correct answer whose response hit the length limit is still rewarded)
    truncation: Literal["zero", "keep"] = "zero"
    sparse: str = "exact"  # the verifier behind the reward/sparse and pass_rate metrics (eval: eval.verifier)
    # seconds one call of a python reward or a math verifier may take; past it the rollout is dropped
    timeout_s: float = field(default=60.0, metadata=CHANGEABLE)
    # warn (once) when a step drops more than this share of its rollouts
    warn_drop_rate: float = field(default=0.5, metadata=CHANGEABLE)


@dataclass
class RolloutConfig:
    prompts_per_step: int = 8  # global, across ranks
    group_size: int = 8  # G samples per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    # a system message for the policy, used only with a chat template (exprl.models.PAPER_SYSTEM_PROMPT in
    # the paper presets; plain prompts, as the tiny tasks', keep their own format)
    system_prompt: str | None = None
    # ZeRO-3: gather all parameters once per step for sampling (a whole model per GPU, released before
    # training); False = sample from sharded parameters, all ranks in lockstep (less memory, slower)
    gather_parameters: bool = field(default=True, metadata=CHANGEABLE)
    # static KV cache, and on CUDA decode steps compiled with CUDA graphs (full-attention models only;
    # finished rows are not compacted out): see exprl.models.generation.sample_tokens. Not yet run on a
    # GPU (benchmarks/gpu_check.sh trains with it on): off by default
    compile_decoding: bool = False


@dataclass
class AlgoConfig:
    advantage: str = "grpo"  # a registered estimator (exprl.train.advantages.ADVANTAGES)
    scale: Literal["std", "none"] = "std"  # grpo: divide by the group's std or not
    ppo_epochs: int = 1
    mini_batches: int = 1  # optimizer steps per PPO epoch
    # sequences per forward/backward on one rank (a memory setting: the gradient does not depend on it)
    micro_batch_size: int = field(default=16, metadata=CHANGEABLE)
    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float | None = 3.0
    kl_coef: float = 1e-3
    kl_estimator: str = "k3"  # one of exprl.kernels.KL_ESTIMATORS
    entropy_coef: float = 1e-3  # the starting coefficient when entropy_target is set
    # adapt entropy_coef after every step to hold the policy's mean token entropy near this target:
    # coef += entropy_rate * (target - entropy), clamped to entropy_coef_bounds (exprl.train.entropy)
    entropy_target: float | None = None
    entropy_rate: float = 1e-2
    entropy_coef_bounds: tuple[float, float] = (0.0, 1e-2)
    loss_agg: str = "token-mean"  # one of exprl.kernels.LOSS_AGGS
    loss_backend: str = "auto"  # one of exprl.kernels.BACKENDS
    # the loss from the final hidden states and the lm_head (exprl.kernels.linear_entropy_pg_loss), no
    # logits; auto: when the output layer is a plain nn.Linear lm_head, tied to the input embeddings or
    # not, and no logit transform follows it (exprl.train.engine.fused_linear_head)
    fused_linear: Literal["auto", True, False] = "auto"


@dataclass
class OptimConfig:
    lr: float = field(default=1e-4, metadata=CHANGEABLE)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = field(default=0, metadata=CHANGEABLE)
    grad_clip: float = field(default=1.0, metadata=CHANGEABLE)


@dataclass
class SFTConfig:
    batch_size: int = 16  # global sequences per optimizer step (steps = the run's `steps`)
    micro_batch_size: int = field(default=8, metadata=CHANGEABLE)


@dataclass
class EvalConfig(EvalSettings):
    """The run's before/after evaluation: `exprl.eval.EvalSettings` (problems, n, ks, temperature,
    max_new_tokens, batch_size, seed, verifier) and whether to run it."""

    enabled: bool = True  # evaluate before and after training


@dataclass
class DeepSpeedConfig:
    config: str | None = None  # a DeepSpeed JSON file; None = derived from this config (ZeRO-3)
    offload: bool = False  # ZeRO-3 optimizer and parameter offload to CPU


@dataclass
class TrainConfig:
    """The whole run. Its defaults are the embedded default run (`exprl train` with no arguments):
    ExpRL-Outcome with the rubric judge on the hard level (3) from the shipped tiny model, on CPU."""

    name: str = field(default="exprl-outcome-tiny", metadata=CHANGEABLE)  # a plain directory name
    # rl; sft on the references; distill: on-policy self-distillation (the frozen base model, shown the
    # reference solution, is the teacher; per-token advantage logp_teacher - logp_student)
    method: Literal["rl", "sft", "distill"] = "rl"
    seed: int = 0
    # optimizer steps (rl: one rollout batch each; sft: one sft.batch_size batch each)
    steps: int = field(default=40, metadata=CHANGEABLE)
    output_dir: str = field(default="runs", metadata=CHANGEABLE)
    checkpoint_every: int = field(default=20, metadata=CHANGEABLE)  # 0 = only at the end
    # auto: continue from the newest intact checkpoint of runs/<name>; never: refuse an existing run
    # unless overwrite is true (then its directory is emptied first)
    resume: Literal["auto", "never"] = field(default="auto", metadata=CHANGEABLE)
    overwrite: bool = field(default=False, metadata=CHANGEABLE)
    export: bool = field(default=True, metadata=CHANGEABLE)  # Hugging Face export to runs/<name>/export
    progress: bool = field(default=True, metadata=CHANGEABLE)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig, metadata=CHANGEABLE)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    source = "<defaults>"  # not a field: the YAML file `load_config` read, for error messages

    @property
    def run_dir(self) -> pathlib.Path:
        return pathlib.Path(self.output_dir) / self.name


def load_config(path: str | pathlib.Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML config (None = all defaults), apply `key=value` overrides, validate.

    Raises ValueError naming the key and the file for unknown keys, wrong types or bad values,
    and FileNotFoundError for a missing config file.
    """
    source = "<defaults>" if path is None else str(path)
    cfg = from_mapping(TrainConfig, {} if path is None else read_yaml(path), source)
    cfg.source = source
    for item in overrides:
        apply_override(cfg, item)
    validate(cfg, overridden={item.split("=", 1)[0].strip() for item in overrides})
    return cfg


def read_yaml(path: str | pathlib.Path) -> dict[str, Any]:
    """The mapping a YAML config file holds (an empty file is {}); FileNotFoundError for a missing file,
    ValueError naming the file for bad YAML or a top level that is not a mapping."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from e
    if loaded is not None and not isinstance(loaded, dict):
        raise ValueError(f"{path}: the top level must be a mapping of keys, got {type(loaded).__name__}")
    return loaded or {}


def from_mapping(cls: type, raw: dict[str, Any], source: str) -> Any:
    """The config dataclass `cls` built from `raw` (as read from YAML), every key and type checked against
    its annotations: ValueError naming the key and `source` for an unknown or missing key or a wrong type."""
    return _build(cls, raw, prefix="", source=source)


def apply_override(cfg: TrainConfig, item: str) -> None:
    """Set one `dotted.key=value` on `cfg`; the value is parsed as YAML (so `0.1`, `true`, `[1, 8]`)."""
    if "=" not in item:
        raise ValueError(f"override {item!r}: expected key=value, e.g. rollout.group_size=4")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise ValueError(f"override {key}: cannot parse value {text!r}: {e}") from e
    parts = key.strip().split(".")
    node: Any = cfg
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(node):
            raise ValueError(f"override: unknown key {key!r}")
        hints = typing.get_type_hints(type(node))
        if part not in hints:
            raise ValueError(f"override: unknown key {key!r} (valid here: {', '.join(sorted(hints))})")
        if i == len(parts) - 1:
            setattr(node, part, _coerce(hints[part], value, ".".join(parts), "override"))
        else:
            node = getattr(node, part)


def validate(cfg: TrainConfig, overridden: set[str] | frozenset[str] = frozenset()) -> None:
    """Range and consistency checks that types alone do not express; errors name the key and where its
    value came from: "override" for the keys in `overridden`, else the config file (`cfg.source`)."""

    def fail(key: str, why: str) -> None:
        raise ValueError(f"{'override' if key in overridden else cfg.source}: {key}: {why}")

    if cfg.name in ("", ".", "..") or any(c in cfg.name for c in "/\\\0"):
        fail("name", f"must be a plain directory name (not '.', '..', or a path), got {cfg.name!r}")
    if cfg.steps < 1:
        fail("steps", f"must be >= 1, got {cfg.steps}")
    if cfg.checkpoint_every < 0:
        fail("checkpoint_every", f"must be >= 0, got {cfg.checkpoint_every}")
    r, a = cfg.rollout, cfg.algo
    for key, v in (
        ("rollout.prompts_per_step", r.prompts_per_step),
        ("rollout.group_size", r.group_size),
        ("rollout.max_new_tokens", r.max_new_tokens),
        ("algo.ppo_epochs", a.ppo_epochs),
        ("algo.mini_batches", a.mini_batches),
        ("algo.micro_batch_size", a.micro_batch_size),
        ("sft.batch_size", cfg.sft.batch_size),
        ("sft.micro_batch_size", cfg.sft.micro_batch_size),
    ):
        if v < 1:
            fail(key, f"must be >= 1, got {v}")
    if r.temperature <= 0:
        fail("rollout.temperature", f"must be > 0, got {r.temperature}")
    if not 0 < r.top_p <= 1:
        fail("rollout.top_p", f"must be in (0, 1], got {r.top_p}")
    if cfg.reward.timeout_s <= 0:
        fail("reward.timeout_s", f"must be > 0, got {cfg.reward.timeout_s}")
    if not 0 <= cfg.reward.warn_drop_rate <= 1:
        fail("reward.warn_drop_rate", f"must be in [0, 1], got {cfg.reward.warn_drop_rate}")
    names = rewards.reward_names()
    for key, name in (("reward.name", cfg.reward.name), ("reward.sparse", cfg.reward.sparse)):
        if name not in names:
            fail(key, f"unknown reward {name!r}; choose one of {', '.join(names)}")
    _check_reward_options(cfg, fail)
    if cfg.reward.judge_model == "reference":
        if cfg.reward.name != "hf":
            fail(
                "reward.judge_model",
                f"'reference' needs the hf judge (reward.name: hf), not {cfg.reward.name!r}",
            )
        if "path" in cfg.reward.options or "model" in cfg.reward.options:
            fail(
                "reward.options",
                "reward.judge_model: reference grades with the reference engine: no path/model",
            )
    if cfg.reward.mode == "process" and not rewards.is_judge(cfg.reward.name):
        judges = ", ".join(n for n in names if rewards.is_judge(n))
        fail("reward.mode", f"process rewards need a judge ({judges}), not {cfg.reward.name!r}")
    if a.advantage not in advantages.ADVANTAGES:
        choices = ", ".join(sorted(advantages.ADVANTAGES))
        fail("algo.advantage", f"unknown {a.advantage!r}; choose one of {choices}")
    needs_segments = advantages.get(a.advantage).needs_segments
    if advantages.get(a.advantage).needs_groups and r.group_size < 2:
        fail(
            "rollout.group_size",
            f"{a.advantage} normalises within each prompt's samples: it needs >= 2, got {r.group_size}",
        )
    if needs_segments and cfg.reward.mode != "process":
        fail("algo.advantage", f"{a.advantage} needs per-segment scores: set reward.mode: process")
    if not needs_segments and cfg.reward.mode == "process":
        readers = ", ".join(sorted(n for n, e in advantages.ADVANTAGES.items() if e.needs_segments))
        fail("reward.mode", f"process scores need an algo.advantage that reads segments ({readers})")
    for key, value, choices in (
        ("algo.loss_agg", a.loss_agg, kernels.LOSS_AGGS),
        ("algo.kl_estimator", a.kl_estimator, kernels.KL_ESTIMATORS),
        ("algo.loss_backend", a.loss_backend, kernels.BACKENDS),
    ):
        if value not in choices:
            fail(key, f"unknown {value!r}; choose one of {', '.join(choices)}")
    # the ratio's lower bound is 1 - clip_low; at 1 it is 0, which the positive ratio never meets: no lower
    # clip (the published Stage II's symmetric epsilon 4 acts so). Above 1 is a typo, not a setting.
    if not 0 <= a.clip_low <= 1:
        fail("algo.clip_low", f"must be in [0, 1] (1 = no lower clip), got {a.clip_low}")
    if a.clip_high < 0:
        fail("algo.clip_high", f"must be >= 0, got {a.clip_high}")
    if a.dual_clip is not None and a.dual_clip <= 1:
        fail("algo.dual_clip", f"must be > 1 or null, got {a.dual_clip}")
    for key, v in (
        ("algo.kl_coef", a.kl_coef),
        ("algo.entropy_coef", a.entropy_coef),
        ("optim.weight_decay", cfg.optim.weight_decay),
        ("optim.warmup_steps", cfg.optim.warmup_steps),
        ("optim.grad_clip", cfg.optim.grad_clip),
    ):
        if v < 0:
            fail(key, f"must be >= 0, got {v}")
    if a.entropy_target is not None and a.entropy_target <= 0:
        fail("algo.entropy_target", f"must be > 0 or null, got {a.entropy_target}")
    if a.entropy_rate <= 0:
        fail("algo.entropy_rate", f"must be > 0, got {a.entropy_rate}")
    low, high = a.entropy_coef_bounds
    if not 0 <= low <= high:
        fail("algo.entropy_coef_bounds", f"must be [low, high] with 0 <= low <= high, got {[low, high]}")
    if a.entropy_target is not None and not low <= a.entropy_coef <= high:
        fail(
            "algo.entropy_coef", f"the starting coefficient {a.entropy_coef} lies outside entropy_coef_bounds"
        )
    if r.system_prompt is not None and not r.system_prompt.strip():
        fail("rollout.system_prompt", "must be null or non-empty text")
    if cfg.optim.lr <= 0:
        fail("optim.lr", f"must be > 0, got {cfg.optim.lr}")
    check_eval_settings(cfg.eval, lambda key, why: fail(f"eval.{key}", why))
    if cfg.deepspeed.config is not None and not pathlib.Path(cfg.deepspeed.config).is_file():
        fail("deepspeed.config", f"file not found: {cfg.deepspeed.config}")
    if cfg.method == "rl":  # the launcher sets WORLD_SIZE: an uneven split fails before a model loads
        batch_layout(cfg, int(os.environ.get("WORLD_SIZE", "1")))


def _check_reward_options(cfg: TrainConfig, fail) -> None:
    """reward.options must be keyword arguments of the reward's constructor (checked without building it:
    a model judge would load its model)."""
    accepted = set(rewards.reward_options(cfg.reward.name)) - {"mode", "delimiter", "process_context"}
    for key in cfg.reward.options:
        if key not in accepted:
            fail(
                f"reward.options.{key}",
                f"not an option of reward {cfg.reward.name!r} "
                f"(it takes: {', '.join(sorted(accepted))}; mode, delimiter and process_context are "
                "reward.mode, reward.delimiter and reward.process_context)",
            )
    for key in rewards.required_options(cfg.reward.name):
        if key not in cfg.reward.options and key not in ("mode", "delimiter"):
            fail(f"reward.options.{key}", f"required by reward {cfg.reward.name!r}; set it")
    if rewards.required_options(cfg.reward.sparse):
        needs = ", ".join(rewards.required_options(cfg.reward.sparse))
        fail(
            "reward.sparse",
            f"{cfg.reward.sparse!r} needs options ({needs}); the verifier is built without any",
        )


def batch_layout(cfg: TrainConfig, world_size: int) -> tuple[int, int]:
    """(sequences per rank per optimizer step, gradient accumulation steps) for an RL run on `world_size`
    ranks; ValueError naming the config file when the rollout batch does not split evenly."""
    source = cfg.source
    total = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    if cfg.rollout.prompts_per_step % world_size:
        raise ValueError(
            f"{source}: rollout.prompts_per_step={cfg.rollout.prompts_per_step} must be a multiple of the "
            f"world size {world_size}"
        )
    per_rank = total // world_size
    mini, micro = cfg.algo.mini_batches, cfg.algo.micro_batch_size
    if per_rank % (mini * micro):
        raise ValueError(
            f"{source}: each rank holds {per_rank} rollouts per step (prompts_per_step*group_size/world), "
            f"which must be a multiple of algo.mini_batches*algo.micro_batch_size = {mini * micro}"
        )
    return per_rank // mini, per_rank // (mini * micro)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML-ready data (tuples become lists)."""
    out = dataclasses.asdict(cfg)

    def plain(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return plain(out)


def save_config(cfg: TrainConfig, path: str | pathlib.Path) -> None:
    pathlib.Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def changes_on_resume(saved: dict[str, Any], cfg: TrainConfig, where: str) -> dict[str, list[Any]]:
    """{dotted key: [saved value, new value]} for every key whose value in `cfg` differs from `saved` (the
    config a checkpoint at `where` ran with, as `to_dict` wrote it). Keys that only one of them has (a
    newer or older exprl) are no change. A changed key that is not CHANGEABLE is a ValueError listing them
    all, naming the config file."""
    new_values = to_dict(cfg)
    changed: dict[str, list[Any]] = {}
    for key in _leaf_keys(cfg):
        old, new = saved, new_values
        for part in key.split("."):
            if not isinstance(old, dict) or part not in old:
                break
            old, new = old[part], new[part]
        else:
            if old != new:
                changed[key] = [old, new]
    fixed = [k for k in changed if not _is_changeable(cfg, k)]
    if fixed:
        listed = ", ".join(f"{k} ({changed[k][0]!r} -> {changed[k][1]!r})" for k in fixed)
        raise ValueError(
            f"{cfg.source}: cannot resume {where} with {listed}: these keys are fixed for a run's life. "
            "Set them back, or start a new run: another name=, or resume=never overwrite=true"
        )
    return changed


def _leaf_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted names of the fields of a config tree that are not themselves dataclasses."""
    keys = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        keys += (
            _leaf_keys(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [prefix + f.name]
        )
    return keys


def _is_changeable(cfg: TrainConfig, dotted: str) -> bool:
    """Whether `dotted` (e.g. "optim.lr", "eval.n") is, or lies under, a CHANGEABLE field."""
    node: Any = cfg
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(node):
            return False
        spec = {f.name: f for f in dataclasses.fields(node)}.get(part)
        if spec is None:
            return False
        if spec.metadata.get("changeable_on_resume"):
            return True
        node = getattr(node, part)
    return False


def _build(cls: type, raw: dict[str, Any], prefix: str, source: str) -> Any:
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: {prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    fields = [f for f in dataclasses.fields(cls) if f.init]
    hints = {name: tp for name, tp in typing.get_type_hints(cls).items() if name in {f.name for f in fields}}
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        raise ValueError(
            f"{source}: unknown key {prefix + unknown[0]!r} (valid here: {', '.join(sorted(hints))})"
        )
    missing = [
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in raw
    ]
    if missing:
        raise ValueError(f"{source}: missing key {prefix + missing[0]!r}")
    values = {k: _coerce(hints[k], v, prefix + k, source) for k, v in raw.items()}
    return cls(**values)


def _coerce(tp: Any, value: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `tp` and convert where lossless (int -> float, list -> tuple)."""

    def bad(expected: str) -> ValueError:
        return ValueError(f"{source}: {key}: expected {expected}, got {value!r} ({type(value).__name__})")

    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".", source)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key, source)
    if origin is Literal:
        if value not in args:
            raise bad("one of " + ", ".join(repr(a) for a in args))
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad("a list")
        return [_coerce(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise bad(f"a list of {len(args)} values")
        return tuple(
            _coerce(t, v, f"{key}[{i}]", source) for i, (t, v) in enumerate(zip(args, value, strict=True))
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise bad("a mapping")
        if any(not isinstance(k, str) for k in value):
            raise bad("a mapping with string keys")
        return {k: _coerce(args[1], v, f"{key}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads "1e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if tp is pathlib.Path:
        if not isinstance(value, str) or not value:
            raise bad("a path")
        return pathlib.Path(value)
    if tp is Any:
        return value
    raise TypeError(f"config field {key} has an unsupported annotation {tp!r}")
