"""exprl's loss and rewards inside TRL's `GRPOTrainer` (TRL 1.16; `pip install 'exprl[trl]'`).

    from exprl.integrations.trl import ExpRLGRPOTrainer, exprl_reward

    trainer = ExpRLGRPOTrainer(
        model="path/to/model",
        reward_funcs=exprl_reward("rubric"),          # grades against the dataset's "reference" column
        args=GRPOConfig(..., entropy_coef=1e-3),     # TRL's own options, same meaning
        train_dataset=dataset,                       # columns "prompt", "reference", "answer"
    )

`ExpRLGRPOTrainer` overrides one step of TRL's trainer, `_compute_loss`: the model's logits over the
completion (B, T+1, V) go into `exprl.kernels.entropy_pg_loss`, and TRL's options map onto the
op's (`loss_options`). Generation, rewards, reference model, optimiser and logging stay TRL's.

What TRL's loss has that exprl's does not is refused with an error naming the option. What exprl
adds: the entropy bonus aggregated like the policy term (TRL takes its entropy term as a token mean
whatever `loss_type`), and per-token advantages from reward functions whose `granularity` is
"token" (one advantage per completion token) or "segment" (one score per segment of the completion
at `delimiter`, turned into ExpRL-Process advantages by `exprl.batching.segment_advantages`).

`exprl_reward` wraps an exprl reward source (verifier or judge) as a TRL reward function: the
reference solution comes from a dataset column, which TRL passes to reward functions only, never to
the policy. An ungraded rollout (the judge failed) is returned as None, which TRL treats as a missing
reward, and counted in the `<name>/ungraded` metric.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

try:
    from trl import GRPOConfig, GRPOTrainer
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError("exprl.integrations.trl needs TRL: pip install 'exprl[trl]'") from error

from exprl.batching import segment_advantages
from exprl.data import SEGMENT_DELIMITER, Problem
from exprl.kernels import BACKENDS, entropy_pg_loss
from exprl.rewards import RewardSource, Rollout, build_reward, token_segment_ids

# TRL loss_type -> exprl loss_agg with the same normalisation (up to rows with no token; see README).
LOSS_AGG_OF_LOSS_TYPE = {
    "grpo": "seq-mean-token-mean",
    "bnpo": "token-mean",
    "dapo": "token-mean",  # normalised by the tokens of the accumulated global batch (norm_tokens)
    "dr_grpo": "seq-mean-token-sum-norm",  # the constant is max_completion_length
}
_UNMAPPED_LOSS_TYPES = {
    "cispo": "it clips the importance weight itself, a different objective from the PPO clip",
    "sapo": "it replaces the hard clip by a soft gate",
    "vespo": "it weights whole sequences by a gamma function of the sequence ratio",
    "luspo": "it needs sequence-level importance sampling",
}
# Segment advantage modes that need no statistics across a group (a group may span processes in TRL).
SEGMENT_MODES = ("delta", "end")
GRANULARITIES = ("response", "token", "segment")
_VISION_INPUTS = ("pixel_values", "image_grid_thw", "pixel_attention_mask", "image_sizes", "token_type_ids")


def loss_options(args: GRPOConfig) -> dict[str, Any]:
    """The `entropy_pg_loss` options that mean what `args` means to TRL's GRPO loss.

    beta -> kl_coef (k3), epsilon / epsilon_high -> clip_low / clip_high, delta -> dual_clip,
    loss_type -> loss_agg, temperature, entropy_coef. Raises ValueError naming the GRPOConfig field
    for settings exprl's loss cannot reproduce.
    """
    if args.loss_type in _UNMAPPED_LOSS_TYPES:
        raise ValueError(
            f"GRPOConfig.loss_type={args.loss_type!r} has no exprl equivalent: "
            f"{_UNMAPPED_LOSS_TYPES[args.loss_type]}; use one of {sorted(LOSS_AGG_OF_LOSS_TYPE)}"
        )
    if args.loss_type not in LOSS_AGG_OF_LOSS_TYPE:
        raise ValueError(
            f"GRPOConfig.loss_type={args.loss_type!r} is unknown; use one of {sorted(LOSS_AGG_OF_LOSS_TYPE)}"
        )
    refused = {
        "importance_sampling_level": (
            args.importance_sampling_level != "token",
            "exprl's ratio is per token; set importance_sampling_level='token'",
        ),
        "top_entropy_quantile": (
            args.top_entropy_quantile != 1.0,
            "exprl's loss has no high-entropy token mask; set top_entropy_quantile=1.0",
        ),
        "off_policy_mask_threshold": (
            args.off_policy_mask_threshold is not None,
            "exprl's loss has no off-policy sequence mask; set off_policy_mask_threshold=None",
        ),
        "use_adaptive_entropy": (
            args.use_adaptive_entropy,
            "exprl's entropy_coef is fixed; set use_adaptive_entropy=False",
        ),
        "vllm_importance_sampling_correction": (
            args.use_vllm and args.vllm_importance_sampling_correction,
            "exprl's loss has no vLLM importance-sampling weight; set it to False",
        ),
        "use_bias_correction_kl": (
            args.beta != 0.0 and args.use_bias_correction_kl,
            "it weights TRL's KL term by the importance ratio, exprl's k3 KL term is unweighted; "
            "set use_bias_correction_kl=False",
        ),
    }
    for field, (is_refused, why) in refused.items():
        if is_refused:
            raise ValueError(f"GRPOConfig.{field}={getattr(args, field)!r} is not supported by exprl: {why}")
    if args.beta < 0:
        raise ValueError(f"GRPOConfig.beta must be >= 0, got {args.beta}")
    clip_high = args.epsilon if args.epsilon_high is None else args.epsilon_high
    if args.delta is not None and args.delta <= 1 + clip_high:
        # above 1 + epsilon_high TRL's delta bounds only negative-advantage tokens: exprl's dual clip
        raise ValueError(
            f"GRPOConfig.delta={args.delta} must be > 1 + epsilon_high = {1 + clip_high} to act as exprl's "
            "dual clip"
        )
    return {
        "temperature": args.temperature,
        "clip_low": args.epsilon,
        "clip_high": clip_high,
        "dual_clip": args.delta,
        "kl_coef": args.beta,
        "kl_estimator": "k3",
        "entropy_coef": args.entropy_coef,
        "loss_agg": LOSS_AGG_OF_LOSS_TYPE[args.loss_type],
    }


def _granularity(func: Callable) -> str:
    granularity = getattr(func, "granularity", "response")
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"reward function {getattr(func, '__name__', func)!r} has granularity {granularity!r}; "
            f"use one of {GRANULARITIES}"
        )
    return granularity


class _DenseRewardColumn:
    """Stands in for a per-token or per-segment reward function inside TRL's reward loop.

    TRL expects one float per completion, so the column reports 0.0 for a graded completion (adding
    nothing to the rewards TRL normalises per group) and None for an ungraded one; the scores
    themselves are kept in `scores` for the trainer to turn into per-token advantages.
    """

    def __init__(self, func: Callable, name: str) -> None:
        self.func = func
        self.name = name
        self.granularity = func.granularity
        self.delimiter = getattr(func, "delimiter", SEGMENT_DELIMITER)
        self.scores: list[list[float] | None] = []
        self.completion_ids: list[list[int]] = []

    def __call__(self, *, completions: list, completion_ids: list[list[int]], **kwargs) -> list[float | None]:
        scores = self.func(completions=completions, completion_ids=completion_ids, **kwargs)
        if len(scores) != len(completions):
            raise ValueError(
                f"reward function {self.name!r} returned {len(scores)} entries "
                f"for {len(completions)} completions"
            )
        for index, score in enumerate(scores):
            if score is not None and not isinstance(score, Sequence):
                raise TypeError(
                    f"reward function {self.name!r} has granularity {self.granularity!r} and must return a "
                    f"list of floats (or None) per completion; completion {index} got {type(score).__name__}"
                )
            if score is not None and self.granularity == "token" and len(score) != len(completion_ids[index]):
                raise ValueError(
                    f"reward function {self.name!r} returned {len(score)} token scores for completion "
                    f"{index}, which has {len(completion_ids[index])} tokens"
                )
        self.scores = [None if s is None else [float(x) for x in s] for s in scores]
        self.completion_ids = completion_ids
        return [None if s is None else 0.0 for s in scores]


class ExpRLGRPOTrainer(GRPOTrainer):
    """TRL's `GRPOTrainer` with exprl's fused loss and per-token advantages.

    Takes GRPOTrainer's arguments, plus:
      loss_backend: `entropy_pg_loss`'s backend ("auto": Triton on CUDA, the fused torch path on CPU).
      segment_advantage: how per-segment scores become token advantages, "delta" (ExpRL's DeltaNorm:
        a_1 = s_1 - s_T, a_t = s_t - s_{t-1}) or "end" (a_t = s_t - s_T, the last segment s_T).
    Logs exprl's loss stats as exprl/clip_frac, exprl/kl, exprl/entropy, exprl/ratio.
    """

    def __init__(
        self,
        model: Any,
        reward_funcs: Any = None,
        args: GRPOConfig | None = None,
        *trainer_args: Any,
        loss_backend: str = "auto",
        segment_advantage: str = "delta",
        **trainer_kwargs: Any,
    ) -> None:
        if loss_backend not in BACKENDS:
            raise ValueError(f"loss_backend must be one of {BACKENDS}, got {loss_backend!r}")
        if segment_advantage not in SEGMENT_MODES:
            raise ValueError(
                f"segment_advantage must be one of {SEGMENT_MODES} (no group statistics), "
                f"got {segment_advantage!r}"
            )
        if args is not None:
            loss_options(args)  # refuse before TRL loads models
        for func in reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]:
            if func is not None:
                _granularity(func)
        super().__init__(model, reward_funcs, args, *trainer_args, **trainer_kwargs)
        self.loss_backend = loss_backend
        self.segment_advantage = segment_advantage
        self.exprl_loss_options = loss_options(self.args)
        if self.aux_loss_enabled:
            raise ValueError(
                "the model's router auxiliary loss (MoE) is not supported by ExpRLGRPOTrainer; "
                "set router_aux_loss_coef=0 in its config"
            )
        self.dense_reward_columns: dict[int, _DenseRewardColumn] = {}
        for index, func in enumerate(self.reward_funcs):
            if _granularity(func) != "response":
                column = _DenseRewardColumn(func, self.reward_func_names[index])
                self.reward_funcs[index] = column
                self.dense_reward_columns[index] = column

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        if self.dense_reward_columns:
            output["advantages"] = self._token_advantages(output)
        return output

    def _token_advantages(self, output: dict[str, Any]) -> torch.Tensor:
        """(B, T) advantages: TRL's per-sequence advantage of the response-level rewards plus, for each
        per-token or per-segment reward function, its weight times that function's token advantages.
        An ungraded completion gets no advantage from that function."""
        completion_ids = output["completion_ids"]
        batch, length = completion_ids.shape
        advantages = output["advantages"].float()[:, None].expand(batch, length).clone()
        mode = "train" if self.model.training else "eval"
        for index, column in self.dense_reward_columns.items():
            weight = float(self.reward_weights[index])
            rows = [(b, s) for b, s in enumerate(column.scores) if s is not None]
            if column.granularity == "token":
                for b, scores in rows:
                    advantages[b, : len(scores)] += weight * torch.tensor(scores, device=advantages.device)
            else:
                segment_ids = torch.full((batch, length), -1, dtype=torch.long)
                segment_scores = [torch.zeros(1) for _ in range(batch)]
                for b, scores in rows:
                    ids = torch.tensor(column.completion_ids[b], dtype=torch.long)
                    row_segments = token_segment_ids(ids, self._tokenizer, column.delimiter)
                    needed = int(row_segments.max()) + 1 if len(ids) else 0
                    if needed > len(scores):
                        raise ValueError(
                            f"reward function {column.name!r} returned {len(scores)} segment scores for "
                            f"completion {b}, whose tokens lie in {needed} segments at {column.delimiter!r}"
                        )
                    segment_ids[b, : len(ids)] = row_segments
                    segment_scores[b] = torch.tensor(scores, dtype=torch.float32)
                token_adv = segment_advantages(segment_ids, segment_scores, mode=self.segment_advantage)
                advantages += weight * token_adv.to(advantages.device)
            means = [sum(s) / len(s) for _, s in rows if s]
            if means:  # TRL logged the 0.0 placeholders; log the scores themselves
                mean = sum(means) / len(means)
                self._metrics[mode][f"rewards/{column.name}/mean"][-1] = mean
                std = (sum((m - mean) ** 2 for m in means) / max(len(means) - 1, 1)) ** 0.5
                self._metrics[mode][f"rewards/{column.name}/std"][-1] = std
        return advantages

    def _compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        vision = [key for key in _VISION_INPUTS if inputs.get(key) is not None]
        if vision:
            raise ValueError(f"ExpRLGRPOTrainer trains text-only models; the batch has {vision}")
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        length = completion_ids.size(1)
        with self.accelerator.autocast():
            # the last prompt position predicts the first completion token: T + 1 positions
            logits = model(
                input_ids=torch.cat([prompt_ids, completion_ids], dim=1),
                attention_mask=torch.cat([prompt_mask, completion_mask], dim=1),
                logits_to_keep=length + 1,
                use_cache=False,
            ).logits
        mode = "train" if self.model.training else "eval"
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1
        normalisation: dict[str, Any] = {}
        if self.loss_type == "dapo":
            # TRL's dapo normaliser: the tokens of the generation batch, rescaled to one accumulation window
            tokens = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if mode == "train":
                tokens = tokens * accumulation / self.args.steps_per_generation
            normalisation["norm_tokens"] = tokens
            accumulation = 1
        elif self.loss_type == "dr_grpo":
            normalisation["max_len"] = self.max_completion_length
        out = entropy_pg_loss(
            logits,  # (B, T+1, V) as the model returns them, read in place; the last position is ignored
            completion_ids,
            inputs["advantages"],
            mask=mask.bool(),
            old_logprobs=inputs.get("old_per_token_logps"),
            ref_logprobs=inputs.get("ref_per_token_logps") if self.beta != 0.0 else None,
            backend=self.loss_backend,
            **self.exprl_loss_options,
            **normalisation,
        )
        for name, value in out.stats.items():
            self._metrics[mode][f"exprl/{name}"].append(
                self.accelerator.gather(value.reshape(1)).mean().item()
            )
        self._metrics[mode]["entropy"].append(self._metrics[mode]["exprl/entropy"][-1])
        if self.beta != 0.0:
            self._metrics[mode]["kl"].append(self._metrics[mode]["exprl/kl"][-1])
        return out.loss / accumulation


def _text(message: Any) -> str:
    """The text of a TRL prompt or completion: a string, or the content of its last message."""
    if isinstance(message, str):
        return message
    content = message[-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content)


class TRLReward:
    """An exprl reward source as a TRL reward function (see `exprl_reward`)."""

    def __init__(self, source: RewardSource, reference_column: str | None, answer_column: str | None) -> None:
        self.source = source
        self.reference_column = reference_column
        self.answer_column = answer_column
        self.__name__ = source.name
        self.granularity = "segment" if source.granularity == "segment" else "response"
        self.delimiter = getattr(source, "delimiter", SEGMENT_DELIMITER)

    def _column(self, column: str | None, columns: dict[str, Any], size: int) -> list[str]:
        if column is None:
            return [""] * size
        if column not in columns:
            available = sorted(k for k in columns if k not in ("trainer_state", "log_extra", "log_metric"))
            raise ValueError(
                f"reward {self.__name__!r} reads the dataset column {column!r}, which the dataset lacks; "
                f"its columns: {available}"
            )
        return [str(value) for value in columns[column]]

    def __call__(
        self, prompts: list, completions: list, log_metric: Callable | None = None, **columns: Any
    ) -> list[float | list[float] | None]:
        references = self._column(self.reference_column, columns, len(prompts))
        answers = self._column(self.answer_column, columns, len(prompts))
        rollouts = [
            Rollout(Problem(id=str(i), prompt=_text(p), answer=a, reference=r), _text(c))
            for i, (p, c, r, a) in enumerate(zip(prompts, completions, references, answers, strict=True))
        ]
        scores = self.source.score(rollouts)
        if log_metric is not None:
            log_metric(f"{self.__name__}/ungraded", float(sum(s is None for s in scores)))
        return scores


def exprl_reward(
    source: str | RewardSource,
    *,
    reference_column: str | None = "reference",
    answer_column: str | None = "answer",
    **options: Any,
) -> TRLReward:
    """A TRL reward function grading with the exprl reward `source`.

    source: a name of `exprl.rewards.REWARDS` ("exact", "math", "python", "rubric", "hf", "http"),
      built with `options` (e.g. mode="process", base_url=..., path=...), or a RewardSource.
    reference_column / answer_column: the dataset columns holding the hidden reference solution and
      the final answer (None: the source does not need it). TRL passes dataset columns to reward
      functions only; the policy sees the "prompt" column alone.
    Returns per completion a float in [0, 1], a list of per-segment floats (process judges: the
    trainer turns them into per-token advantages), or None when the source could not grade it.
    """
    if isinstance(source, str):
        source = build_reward(source, **options)
    elif options:
        raise TypeError(f"options {sorted(options)} apply when source is a name, not a built source")
    if not isinstance(source, RewardSource):
        raise TypeError(f"source must be a reward name or a RewardSource, got {type(source).__name__}")
    return TRLReward(source, reference_column, answer_column)
