// What both gloo-backend communicators (Gloo TCP, native/core/gloo_comm.cc; shared memory, shm_comm.cc) share
// about a collective: its op codes and names, the descriptor every rank must agree on before data moves, how a
// descriptor reads in a message, and the COLLECTIVE_MISMATCH errors built from every rank's view.
#pragma once

#include <napi.h>

#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>
#include <utility>

#include "async_work.h"

namespace tpkit {

enum Op : int64_t { kAllReduce = 1, kAllGather, kReduceScatter, kBroadcast, kAllToAll, kBarrier, kAllToAllV };
inline const char* OpName(int64_t op) {
  switch (op) {
    case kAllReduce: return "allReduce";
    case kAllGather: return "allGather";
    case kReduceScatter: return "reduceScatter";
    case kBroadcast: return "broadcast";
    case kAllToAll: return "allToAll";
    case kBarrier: return "barrier";
    case kAllToAllV: return "allToAllV";
    default: return "unknown";
  }
}
inline const char* DtypeName(int64_t d) {
  switch (d) {
    case 0: return "float32";
    case 1: return "float16";
    case 2: return "bfloat16";
    default: return "unknown";
  }
}
inline const char* RedopName(int64_t r) {
  switch (r) {
    case 0: return "sum";
    case 1: return "prod";
    case 2: return "max";
    case 3: return "min";
    case 4: return "avg";
    default: return "-";
  }
}

// What every rank must agree on before data moves: everything the op's result depends on. `ndim`/`dims`: the
// tensor's shape, for the ops whose result depends on it beyond the element count (all-gather along a dim,
// reduce-scatter along a dim, all-to-all of rows); 0 (no shape) for the elementwise ones.
constexpr int kMaxDims = 8;
struct Descriptor {
  int64_t seq, op, dtype, count, root, redop, dim;
  int64_t ndim;
  int64_t dims[kMaxDims];
  Descriptor() = default;  // trivial: blocks are copied in and out with memcpy
  Descriptor(int64_t seq_, int64_t op_, int64_t dtype_, int64_t count_, int64_t root_, int64_t redop_, int64_t dim_)
      : seq(seq_), op(op_), dtype(dtype_), count(count_), root(root_), redop(redop_), dim(dim_), ndim(0), dims{} {}
};
inline std::string Describe(const Descriptor& d) {
  std::ostringstream s;
  s << OpName(d.op) << "(seq " << d.seq << ", " << DtypeName(d.dtype) << ", count " << d.count;
  if (d.op == kAllReduce || d.op == kReduceScatter) s << ", op " << RedopName(d.redop);
  if (d.op == kBroadcast) s << ", root " << d.root;
  if (d.op == kAllGather || d.op == kReduceScatter) s << ", dim " << d.dim;
  if (d.ndim > 0 && d.ndim <= kMaxDims) {
    s << ", shape [";
    for (int64_t i = 0; i < d.ndim; i++) s << (i ? ", " : "") << d.dims[i];
    s << "]";
  }
  s << ")";
  return s.str();
}

// Reads the optional shape argument `i` (at most kMaxDims non-negative integers) into the descriptor.
inline void ShapeArg(const Napi::CallbackInfo& info, size_t i, Descriptor& d) {
  if (i >= info.Length() || info[i].IsUndefined()) return;
  if (!info[i].IsArray()) throw Napi::TypeError::New(info.Env(), "Expected array for shape");
  auto a = info[i].As<Napi::Array>();
  if (a.Length() > kMaxDims) throw Napi::RangeError::New(info.Env(), "Expected at most 8 dimensions for shape");
  d.ndim = a.Length();
  for (uint32_t k = 0; k < a.Length(); k++) {
    Napi::Value v = a.Get(k);
    const double x = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1.0;
    if (!(x >= 0) || x != static_cast<double>(static_cast<int64_t>(x)) || x > static_cast<double>(int64_t{1} << 40)) {
      throw Napi::RangeError::New(info.Env(), "Expected non-negative integers for shape");
    }
    d.dims[k] = static_cast<int64_t>(x);
  }
}

// The mismatch every rank reports when the descriptors of one op differ: every rank's view, `descOf(q)` giving
// rank q's descriptor.
template <class DescOf>
CodedError DescriptorMismatch(int64_t seq, int rank, int size, DescOf descOf) {
  std::ostringstream s;
  s << "collective mismatch at sequence number " << seq << " (seen by rank " << rank << "): ";
  for (int q = 0; q < size; q++) s << (q ? "; " : "") << "rank " << q << ": " << Describe(descOf(q));
  return CodedError{"COLLECTIVE_MISMATCH", s.str()};
}

// The same with TPKIT_CHECK=off, where only (op, element count) are compared: `opCountOf(q)` gives rank q's pair.
template <class OpCountOf>
CodedError OpCountMismatch(int64_t seq, int rank, int size, OpCountOf opCountOf) {
  std::ostringstream s;
  s << "collective mismatch at sequence number " << seq << " (seen by rank " << rank
    << "): operations or element counts differ across ranks (TPKIT_CHECK=off): ";
  for (int q = 0; q < size; q++) {
    const std::pair<int64_t, int64_t> oc = opCountOf(q);
    s << (q ? "; " : "") << "rank " << q << ": " << OpName(oc.first) << " of " << oc.second << " elements";
  }
  return CodedError{"COLLECTIVE_MISMATCH", s.str()};
}

}  // namespace tpkit
