// Host emulation of the CUDA built-ins that pacarray's kernels use, so that the unmodified .cu
// files compile with g++ and run on the CPU (docs/design.md §5).
//
// Model. A launch runs its blocks on a few worker OS threads, one block at a time per worker.
// threadIdx/blockIdx/blockDim/gridDim are thread_local, and so is __shared__ memory, so the
// threads of one block (which all run on the worker's OS thread) share it. A block runs in one
// of two modes:
//   * plain: the kernel is called once per thread, one after the other. For kernels without
//     barriers; a barrier or a warp shuffle there is an error (the kernel must be declared
//     synchronizing).
//   * fibers: every CUDA thread is a user-space fiber with its own stack, started with
//     ucontext once and switched with _setjmp/_longjmp afterwards. __syncthreads and warp
//     shuffles are cooperative yields: a fiber waits until every thread of its block (its warp,
//     for a shuffle) has arrived. The scheduler resumes the runnable fibers in forward or in
//     reverse order, so a missing barrier shows up as a wrong result in one of the two orders.
//     A barrier that only some threads reach, or a shuffle that only some lanes reach, is
//     reported as an error instead of hanging.
// Build with -std=c++20 -O2 -mfma -fno-extern-tls-init -U_FORTIFY_SOURCE (longjmp_chk would
// reject jumps between fiber stacks).
#pragma once

#include <setjmp.h>
#include <ucontext.h>

#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __shared__ thread_local
#define __align__(n) alignas(n)
#define __restrict__ __restrict

struct uint3 {
    unsigned x = 0, y = 0, z = 0;
};

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
constexpr int warpSize = 32;

namespace pac_emu {

// Raised by a kernel that misuses synchronization; the launcher turns it into an error code.
struct KernelError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

enum class State { runnable, at_block_barrier, at_warp_barrier, done };

struct Fiber {
    jmp_buf context;
    ucontext_t start;
    State state = State::runnable;
    bool started = false;
    int phase = 0;  // which of the warp's two exchange buffers the next shuffle uses
    uint3 index;
};

using Thunk = void (*)(void**);

// The per-worker scheduler state. A worker runs one block at a time.
struct Runner {
    static constexpr std::size_t stack_bytes = 64 * 1024;

    bool fiber_mode = false;
    Thunk body = nullptr;
    void** args = nullptr;
    std::vector<Fiber> fibers;
    std::unique_ptr<char[]> stacks;
    std::size_t stack_count = 0;
    int current = -1;
    jmp_buf scheduler;
    std::vector<std::uint64_t> exchange;  // [warp][phase][lane] shuffle slots
    std::string error;
};

inline thread_local Runner* active_runner = nullptr;

inline Runner& runner() { return *active_runner; }

inline int linear_thread() {
    return (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
}

// Back to the scheduler, to be resumed later at this point.
inline void yield(State state) {
    Runner& r = runner();
    Fiber& f = r.fibers[r.current];
    f.state = state;
    if (!_setjmp(f.context)) _longjmp(r.scheduler, 1);
}

[[noreturn]] inline void fiber_main() {
    Runner* r = active_runner;
    for (;;) {
        r->body(r->args);
        yield(State::done);
    }
}

inline void block_barrier() {
    Runner& r = runner();
    if (!r.fiber_mode) {
        throw KernelError("__syncthreads in a kernel not declared synchronizing");
    }
    yield(State::at_block_barrier);
}

// Lane `source(lane)`'s value of `value` for every lane of the warp (a warp-wide exchange).
template <typename T, typename Source>
T warp_exchange(T value, Source source) {
    static_assert(sizeof(T) <= sizeof(std::uint64_t), "shuffle of a type wider than 8 bytes");
    Runner& r = runner();
    if (!r.fiber_mode) {
        throw KernelError("warp shuffle in a kernel not declared synchronizing");
    }
    const int thread = linear_thread();
    const int warp = thread / warpSize;
    const int lane = thread % warpSize;
    Fiber& f = r.fibers[thread];
    std::uint64_t* slots = r.exchange.data() + (std::size_t)(2 * warp + f.phase) * warpSize;
    std::memcpy(&slots[lane], &value, sizeof(T));
    yield(State::at_warp_barrier);
    const int from = source(lane);
    T result = value;
    if (from >= 0) std::memcpy(&result, &slots[from], sizeof(T));
    r.fibers[thread].phase ^= 1;
    return result;
}

// One block in fiber mode: resume runnable fibers in order until all are done.
inline bool run_fibers(Runner& r, int count, bool reverse) {
    auto resume = [&](int i) {
        Fiber& f = r.fibers[i];
        r.current = i;
        threadIdx = f.index;
        if (!_setjmp(r.scheduler)) {
            if (!f.started) {
                f.started = true;
                getcontext(&f.start);
                f.start.uc_stack.ss_sp = r.stacks.get() + (std::size_t)i * Runner::stack_bytes;
                f.start.uc_stack.ss_size = Runner::stack_bytes;
                f.start.uc_link = nullptr;
                makecontext(&f.start, (void (*)())fiber_main, 0);
                setcontext(&f.start);
            }
            _longjmp(f.context, 1);
        }
    };
    auto fail = [&](const std::string& message) {
        r.error = message;
        // The suspended fibers are abandoned; they restart from scratch next time.
        for (int i = 0; i < count; ++i) r.fibers[i].started = false;
        return false;
    };
    const int warps = (count + warpSize - 1) / warpSize;
    for (;;) {
        for (int k = 0; k < count; ++k) {
            const int i = reverse ? count - 1 - k : k;
            if (r.fibers[i].state == State::runnable) resume(i);
        }
        int done = 0, at_block = 0;
        for (int i = 0; i < count; ++i) {
            done += r.fibers[i].state == State::done;
            at_block += r.fibers[i].state == State::at_block_barrier;
        }
        if (done == count) return true;
        bool released = false;
        for (int w = 0; w < warps; ++w) {
            const int first = w * warpSize;
            const int last = first + warpSize < count ? first + warpSize : count;
            int waiting = 0;
            for (int i = first; i < last; ++i) {
                waiting += r.fibers[i].state == State::at_warp_barrier;
            }
            if (waiting == 0) continue;
            if (waiting != last - first) {
                return fail("warp shuffle reached by only some lanes of warp " + std::to_string(w));
            }
            for (int i = first; i < last; ++i) r.fibers[i].state = State::runnable;
            released = true;
        }
        if (released) continue;
        if (at_block == count) {
            for (int i = 0; i < count; ++i) r.fibers[i].state = State::runnable;
            continue;
        }
        return fail("__syncthreads reached by " + std::to_string(at_block) + " of " +
                    std::to_string(count) + " threads (" + std::to_string(done) +
                    " had returned)");
    }
}

inline void prepare_fibers(Runner& r, int count) {
    if ((int)r.fibers.size() < count) r.fibers.resize(count);
    if (r.stack_count < (std::size_t)count) {
        // Fibers hold pointers into the old stacks: restart them all on the new ones.
        r.stacks.reset(new char[(std::size_t)count * Runner::stack_bytes]);
        r.stack_count = count;
        for (Fiber& f : r.fibers) f.started = false;
    }
    r.exchange.assign((std::size_t)2 * warpSize * ((count + warpSize - 1) / warpSize), 0);
}

}  // namespace pac_emu

inline void __syncthreads() { pac_emu::block_barrier(); }

template <typename T>
T __shfl_sync(unsigned, T value, int source_lane, int width = warpSize) {
    return pac_emu::warp_exchange(value, [=](int lane) {
        return (lane / width) * width + ((source_lane % width) + width) % width;
    });
}

template <typename T>
T __shfl_down_sync(unsigned, T value, unsigned delta, int width = warpSize) {
    return pac_emu::warp_exchange(value, [=](int lane) {
        return (lane % width) + (int)delta < width ? lane + (int)delta : -1;
    });
}

template <typename T>
T __shfl_xor_sync(unsigned, T value, int lane_mask, int width = warpSize) {
    return pac_emu::warp_exchange(value, [=](int lane) {
        const int other = lane ^ lane_mask;
        return other / width == lane / width ? other : -1;
    });
}

template <typename T>
T atomicAdd(T* address, T value) {
    return std::atomic_ref<T>(*address).fetch_add(value, std::memory_order_relaxed);
}

template <typename T>
T __ldg(const T* address) {
    return *address;
}
