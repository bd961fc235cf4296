// Rollout batching ops of `exprl._C`: schemas (torch.library) and the CPU implementations.
// Every op matches the function of the same name in exprl/batching/reference.py; the CUDA
// implementations are in batching_cuda.cu. Work is split over sequences with at::parallel_for.
#include <Python.h>
#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include "batching.h"

namespace exprl {
namespace {

// Rows per parallel task: sequences are thousands of tokens, so a few rows already amortise a task.
constexpr int64_t kRowGrain = 4;

// Calls fn(begin, end) over [0, batch) in chunks of kRowGrain rows that the threads take from a shared
// counter as they go, instead of equal shares fixed up front: on a shared machine one thread may lose
// its core for a while, and the other then does the rows that are left rather than waiting.
template <typename Fn>
void for_rows(int64_t batch, const Fn& fn) {
  std::atomic<int64_t> next{0};
  const int64_t tasks = std::min<int64_t>(at::get_num_threads(), (batch + kRowGrain - 1) / kRowGrain);
  at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) {
    for (int64_t begin = next.fetch_add(kRowGrain); begin < batch; begin = next.fetch_add(kRowGrain)) {
      fn(begin, std::min(begin + kRowGrain, batch));
    }
  });
}

// Output tensors of at least this many bytes start on a 2 MiB boundary and are advised to use
// transparent huge pages (what torch's own allocator does under THP_MEM_ALLOC_ENABLE=1). A padded
// rollout batch is ~150 MB of fresh memory per call: with 4 KiB pages the kernel takes ~38k page
// faults, which cost more than writing the values (benchmarks/results/bench_batching_*.md).
constexpr size_t kHugePage = size_t{2} << 20;

#ifdef __linux__
struct MappedRegion {
  void* data;
  size_t bytes;
};

void unmap_region(void* context) {
  auto* region = static_cast<MappedRegion*>(context);
  munmap(region->data, region->bytes);
  delete region;
}
#endif

struct Output {
  at::Tensor tensor;
  bool zeroed;  // fresh pages from the kernel, which are zero-filled
};

// A contiguous tensor of `shape`, uninitialised unless `zeroed`. With `fresh_pages`, a large CPU output
// gets newly mapped, huge-page-aligned memory: zero-filled by the kernel, so zero padding need not be
// written (the padded layout is mostly padding), and faulted in 2 MiB at a time. Otherwise at::empty:
// the packed layout has no padding, and the heap may hand back memory the previous batch freed, which
// costs no page faults at all (measured: huge pages made the packed batch slower on the shared box).
Output empty_output(at::IntArrayRef shape, const at::TensorOptions& options, bool fresh_pages) {
  const size_t bytes = static_cast<size_t>(c10::multiply_integers(shape)) * options.dtype().itemsize();
#ifdef __linux__
  if (fresh_pages && options.device().is_cpu() && bytes >= kHugePage) {
    const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    // Map one huge page more than needed and unmap the ends so that the range starts on a boundary.
    const size_t span = rounded + kHugePage;
    void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TORCH_CHECK(raw != MAP_FAILED, "exprl: cannot map ", span, " bytes for an output");
    const auto first = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t aligned = (first + kHugePage - 1) & ~(kHugePage - 1);
    if (aligned > first) munmap(raw, aligned - first);
    if (first + span > aligned + rounded) {
      munmap(reinterpret_cast<void*>(aligned + rounded), first + span - (aligned + rounded));
    }
    void* data = reinterpret_cast<void*>(aligned);
    madvise(data, rounded, MADV_HUGEPAGE);  // advice only: without THP the kernel uses 4 KiB pages
    c10::Storage storage(c10::Storage::use_byte_size_t(), bytes,
                         c10::DataPtr(data, new MappedRegion{data, rounded}, &unmap_region, at::Device(at::kCPU)),
                         c10::GetCPUAllocator(), /*resizable=*/true);
    return {at::empty({0}, options).set_(storage, 0, shape), true};
  }
#endif
  return {at::empty(shape, options), false};
}

struct RowOutputs {
  int64_t* input_ids;
  int64_t* attention_mask;
  int64_t* position_ids;
  bool* response_mask;
  int64_t* target_ids;
  // Padding that is zero need not be written where the memory is known to be zero already.
  bool write_pad_ids;
  bool write_zero_masks;
  bool write_zero_positions;
  bool write_false_response;
};

// Writes the sequence prompt[0, prompt_len) + response[0, response_len) into the `width` slots
// beginning at `row`, starting `start` slots in; slots outside the sequence get the padding values.
void write_row(const int64_t* prompt, int64_t prompt_len, const int64_t* response, int64_t response_len,
               const RowOutputs& out, int64_t row, int64_t width, int64_t start, int64_t pad_id) {
  const int64_t length = prompt_len + response_len;
  const int64_t end = start + length;
  auto pad = [&](int64_t from, int64_t to) {
    if (from >= to) return;
    if (out.write_pad_ids) std::fill(out.input_ids + row + from, out.input_ids + row + to, pad_id);
    if (out.write_zero_masks) std::fill(out.attention_mask + row + from, out.attention_mask + row + to, int64_t{0});
    if (out.write_zero_positions) std::fill(out.position_ids + row + from, out.position_ids + row + to, int64_t{0});
  };
  pad(0, start);
  pad(end, width);
  int64_t* ids = out.input_ids + row + start;
  std::copy(prompt, prompt + prompt_len, ids);
  std::copy(response, response + response_len, ids + prompt_len);
  std::fill(out.attention_mask + row + start, out.attention_mask + row + end, int64_t{1});
  int64_t* positions = out.position_ids + row + start;
  for (int64_t j = 0; j < length; ++j) positions[j] = j;

  // Slot j predicts token j+1, which is a response token for j in [prompt_len - 1, length - 1).
  const int64_t first = prompt_len > 0 ? start + prompt_len - 1 : start;
  const int64_t last = response_len > 0 ? end - 1 : first;
  std::fill(out.target_ids + row, out.target_ids + row + first, kIgnoreIndex);
  if (last > first) {
    const int64_t* next = prompt_len > 0 ? response : response + 1;
    std::copy(next, next + (last - first), out.target_ids + row + first);
  }
  std::fill(out.target_ids + row + last, out.target_ids + row + width, kIgnoreIndex);
  if (out.write_false_response) std::fill(out.response_mask + row, out.response_mask + row + first, false);
  std::fill(out.response_mask + row + first, out.response_mask + row + last, true);
  if (out.write_false_response) std::fill(out.response_mask + row + last, out.response_mask + row + width, false);
}

using BatchTensors = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Allocates the five outputs and calls fill(row_index, outputs, row_offset, width, start) per row.
template <typename SourceOf>
BatchTensors build_batch(const at::Tensor& like, const std::vector<int64_t>& prompt_lengths,
                         const std::vector<int64_t>& response_lengths, int64_t pad_id, int64_t max_len, bool packed,
                         bool left, SourceOf source_of) {
  const int64_t batch = static_cast<int64_t>(prompt_lengths.size());
  std::vector<int64_t> offsets(batch + 1, 0);
  int64_t longest = 0;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t length = prompt_lengths[b] + response_lengths[b];
    offsets[b + 1] = offsets[b] + length;
    longest = std::max(longest, length);
  }
  TORCH_CHECK(packed || max_len >= longest, "max_len ", max_len, " is shorter than the longest sequence (", longest,
              ")");
  const auto shape = packed ? std::vector<int64_t>{offsets[batch]} : std::vector<int64_t>{batch, max_len};
  const auto long_options = like.options().dtype(at::kLong);
  const Output input_ids = empty_output(shape, long_options, !packed);
  const Output attention_mask = empty_output(shape, long_options, !packed);
  const Output position_ids = empty_output(shape, long_options, !packed);
  const Output response_mask = empty_output(shape, like.options().dtype(at::kBool), !packed);
  const Output target_ids = empty_output(shape, long_options, !packed);
  const RowOutputs out{input_ids.tensor.data_ptr<int64_t>(),
                       attention_mask.tensor.data_ptr<int64_t>(),
                       position_ids.tensor.data_ptr<int64_t>(),
                       response_mask.tensor.data_ptr<bool>(),
                       target_ids.tensor.data_ptr<int64_t>(),
                       !(input_ids.zeroed && pad_id == 0),
                       !attention_mask.zeroed,
                       !position_ids.zeroed,
                       !response_mask.zeroed};
  for_rows(batch, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t length = offsets[b + 1] - offsets[b];
      const auto [prompt, response] = source_of(b);
      if (packed) {
        write_row(prompt, prompt_lengths[b], response, response_lengths[b], out, offsets[b], length, 0, pad_id);
      } else {
        write_row(prompt, prompt_lengths[b], response, response_lengths[b], out, b * max_len, max_len,
                  left ? max_len - length : 0, pad_id);
      }
    }
  });
  return {input_ids.tensor, attention_mask.tensor, position_ids.tensor, response_mask.tensor, target_ids.tensor};
}

std::vector<int64_t> lengths_of(const at::Tensor& cu, int64_t total, const char* name) {
  const int64_t* offsets = cu.data_ptr<int64_t>();
  check_offsets_values(offsets, cu.numel(), total, name);
  std::vector<int64_t> lengths(cu.numel() - 1);
  for (size_t b = 0; b < lengths.size(); ++b) lengths[b] = offsets[b + 1] - offsets[b];
  return lengths;
}

BatchTensors rollout_batch_cpu(const at::Tensor& prompt_ids, const at::Tensor& prompt_cu,
                               const at::Tensor& response_ids, const at::Tensor& response_cu, int64_t pad_id,
                               int64_t max_len, bool packed, bool left) {
  check_ids(prompt_ids, "prompt_ids", 1);
  check_ids(response_ids, "response_ids", 1);
  check_same_device(prompt_ids, response_ids, "prompt_ids", "response_ids");
  const at::Tensor prompt_offsets = check_offsets(prompt_cu, "prompt_cu");
  const at::Tensor response_offsets = check_offsets(response_cu, "response_cu");
  TORCH_CHECK(prompt_offsets.numel() == response_offsets.numel(), "prompt_cu has ", prompt_offsets.numel() - 1,
              " sequences but response_cu has ", response_offsets.numel() - 1);
  const auto prompt_lengths = lengths_of(prompt_offsets, prompt_ids.numel(), "prompt_cu");
  const auto response_lengths = lengths_of(response_offsets, response_ids.numel(), "response_cu");
  const at::Tensor prompts = prompt_ids.contiguous();
  const at::Tensor responses = response_ids.contiguous();
  const int64_t* prompt_data = prompts.data_ptr<int64_t>();
  const int64_t* response_data = responses.data_ptr<int64_t>();
  const int64_t* prompt_start = prompt_offsets.data_ptr<int64_t>();
  const int64_t* response_start = response_offsets.data_ptr<int64_t>();
  return build_batch(prompts, prompt_lengths, response_lengths, pad_id, max_len, packed, left, [&](int64_t b) {
    return std::pair{prompt_data + prompt_start[b], response_data + response_start[b]};
  });
}

// The trainer's input as it comes: lists of 1-D int64 token tensors, read in place (no concatenation).
BatchTensors rollout_batch_lists_cpu(at::TensorList prompts, at::TensorList responses, int64_t pad_id, bool packed,
                                     bool left) {
  TORCH_CHECK_VALUE(prompts.size() == responses.size(), "prompts has ", prompts.size(),
                    " sequences but responses has ", responses.size());
  const int64_t batch = static_cast<int64_t>(prompts.size());
  std::vector<at::Tensor> tokens;  // contiguous views (copies only where a tensor is strided)
  tokens.reserve(2 * batch);
  std::vector<int64_t> prompt_lengths(batch);
  std::vector<int64_t> response_lengths(batch);
  int64_t longest = 0;
  for (int64_t b = 0; b < batch; ++b) {
    for (const auto& [list, name, lengths] : {std::tuple{&prompts, "prompts", &prompt_lengths},
                                              std::tuple{&responses, "responses", &response_lengths}}) {
      const at::Tensor& seq = (*list)[b];
      TORCH_CHECK_TYPE(seq.scalar_type() == at::kLong, name, "[", b, "] must be int64 token ids, got ",
                       seq.scalar_type());
      TORCH_CHECK_VALUE(seq.dim() == 1, name, "[", b, "] must be 1-D, got shape ", seq.sizes());
      TORCH_CHECK_VALUE(seq.device().is_cpu(), name, "[", b, "] is on ", seq.device(), ", expected cpu");
      tokens.push_back(seq.contiguous());
      (*lengths)[b] = seq.numel();
    }
    longest = std::max(longest, prompt_lengths[b] + response_lengths[b]);
  }
  auto check_ids_non_negative = [&](int64_t b) {
    for (int64_t k = 0; k < 2; ++k) {
      const int64_t* data = tokens[2 * b + k].data_ptr<int64_t>();
      const int64_t count = tokens[2 * b + k].numel();
      TORCH_CHECK_VALUE(std::all_of(data, data + count, [](int64_t id) { return id >= 0; }),
                        k == 0 ? "prompts" : "responses", "[", b, "] contains negative token ids");
    }
  };
  const at::Tensor like = batch > 0 ? tokens[0] : at::empty({0}, at::kLong);
  return build_batch(like, prompt_lengths, response_lengths, pad_id, longest, packed, left, [&](int64_t b) {
    check_ids_non_negative(b);
    return std::pair{tokens[2 * b].data_ptr<int64_t>(), tokens[2 * b + 1].data_ptr<int64_t>()};
  });
}

std::tuple<at::Tensor, at::Tensor> generation_lengths_cpu(const at::Tensor& sequences, int64_t prompt_width,
                                                          int64_t eos_id) {
  check_ids(sequences, "sequences", 2);
  TORCH_CHECK(prompt_width >= 0 && prompt_width <= sequences.size(1), "prompt_width must lie in [0, ",
              sequences.size(1), "], got ", prompt_width);
  const at::Tensor rows = sequences.contiguous();
  const int64_t batch = rows.size(0);
  const int64_t width = rows.size(1);
  at::Tensor lengths = at::empty({batch}, rows.options());
  at::Tensor truncated = at::empty({batch}, rows.options().dtype(at::kBool));
  const int64_t* data = rows.data_ptr<int64_t>();
  int64_t* length_data = lengths.data_ptr<int64_t>();
  bool* truncated_data = truncated.data_ptr<bool>();
  for_rows(batch, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t* response = data + b * width + prompt_width;
      const int64_t* response_end = data + (b + 1) * width;
      const int64_t* eos = std::find(response, response_end, eos_id);
      truncated_data[b] = eos == response_end;
      length_data[b] = eos == response_end ? response_end - response : eos - response + 1;
    }
  });
  return {lengths, truncated};
}

BatchTensors rollout_from_generation_cpu(const at::Tensor& sequences, const at::Tensor& prompt_lengths,
                                         const at::Tensor& response_lengths, int64_t prompt_width, int64_t pad_id,
                                         int64_t max_len, bool packed, bool left) {
  check_generation_args(sequences, prompt_lengths, response_lengths, prompt_width);
  const at::Tensor rows = sequences.contiguous();
  const int64_t width = rows.size(1);
  const at::Tensor prompt_len = prompt_lengths.contiguous();
  const at::Tensor response_len = response_lengths.contiguous();
  std::vector<int64_t> prompts(prompt_len.data_ptr<int64_t>(), prompt_len.data_ptr<int64_t>() + prompt_len.numel());
  std::vector<int64_t> responses(response_len.data_ptr<int64_t>(),
                                 response_len.data_ptr<int64_t>() + response_len.numel());
  for (size_t b = 0; b < prompts.size(); ++b) {
    TORCH_CHECK(prompts[b] >= 0 && prompts[b] <= prompt_width, "prompt_lengths[", b, "] = ", prompts[b],
                " is outside [0, prompt_width=", prompt_width, "]");
    TORCH_CHECK(responses[b] >= 0 && responses[b] <= width - prompt_width, "response_lengths[", b,
                "] = ", responses[b], " is outside [0, ", width - prompt_width, "]");
  }
  const int64_t* data = rows.data_ptr<int64_t>();
  return build_batch(rows, prompts, responses, pad_id, max_len, packed, left, [&](int64_t b) {
    const int64_t* row = data + b * width;
    return std::pair{row + prompt_width - prompts[b], row + prompt_width};
  });
}

// Copies `count` elements of `bytes` bytes each: padding is written with the bit pattern of one value.
template <typename Word>
void fill_words(void* dst, int64_t count, const void* value) {
  Word word;
  std::memcpy(&word, value, sizeof(Word));
  std::fill(static_cast<Word*>(dst), static_cast<Word*>(dst) + count, word);
}

void fill_elements(void* dst, int64_t count, const void* value, int64_t bytes) {
  switch (bytes) {
    case 1: return fill_words<uint8_t>(dst, count, value);
    case 2: return fill_words<uint16_t>(dst, count, value);
    case 4: return fill_words<uint32_t>(dst, count, value);
    case 8: return fill_words<uint64_t>(dst, count, value);
    default: TORCH_CHECK(false, "values must have 1-, 2-, 4- or 8-byte elements, got ", bytes);
  }
}

at::Tensor unpack_cpu(const at::Tensor& values, const at::Tensor& cu_seqlens, int64_t max_len,
                      const at::Scalar& pad_value, bool left) {
  TORCH_CHECK(values.dim() >= 1, "values must have shape (N, *rest), got a scalar");
  const at::Tensor offsets = check_offsets(cu_seqlens, "cu_seqlens");
  const auto lengths = lengths_of(offsets, values.size(0), "cu_seqlens");
  const int64_t batch = static_cast<int64_t>(lengths.size());
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(lengths[b] <= max_len, "sequence ", b, " has ", lengths[b], " values but max_len is ", max_len);
  }
  const at::Tensor source = values.contiguous();
  auto shape = source.sizes().vec();
  shape[0] = max_len;
  shape.insert(shape.begin(), batch);
  at::Tensor out = at::empty(shape, source.options());
  const int64_t elements_per_item = c10::multiply_integers(source.sizes().slice(1));
  const int64_t item = elements_per_item * source.element_size();
  const at::Tensor pad = at::scalar_tensor(pad_value, source.options().device(at::kCPU));
  const auto* src = static_cast<const char*>(source.data_ptr());
  auto* dst = static_cast<char*>(out.data_ptr());
  const int64_t* start = offsets.data_ptr<int64_t>();
  for_rows(batch, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      char* row = dst + b * max_len * item;
      const int64_t pad_items = max_len - lengths[b];
      char* data_begin = left ? row + pad_items * item : row;
      std::memcpy(data_begin, src + start[b] * item, lengths[b] * item);
      fill_elements(left ? row : row + lengths[b] * item, pad_items * elements_per_item, pad.data_ptr(),
                    source.element_size());
    }
  });
  return out;
}

at::Tensor repack_cpu(const at::Tensor& padded, const at::Tensor& cu_seqlens, bool left) {
  TORCH_CHECK(padded.dim() >= 2, "padded must have shape (B, L, *rest), got ", padded.sizes());
  const at::Tensor offsets = check_offsets(cu_seqlens, "cu_seqlens");
  TORCH_CHECK(offsets.numel() - 1 == padded.size(0), "cu_seqlens has ", offsets.numel() - 1,
              " sequences but padded has ", padded.size(0), " rows");
  const int64_t* start = offsets.data_ptr<int64_t>();
  const auto lengths = lengths_of(offsets, start[offsets.numel() - 1], "cu_seqlens");
  const int64_t width = padded.size(1);
  for (size_t b = 0; b < lengths.size(); ++b) {
    TORCH_CHECK(lengths[b] <= width, "sequence ", b, " has ", lengths[b], " values but padded has L=", width);
  }
  const at::Tensor source = padded.contiguous();
  auto shape = source.sizes().vec();
  shape.erase(shape.begin());
  shape[0] = start[offsets.numel() - 1];
  at::Tensor out = at::empty(shape, source.options());
  const int64_t item = c10::multiply_integers(source.sizes().slice(2)) * source.element_size();
  const auto* src = static_cast<const char*>(source.data_ptr());
  auto* dst = static_cast<char*>(out.data_ptr());
  for_rows(static_cast<int64_t>(lengths.size()), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t skip = left ? width - lengths[b] : 0;
      std::memcpy(dst + start[b] * item, src + (b * width + skip) * item, lengths[b] * item);
    }
  });
  return out;
}

at::Tensor group_advantages_cpu(const at::Tensor& rewards, const c10::optional<at::Tensor>& valid,
                               int64_t group_size, bool scale, double eps) {
  check_group_args(rewards, valid, group_size);
  const at::Tensor values = rewards.to(at::kFloat).contiguous();
  const at::Tensor mask = valid.has_value() ? valid->contiguous() : at::Tensor();
  at::Tensor out = at::empty_like(values);
  const float* in = values.data_ptr<float>();
  const bool* keep = mask.defined() ? mask.data_ptr<bool>() : nullptr;
  float* adv = out.data_ptr<float>();
  at::parallel_for(0, values.numel() / group_size, 64, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const int64_t first = g * group_size;
      group_table(in + first, keep == nullptr ? nullptr : keep + first, group_size, scale, eps, adv + first);
    }
  });
  return out;
}

at::Tensor segment_advantages_cpu(const at::Tensor& segment_ids, const at::Tensor& cu_seqlens,
                                  const at::Tensor& scores, const at::Tensor& num_segments, int64_t mode,
                                  int64_t group_size, double eps) {
  check_segment_args(segment_ids, scores, num_segments, mode, group_size);
  const at::Tensor offsets = check_offsets(cu_seqlens, "cu_seqlens");
  TORCH_CHECK(offsets.numel() - 1 == scores.size(0), "cu_seqlens has ", offsets.numel() - 1,
              " sequences but scores has ", scores.size(0), " rows");
  const auto lengths = lengths_of(offsets, segment_ids.numel(), "cu_seqlens");
  const at::Tensor score_values = scores.to(at::kFloat).contiguous();
  const at::Tensor counts = num_segments.contiguous();
  const int64_t batch = scores.size(0);
  const int64_t width = scores.size(1);
  const int64_t* count_data = counts.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(count_data[b] >= 0 && count_data[b] <= width, "num_segments[", b, "] = ", count_data[b],
                " is outside [0, ", width, "]");
  }
  const int64_t rows_per_group = mode == kSegmentGroup ? group_size : 1;
  std::vector<float> table(batch * width);
  at::parallel_for(0, batch / rows_per_group, 16, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const int64_t first = g * rows_per_group;
      segment_table(score_values.data_ptr<float>() + first * width, count_data + first, rows_per_group, width, mode,
                    eps, table.data() + first * width);
    }
  });
  const at::Tensor ids = segment_ids.contiguous();
  at::Tensor out = at::empty({ids.numel()}, score_values.options());
  const int64_t* id_data = ids.data_ptr<int64_t>();
  const int64_t* start = offsets.data_ptr<int64_t>();
  float* adv = out.data_ptr<float>();
  for_rows(batch, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t t = start[b]; t < start[b] + lengths[b]; ++t) {
        const int64_t segment = id_data[t];
        TORCH_CHECK(segment >= -1 && segment < count_data[b], "segment_ids[", t, "] = ", segment,
                    " is neither -1 nor below num_segments[", b, "] = ", count_data[b]);
        adv[t] = segment < 0 ? 0.0f : table[b * width + segment];
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(exprl, m) {
  m.def("unpack(Tensor values, Tensor cu_seqlens, int max_len, Scalar pad_value, bool left) -> Tensor");
  m.def("repack(Tensor padded, Tensor cu_seqlens, bool left) -> Tensor");
  m.def(
      "rollout_batch(Tensor prompt_ids, Tensor prompt_cu, Tensor response_ids, Tensor response_cu, int pad_id, "
      "int max_len, bool packed, bool left) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "rollout_batch_lists(Tensor[] prompts, Tensor[] responses, int pad_id, bool packed, bool left) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("generation_lengths(Tensor sequences, int prompt_width, int eos_id) -> (Tensor, Tensor)");
  m.def(
      "rollout_from_generation(Tensor sequences, Tensor prompt_lengths, Tensor response_lengths, int prompt_width, "
      "int pad_id, int max_len, bool packed, bool left) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("group_advantages(Tensor rewards, Tensor? valid, int group_size, bool scale, float eps) -> Tensor");
  m.def(
      "segment_advantages(Tensor segment_ids, Tensor cu_seqlens, Tensor scores, Tensor num_segments, int mode, "
      "int group_size, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(exprl, CPU, m) {
  m.impl("unpack", &unpack_cpu);
  m.impl("repack", &repack_cpu);
  m.impl("rollout_batch", &rollout_batch_cpu);
  m.impl("rollout_batch_lists", &rollout_batch_lists_cpu);
  m.impl("generation_lengths", &generation_lengths_cpu);
  m.impl("rollout_from_generation", &rollout_from_generation_cpu);
  m.impl("group_advantages", &group_advantages_cpu);
  m.impl("segment_advantages", &segment_advantages_cpu);
}

}  // namespace exprl

// `import exprl._C` loads this library, whose static initialisers register the ops above.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "exprl rollout batching ops (torch.ops.exprl)", -1,
                               nullptr};
  return PyModule_Create(&module);
}
