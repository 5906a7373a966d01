// Raw Gloo all-reduce sweep, the peer of `tpkit bench collectives --op all_reduce`: the same sizes, inputs,
// warm-up and timing rule as the TypeScript harness, with no Node, addon, promise or consistency check in
// between. Each of N processes is started with its rank; they rendezvous through a gloo FileStore in a
// shared directory and connect a full mesh over the TCP transport.
//
//   tpkit_bench_gloo --rank R --size N --store DIR [--hostname 127.0.0.1] [-b 8] [-e 64M] [-f 2] [-n 20]
//                    [-w 5] [--timeout-ms 300000] [--check-exchange]
//
// Timing (nccl-tests): warm-up, barrier, then n blocking all-reduces back to back; time per op = elapsed / n,
// averaged over ranks; p50 = the median of the per-op times, averaged over ranks. Then the input is re-initialised, one more all-reduce runs, and #wrong counts the
// elements differing from the sum computed from the predictable inputs (summed over ranks).
// --check-exchange adds before every all-reduce the 56-byte descriptor all-gather tpkit's GlooComm performs
// when TPKIT_CHECK is on, to attribute the cost of that check.
//
// Output (rank 0, stdout): one JSON object per line — {"kind":"meta",…} then {"kind":"row",…} per size.
#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/config.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/file_store.h>
#include <gloo/rendezvous/prefix_store.h>
#include <gloo/transport/tcp/device.h>

#include <sched.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <memory>
#include <vector>

#include "bench_common.h"

using tpkit_bench::Args;
using tpkit_bench::InputValue;
using tpkit_bench::NowUs;
using tpkit_bench::MeanAndP50;
using tpkit_bench::OpStats;

namespace {

void Fill(std::vector<float>& buf, int rank) {
  for (size_t i = 0; i < buf.size(); i++) buf[i] = InputValue(rank, static_cast<int64_t>(i));
}

void AllReduceF32(const std::shared_ptr<gloo::Context>& ctx, float* data, size_t count, uint32_t tag = 0) {
  gloo::AllreduceOptions opts(ctx);
  opts.setOutput(data, count);
  opts.setTag(tag);
  opts.setReduceFunction(static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>));
  gloo::allreduce(opts);
}

void SumDoubles(const std::shared_ptr<gloo::Context>& ctx, double* data, size_t count) {
  gloo::AllreduceOptions opts(ctx);
  opts.setOutput(data, count);
  opts.setReduceFunction(static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<double>));
  opts.setTag(7);
  gloo::allreduce(opts);
}

// What tpkit's GlooState::Agree does before every collective: all-gather 7 int64 words and compare.
void Exchange(const std::shared_ptr<gloo::Context>& ctx, int64_t seq, int64_t count) {
  int64_t mine[7] = {seq, 1, 0, count, -1, 0, -1};
  std::vector<int64_t> all(7 * static_cast<size_t>(ctx->size));
  gloo::AllgatherOptions opts(ctx);
  opts.setInput(mine, 7);
  opts.setOutput(all.data(), all.size());
  opts.setTag(static_cast<uint32_t>(seq * 2));
  gloo::allgather(opts);
  for (size_t i = 0; i < all.size(); i++) {
    if (all[i] != mine[i % 7]) throw std::runtime_error("descriptor mismatch");
  }
}

// One thread that runs the functions handed to it, one at a time, while the caller waits.
class Worker {
 public:
  Worker() : thread_([this] { Loop(); }) {}
  ~Worker() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void Run(const std::function<void()>& fn) {
    std::unique_lock<std::mutex> lock(mu_);
    fn_ = &fn;
    done_ = false;
    error_ = nullptr;
    cv_.notify_all();
    cv_.wait(lock, [&] { return done_; });
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || fn_ != nullptr; });
      if (stop_) return;
      const std::function<void()>* fn = fn_;
      fn_ = nullptr;
      lock.unlock();
      std::exception_ptr err;
      try {
        (*fn)();
      } catch (...) {
        err = std::current_exception();
      }
      lock.lock();
      error_ = err;
      done_ = true;
      cv_.notify_all();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  const std::function<void()>* fn_ = nullptr;
  bool done_ = false;
  bool stop_ = false;
  std::exception_ptr error_;
  std::thread thread_;
};

}  // namespace

int main(int argc, char** argv) {
  try {
    Args args(argc, argv, {"check-exchange", "handoff", "tag-per-op"});
    const int rank = static_cast<int>(args.Int("rank", -1));
    const int size = static_cast<int>(args.Int("size", -1));
    const std::string storeDir = args.Get("store", "");
    if (rank < 0 || size < 1 || rank >= size || storeDir.empty()) {
      std::fprintf(stderr, "usage: tpkit_bench_gloo --rank R --size N --store DIR [-b 8] [-e 64M] [-f 2] [-n 20] [-w 5]\n");
      return 2;
    }
    const int64_t minBytes = args.Int("b", 8);
    const int64_t maxBytes = args.Int("e", 64 << 20);
    const int64_t factor = args.Int("f", 2);
    const int64_t iters = args.Int("n", 20);
    const int64_t warmup = args.Int("w", 5);
    const bool exchange = args.Has("check-exchange");
    // Ablations of tpkit's design: --handoff runs every operation on a second thread while the calling thread
    // waits on a condition variable (tpkit's JS thread → communicator thread path); --tag-per-op gives every
    // all-reduce its own tag (tpkit tags by sequence number).
    const bool handoff = args.Has("handoff");
    const bool tagPerOp = args.Has("tag-per-op");
    const std::chrono::milliseconds timeout(args.Int("timeout-ms", 300000));

    // FileStore needs an existing directory; every rank may create it (the others see EEXIST).
    if (mkdir(storeDir.c_str(), 0700) != 0 && errno != EEXIST) {
      throw std::runtime_error("cannot create store directory " + storeDir + ": " + std::strerror(errno));
    }
    gloo::transport::tcp::attr attr;
    attr.hostname = args.Get("hostname", "127.0.0.1");
    // --device-nice N: create the device (whose constructor starts Gloo's I/O loop thread) from a helper thread
    // running at nice N, which the loop thread inherits; "idle" uses SCHED_IDLE instead.
    std::shared_ptr<gloo::transport::Device> device;
    const std::string deviceNice = args.Get("device-nice", "");
    std::thread([&] {
      if (deviceNice == "idle") {
        sched_param sp{};
        sched_setscheduler(0, SCHED_IDLE, &sp);
      } else if (!deviceNice.empty()) {
        setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), std::stoi(deviceNice));
      }
      device = gloo::transport::tcp::CreateDevice(attr);
    }).join();
    gloo::rendezvous::FileStore fileStore(storeDir);
    gloo::rendezvous::PrefixStore store(args.Get("prefix", "tpkit-bench"), fileStore);
    auto ctx = std::make_shared<gloo::rendezvous::Context>(rank, size);
    ctx->setTimeout(timeout);
    const double rdzv0 = NowUs();
    ctx->connectFullMesh(store, device);
    const double rdzvUs = NowUs() - rdzv0;

    if (rank == 0) {
      std::printf("{\"kind\":\"meta\",\"gloo\":\"%d.%d.%d\",\"worldSize\":%d,\"iters\":%lld,\"warmup\":%lld,"
                  "\"checkExchange\":%s,\"rendezvousUs\":%.1f}\n",
                  GLOO_VERSION_MAJOR, GLOO_VERSION_MINOR, GLOO_VERSION_PATCH, size, static_cast<long long>(iters),
                  static_cast<long long>(warmup), exchange ? "true" : "false", rdzvUs);
      std::fflush(stdout);
    }
    int64_t seq = 0;
    Worker worker;
    for (int64_t bytes = minBytes; bytes <= maxBytes; bytes *= factor) {
      const size_t count = static_cast<size_t>(bytes / 4);
      if (count > 0) {
        std::vector<float> buf(count);
        Fill(buf, rank);
        auto step = [&]() {
          const int64_t s0 = seq;
          if (exchange) Exchange(ctx, seq++, static_cast<int64_t>(count));
          AllReduceF32(ctx, buf.data(), count, tagPerOp ? static_cast<uint32_t>(s0 * 2 + 1) : 0);
          if (tagPerOp && !exchange) seq++;
        };
        for (int64_t i = 0; i < warmup; i++) handoff ? worker.Run(step) : step();
        gloo::BarrierOptions bopts(ctx);
        gloo::barrier(bopts);
        std::vector<double> each(static_cast<size_t>(iters));
        double last = NowUs();
        for (int64_t i = 0; i < iters; i++) {
          handoff ? worker.Run(step) : step();
          const double now = NowUs();
          each[static_cast<size_t>(i)] = now - last;
          last = now;
        }
        const OpStats timed = MeanAndP50(each);
        const double us = timed.meanUs;
        const double p50 = timed.p50Us;

        Fill(buf, rank);
        AllReduceF32(ctx, buf.data(), count);
        int64_t wrong = 0;
        for (size_t i = 0; i < count; i++) {
          float expect = 0;
          for (int r = 0; r < size; r++) expect += InputValue(r, static_cast<int64_t>(i));
          if (buf[i] != expect) wrong++;
        }
        double stats[3] = {us, static_cast<double>(wrong), p50};
        if (size > 1) SumDoubles(ctx, stats, 3);
        if (rank == 0) {
          const double avgUs = stats[0] / size;
          const double algbw = static_cast<double>(count * 4) / 1e3 / avgUs;  // GB/s = bytes / 1e9 / s
          const double busbw = algbw * 2.0 * (size - 1) / size;
          std::printf("{\"kind\":\"row\",\"size\":%zu,\"count\":%zu,\"timeUs\":%.3f,\"p50Us\":%.3f,\"algbw\":%.6f,"
                      "\"busbw\":%.6f,\"wrong\":%lld}\n",
                      count * 4, count, avgUs, stats[2] / size, algbw, busbw, static_cast<long long>(stats[1]));
          std::fflush(stdout);
        }
      }
      if (factor <= 1) break;
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tpkit_bench_gloo: %s\n", e.what());
    return 1;
  }
}
