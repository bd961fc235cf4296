"""Logits as models return them, read without a copy: (B, T+1, V) with (B, T) targets (the last position
ignored, its gradient 0), `logits[:, :-1]` views and row strides larger than V; values and gradients
against the fp64 reference, and the torch path's peak memory counted allocation by allocation."""

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from exprl.kernels import entropy_pg_loss, logprobs_and_entropy, op, reference, triton_backend
from exprl.kernels.torch_backend import CHUNK_ELEMENTS

# the Triton interpreter evaluates both branches of tl.where in numpy: 0 * inf in the branch not taken
# (the kernel's -inf and masked-row guards) warns there, never on a GPU
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

B, T, V = 2, 5, 45
BACKENDS = ["torch", "triton", "eager"]


@pytest.fixture(autouse=True)
def small_triton_blocks(monkeypatch):
    monkeypatch.setattr(triton_backend, "MAX_BLOCK_V", 16)


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T + 1, V, generator=g) * 3
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[1, 2] = -100
    advantages = torch.randn(B, T, generator=g)
    true_logp, _ = reference.logprobs_and_entropy(logits[:, :T].double(), targets, temperature=0.9)
    options = dict(
        old_logprobs=(true_logp + 0.3 * torch.randn(B, T, generator=g)).float(),
        ref_logprobs=(true_logp + 0.3 * torch.randn(B, T, generator=g)).float(),
        temperature=0.9,
        clip_high=0.28,
        dual_clip=3.0,
        kl_coef=0.1,
        entropy_coef=0.05,
        loss_agg="seq-mean-token-mean",
    )
    return logits, targets, advantages, options


def _reference(rows: torch.Tensor, targets, advantages, options):
    """Loss, log-probs, entropy and the gradient w.r.t. `rows` (B, T, V), in fp64 on a contiguous copy."""
    x64 = rows.detach().double().contiguous().requires_grad_()
    out = reference.entropy_pg_loss(x64, targets, advantages, **options)
    out.loss.backward()
    return out, x64.grad


def _check(got, grad_rows, want, want_grad):
    torch.testing.assert_close(got.loss.double(), want.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.logprobs.double(), want.logprobs, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.entropy.double(), want.entropy, rtol=0, atol=1e-5)
    torch.testing.assert_close(grad_rows.double(), want_grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shifted_logits_match_the_reference_on_their_first_t_positions(backend):
    logits, targets, advantages, options = _problem()
    x = logits.clone().requires_grad_()
    got = entropy_pg_loss(x, targets, advantages, backend=backend, **options)
    got.loss.backward()
    want, want_grad = _reference(logits[:, :T], targets, advantages, options)
    assert x.grad.shape == (B, T + 1, V)
    _check(got, x.grad[:, :T], want, want_grad)
    assert (x.grad[:, T] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_sliced_view_reads_the_same_as_its_copy(backend):
    logits, targets, advantages, options = _problem(seed=1)
    base = logits.clone().requires_grad_()
    got = entropy_pg_loss(base[:, :-1], targets, advantages, backend=backend, **options)
    got.loss.backward()
    want, want_grad = _reference(logits[:, :-1], targets, advantages, options)
    _check(got, base.grad[:, :T], want, want_grad)
    assert (base.grad[:, T] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_row_stride_larger_than_v_is_read_through_its_strides(backend):
    logits, targets, advantages, options = _problem(seed=2)
    # packed (N, V) rows inside a wider buffer: row stride V + 7, a layout no reshape can flatten
    wide = torch.full((B * T, V + 7), float("nan"))
    wide[:, :V] = logits[:, :T].reshape(B * T, V)
    leaf = wide.requires_grad_()
    flat_options = {k: v.reshape(-1) if isinstance(v, torch.Tensor) else v for k, v in options.items()}
    flat_options.update(loss_agg="token-mean")
    flat_targets, flat_advantages = targets.reshape(-1), advantages.reshape(-1)
    got = entropy_pg_loss(leaf[:, :V], flat_targets, flat_advantages, backend=backend, **flat_options)
    got.loss.backward()
    want, want_grad = _reference(wide[:, :V], flat_targets, flat_advantages, flat_options)
    _check(got, leaf.grad[:, :V], want, want_grad)
    assert (leaf.grad[:, V:] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_logprobs_and_entropy_take_shifted_logits(backend):
    logits, targets, _, _ = _problem(seed=3)
    logp, entropy = logprobs_and_entropy(logits, targets, temperature=0.9, backend=backend)
    want_logp, want_entropy = reference.logprobs_and_entropy(logits[:, :T].double(), targets, temperature=0.9)
    assert logp.shape == (B, T)
    torch.testing.assert_close(logp.double(), want_logp, rtol=0, atol=1e-5)
    torch.testing.assert_close(entropy.double(), want_entropy, rtol=0, atol=1e-5)


def test_targets_one_position_longer_than_the_logits_are_rejected():
    with pytest.raises(ValueError, match="target_ids"):
        entropy_pg_loss(torch.randn(B, T, V), torch.zeros(B, T + 1, dtype=torch.long), torch.zeros(B))


def _storage_key(value) -> int | None:
    return value.untyped_storage().data_ptr() if isinstance(value, torch.Tensor) else None


class PeakBytes(TorchDispatchMode):
    """Counts the bytes of every storage an op returns while the mode is on, freed when the storage
    dies: the peak of live bytes allocated inside the block. The loss op's body runs under the mode
    too, so its working buffers count; each op's own internal scratch space does not."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.exprl.entropy_pg_loss.default:
            with self:
                out = op._loss_forward(*args, **kwargs)
        else:
            out = func(*args, **kwargs)
        # an output that shares an input's storage (a view, an in-place op) allocated nothing
        given = {_storage_key(value) for value in tree_flatten((args, kwargs))[0]}
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor) and _storage_key(value) not in given:
                self._count(value.untyped_storage())
        return out

    def _count(self, storage) -> None:
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self._seen:
            return
        self._seen.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, size)

    def _free(self, key: int, size: int) -> None:
        self._seen.discard(key)
        self.live -= size


def _peak_fwd_bwd(logits: torch.Tensor, targets, advantages, options) -> int:
    x = logits.requires_grad_()
    with PeakBytes() as meter:
        entropy_pg_loss(x, targets, advantages, backend="torch", **options).loss.backward()
    x.grad = None
    return meter.peak


@pytest.fixture
def one_thread():
    # one slab, swept on this thread: the dispatch mode is per thread and must see every allocation
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.usefixtures("one_thread")
def test_torch_path_fwd_bwd_of_shifted_logits_needs_only_the_gradient():
    b, t, v = 4, 64, 2048  # N x V fp32 = 2 MiB, four times a chunk buffer
    g = torch.Generator().manual_seed(0)
    shifted = torch.randn(b, t + 1, v, generator=g)
    contiguous = shifted[:, :t].contiguous()
    targets = torch.randint(0, v, (b, t), generator=g)
    advantages = torch.randn(b, generator=g)
    options = dict(old_logprobs=torch.full((b, t), -8.0), entropy_coef=1e-3, clip_high=0.28)
    peak_contiguous = _peak_fwd_bwd(contiguous, targets, advantages, options)
    peak_shifted = _peak_fwd_bwd(shifted, targets, advantages, options)
    grad_bytes = shifted.numel() * 4
    extra_rows = b * v * 4
    # the gradient of the (B, T+1, V) input is B rows larger; nothing else may grow
    assert peak_shifted <= peak_contiguous + extra_rows
    # and it is the gradient plus the fixed chunk buffers (two fp32 chunks) and O(N) vectors
    assert peak_shifted <= grad_bytes + 2 * 4 * CHUNK_ELEMENTS + 64 * b * t * 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_logits_strided_over_the_vocabulary_are_copied_once_and_read_right(backend):
    # the fused backends need unit stride over V: such logits are made contiguous first (the one copy)
    logits, targets, advantages, options = _problem(seed=4)
    interleaved = torch.stack([logits[:, :T], torch.full_like(logits[:, :T], float("nan"))], dim=-1)
    leaf = interleaved.requires_grad_()
    got = entropy_pg_loss(leaf[..., 0], targets, advantages, backend=backend, **options)
    got.loss.backward()
    want, want_grad = _reference(logits[:, :T], targets, advantages, options)
    _check(got, leaf.grad[..., 0], want, want_grad)
    assert (leaf.grad[..., 1] == 0).all()
