// ParallelFor over XLA's intra-op thread pool, for jaxconv's FFI handlers (cpu_conv_grads.cc,
// cpu_gated_sampler.cc). native_build.py keys each library on this header's text too.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace jaxconv {

// Runs work(0), ..., work(count - 1), each once, on the calling thread and the pool's threads, and returns
// when all are done. A pool task that starts after every item is taken touches nothing but the counters,
// which it keeps alive through its shared_ptr: so the caller waits only for items in progress, never for a
// queued task (no deadlock when every pool thread is itself waiting in such a call).
inline void ParallelFor(xla::ffi::ThreadPool& pool, int64_t count, std::function<void(int64_t)> work) {
  struct State {
    std::function<void(int64_t)> work;
    int64_t count;
    std::atomic<int64_t> next{0}, done{0};

    void Run() {
      for (int64_t k; (k = next.fetch_add(1)) < count;) {
        work(k);
        done.fetch_add(1, std::memory_order_release);
      }
    }
  };
  auto state = std::make_shared<State>();
  state->work = std::move(work);
  state->count = count;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), count) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([state] { state->Run(); });
  state->Run();
  while (state->done.load(std::memory_order_acquire) < count) std::this_thread::yield();
}

}  // namespace jaxconv
