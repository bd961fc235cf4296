// Rollout batching ops of `exprl._C`: argument checks shared by the CPU (batching.cpp) and CUDA
// (batching_cuda.cu) implementations. The spec of every op is the function of the same name in
// exprl/batching/reference.py; schemas are defined in batching.cpp.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define EXPRL_HOST_DEVICE __host__ __device__
#else
#define EXPRL_HOST_DEVICE
#endif

namespace exprl {

constexpr int64_t kIgnoreIndex = -100;

// Modes of segment_advantages, in the order of reference.SEGMENT_MODES.
constexpr int64_t kSegmentDelta = 0;
constexpr int64_t kSegmentEnd = 1;
constexpr int64_t kSegmentGroup = 2;

// Advantages of one group of n rewards, written into out (n): (x - mean) / (sample std + eps), or x - mean
// when !scale, with mean and std over the entries that valid marks (all when valid is null); unmarked
// entries get 0. The same code runs in a CPU loop (batching.cpp) and as one CUDA thread per group.
EXPRL_HOST_DEVICE inline void group_table(const float* x, const bool* valid, int64_t n, bool scale, double eps,
                                           float* out) {
  double sum = 0.0;
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (valid == nullptr || valid[i]) {
      sum += x[i];
      ++count;
    }
  }
  const double mean = count > 0 ? sum / count : 0.0;
  double denominator = 1.0;
  if (scale) {
    double squares = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      if (valid == nullptr || valid[i]) squares += (x[i] - mean) * (x[i] - mean);
    }
    denominator = (count > 1 ? sqrt(squares / (count - 1)) : 0.0) + eps;
  }
  for (int64_t i = 0; i < n; ++i) {
    out[i] = valid == nullptr || valid[i] ? static_cast<float>((x[i] - mean) / denominator) : 0.0f;
  }
}

// Per-(row, segment) advantages of one group of rows, written into table (rows x width): the same code
// runs in a CPU loop (batching.cpp) and as one CUDA thread per group (batching_cuda.cu).
EXPRL_HOST_DEVICE inline void segment_table(const float* scores, const int64_t* counts, int64_t rows,
                                             int64_t width, int64_t mode, double eps, float* table) {
  double mean = 0.0;
  double denominator = 1.0;
  if (mode == kSegmentGroup) {
    double sum = 0.0;
    int64_t total = 0;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t t = 0; t < counts[r]; ++t) sum += scores[r * width + t];
      total += counts[r];
    }
    mean = total > 0 ? sum / total : 0.0;
    double squares = 0.0;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t t = 0; t < counts[r]; ++t) squares += (scores[r * width + t] - mean) * (scores[r * width + t] - mean);
    }
    denominator = (total > 1 ? sqrt(squares / (total - 1)) : 0.0) + eps;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = scores + r * width;
    const int64_t count = counts[r];
    for (int64_t t = 0; t < width; ++t) {
      double value = 0.0;
      if (t < count) {
        if (mode == kSegmentDelta) {
          // a lone segment keeps its score: there is no later segment to compare it with
          const double before = t > 0 ? s[t - 1] : (count > 1 ? s[count - 1] : 0.0f);
          value = static_cast<double>(s[t]) - before;
        } else if (mode == kSegmentEnd) {
          value = static_cast<double>(s[t]) - s[count - 1];
        } else {
          value = (s[t] - mean) / denominator;
        }
      }
      table[r * width + t] = static_cast<float>(value);
    }
  }
}

inline void check_same_device(const at::Tensor& reference, const at::Tensor& other, const char* ref_name,
                              const char* other_name) {
  TORCH_CHECK(reference.device() == other.device(), other_name, " is on ", other.device(), " but ", ref_name,
              " is on ", reference.device());
}

inline void check_ids(const at::Tensor& ids, const char* name, int64_t dim) {
  TORCH_CHECK(ids.scalar_type() == at::kLong, name, " must be int64, got ", ids.scalar_type());
  TORCH_CHECK(ids.dim() == dim, name, " must be ", dim, "-D, got shape ", ids.sizes());
}

// cu_seqlens: 1-D int32/int64 with B+1 >= 1 entries; returned as contiguous int64 on its device.
inline at::Tensor check_offsets(const at::Tensor& cu_seqlens, const char* name) {
  TORCH_CHECK(cu_seqlens.scalar_type() == at::kLong || cu_seqlens.scalar_type() == at::kInt, name,
              " must be int32 or int64, got ", cu_seqlens.scalar_type());
  TORCH_CHECK(cu_seqlens.dim() == 1 && cu_seqlens.numel() >= 1, name, " must be 1-D with B+1 >= 1 entries, got shape ",
              cu_seqlens.sizes());
  return cu_seqlens.to(at::kLong).contiguous();
}

// On the host only: offsets start at 0, never decrease and end at `total` (kernels rely on it).
inline void check_offsets_values(const int64_t* cu, int64_t count, int64_t total, const char* name) {
  TORCH_CHECK(cu[0] == 0, name, "[0] must be 0, got ", cu[0]);
  for (int64_t i = 1; i < count; ++i) {
    TORCH_CHECK(cu[i] >= cu[i - 1], name, " must be non-decreasing (", name, "[", i, "] = ", cu[i], " < ", cu[i - 1],
                ")");
  }
  TORCH_CHECK(cu[count - 1] == total, name, "[-1] = ", cu[count - 1], " but there are ", total, " values");
}

// The rewards of group_advantages, and its optional validity mask: a bool tensor shaped like them.
inline void check_group_args(const at::Tensor& rewards, const c10::optional<at::Tensor>& valid, int64_t group_size) {
  TORCH_CHECK(at::isFloatingType(rewards.scalar_type()) && rewards.dim() == 1,
              "rewards must be a 1-D floating tensor, got ", rewards.scalar_type(), " ", rewards.sizes());
  TORCH_CHECK(group_size >= 1 && rewards.numel() % group_size == 0, "group_size ", group_size,
              " must be positive and divide the ", rewards.numel(), " rewards");
  if (valid.has_value()) {
    TORCH_CHECK(valid->scalar_type() == at::kBool && valid->sizes() == rewards.sizes(),
                "valid must be a bool tensor shaped like rewards ", rewards.sizes(), ", got ", valid->scalar_type(),
                " ", valid->sizes());
    check_same_device(rewards, *valid, "rewards", "valid");
  }
}

inline void check_segment_args(const at::Tensor& segment_ids, const at::Tensor& scores, const at::Tensor& num_segments,
                               int64_t mode, int64_t group_size) {
  check_ids(segment_ids, "segment_ids", 1);
  TORCH_CHECK(at::isFloatingType(scores.scalar_type()) && scores.dim() == 2,
              "scores must be a 2-D floating tensor (B, S), got ", scores.scalar_type(), " ", scores.sizes());
  check_ids(num_segments, "num_segments", 1);
  TORCH_CHECK(num_segments.size(0) == scores.size(0), "num_segments has ", num_segments.size(0),
              " rows but scores has ", scores.size(0));
  TORCH_CHECK(mode >= kSegmentDelta && mode <= kSegmentGroup, "mode must be 0 (delta), 1 (end) or 2 (group), got ",
              mode);
  TORCH_CHECK(group_size >= 1 && scores.size(0) % group_size == 0, "group_size ", group_size,
              " must be positive and divide the ", scores.size(0), " rows");
  check_same_device(segment_ids, scores, "segment_ids", "scores");
  check_same_device(segment_ids, num_segments, "segment_ids", "num_segments");
}

inline void check_generation_args(const at::Tensor& sequences, const at::Tensor& prompt_lengths,
                                  const at::Tensor& response_lengths, int64_t prompt_width) {
  check_ids(sequences, "sequences", 2);
  TORCH_CHECK(prompt_width >= 0 && prompt_width <= sequences.size(1), "prompt_width must lie in [0, ",
              sequences.size(1), "], got ", prompt_width);
  for (const auto& [lengths, name] : {std::pair{&prompt_lengths, "prompt_lengths"},
                                      std::pair{&response_lengths, "response_lengths"}}) {
    check_ids(*lengths, name, 1);
    TORCH_CHECK(lengths->size(0) == sequences.size(0), name, " has ", lengths->size(0), " rows but sequences has ",
                sequences.size(0));
    check_same_device(sequences, *lengths, "sequences", name);
  }
}

}  // namespace exprl
