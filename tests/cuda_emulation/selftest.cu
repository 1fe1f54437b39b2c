// Kernels that test the emulation harness itself (not part of pacarray): block reductions with
// shared memory, barriers and warp shuffles, a copy with the barrier left out, and misuses
// the harness must report. Valid CUDA: tests/test_cuda_nvrtc.py compiles this file too.

// out[block] = sum of x over the block's slice: shuffles within each warp, one partial sum per
// warp in shared memory, then warp 0 adds the partials.
template <typename T>
__global__ void selftest_block_sum(const T* x, int n, T* out) {
    __shared__ T partial[32];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int lane = threadIdx.x % warpSize;
    const int warp = threadIdx.x / warpSize;
    T value = i < n ? x[i] : T(0);
    for (int offset = warpSize / 2; offset > 0; offset /= 2) {
        value += __shfl_down_sync(0xffffffffu, value, offset);
    }
    if (lane == 0) partial[warp] = value;
    __syncthreads();
    if (warp == 0) {
        const int warps = (blockDim.x + warpSize - 1) / warpSize;
        value = lane < warps ? partial[lane] : T(0);
        for (int offset = warpSize / 2; offset > 0; offset /= 2) {
            value += __shfl_down_sync(0xffffffffu, value, offset);
        }
        if (lane == 0) out[blockIdx.x] = value;
    }
}

// out[i] = x[block_start + (i + 1) % blockDim] through shared memory, without the barrier
// between the stores and the loads: a race that one of the two resume orders exposes.
__global__ void selftest_rotate_missing_barrier(const double* x, double* out) {
    __shared__ double tile[1024];
    const int base = blockIdx.x * blockDim.x;
    tile[threadIdx.x] = x[base + threadIdx.x];
    out[base + threadIdx.x] = tile[(threadIdx.x + 1) % blockDim.x];
}

// The same with the barrier: right in both orders.
__global__ void selftest_rotate(const double* x, double* out) {
    __shared__ double tile[1024];
    const int base = blockIdx.x * blockDim.x;
    tile[threadIdx.x] = x[base + threadIdx.x];
    __syncthreads();
    out[base + threadIdx.x] = tile[(threadIdx.x + 1) % blockDim.x];
}

// Every lane receives its warp's total (xor butterfly).
__global__ void selftest_warp_allreduce(const double* x, double* out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    double value = x[i];
    for (int mask = warpSize / 2; mask > 0; mask /= 2) {
        value += __shfl_xor_sync(0xffffffffu, value, mask);
    }
    out[i] = value;
}

// Misuse: a barrier that only the first threads reach.
__global__ void selftest_divergent_barrier(int* out) {
    if (threadIdx.x < 7) __syncthreads();
    out[threadIdx.x] = 1;
}

// Misuse: a full-warp shuffle that only some lanes execute.
__global__ void selftest_divergent_shuffle(int* out) {
    int value = threadIdx.x;
    if (threadIdx.x % 2 == 0) value = __shfl_xor_sync(0xffffffffu, value, 1);
    out[threadIdx.x] = value;
}
