"""DeepSpeed plumbing: process group and the collectives the loops share, seeding, policy loading, ZeRO-3
config derivation and engine construction.

Everything DeepSpeed-specific that the loops need lives here so `loop.py` and `sft.py` read as algorithms.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import pathlib
import random
import socket
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from exprl.errors import RunError
from exprl.models import default_attn_implementation, load_model_and_tokenizer
from exprl.train.config import TrainConfig


def on_cuda() -> bool:
    return torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu"


def init_distributed() -> tuple[int, int]:
    """Join (or create) the process group; returns (rank, world_size).

    Under the `deepspeed` launcher the rank variables are already set. A plain `exprl train` has none,
    so it becomes a world of one on a free local port. CPU runs use gloo (DS_ACCELERATOR=cpu).
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import deepspeed

    if not torch.distributed.is_initialized():
        with _without_shm_comm_op():
            deepspeed.init_distributed(dist_backend="nccl" if on_cuda() else "gloo")
    if on_cuda():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


@contextlib.contextmanager
def _without_shm_comm_op() -> Iterator[None]:
    """DeepSpeed's CPU backend JIT-compiles its shared-memory all-reduce op when it starts (about 30 s
    on a 2-core box whenever the torch extensions cache holds no build for this environment). Only
    DeepSpeed-Inference's `inference_all_reduce` uses it, which ZeRO-3 training never calls: skip it."""
    import importlib

    # by module path: the attribute `deepspeed.comm.torch` is the torch package
    backend = importlib.import_module("deepspeed.comm.torch")
    build = getattr(backend, "build_shm_op", None)
    if build is None:
        yield
        return
    backend.build_shm_op = lambda: None
    try:
        yield
    finally:
        backend.build_shm_op = build


def close_distributed() -> None:
    """Leave the process group before the interpreter exits (a process-level entry point calls this once):
    gloo's worker threads torn down by interpreter exit instead can abort a rank after a finished run."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def gather_sum(local: dict[str, float]) -> dict[str, float]:
    """Per-key sums over ranks of a dict of floats whose keys may differ between ranks."""
    everyone: list[dict[str, float]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(everyone, local)
    out: dict[str, float] = {}
    for counts in everyone:
        for key, value in counts.items():
            out[key] = out.get(key, 0.0) + value
    return out


def global_sum(values: list[float]) -> list[float]:
    """Element-wise sum over ranks of a few floats (one all-reduce, float64 for exact counts)."""
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.get_world_size() > 1:
        dist.all_reduce(t)
    return [float(v) for v in t]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (model initialisation, dropout)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_dtype(name: str) -> torch.dtype:
    """ "auto" = bf16 on CUDA devices that support it, else fp32 (CPU training stays in fp32)."""
    if name == "auto":
        return torch.bfloat16 if on_cuda() and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_policy(cfg: TrainConfig) -> tuple[torch.nn.Module, Any]:
    """The policy model and tokenizer from `cfg.model` (the shipped "tiny" or any local HF causal LM)."""
    attn = cfg.model.attn_implementation
    if attn == "auto":
        attn = default_attn_implementation("cuda" if on_cuda() else "cpu")
    model, tokenizer = load_model_and_tokenizer(
        cfg.model.path, resolve_dtype(cfg.model.dtype), attn, key="model.path"
    )
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return model, tokenizer


def deepspeed_config(
    cfg: TrainConfig, micro_batch_size: int, grad_accum: int, world_size: int, with_optimizer: bool = True
) -> dict[str, Any]:
    """The DeepSpeed config for `cfg`: ZeRO-3 always, bf16/fp16 matching the model dtype, our optimizer
    and warmup schedule. A user JSON (`deepspeed.config`) wins, with batch sizes filled from ours."""
    if cfg.deepspeed.config is not None:
        ds = json.loads(pathlib.Path(cfg.deepspeed.config).read_text())
        if ds.get("zero_optimization", {}).get("stage", 3) != 3:
            raise ValueError(
                f"{cfg.deepspeed.config}: zero_optimization.stage must be 3 (exprl is ZeRO-3 only)"
            )
    else:
        dtype = resolve_dtype(cfg.model.dtype)
        zero: dict[str, Any] = {
            "stage": 3,
            "overlap_comm": on_cuda(),
            "contiguous_gradients": True,
            "stage3_gather_16bit_weights_on_model_save": True,
            # else DeepSpeed swaps its own linear (an autograd.Function) in for torch's F.linear, process
            # wide: the same forward and gradients (the default run's metrics are bit-identical), but its
            # per-call overhead is 30% of the CPU time of sampling the tiny model (rollouts and evaluation)
            "memory_efficient_linear": False,
        }
        if cfg.deepspeed.offload:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_cuda()}
            zero["offload_param"] = {"device": "cpu", "pin_memory": on_cuda()}
        ds = {
            "zero_optimization": zero,
            "bf16": {"enabled": dtype == torch.bfloat16},
            "fp16": {"enabled": dtype == torch.float16},
            "gradient_clipping": cfg.optim.grad_clip,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        if with_optimizer:
            ds["optimizer"] = {
                "type": "AdamW",
                "params": {
                    "lr": cfg.optim.lr,
                    "betas": list(cfg.optim.betas),
                    "eps": cfg.optim.eps,
                    "weight_decay": cfg.optim.weight_decay,
                    # torch's AdamW: no JIT-compiled fused/CPU Adam op needed on any machine
                    "torch_adam": True,
                },
            }
        if with_optimizer and cfg.optim.warmup_steps > 0:
            # DeepSpeed's linear warmup: lr grows from 0 (first update) to optim.lr over warmup_steps updates
            ds["scheduler"] = {
                "type": "WarmupLR",
                "params": {
                    "warmup_min_lr": 0.0,
                    "warmup_max_lr": cfg.optim.lr,
                    "warmup_num_steps": cfg.optim.warmup_steps,
                    "warmup_type": "linear",
                },
            }
    ds["train_micro_batch_size_per_gpu"] = micro_batch_size
    ds["gradient_accumulation_steps"] = grad_accum
    ds["train_batch_size"] = micro_batch_size * grad_accum * world_size
    if not with_optimizer:
        ds.pop("optimizer", None)
        ds.pop("scheduler", None)
    return ds


def apply_lr(engine: Any, cfg: TrainConfig) -> None:
    """Make `optim.lr` and `optim.warmup_steps` of `cfg` the ones in force after a checkpoint restored the
    optimizer with its saved learning rate: the warmup schedule recomputes the rate at its restored
    iteration (its peak is `cfg`'s), and without one every parameter group gets `optim.lr`. A user's
    DeepSpeed JSON (`deepspeed.config`) sets its own rates and is left alone."""
    if cfg.deepspeed.config is not None:
        return
    if engine.lr_scheduler is not None:
        engine.lr_scheduler.step(engine.lr_scheduler.last_batch_iteration)
    else:
        for group in engine.optimizer.param_groups:
            group["lr"] = cfg.optim.lr


def build_engine(model: torch.nn.Module, ds_config: dict[str, Any], trainable: bool = True) -> Any:
    """A DeepSpeed ZeRO-3 engine around `model`; `trainable=False` builds the frozen reference
    (sharded the same way, no optimizer, eval mode, no gradients)."""
    import deepspeed

    if trainable:
        engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
        return engine
    model.requires_grad_(False)
    engine, *_ = deepspeed.initialize(model=model, config=ds_config)
    engine.eval()
    return engine


# config attributes of Hugging Face models that transform the logits after the lm_head (soft-capping,
# scaling): the fused linear loss does not apply them, so such a model keeps the logits path
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def fused_linear_head(model: torch.nn.Module, setting: str | bool, key: str = "algo.fused_linear") -> bool:
    """Whether the loss takes the final hidden states and the lm_head (`linear_entropy_pg_loss`) instead
    of logits, by `setting`: "auto" when the model allows it, True demands it (ValueError naming `key`
    when it does not), False never.

    A model allows it when its output layer is a plain `torch.nn.Linear` (tied to the input embeddings or
    not), its forward takes Hugging Face's `logits_to_keep` (`through_head` selects rows with it), and its
    config transforms no logits after the lm_head.
    """
    if setting is False:
        return False
    head = model.get_output_embeddings()
    reason = None
    if type(head) is not torch.nn.Linear:
        reason = f"its output layer is {type(head).__name__}, not a plain torch.nn.Linear"
    elif "logits_to_keep" not in inspect.signature(model.forward).parameters:
        reason = f"{type(model).__name__}.forward takes no logits_to_keep"
    else:
        transforms = [a for a in _LOGIT_TRANSFORMS if getattr(model.config, a, None) not in (None, 1, 1.0)]
        if transforms:
            reason = f"its config transforms the logits after the lm_head ({', '.join(transforms)})"
    if reason is not None and setting is True:
        raise ValueError(f"{key}: true needs a plain linear lm_head, but {reason}")
    return reason is None


def through_head(
    engine: Any, batch: Any, positions: Tensor, op: Callable[[Tensor, Tensor, Tensor | None], Tensor]
) -> Tensor:
    """The forward of `engine` (a DeepSpeed engine, or a bare Hugging Face model) for `batch` (a padded
    `TrainingBatch`) with `op(hidden, weight, bias)` in place of its lm_head's forward: `hidden` (R, H) are
    the final hidden states of the R positions where `positions` (B, L) bool is True, in (b, t) order
    (`logits_to_keep=positions` makes the model select them), `weight` and `bias` the lm_head's; no logits
    are computed. Returns the tensor `op` returned, as the model returns it in place of the logits.

    `op` runs inside the lm_head module's own call, so DeepSpeed's ZeRO-3 hooks on the lm_head treat it as
    the head's forward: the weight (and bias) are gathered before `op` and partitioned again after it,
    gathered again when the backward reaches the returned tensor, so that the gradient `op` gives the weight
    is accumulated while the weight is whole and DeepSpeed's gradient hook reduces it into this rank's
    partition (a tied lm_head, the input embedding, sums it with the embedding's first). The loss must
    therefore be built from the returned tensor, which carries those backward hooks, not from anything
    `op` kept aside.
    """
    model = getattr(engine, "module", engine)
    head = model.get_output_embeddings()
    calls = 0

    def forward(hidden: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        return op(hidden, head.weight, head.bias)

    shadowed = vars(head).get("forward")  # a forward set on the instance (by another library) comes back
    head.forward = forward
    try:
        out = engine(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            logits_to_keep=positions,
        )
    finally:
        if shadowed is None:
            del head.forward
        else:
            head.forward = shadowed
    if calls != 1:
        raise RunError(
            f"{type(model).__name__}.forward called its lm_head {calls} times, not once: the fused linear "
            "path (algo.fused_linear) cannot run the loss in its place; set algo.fused_linear=false"
        )
    return out.logits
