#include "bench_common.h"

#include <algorithm>
#include <stdexcept>

namespace tpkit_bench {

int64_t ParseSize(const std::string& text) {
  if (text.empty()) throw std::invalid_argument("empty size");
  size_t pos = 0;
  const long long base = std::stoll(text, &pos);
  int64_t mult = 1;
  if (pos < text.size()) {
    const char c = static_cast<char>(std::toupper(static_cast<unsigned char>(text[pos])));
    if (c == 'K') mult = int64_t{1} << 10;
    else if (c == 'M') mult = int64_t{1} << 20;
    else if (c == 'G') mult = int64_t{1} << 30;
    else throw std::invalid_argument("bad size suffix in " + text);
    if (pos + 1 != text.size()) throw std::invalid_argument("bad size " + text);
  }
  if (base < 0) throw std::invalid_argument("negative size " + text);
  return static_cast<int64_t>(base) * mult;
}

Args::Args(int argc, char** argv, const std::vector<std::string>& flags) {
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a.size() > 1 && a[0] == '-' && !(a[1] >= '0' && a[1] <= '9')) {
      const std::string key = a.substr(a.find_first_not_of('-'));
      if (std::find(flags.begin(), flags.end(), key) != flags.end()) {
        named[key] = "1";
      } else {
        if (i + 1 >= argc) throw std::invalid_argument("missing value after " + a);
        named[key] = argv[++i];
      }
    } else {
      positional.push_back(a);
    }
  }
}

std::string Args::Get(const std::string& key, const std::string& fallback) const {
  auto it = named.find(key);
  return it == named.end() ? fallback : it->second;
}

int64_t Args::Int(const std::string& key, int64_t fallback) const {
  auto it = named.find(key);
  return it == named.end() ? fallback : ParseSize(it->second);
}

OpStats MeanAndP50(std::vector<double> each) {
  double sum = 0;
  for (double e : each) sum += e;
  std::sort(each.begin(), each.end());
  const size_t mid = each.size() / 2;
  const double p50 = each.empty() ? 0 : each.size() % 2 ? each[mid] : (each[mid - 1] + each[mid]) / 2;
  return {each.empty() ? 0 : sum / static_cast<double>(each.size()), p50};
}

}  // namespace tpkit_bench
