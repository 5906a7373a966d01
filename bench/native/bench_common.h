// Shared helpers of the raw peers: command-line parsing, the predictable inputs of bench/data.ts, and the
// monotonic clock (CLOCK_MONOTONIC through std::chrono::steady_clock, as process.hrtime.bigint on Linux).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace tpkit_bench {

// Element i of rank r's input: small integers, so every sum of a few ranks is exact in float32 / float16 /
// bfloat16. MUST match inputValue() in bench/data.ts (the TypeScript harness predicts results with it).
inline float InputValue(int64_t rank, int64_t i) {
  return static_cast<float>(((i * 7 + rank * 13) % 33) - 16);
}

// "8", "4K", "64M", "1G" → bytes (binary multiples, as nccl-tests). Throws std::invalid_argument.
int64_t ParseSize(const std::string& text);

// `--name value` / `-x value` / `--flag` arguments; positional arguments are kept in order.
struct Args {
  std::map<std::string, std::string> named;
  std::vector<std::string> positional;
  Args(int argc, char** argv, const std::vector<std::string>& flags);
  std::string Get(const std::string& key, const std::string& fallback) const;
  int64_t Int(const std::string& key, int64_t fallback) const;
  bool Has(const std::string& key) const { return named.count(key) != 0; }
};

inline double NowUs() {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The harness's two figures of a timed loop's per-op times (µs): their mean and their median (bench/harness.ts).
struct OpStats {
  double meanUs;
  double p50Us;
};
OpStats MeanAndP50(std::vector<double> each);

}  // namespace tpkit_bench
