// Raw MPI collectives sweep, the Open MPI peer of `tpkit bench collectives`: the same sizes, inputs, warm-up,
// buffer forms and timing rule as the TypeScript harness, with no Node, addon or promise in between. All ranks
// are started by mpirun (bench/peers/mpi.ts passes the shared-memory transport flags); float32, sum.
//
//   mpirun -np N tpkit_bench_mpi --op all_reduce|all_gather|reduce_scatter|broadcast [--root 0]
//                                [-b 8] [-e 64M] [-f 2] [-n 20] [-w 5]
//
// One plug-in per collective (as bench/collectives/*.ts) owns only its counts, bus-bandwidth factor, reference
// value and call; the forms are tpkit's: all_reduce and broadcast in place, all_gather and reduce_scatter out
// of place. Sizes, counts and the size column follow bench/harness.ts: count = bytes / 4, the plug-in's counts
// from it, size = the larger buffer in bytes; sizes whose per-rank count is 0 are skipped.
//
// Timing (nccl-tests): warm-up, barrier, then n blocking operations back to back; time per op = elapsed / n,
// averaged over ranks; p50 = the median of the per-op times, averaged over ranks. Then the inputs are
// re-initialised, one more operation runs, and #wrong counts the output elements differing from the exact
// value computed from the predictable inputs (summed over ranks).
//
// Output (rank 0, stdout): one JSON object per line — {"kind":"meta",…} then {"kind":"row",…} per size, the
// fields of tpkit_bench_gloo's (bench/peers/native.ts and mpi.ts parse them alike).
#define OMPI_SKIP_MPICXX 1  // the C API only (no libmpi_cxx)
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_common.h"

using tpkit_bench::Args;
using tpkit_bench::InputValue;
using tpkit_bench::NowUs;
using tpkit_bench::MeanAndP50;
using tpkit_bench::OpStats;

namespace {

// Throws with MPI's message when a call fails (the communicator's handler is MPI_ERRORS_RETURN).
void Check(int code, const char* what) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  throw std::runtime_error(std::string(what) + ": " + std::string(text, static_cast<size_t>(len)));
}

// Element counts of one run, as CollCounts in bench/collectives/types.ts.
struct Counts {
  int64_t send;
  int64_t recv;
  int64_t param;  // the MPI count argument (the table's count column)
};

struct Job {
  int rank;
  int size;
  int root;
  MPI_Comm comm;
};

// One collective: its counts from `count` elements, busbw factor (nccl-tests PERFORMANCE.md), the exact value
// of output element j, and the call. `inPlace`: the output is the send buffer.
struct Plugin {
  const char* name;
  bool inPlace;
  Counts (*counts)(int64_t count, int n);
  double (*busBwFactor)(int n);
  float (*expected)(const Job& job, const Counts& c, int64_t j);
  void (*run)(const Job& job, const Counts& c, float* send, float* recv);
};

float SumOverRanks(const Job& job, int64_t i) {
  float acc = 0;
  for (int r = 0; r < job.size; r++) acc += InputValue(r, i);
  return acc;
}

const Plugin kPlugins[] = {
    {"all_reduce", true,
     [](int64_t count, int) { return Counts{count, count, count}; },
     [](int n) { return 2.0 * (n - 1) / n; },
     [](const Job& job, const Counts&, int64_t j) { return SumOverRanks(job, j); },
     [](const Job& job, const Counts& c, float* send, float*) {
       Check(MPI_Allreduce(MPI_IN_PLACE, send, static_cast<int>(c.param), MPI_FLOAT, MPI_SUM, job.comm), "MPI_Allreduce");
     }},
    {"all_gather", false,
     [](int64_t count, int n) { return Counts{count / n, count / n * n, count / n}; },
     [](int n) { return (n - 1) / static_cast<double>(n); },
     [](const Job&, const Counts& c, int64_t j) { return InputValue(j / c.send, j % c.send); },
     [](const Job& job, const Counts& c, float* send, float* recv) {
       const int part = static_cast<int>(c.param);
       Check(MPI_Allgather(send, part, MPI_FLOAT, recv, part, MPI_FLOAT, job.comm), "MPI_Allgather");
     }},
    {"reduce_scatter", false,
     [](int64_t count, int n) { return Counts{count / n * n, count / n, count / n}; },
     [](int n) { return (n - 1) / static_cast<double>(n); },
     [](const Job& job, const Counts& c, int64_t j) { return SumOverRanks(job, job.rank * c.recv + j); },
     [](const Job& job, const Counts& c, float* send, float* recv) {
       Check(MPI_Reduce_scatter_block(send, recv, static_cast<int>(c.param), MPI_FLOAT, MPI_SUM, job.comm), "MPI_Reduce_scatter_block");
     }},
    {"broadcast", true,
     [](int64_t count, int) { return Counts{count, count, count}; },
     [](int) { return 1.0; },
     [](const Job& job, const Counts&, int64_t j) { return InputValue(job.root, j); },
     [](const Job& job, const Counts& c, float* send, float*) {
       Check(MPI_Bcast(send, static_cast<int>(c.param), MPI_FLOAT, job.root, job.comm), "MPI_Bcast");
     }},
};

void Fill(std::vector<float>& buf, int rank) {
  for (size_t i = 0; i < buf.size(); i++) buf[i] = InputValue(rank, static_cast<int64_t>(i));
}

// "Open MPI v4.1.4, package: …" → "Open MPI v4.1.4" (no characters that need JSON escaping).
std::string LibraryVersion() {
  char text[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(text, &len);
  std::string out;
  for (int i = 0; i < len && text[i] != ',' && text[i] != '\n'; i++) {
    if (text[i] != '"' && text[i] != '\\' && static_cast<unsigned char>(text[i]) >= 0x20) out += text[i];
  }
  return out;
}

int Sweep(const Args& args, const Job& job) {
  const std::string op = args.Get("op", "all_reduce");
  const Plugin* plugin = nullptr;
  for (const Plugin& p : kPlugins) {
    if (op == p.name) plugin = &p;
  }
  if (!plugin || job.root < 0 || job.root >= job.size) {
    if (job.rank == 0) {
      std::fprintf(stderr, "usage: mpirun -np N tpkit_bench_mpi --op all_reduce|all_gather|reduce_scatter|broadcast "
                           "[--root R < N] [-b 8] [-e 64M] [-f 2] [-n 20] [-w 5]\n");
    }
    return 2;
  }
  const int64_t minBytes = args.Int("b", 8);
  const int64_t maxBytes = args.Int("e", 64 << 20);
  const int64_t factor = args.Int("f", 2);
  const int64_t iters = args.Int("n", 20);
  const int64_t warmup = args.Int("w", 5);
  if (iters < 1 || warmup < 0 || factor < 1) throw std::invalid_argument("expected -n ≥ 1, -w ≥ 0 and -f ≥ 1");

  if (job.rank == 0) {
    int major = 0, minor = 0;
    MPI_Get_version(&major, &minor);
    std::printf("{\"kind\":\"meta\",\"mpi\":\"%s\",\"mpiStandard\":\"%d.%d\",\"op\":\"%s\",\"form\":\"%s\","
                "\"worldSize\":%d,\"root\":%d,\"iters\":%lld,\"warmup\":%lld}\n",
                LibraryVersion().c_str(), major, minor, plugin->name, plugin->inPlace ? "inPlace" : "outOfPlace",
                job.size, job.root, static_cast<long long>(iters), static_cast<long long>(warmup));
    std::fflush(stdout);
  }
  for (int64_t bytes = std::max<int64_t>(1, minBytes); bytes <= maxBytes; bytes *= factor) {
    const Counts c = plugin->counts(bytes / 4, job.size);
    if (c.param > 0) {
      if (std::max(c.send, c.recv) > INT_MAX) throw std::invalid_argument("count above INT_MAX at " + std::to_string(bytes) + " bytes");
      std::vector<float> send(static_cast<size_t>(c.send));
      std::vector<float> recv(plugin->inPlace ? 0 : static_cast<size_t>(c.recv));
      Fill(send, job.rank);
      auto step = [&] { plugin->run(job, c, send.data(), recv.data()); };
      for (int64_t i = 0; i < warmup; i++) step();
      Check(MPI_Barrier(job.comm), "MPI_Barrier");
      std::vector<double> each(static_cast<size_t>(iters));
      double last = NowUs();
      for (int64_t i = 0; i < iters; i++) {
        step();
        const double now = NowUs();
        each[static_cast<size_t>(i)] = now - last;
        last = now;
      }
      const OpStats timed = MeanAndP50(each);
      const double us = timed.meanUs;
      const double p50 = timed.p50Us;

      // The timed loop changed the buffers (in-place sums accumulate): check on fresh inputs.
      Fill(send, job.rank);
      std::fill(recv.begin(), recv.end(), 0.0f);
      step();
      const std::vector<float>& out = plugin->inPlace ? send : recv;
      int64_t wrong = 0;
      for (int64_t j = 0; j < c.recv; j++) {
        if (out[static_cast<size_t>(j)] != plugin->expected(job, c, j)) wrong++;
      }
      double stats[3] = {us, static_cast<double>(wrong), p50};
      Check(MPI_Allreduce(MPI_IN_PLACE, stats, 3, MPI_DOUBLE, MPI_SUM, job.comm), "MPI_Allreduce (stats)");
      if (job.rank == 0) {
        const int64_t size = std::max(c.send, c.recv) * 4;
        const double avgUs = stats[0] / job.size;
        const double algbw = static_cast<double>(size) / 1e3 / avgUs;  // GB/s = bytes / 1e9 / s
        std::printf("{\"kind\":\"row\",\"op\":\"%s\",\"size\":%lld,\"count\":%lld,\"timeUs\":%.3f,\"p50Us\":%.3f,"
                    "\"algbw\":%.6f,\"busbw\":%.6f,\"wrong\":%lld}\n",
                    plugin->name, static_cast<long long>(size), static_cast<long long>(c.param), avgUs, stats[2] / job.size,
                    algbw, algbw * plugin->busBwFactor(job.size), static_cast<long long>(stats[1]));
        std::fflush(stdout);
      }
    }
    if (factor <= 1) break;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm comm = MPI_COMM_WORLD;
  MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  Job job{0, 1, 0, comm};
  MPI_Comm_rank(comm, &job.rank);
  MPI_Comm_size(comm, &job.size);
  int code = 0;
  try {
    Args args(argc, argv, {});
    job.root = static_cast<int>(args.Int("root", 0));
    code = Sweep(args, job);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tpkit_bench_mpi: rank %d: %s\n", job.rank, e.what());
    std::fflush(stderr);
    MPI_Abort(comm, 1);  // the other ranks may be blocked in a collective
  }
  MPI_Finalize();
  return code;
}
