// The emulated cuLaunchKernel: a kernel registry entry per template instantiation, arguments
// as void** checked against the kernel's parameter types, blocks spread over worker threads.
// Included after the .cu files by the translation unit that tests/cuda_emulation/emulator.py
// generates; that unit defines the registry and the C entry point pac_emu_launch.
#pragma once

#include <algorithm>
#include <exception>
#include <mutex>
#include <thread>

#include "cuda_emulation.h"

namespace pac_emu {

// One character per parameter type, matched against what the Python side packs.
template <typename T>
constexpr char kind_of() {
    if constexpr (std::is_pointer_v<T>) return 'p';
    else if constexpr (std::is_same_v<T, float>) return 'f';
    else if constexpr (std::is_same_v<T, double>) return 'd';
    else if constexpr (std::is_same_v<T, int>) return 'i';
    else if constexpr (std::is_same_v<T, long long>) return 'q';
    else if constexpr (std::is_same_v<T, bool>) return '?';
    else return 'x';  // no Python packing produces this: always a mismatch
}

template <auto F>
struct Kernel;

template <typename... A, void (*F)(A...)>
struct Kernel<F> {
    static constexpr char kinds[] = {kind_of<A>()..., '\0'};

    static void thunk(void** args) { call(args, std::index_sequence_for<A...>{}); }

    template <std::size_t... I>
    static void call(void** args, std::index_sequence<I...>) {
        F(*static_cast<std::remove_cv_t<A>*>(args[I])...);
    }
};

struct Entry {
    const char* name;
    Thunk thunk;
    const char* kinds;
    bool synchronizing;
};

template <auto F>
constexpr Entry entry(const char* name, bool synchronizing) {
    return Entry{name, &Kernel<F>::thunk, Kernel<F>::kinds, synchronizing};
}

inline void run_block(Runner& r, const Entry& e, unsigned block_linear, const dim3& grid,
                      const dim3& block, bool reverse) {
    blockIdx = uint3{block_linear % grid.x, (block_linear / grid.x) % grid.y,
                     block_linear / (grid.x * grid.y)};
    const int count = (int)(block.x * block.y * block.z);
    auto index_of = [&](int i) {
        return uint3{i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
    };
    if (!r.fiber_mode) {
        for (int k = 0; k < count; ++k) {
            threadIdx = index_of(reverse ? count - 1 - k : k);
            e.thunk(r.args);
        }
        return;
    }
    for (int i = 0; i < count; ++i) {
        r.fibers[i].state = State::runnable;
        r.fibers[i].phase = 0;
        r.fibers[i].index = index_of(i);
    }
    if (!run_fibers(r, count, reverse)) throw KernelError(r.error);
}

// Returns 0, or non-zero with a message in `error`.
inline int launch(const Entry* registry, std::size_t registry_size, const char* name,
                  const unsigned* grid_xyz, const unsigned* block_xyz, std::size_t shared_bytes,
                  void** args, const char* kinds, int reverse, int workers, char* error,
                  std::size_t error_size) {
    auto report = [&](const std::string& message) {
        std::snprintf(error, error_size, "%s: %s", name, message.c_str());
        return 1;
    };
    const Entry* found = nullptr;
    for (std::size_t i = 0; i < registry_size; ++i) {
        if (std::strcmp(registry[i].name, name) == 0) found = &registry[i];
    }
    if (!found) return report("no such kernel in the emulation build");
    if (std::strcmp(found->kinds, kinds) != 0) {
        return report(std::string("argument kinds '") + kinds + "' do not match the parameters '" +
                      found->kinds + "'");
    }
    if (shared_bytes != 0) return report("dynamic shared memory is not emulated");
    const dim3 grid{grid_xyz[0], grid_xyz[1], grid_xyz[2]};
    const dim3 block{block_xyz[0], block_xyz[1], block_xyz[2]};
    const unsigned threads = block.x * block.y * block.z;
    if (threads == 0 || threads > 1024) return report("block of " + std::to_string(threads) + " threads");
    const unsigned blocks = grid.x * grid.y * grid.z;
    if (blocks == 0) return report("empty grid");

    std::atomic<unsigned> next{0};
    std::mutex failure_lock;
    std::string failure;
    auto work = [&]() {
        Runner r;
        r.fiber_mode = found->synchronizing;
        r.body = found->thunk;
        r.args = args;
        active_runner = &r;
        gridDim = grid;
        blockDim = block;
        if (r.fiber_mode) prepare_fibers(r, (int)threads);
        try {
            for (unsigned b = next++; b < blocks; b = next++) {
                {
                    std::lock_guard<std::mutex> guard(failure_lock);
                    if (!failure.empty()) break;
                }
                run_block(r, *found, b, grid, block, reverse != 0);
            }
        } catch (const std::exception& exception) {
            std::lock_guard<std::mutex> guard(failure_lock);
            if (failure.empty()) failure = exception.what();
        }
        active_runner = nullptr;
    };
    const int count = std::max(1, std::min<int>(workers, (int)blocks));
    std::vector<std::thread> pool;
    for (int w = 1; w < count; ++w) pool.emplace_back(work);
    work();
    for (std::thread& t : pool) t.join();
    if (!failure.empty()) return report(failure);
    return 0;
}

}  // namespace pac_emu
