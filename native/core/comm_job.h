// What the Gloo and shared-memory communicators share about their jobs: the pending count that keeps the
// process alive while operations are queued, and settling a job's Promise on the main thread.
#pragma once

#include <napi.h>

#include <sstream>
#include <string>
#include <vector>

#include "async_work.h"

namespace tpkit {

// A job's state must have `int pending`, `bool stopping` and a thread-safe function `tsfn`; a job must have
// `deferred`, `state` (pointer to that state or null), `code` and `message` (empty code: success).

// Ticks the pending count and refs the completion function so the process stays alive while ops are queued.
template <class State>
void EnterPending(State& s, Napi::Env env) {
  if (s.pending++ == 0) s.tsfn.Ref(env);
}

// Drops one pending op. Once stopping, the communicator's thread releases the function itself; touching it
// again would race that.
template <class State>
void LeavePending(State& s, Napi::Env env) {
  if (--s.pending == 0 && !s.stopping) s.tsfn.Unref(env);
}

// Resolves or rejects (TpkitError with the job's code) the job's Promise, drops its pending count, frees it.
// While the environment is shutting down (a settlement that arrives as the process exits) no JavaScript can run:
// node-addon-api then throws, and an exception escaping a thread-safe-function callback would abort the process.
template <class Job>
void SettleCodedJob(Napi::Env env, Job* job, const char* backend) {
  if (env != nullptr) {
    try {
      if (job->code.empty()) {
        job->deferred.Resolve(env.Undefined());
      } else {
        job->deferred.Reject(MakeTpkitError(env, job->code, job->message, backend).Value());
      }
    } catch (const Napi::Error&) {
    }
    if (job->state != nullptr) LeavePending(*job->state, env);
  }
  delete job;
}

// Reads a JS array of `n` row counts (non-negative integers up to `max`) for an uneven all-to-all.
inline std::vector<int64_t> SplitArg(const Napi::CallbackInfo& info, size_t i, const char* name, int n, int64_t max) {
  if (!info[i].IsArray()) throw Napi::TypeError::New(info.Env(), std::string("Expected array for ") + name);
  auto a = info[i].As<Napi::Array>();
  if (a.Length() != static_cast<uint32_t>(n)) {
    throw Napi::RangeError::New(info.Env(), std::string("Expected ") + std::to_string(n) + " entries for " + name);
  }
  std::vector<int64_t> out(static_cast<size_t>(n));
  for (int r = 0; r < n; r++) {
    Napi::Value v = a.Get(static_cast<uint32_t>(r));
    const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1.0;
    if (!(d >= 0) || d != static_cast<double>(static_cast<int64_t>(d)) || d > static_cast<double>(max)) {
      throw Napi::RangeError::New(info.Env(), std::string("Expected non-negative integers for ") + name);
    }
    out[static_cast<size_t>(r)] = static_cast<int64_t>(d);
  }
  return out;
}

// `all` holds every rank's [input split sizes, output split sizes] (2n words per rank, rank-major). Returns
// where they disagree (rank i's output split j must equal rank j's input split i; at most 8 named), or "".
inline std::string SplitMismatch(const std::vector<int64_t>& all, int n) {
  const size_t words = 2 * static_cast<size_t>(n);
  std::ostringstream bad;
  int shown = 0;
  for (int i = 0; i < n; i++) {
    for (int j = 0; j < n; j++) {
      const int64_t expects = all[words * i + n + j];  // rank i's outputSplitSizes[j]
      const int64_t sends = all[words * j + i];        // rank j's inputSplitSizes[i]
      if (expects != sends && shown++ < 8) {
        bad << (shown > 1 ? "; " : "") << "rank " << i << " expects " << expects << " rows from rank " << j
            << ", which sends " << sends;
      }
    }
  }
  return bad.str();
}

// The arguments of allToAllV(input, output, rowElems, inputSplits, outputSplits, seq, dtype, …), as both
// communicators take them: validated, with the row totals and the buffers checked against them.
struct AllToAllVArgs {
  int64_t rowElems, inRows, outRows, seq, dtype;
  std::vector<int64_t> inSplits, outSplits;
  float* in;
  float* out;
};
inline AllToAllVArgs ReadAllToAllV(const Napi::CallbackInfo& info, int n, int64_t maxCount) {
  AllToAllVArgs a{};
  a.rowElems = IntArg(info, 2, "rowElems", 0, maxCount);
  a.inSplits = SplitArg(info, 3, "inputSplitSizes", n, maxCount);
  a.outSplits = SplitArg(info, 4, "outputSplitSizes", n, maxCount);
  for (int r = 0; r < n; r++) {
    a.inRows += a.inSplits[static_cast<size_t>(r)];
    a.outRows += a.outSplits[static_cast<size_t>(r)];
  }
  if (a.inRows * a.rowElems > maxCount || a.outRows * a.rowElems > maxCount) {
    throw Napi::RangeError::New(info.Env(), "allToAllV is too large");
  }
  a.in = F32Data(info[0], static_cast<size_t>(a.inRows * a.rowElems), "input");
  a.out = F32Data(info[1], static_cast<size_t>(a.outRows * a.rowElems), "output");
  a.seq = IntArg(info, 5, "seq", 0, int64_t{1} << 31);
  a.dtype = IntArg(info, 6, "dtype", 0, 2);
  return a;
}

}  // namespace tpkit
