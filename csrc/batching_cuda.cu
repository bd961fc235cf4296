// CUDA implementations of the `exprl._C` rollout batching ops (schemas in batching.cpp; spec in
// exprl/batching/reference.py). Built only with EXPRL_WITH_CUDA (setup.py adds this file when it
// builds the CUDA extension). Ragged offsets are copied to the host once per call: the packed size N
// is needed to allocate the outputs anyway, and it lets every offset be validated before a kernel
// reads with it, so no kernel can index outside its inputs.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <vector>

#include "batching.h"

namespace exprl {
namespace {

constexpr int kThreads = 256;

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// Host copy of validated offsets (int64) and the device copy kernels read.
struct Offsets {
  std::vector<int64_t> host;
  at::Tensor device;
  int64_t batch() const { return static_cast<int64_t>(host.size()) - 1; }
  int64_t length(int64_t b) const { return host[b + 1] - host[b]; }
  int64_t longest() const {
    int64_t longest = 0;
    for (int64_t b = 0; b < batch(); ++b) longest = std::max(longest, length(b));
    return longest;
  }
};

Offsets upload_offsets(std::vector<int64_t> host, const at::Device& device) {
  at::Tensor staging = at::empty({static_cast<int64_t>(host.size())}, at::TensorOptions().dtype(at::kLong));
  std::copy(host.begin(), host.end(), staging.data_ptr<int64_t>());
  return {std::move(host), staging.to(device)};
}

// cu_seqlens may live on the host or the device; kernels get a copy on `device` (the data's).
Offsets read_offsets(const at::Tensor& cu_seqlens, int64_t total, const char* name, const at::Device& device) {
  const at::Tensor cpu = check_offsets(cu_seqlens, name).cpu();
  const int64_t* data = cpu.data_ptr<int64_t>();
  check_offsets_values(data, cpu.numel(), total, name);
  return upload_offsets(std::vector<int64_t>(data, data + cpu.numel()), device);
}

Offsets offsets_from_lengths(const std::vector<int64_t>& lengths, const at::Device& device) {
  std::vector<int64_t> host(lengths.size() + 1, 0);
  for (size_t b = 0; b < lengths.size(); ++b) host[b + 1] = host[b] + lengths[b];
  return upload_offsets(std::move(host), device);
}

std::vector<int64_t> to_host_vector(const at::Tensor& values) {
  const at::Tensor cpu = values.to(at::kLong).contiguous().cpu();
  return std::vector<int64_t>(cpu.data_ptr<int64_t>(), cpu.data_ptr<int64_t>() + cpu.numel());
}

void check_cuda(const at::Tensor& tensor, const char* name) {
  TORCH_CHECK(tensor.is_cuda(), name, " must be a CUDA tensor, got ", tensor.device());
}

// ---- rollout batch --------------------------------------------------------------------------------

// Where row b's prompt and response tokens are: packed flat inputs with their offsets.
struct FlatSource {
  const int64_t* prompts;
  const int64_t* prompt_cu;
  const int64_t* responses;
  const int64_t* response_cu;
  __device__ int64_t prompt_len(int64_t b) const { return prompt_cu[b + 1] - prompt_cu[b]; }
  __device__ int64_t response_len(int64_t b) const { return response_cu[b + 1] - response_cu[b]; }
  __device__ const int64_t* prompt(int64_t b) const { return prompts + prompt_cu[b]; }
  __device__ const int64_t* response(int64_t b) const { return responses + response_cu[b]; }
};

// ... or rows of a generation output: prompt right-aligned at column prompt_width, response after it.
struct GenerationSource {
  const int64_t* sequences;
  const int64_t* prompt_lengths;
  const int64_t* response_lengths;
  int64_t width;
  int64_t prompt_width;
  __device__ int64_t prompt_len(int64_t b) const { return prompt_lengths[b]; }
  __device__ int64_t response_len(int64_t b) const { return response_lengths[b]; }
  __device__ const int64_t* prompt(int64_t b) const { return sequences + b * width + prompt_width - prompt_lengths[b]; }
  __device__ const int64_t* response(int64_t b) const { return sequences + b * width + prompt_width; }
};

struct BatchPointers {
  int64_t* input_ids;
  int64_t* attention_mask;
  int64_t* position_ids;
  bool* response_mask;
  int64_t* target_ids;
};

// One block per sequence. Slot j of the row holds token s = j - start of the sequence; it predicts
// token s+1, which is a target when it is a response token of the same sequence.
template <typename Source>
__global__ void rollout_rows_kernel(Source source, const int64_t* out_offsets, int64_t max_len, bool packed,
                                    bool left, int64_t pad_id, BatchPointers out) {
  const int64_t b = blockIdx.x;
  const int64_t prompt_len = source.prompt_len(b);
  const int64_t length = prompt_len + source.response_len(b);
  const int64_t row = packed ? out_offsets[b] : b * max_len;
  const int64_t width = packed ? length : max_len;
  const int64_t start = !packed && left ? max_len - length : 0;
  const int64_t* prompt = source.prompt(b);
  const int64_t* response = source.response(b);
  for (int64_t j = threadIdx.x; j < width; j += blockDim.x) {
    const int64_t s = j - start;
    const int64_t slot = row + j;
    if (s < 0 || s >= length) {
      out.input_ids[slot] = pad_id;
      out.attention_mask[slot] = 0;
      out.position_ids[slot] = 0;
      out.response_mask[slot] = false;
      out.target_ids[slot] = kIgnoreIndex;
      continue;
    }
    out.input_ids[slot] = s < prompt_len ? prompt[s] : response[s - prompt_len];
    out.attention_mask[slot] = 1;
    out.position_ids[slot] = s;
    const bool predicts_response = s + 1 < length && s + 1 >= prompt_len;
    out.response_mask[slot] = predicts_response;
    out.target_ids[slot] = predicts_response ? response[s + 1 - prompt_len] : kIgnoreIndex;
  }
}

using BatchTensors = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

template <typename Source>
BatchTensors launch_rollout(const Source& source, const at::Tensor& like, const Offsets& sequence_offsets,
                            int64_t pad_id, int64_t max_len, bool packed, bool left) {
  const int64_t batch = sequence_offsets.batch();
  TORCH_CHECK(packed || max_len >= sequence_offsets.longest(), "max_len ", max_len,
              " is shorter than the longest sequence (", sequence_offsets.longest(), ")");
  const auto shape = packed ? std::vector<int64_t>{sequence_offsets.host.back()} : std::vector<int64_t>{batch, max_len};
  const auto long_options = like.options().dtype(at::kLong);
  at::Tensor input_ids = at::empty(shape, long_options);
  at::Tensor attention_mask = at::empty(shape, long_options);
  at::Tensor position_ids = at::empty(shape, long_options);
  at::Tensor response_mask = at::empty(shape, like.options().dtype(at::kBool));
  at::Tensor target_ids = at::empty(shape, long_options);
  if (batch > 0) {
    const BatchPointers out{input_ids.data_ptr<int64_t>(), attention_mask.data_ptr<int64_t>(),
                            position_ids.data_ptr<int64_t>(), response_mask.data_ptr<bool>(),
                            target_ids.data_ptr<int64_t>()};
    rollout_rows_kernel<<<batch, kThreads, 0, current_stream()>>>(
        source, sequence_offsets.device.data_ptr<int64_t>(), max_len, packed, left, pad_id, out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {input_ids, attention_mask, position_ids, response_mask, target_ids};
}

BatchTensors rollout_batch_cuda(const at::Tensor& prompt_ids, const at::Tensor& prompt_cu,
                                const at::Tensor& response_ids, const at::Tensor& response_cu, int64_t pad_id,
                                int64_t max_len, bool packed, bool left) {
  check_ids(prompt_ids, "prompt_ids", 1);
  check_ids(response_ids, "response_ids", 1);
  check_cuda(prompt_ids, "prompt_ids");
  check_same_device(prompt_ids, response_ids, "prompt_ids", "response_ids");
  const c10::cuda::CUDAGuard guard(prompt_ids.device());
  const Offsets prompts = read_offsets(prompt_cu, prompt_ids.numel(), "prompt_cu", prompt_ids.device());
  const Offsets responses = read_offsets(response_cu, response_ids.numel(), "response_cu", prompt_ids.device());
  TORCH_CHECK(prompts.batch() == responses.batch(), "prompt_cu has ", prompts.batch(),
              " sequences but response_cu has ", responses.batch());
  std::vector<int64_t> lengths(prompts.batch());
  for (int64_t b = 0; b < prompts.batch(); ++b) lengths[b] = prompts.length(b) + responses.length(b);
  const at::Tensor prompt_data = prompt_ids.contiguous();
  const at::Tensor response_data = response_ids.contiguous();
  const FlatSource source{prompt_data.data_ptr<int64_t>(), prompts.device.data_ptr<int64_t>(),
                          response_data.data_ptr<int64_t>(), responses.device.data_ptr<int64_t>()};
  return launch_rollout(source, prompt_ids, offsets_from_lengths(lengths, prompt_ids.device()), pad_id, max_len,
                        packed, left);
}

BatchTensors rollout_from_generation_cuda(const at::Tensor& sequences, const at::Tensor& prompt_lengths,
                                          const at::Tensor& response_lengths, int64_t prompt_width, int64_t pad_id,
                                          int64_t max_len, bool packed, bool left) {
  check_generation_args(sequences, prompt_lengths, response_lengths, prompt_width);
  check_cuda(sequences, "sequences");
  const c10::cuda::CUDAGuard guard(sequences.device());
  const int64_t width = sequences.size(1);
  const auto prompts = to_host_vector(prompt_lengths);
  const auto responses = to_host_vector(response_lengths);
  std::vector<int64_t> lengths(prompts.size());
  for (size_t b = 0; b < prompts.size(); ++b) {
    TORCH_CHECK(prompts[b] >= 0 && prompts[b] <= prompt_width, "prompt_lengths[", b, "] = ", prompts[b],
                " is outside [0, prompt_width=", prompt_width, "]");
    TORCH_CHECK(responses[b] >= 0 && responses[b] <= width - prompt_width, "response_lengths[", b, "] = ",
                responses[b], " is outside [0, ", width - prompt_width, "]");
    lengths[b] = prompts[b] + responses[b];
  }
  const at::Tensor rows = sequences.contiguous();
  const at::Tensor prompt_len = prompt_lengths.contiguous();
  const at::Tensor response_len = response_lengths.contiguous();
  const GenerationSource source{rows.data_ptr<int64_t>(), prompt_len.data_ptr<int64_t>(),
                                response_len.data_ptr<int64_t>(), width, prompt_width};
  return launch_rollout(source, rows, offsets_from_lengths(lengths, sequences.device()), pad_id, max_len, packed,
                        left);
}

// One block per row: the first column of the response region that holds eos_id.
__global__ void generation_lengths_kernel(const int64_t* sequences, int64_t width, int64_t prompt_width,
                                          int64_t eos_id, int64_t* lengths, bool* truncated) {
  __shared__ int first_eos;
  const int64_t b = blockIdx.x;
  const int responses = static_cast<int>(width - prompt_width);
  if (threadIdx.x == 0) first_eos = responses;
  __syncthreads();
  const int64_t* response = sequences + b * width + prompt_width;
  for (int j = threadIdx.x; j < responses; j += blockDim.x) {
    // Columns are visited in increasing order per thread, so a thread stops at its first hit.
    if (j >= first_eos) break;
    if (response[j] == eos_id) {
      atomicMin(&first_eos, j);
      break;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    truncated[b] = first_eos == responses;
    lengths[b] = first_eos == responses ? responses : first_eos + 1;
  }
}

std::tuple<at::Tensor, at::Tensor> generation_lengths_cuda(const at::Tensor& sequences, int64_t prompt_width,
                                                           int64_t eos_id) {
  check_ids(sequences, "sequences", 2);
  check_cuda(sequences, "sequences");
  TORCH_CHECK(prompt_width >= 0 && prompt_width <= sequences.size(1), "prompt_width must lie in [0, ",
              sequences.size(1), "], got ", prompt_width);
  TORCH_CHECK(sequences.size(1) - prompt_width < INT_MAX, "sequences has too many response columns");
  const c10::cuda::CUDAGuard guard(sequences.device());
  const at::Tensor rows = sequences.contiguous();
  const int64_t batch = rows.size(0);
  at::Tensor lengths = at::empty({batch}, rows.options());
  at::Tensor truncated = at::empty({batch}, rows.options().dtype(at::kBool));
  if (batch > 0) {
    generation_lengths_kernel<<<batch, kThreads, 0, current_stream()>>>(
        rows.data_ptr<int64_t>(), rows.size(1), prompt_width, eos_id, lengths.data_ptr<int64_t>(),
        truncated.data_ptr<bool>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {lengths, truncated};
}

// ---- unpack / repack (any dtype: elements are moved as words of their size) -----------------------

template <typename Word>
__global__ void unpack_kernel(const Word* values, const int64_t* cu, int64_t max_len, int64_t items, bool left,
                              Word pad, Word* out) {
  const int64_t b = blockIdx.x;
  const int64_t length = cu[b + 1] - cu[b];
  const int64_t start = left ? max_len - length : 0;
  const Word* source = values + cu[b] * items;
  Word* row = out + b * max_len * items;
  for (int64_t k = threadIdx.x; k < max_len * items; k += blockDim.x) {
    const int64_t s = k / items - start;
    row[k] = s >= 0 && s < length ? source[s * items + k % items] : pad;
  }
}

template <typename Word>
__global__ void repack_kernel(const Word* padded, const int64_t* cu, int64_t max_len, int64_t items, bool left,
                              Word* out) {
  const int64_t b = blockIdx.x;
  const int64_t length = cu[b + 1] - cu[b];
  const Word* row = padded + (b * max_len + (left ? max_len - length : 0)) * items;
  Word* destination = out + cu[b] * items;
  for (int64_t k = threadIdx.x; k < length * items; k += blockDim.x) destination[k] = row[k];
}

template <typename Launch>
void dispatch_word_size(int64_t bytes, Launch launch) {
  switch (bytes) {
    case 1: return launch(uint8_t{});
    case 2: return launch(uint16_t{});
    case 4: return launch(uint32_t{});
    case 8: return launch(uint64_t{});
    default: TORCH_CHECK(false, "values must have 1-, 2-, 4- or 8-byte elements, got ", bytes);
  }
}

at::Tensor unpack_cuda(const at::Tensor& values, const at::Tensor& cu_seqlens, int64_t max_len,
                       const at::Scalar& pad_value, bool left) {
  TORCH_CHECK(values.dim() >= 1, "values must have shape (N, *rest), got a scalar");
  check_cuda(values, "values");
  check_same_device(values, cu_seqlens, "values", "cu_seqlens");
  const c10::cuda::CUDAGuard guard(values.device());
  const Offsets offsets = read_offsets(cu_seqlens, values.size(0), "cu_seqlens", values.device());
  TORCH_CHECK(max_len >= offsets.longest(), "max_len ", max_len, " is shorter than the longest sequence (",
              offsets.longest(), ")");
  const at::Tensor source = values.contiguous();
  auto shape = source.sizes().vec();
  shape[0] = max_len;
  shape.insert(shape.begin(), offsets.batch());
  at::Tensor out = at::empty(shape, source.options());
  const int64_t items = c10::multiply_integers(source.sizes().slice(1));
  const at::Tensor pad = at::scalar_tensor(pad_value, source.options().device(at::kCPU));
  if (offsets.batch() > 0 && max_len * items > 0) {
    dispatch_word_size(source.element_size(), [&](auto word) {
      using Word = decltype(word);
      unpack_kernel<Word><<<offsets.batch(), kThreads, 0, current_stream()>>>(
          static_cast<const Word*>(source.data_ptr()), offsets.device.data_ptr<int64_t>(), max_len, items, left,
          *static_cast<const Word*>(pad.data_ptr()), static_cast<Word*>(out.data_ptr()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return out;
}

at::Tensor repack_cuda(const at::Tensor& padded, const at::Tensor& cu_seqlens, bool left) {
  TORCH_CHECK(padded.dim() >= 2, "padded must have shape (B, L, *rest), got ", padded.sizes());
  check_cuda(padded, "padded");
  check_same_device(padded, cu_seqlens, "padded", "cu_seqlens");
  const c10::cuda::CUDAGuard guard(padded.device());
  const at::Tensor cpu_cu = check_offsets(cu_seqlens, "cu_seqlens").cpu();
  const int64_t total = cpu_cu.data_ptr<int64_t>()[cpu_cu.numel() - 1];
  const Offsets offsets = read_offsets(cu_seqlens, total, "cu_seqlens", padded.device());
  TORCH_CHECK(offsets.batch() == padded.size(0), "cu_seqlens has ", offsets.batch(), " sequences but padded has ",
              padded.size(0), " rows");
  TORCH_CHECK(offsets.longest() <= padded.size(1), "cu_seqlens has a sequence of ", offsets.longest(),
              " values but padded has L=", padded.size(1));
  const at::Tensor source = padded.contiguous();
  auto shape = source.sizes().vec();
  shape.erase(shape.begin());
  shape[0] = total;
  at::Tensor out = at::empty(shape, source.options());
  const int64_t items = c10::multiply_integers(source.sizes().slice(2));
  if (offsets.batch() > 0 && total * items > 0) {
    dispatch_word_size(source.element_size(), [&](auto word) {
      using Word = decltype(word);
      repack_kernel<Word><<<offsets.batch(), kThreads, 0, current_stream()>>>(
          static_cast<const Word*>(source.data_ptr()), offsets.device.data_ptr<int64_t>(), source.size(1), items,
          left, static_cast<Word*>(out.data_ptr()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return out;
}

// ---- advantages ---------------------------------------------------------------------------------

// One thread per group: group_table, shared with the CPU loop.
__global__ void group_advantages_kernel(const float* rewards, const bool* valid, int64_t groups, int64_t group_size,
                                        bool scale, double eps, float* out) {
  const int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (g >= groups) return;
  const int64_t first = g * group_size;
  group_table(rewards + first, valid == nullptr ? nullptr : valid + first, group_size, scale, eps, out + first);
}

at::Tensor group_advantages_cuda(const at::Tensor& rewards, const c10::optional<at::Tensor>& valid,
                                 int64_t group_size, bool scale, double eps) {
  check_group_args(rewards, valid, group_size);
  check_cuda(rewards, "rewards");
  const c10::cuda::CUDAGuard guard(rewards.device());
  const at::Tensor values = rewards.to(at::kFloat).contiguous();
  const at::Tensor mask = valid.has_value() ? valid->contiguous() : at::Tensor();
  at::Tensor out = at::empty_like(values);
  const int64_t groups = values.numel() / group_size;
  if (groups > 0) {
    group_advantages_kernel<<<(groups + kThreads - 1) / kThreads, kThreads, 0, current_stream()>>>(
        values.data_ptr<float>(), mask.defined() ? mask.data_ptr<bool>() : nullptr, groups, group_size, scale, eps,
        out.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

// One thread per group of rows (one row unless mode is group): the (row, segment) advantage table.
__global__ void segment_table_kernel(const float* scores, const int64_t* counts, int64_t groups, int64_t rows,
                                     int64_t width, int64_t mode, double eps, float* table) {
  const int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (g >= groups) return;
  scores += g * rows * width;
  counts += g * rows;
  table += g * rows * width;
  segment_table(scores, counts, rows, width, mode, eps, table);
}

// One block per row; a segment id outside [0, num_segments) gets 0 (the Python API rejects those).
__global__ void segment_gather_kernel(const int64_t* segment_ids, const int64_t* cu, const int64_t* counts,
                                      const float* table, int64_t width, float* out) {
  const int64_t b = blockIdx.x;
  for (int64_t t = cu[b] + threadIdx.x; t < cu[b + 1]; t += blockDim.x) {
    const int64_t segment = segment_ids[t];
    out[t] = segment >= 0 && segment < counts[b] ? table[b * width + segment] : 0.0f;
  }
}

at::Tensor segment_advantages_cuda(const at::Tensor& segment_ids, const at::Tensor& cu_seqlens,
                                   const at::Tensor& scores, const at::Tensor& num_segments, int64_t mode,
                                   int64_t group_size, double eps) {
  check_segment_args(segment_ids, scores, num_segments, mode, group_size);
  check_cuda(segment_ids, "segment_ids");
  const c10::cuda::CUDAGuard guard(segment_ids.device());
  const Offsets offsets = read_offsets(cu_seqlens, segment_ids.numel(), "cu_seqlens", segment_ids.device());
  TORCH_CHECK(offsets.batch() == scores.size(0), "cu_seqlens has ", offsets.batch(), " sequences but scores has ",
              scores.size(0), " rows");
  const int64_t batch = scores.size(0);
  const int64_t width = scores.size(1);
  const auto counts_host = to_host_vector(num_segments);
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(counts_host[b] >= 0 && counts_host[b] <= width, "num_segments[", b, "] = ", counts_host[b],
                " is outside [0, ", width, "]");
  }
  const at::Tensor score_values = scores.to(at::kFloat).contiguous();
  const at::Tensor counts = num_segments.contiguous();
  at::Tensor table = at::empty({batch, width}, score_values.options());
  at::Tensor out = at::empty({segment_ids.numel()}, score_values.options());
  const int64_t rows = mode == kSegmentGroup ? group_size : 1;
  const int64_t groups = batch / rows;
  if (groups > 0) {
    segment_table_kernel<<<(groups + kThreads - 1) / kThreads, kThreads, 0, current_stream()>>>(
        score_values.data_ptr<float>(), counts.data_ptr<int64_t>(), groups, rows, width, mode, eps,
        table.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const at::Tensor ids = segment_ids.contiguous();
    segment_gather_kernel<<<batch, kThreads, 0, current_stream()>>>(
        ids.data_ptr<int64_t>(), offsets.device.data_ptr<int64_t>(), counts.data_ptr<int64_t>(),
        table.data_ptr<float>(), width, out.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(exprl, CUDA, m) {
  m.impl("unpack", &unpack_cuda);
  m.impl("repack", &repack_cuda);
  m.impl("rollout_batch", &rollout_batch_cuda);
  m.impl("generation_lengths", &generation_lengths_cuda);
  m.impl("rollout_from_generation", &rollout_from_generation_cuda);
  m.impl("group_advantages", &group_advantages_cuda);
  m.impl("segment_advantages", &segment_advantages_cuda);
}

}  // namespace exprl
