// What the Gloo and shared-memory communicators share about their jobs: the pending count that keeps the
// process alive while operations are queued, and settling a job's Promise on the main thread.
#pragma once

#include <napi.h>

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

}  // namespace tpkit
