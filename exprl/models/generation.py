"""Batched sampling of G completions per prompt from any Hugging Face causal LM.

Used by the trainer's rollout and by evaluation. Sampling is plain ancestral sampling from
``softmax(logits / temperature)`` (optionally nucleus-truncated by ``top_p``): the model's own
generation defaults (top-k, repetition penalty, ...) are deliberately ignored so the sampling
distribution is the one the RL loss assumes.

How a call runs (one batched decode for all prompts x samples, or ``batch_size`` rows at a time):
* each prompt is run forward once (left-padded with `exprl.batching.pad_sequences`), and its KV cache is
  then expanded to its G rows, so a group shares its prefill;
* every row draws its token by inverse-CDF sampling with one uniform number per step from its own random
  stream, seeded from (prompt seed, sample index): the response of a row does not depend on which other
  rows share its batch, on the batch size or on the rank that samples it;
* rows that emitted an eos token stop costing: once a quarter of the batch has finished, the finished rows
  are cut out of the batch and of the KV cache (`compact_fraction`);
* on request (``with_entropy``), the entropy of the distribution each response token was drawn from comes
  from the same logits, so an evaluation needs no second forward over the responses;
* the output rows are cut at their first eos by `exprl.batching.split_generation` (the compiled op).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, StaticLayer

from exprl import batching
from exprl.kernels import logprobs_and_entropy


@dataclass
class Sample:
    """One completion of prompt ``prompt_index``.

    ``prompt_ids``: int64 [P], the prompt's tokens without padding. ``response_ids``: int64 [R], the
    generated tokens without padding, ending with the eos token when the model stopped by itself.
    ``text``: the decoded response, special tokens skipped. ``truncated``: stopped at
    ``max_new_tokens`` without emitting eos. ``entropy``: float32 [R] when asked for (``with_entropy``),
    the entropy of softmax(logits / temperature) at each response token.
    """

    prompt_index: int
    prompt_ids: torch.Tensor
    response_ids: torch.Tensor
    text: str
    truncated: bool
    entropy: torch.Tensor | None = None


@dataclass
class DecodeStats:
    """What a sampling call cost. ``decode_positions``: rows x steps the decoder ran after the prefill;
    ``wasted_positions``: of them, rows that had already finished (kept in the batch until the next
    compaction, or to keep ranks in step); ``sampled_tokens``: response tokens returned."""

    sampled_tokens: int = 0
    decode_positions: int = 0
    wasted_positions: int = 0

    @property
    def wasted_share(self) -> float:
        return self.wasted_positions / max(self.decode_positions, 1)

    def add(self, other: DecodeStats) -> None:
        self.sampled_tokens += other.sampled_tokens
        self.decode_positions += other.decode_positions
        self.wasted_positions += other.wasted_positions


def stream_seed(*key: int) -> int:
    """A 63-bit seed for the random stream named by `key` (stable across processes and platforms)."""
    digest = hashlib.sha256(("exprl-sample:" + ":".join(str(int(k)) for k in key)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("tokenizer: neither it nor the model's generation config defines an eos token")
    return [eos] if isinstance(eos, int) else list(eos)


def _check_sampling(num_samples, max_new_tokens, temperature, top_p, batch_size, compact_fraction) -> None:
    for name, value in (("num_samples", num_samples), ("max_new_tokens", max_new_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    bad_batch = isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    if batch_size is not None and bad_batch:
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if not 0 < compact_fraction <= 1:
        raise ValueError(f"compact_fraction must be in (0, 1], got {compact_fraction!r}")


def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    num_samples: int,
    **options,
) -> list[Sample]:
    """`sample_with_stats` without the cost: the samples alone. `options` are its keyword arguments."""
    return sample_with_stats(model, tokenizer, prompts, num_samples, **options)[0]


def sample_with_stats(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    num_samples: int,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    batch_size: int | None = None,
    generator_seed: int | None = None,
    prompt_seeds: Sequence[int] | None = None,
    compact_fraction: float = 0.25,
    compile_decoding: bool = False,
    with_entropy: bool = False,
) -> tuple[list[Sample], DecodeStats]:
    """Generate ``num_samples`` completions for each prompt, returned prompt-major (all samples of
    prompt 0, then prompt 1, ...), so sample ``i`` belongs to prompt ``i // num_samples``; and what it
    cost (`DecodeStats`).

    Rows are decoded ``batch_size`` at a time (default: all at once). Sample ``j`` of prompt ``i`` draws
    from the stream ``stream_seed(prompt_seeds[i], j)`` when ``prompt_seeds`` is given, else
    ``stream_seed(stream_seed(generator_seed, i), j)``; without either, the base seed is drawn from
    torch's global RNG. The caller's RNG state is left alone when a seed is given. ``greedy`` ignores
    ``temperature`` and ``top_p``; ``compact_fraction``, ``compile_decoding`` and ``with_entropy`` as in
    `sample_tokens`.
    """
    if not isinstance(prompts, list | tuple) or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a list of str")
    if prompt_seeds is None:
        base = generator_seed if generator_seed is not None else int(torch.randint(2**62, ()))
        prompt_seeds = [stream_seed(base, i) for i in range(len(prompts))]
    eos_ids = _eos_ids(model, tokenizer)
    out = sample_tokens(
        model,
        [torch.tensor(tokenizer(p)["input_ids"], dtype=torch.long) for p in prompts],
        num_samples,
        eos_ids=eos_ids,
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0],
        prompt_seeds=prompt_seeds,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        greedy=greedy,
        batch_size=batch_size,
        compact_fraction=compact_fraction,
        compile_decoding=compile_decoding,
        with_entropy=with_entropy,
    )
    entropy = out.entropy if with_entropy else [None] * len(out.response_ids)
    samples = [
        Sample(
            i // num_samples,
            prompt,
            response,
            tokenizer.decode(response.tolist(), skip_special_tokens=True),
            cut,
            token_entropy,
        )
        for i, (prompt, response, cut, token_entropy) in enumerate(
            zip(out.prompt_ids, out.response_ids, out.truncated, entropy, strict=True)
        )
    ]
    return samples, out.stats


@dataclass
class TokenSamples:
    """The rows of `sample_tokens`, prompt-major: row i is sample i % G of prompt i // G.

    ``prompt_ids``: int64 [P] per row (the prompt, unpadded); ``response_ids``: int64 [R] per row, ending
    with an eos token unless ``truncated``; ``entropy``: float32 [R] per row (``with_entropy``; else empty).
    """

    prompt_ids: list[Tensor]
    response_ids: list[Tensor]
    truncated: list[bool]
    stats: DecodeStats
    entropy: list[Tensor]


@torch.no_grad()
def sample_tokens(
    model: PreTrainedModel,
    prompt_ids: Sequence[Tensor],
    num_samples: int,
    *,
    eos_ids: Sequence[int],
    pad_id: int,
    prompt_seeds: Sequence[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    batch_size: int | None = None,
    compact_fraction: float = 0.25,
    compile_decoding: bool = False,
    with_entropy: bool = False,
) -> TokenSamples:
    """`num_samples` responses to each prompt (1-D int64 token ids), the tokens-in, tokens-out core of
    `sample`: sample j of prompt i draws from the stream `stream_seed(prompt_seeds[i], j)`.

    ``compact_fraction``: cut the finished rows out of the batch and its KV cache once they are at least
    this share of it (1.0: never; the decode runs until every row has finished).

    ``compile_decoding`` (models whose layers are all full attention; ignored for others): decode into a
    static KV cache, whose batch keeps its shape (no compaction), and on CUDA run the decode steps
    through `torch.compile(mode="reduce-overhead")` (CUDA graphs; compiled once per process, recorded
    once per shape). Elsewhere the static cache runs eagerly: the responses are those of the default
    path, which the CPU tests check.

    ``with_entropy``: also return, per row, the entropy (nats, float32) of softmax(logits / temperature)
    (before top-p truncation; greedy decoding takes the given temperature) at each response token, from
    the logits the token was drawn from.
    """
    _check_sampling(num_samples, max_new_tokens, temperature, top_p, batch_size, compact_fraction)
    if len(prompt_seeds) != len(prompt_ids) or not all(isinstance(s, int) for s in prompt_seeds):
        raise ValueError(
            f"prompt_seeds must hold one int per prompt ({len(prompt_ids)}), got {prompt_seeds!r}"
        )
    for index, ids in enumerate(prompt_ids):
        if not isinstance(ids, Tensor) or ids.dtype != torch.long or ids.dim() != 1:
            raise TypeError(f"prompt_ids[{index}] must be a 1-D int64 tensor")
        if ids.numel() == 0:
            raise ValueError(f"prompts[{index}] encodes to no tokens")
    if not eos_ids:
        raise ValueError("eos_ids must name at least one token")
    out = TokenSamples([], [], [], DecodeStats(), [])
    rows = [(i, j) for i in range(len(prompt_ids)) for j in range(num_samples)]
    step = batch_size or max(len(rows), 1)
    decoder = _Decoder(
        model,
        list(eos_ids),
        pad_id,
        max_new_tokens,
        temperature,
        top_p,
        greedy,
        compact_fraction,
        compile_decoding,
        with_entropy,
    )
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            streams = [random.Random(stream_seed(prompt_seeds[i], j)) for i, j in chunk]
            split, stats, entropy = decoder.run([prompt_ids[i].cpu() for i, _ in chunk], streams)
            out.stats.add(stats)
            out.prompt_ids += [p.clone() for p in split.prompts]
            out.response_ids += [r.clone() for r in split.responses]
            out.truncated += split.truncated.tolist()
            if entropy is not None:
                out.entropy += [
                    row[: len(r)].clone() for row, r in zip(entropy, split.responses, strict=True)
                ]
    finally:
        model.train(was_training)
    out.stats.sampled_tokens = sum(len(r) for r in out.response_ids)
    return out


@dataclass(eq=False)
class _Decoder:
    """One batched decode of a list of prompt rows (consecutive equal prompts share their prefill)."""

    model: PreTrainedModel
    eos_ids: list[int]
    pad_id: int
    max_new_tokens: int
    temperature: float
    top_p: float
    greedy: bool
    compact_fraction: float
    compile_decoding: bool
    with_entropy: bool = False

    def __post_init__(self):
        self.device = next(self.model.parameters()).device
        self.eos = torch.tensor(self.eos_ids, device=self.device)
        self.static = self.compile_decoding and _plain_attention(self.model)
        self.compiled = self.static and self.device.type == "cuda"
        # ZeRO-3 with sharded parameters: every forward is a collective, so all ranks step together
        from transformers.integrations import is_deepspeed_zero3_enabled

        self.synced = dist.is_initialized() and dist.get_world_size() > 1 and is_deepspeed_zero3_enabled()
        # transformers 5.x names the cache argument `cache` (`past_key_values` goes in 5.40); 4.x does not
        parameters = inspect.signature(self.model.forward).parameters
        self.cache_arg = "cache" if "cache" in parameters else "past_key_values"

    def run(
        self, row_prompts: list[Tensor], streams: list[random.Random]
    ) -> tuple[batching.GeneratedBatch, DecodeStats, Tensor | None]:
        """Decode one row per entry of `row_prompts` (1-D int64); row b draws its uniforms from
        `streams[b]`. Returns the rows cut at their first eos, the cost, and with `with_entropy` the
        float32 (rows, max_new_tokens) entropies of the steps (row b's response: its first R_b)."""
        stats = DecodeStats()
        # one prefill row per run of equal consecutive prompts (the G samples of a prompt)
        is_first = [b == 0 or not _same(row_prompts[b], row_prompts[b - 1]) for b in range(len(row_prompts))]
        owner = torch.tensor(is_first).cumsum(0) - 1  # the prefill row of each row
        unique = [p for p, first in zip(row_prompts, is_first, strict=True) if first]
        prompt_ids, prompt_mask = batching.pad_sequences(unique, self.pad_id, "left")
        width = prompt_ids.shape[1]
        capacity = width + self.max_new_tokens
        if self.compiled:  # few distinct shapes, so few CUDA graphs to record
            capacity = -(-capacity // 64) * 64
        cache = self._new_cache(capacity)
        logits = self._forward(prompt_ids, prompt_mask, cache)
        cache.reorder_cache(owner.to(self.device))  # expand each prompt's cache to its rows
        if self.static:
            cache = _static_copy(cache, capacity)
        logits = logits[owner.to(self.device)]
        mask = torch.zeros(len(row_prompts), capacity, dtype=torch.long, device=self.device)
        mask[:, :width] = prompt_mask[owner]
        positions = mask.sum(1, keepdim=True)  # position of the next token of each row
        batch = len(row_prompts)
        responses = torch.full((batch, self.max_new_tokens), self.pad_id, dtype=torch.long)
        live = torch.arange(batch)  # original row of each batch row
        finished = torch.zeros(batch, dtype=torch.bool)  # per batch row
        entropy = torch.zeros(batch, self.max_new_tokens) if self.with_entropy else None
        for step in range(self.max_new_tokens):
            draws = [streams[b].random() for b in live.tolist()]
            picked = self._pick(logits, draws)
            if entropy is not None:
                _, step_entropy = logprobs_and_entropy(logits, picked, temperature=self.temperature)
                entropy[live[~finished], step] = step_entropy.cpu()[~finished]
            tokens = torch.where(finished, self.pad_id, picked.cpu())
            responses[live[~finished], step] = tokens[~finished]
            finished |= torch.isin(tokens, self.eos.cpu())
            if step == self.max_new_tokens - 1 or self._all_done(bool(finished.all())):
                break
            compact = not self.static and len(live) > 1  # a static cache keeps its batch
            if compact and int(finished.sum()) >= max(1, self.compact_fraction * len(live)):
                keep = (~finished).nonzero().squeeze(1)
                if keep.numel() == 0:  # synced and done here: keep one row to step along with the others
                    keep = keep.new_zeros(1)
                cache.reorder_cache(keep.to(self.device))
                live, finished, tokens = live[keep], finished[keep], tokens[keep]
                mask, positions = mask[keep.to(self.device)], positions[keep.to(self.device)]
            stats.decode_positions += len(live)
            stats.wasted_positions += int(finished.sum())
            mask[:, width + step] = 1
            step_mask = mask if self.static else mask[:, : width + step + 1]  # static: every column
            forward = _compiled_forward() if self.compiled else _decode_forward
            logits = forward(
                self.model, self.cache_arg, tokens[:, None].to(self.device), step_mask, cache, positions
            )
            positions = positions + 1
        prompts = prompt_ids[owner]
        sequences = torch.cat([prompts, responses], dim=1)
        prompt_lengths = prompt_mask[owner].sum(1)
        return batching.split_generation(sequences, prompt_lengths, width, self.eos_ids), stats, entropy

    def _new_cache(self, capacity: int) -> Cache:
        """A KV cache that writes in place into buffers of `capacity` positions, when every layer of the
        model is plain attention; else the model's own `DynamicCache` (which grows by concatenation)."""
        config = self.model.config.get_text_config(decoder=True)
        if not _plain_attention(self.model, allow_sliding=True):
            return DynamicCache(config=self.model.config)
        return Cache(layers=[_BufferLayer(capacity) for _ in range(config.num_hidden_layers)])

    def _forward(self, input_ids: Tensor, mask: Tensor, cache: Cache) -> Tensor:
        """The prefill of left-padded prompts (B, W): logits (B, V) float32 of their last position."""
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        return _decode_forward(self.model, self.cache_arg, input_ids, mask, cache, positions)

    def _pick(self, logits: Tensor, draws: list[float]) -> Tensor:
        """One token per row: the argmax when greedy, else inverse-CDF sampling of
        softmax(logits / temperature), nucleus-truncated, at the row's uniform draw."""
        if self.greedy:
            return logits.argmax(-1)
        probs = torch.softmax(logits / self.temperature, dim=-1)
        if self.top_p < 1:
            ordered, order = probs.sort(dim=-1, descending=True, stable=True)
            # keep the most probable tokens until their mass reaches top_p (the first one always)
            ordered = ordered.masked_fill(ordered.cumsum(-1) - ordered >= self.top_p, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, order, ordered)
        cdf = probs.cumsum(-1)
        total = cdf[:, -1:]
        u = torch.tensor(draws, dtype=cdf.dtype, device=cdf.device)[:, None] * total
        # strictly below the total (a draw near 1 may round up to it), the first cdf entry above u is a
        # token of positive probability
        u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))
        return torch.searchsorted(cdf, u, right=True).squeeze(1)

    def _all_done(self, done_here: bool) -> bool:
        if not self.synced:
            return done_here
        flag = torch.tensor([0.0 if done_here else 1.0], device=self.device)
        dist.all_reduce(flag)
        return float(flag) == 0.0


def _plain_attention(model, allow_sliding: bool = False) -> bool:
    """Whether every layer of `model` is plain (full, or with `allow_sliding` sliding-window) attention."""
    config = model.config.get_text_config(decoder=True)
    allowed = {"full_attention", "sliding_attention"} if allow_sliding else {"full_attention"}
    return set(getattr(config, "layer_types", None) or ["full_attention"]) <= allowed


def _decode_forward(model, cache_arg: str, input_ids: Tensor, mask: Tensor, cache: Cache, positions: Tensor):
    """Logits (B, V) float32 of the last position of `input_ids` (B, T), writing their keys and values
    into `cache`; `positions` (B, T) are their position ids."""
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
        **{cache_arg: cache},
    )
    return out.logits[:, -1].float()


@functools.cache
def _compiled_forward():
    """`_decode_forward` compiled once per process with CUDA graphs (shapes: the static cache's)."""
    return torch.compile(_decode_forward, mode="reduce-overhead")


def _static_copy(cache: Cache, capacity: int) -> Cache:
    """A transformers static cache (fixed addresses, as CUDA graphs need) of `capacity` positions holding
    what `cache` (of `_BufferLayer`s) holds."""
    static = Cache(layers=[StaticLayer(capacity) for _ in cache.layers])
    for source, target in zip(cache.layers, static.layers, strict=True):
        target.lazy_initialization(source.keys, source.values)
        target.keys[:, :, : source.length].copy_(source.keys)
        target.values[:, :, : source.length].copy_(source.values)
        target.cumulative_length.fill_(source.length)
    return static


def _same(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and bool(torch.equal(a, b))


class _BufferLayer(DynamicLayer):
    """A KV cache layer that writes each step into buffers of `capacity` positions and hands attention a
    view of the filled part, instead of `DynamicLayer`'s copy of the whole cache per step. Sliding-window
    layers keep every position too: the model's attention mask applies the window."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.device = key_states.device
        batch, heads, _, key_dim = key_states.shape
        self.key_buffer = key_states.new_empty(batch, heads, self.capacity, key_dim)
        self.value_buffer = value_states.new_empty(batch, heads, self.capacity, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache holds {self.capacity} positions, {end} requested")
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def reorder_cache(self, beam_idx: Tensor) -> None:
        if self.is_initialized:
            self.key_buffer = self.key_buffer.index_select(0, beam_idx.to(self.device))
            self.value_buffer = self.value_buffer.index_select(0, beam_idx.to(self.device))
            self.keys, self.values = (
                self.key_buffer[:, :, : self.length],
                self.value_buffer[:, :, : self.length],
            )
