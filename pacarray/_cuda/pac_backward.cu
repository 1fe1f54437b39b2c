// Backward kernel of pacarray's CUDA backend: the vector-Jacobian products of pac_fill (the
// materialized K), of pac_direct in depthwise mode (pooling, shared filters) and of the
// K-weighted patches of the cuBLAS convolution path.
//
// One thread per output item (n, kernel channel group, oz, oy, ox), like the forward kernels, in
// three spatial dimensions (1-D and 2-D calls arrive lifted, see pac_common.cuh). The
// item first walks its taps to get the normalizer Z and S = sum_t gK_t U_t (U = kappa G M, the
// unnormalized kernel, gK the gradient of the normalized K = U/Z), then walks them again
// pushing gradients back:
//   * to x, the guide (neighbour side) and the mask with atomicAdd (many items touch one
//     element);
//   * to the centre features by plain read-modify-write (each item owns its centre position);
//   * to the explicit K by plain stores (each item owns its entries);
//   * to the small parameters (tap weights, spatial weight, alpha, lambda) through per-block
//     sums: warp shuffles, then shared memory, then one atomicAdd per block and entry.
// Summation order therefore varies from run to run (last bits only).
//
// The block-wide sums need every thread of a block in the same loop iteration, so the item loop
// runs in block-uniform rounds: a thread without an item in the last round takes part with
// zeros. The block size must be a multiple of the warp size.
#include "pac_common.cuh"

namespace pac {

// What the upstream gradient is.
enum : int {
    UPSTREAM_KERNEL = 0,     // the gradient of K itself, (N, Fk, T, Do, Ho, Wo)
    UPSTREAM_DEPTHWISE = 1,  // grad_y (N, C, Do, Ho, Wo) of y = sum_t w[t] K x, per channel
    UPSTREAM_PATCHES = 2,    // the gradient of the K-weighted patches (images, C*T, rows*Wo)
};

// Entries of the per-block sums kept in shared memory; larger tap or channel counts go straight
// to global atomics.
enum : int { SHARED_TAPS = 256, SHARED_CHANNELS = 32 };

// The sum over the warp, in lane 0 (the other lanes hold partial sums).
template <typename T>
__device__ __forceinline__ T warp_sum(T value) {
    for (int offset = warpSize / 2; offset > 0; offset /= 2) {
        value += __shfl_down_sync(0xffffffffu, value, offset);
    }
    return value;
}

// Adds the warp's values into shared[index] (when index < capacity) or global[index].
template <typename T>
__device__ __forceinline__ void add_warp_sum(T value, int index, T* shared, int capacity,
                                             T* global) {
    value = warp_sum(value);
    if (threadIdx.x % warpSize == 0) {
        if (index < capacity) atomicAdd(&shared[index], value);
        else atomicAdd(&global[index], value);
    }
}

template <typename T>
__device__ __forceinline__ void flush_shared(const T* shared, int count, T* global) {
    for (int i = threadIdx.x; i < count; i += blockDim.x) {
        if (shared[i] != T(0)) atomicAdd(&global[i], shared[i]);
    }
}

}  // namespace pac

// VJP of one of three forward computations (see pac::UPSTREAM_*). Items are those of
// pac_patches: (b, kernel channel, r, ox) over images [n0, n0 + images) and output lines
// [row_start, row_start + rows) (line = oz*Ho + oy); total = images * (Fk > 1 ? C : 1) * rows *
// Wo. For
// UPSTREAM_KERNEL pass channels = Fk and no x. Every gradient array is zeroed by the caller and
// only written when its need_* flag is set.
template <typename T, typename I>
__global__ void pac_backward(I total, int upstream_kind, const T* __restrict__ upstream,
                             const T* __restrict__ x, int channels, int in_d, int in_h,
                             int in_w, const T* __restrict__ tap_weight, int n0, int row_start,
                             int rows, int out_d, int out_h, int out_w, int sz, int sy, int sx,
                             int pz, int py, int px, int transposed,
                             const T* __restrict__ explicit_k, int use_explicit, int fk_count,
                             int need_x, int need_weight, int need_kernel, int need_guide,
                             T* grad_x, T* grad_tap_weight, T* __restrict__ grad_explicit,
                             T* grad_guide, T* grad_centre, T* grad_mask, T* grad_alpha,
                             T* grad_lam, T* grad_spatial, PAC_DESCRIPTION_PARAMS(T)) {
    const pac::KernelDescription<T> d = PAC_DESCRIPTION(T);
    __shared__ T weight_sums[pac::SHARED_TAPS];
    __shared__ T spatial_sums[pac::SHARED_TAPS];
    __shared__ T alpha_sums[pac::SHARED_CHANNELS];
    __shared__ T lam_sums[pac::SHARED_CHANNELS];

    const int taps = d.kd * d.kh * d.kw;
    const I in_volume = (I)in_d * in_h * in_w;
    const I out_volume = (I)out_d * out_h * out_w;
    const I columns = (I)rows * out_w;
    const int kernel_groups = fk_count > 1 ? channels : 1;
    const int per_item = fk_count > 1 ? 1 : channels;
    const bool is_transposed = transposed != 0;
    const bool fused = !use_explicit;
    const bool inverse =
        d.family == pac::FAMILY_INVERSE || d.family == pac::FAMILY_INVERSE_ASYMMETRIC;
    const bool kernel_in_z =
        d.normalize == pac::NORMALIZE_KERNEL || d.normalize == pac::NORMALIZE_MASK_KERNEL;
    const bool sum_weights = need_weight && upstream_kind == pac::UPSTREAM_DEPTHWISE;
    const bool sum_kernel = need_kernel && fused;
    const int tap_capacity = taps < pac::SHARED_TAPS ? taps : pac::SHARED_TAPS;
    const int channel_capacity =
        fk_count < pac::SHARED_CHANNELS ? fk_count : pac::SHARED_CHANNELS;

    for (int i = threadIdx.x; i < pac::SHARED_TAPS; i += blockDim.x) {
        weight_sums[i] = T(0);
        spatial_sums[i] = T(0);
    }
    for (int i = threadIdx.x; i < pac::SHARED_CHANNELS; i += blockDim.x) {
        alpha_sums[i] = T(0);
        lam_sums[i] = T(0);
    }
    __syncthreads();

    for (I round = (I)blockIdx.x * blockDim.x; round < total; round += pac::grid_step<I>()) {
        const I index = round + threadIdx.x;
        const bool active = index < total;
        const I item = active ? index : I(0);
        const int ox = (int)(item % out_w);
        I rest = item / out_w;
        const int r = (int)(rest % rows);
        rest /= rows;
        const int kc = (int)(rest % kernel_groups);
        const I b = rest / kernel_groups;
        const I n = n0 + b;
        const int line = row_start + r;
        const int oz = line / out_h;
        const int oy = line % out_h;
        const int c0 = fk_count > 1 ? kc : 0;
        const I pixel = (I)line * out_w + ox;
        const I col = (I)r * out_w + ox;

        auto source = [&](int tz, int ty, int tx) -> I {
            if (upstream_kind == pac::UPSTREAM_KERNEL) return I(0);
            const int iz = pac::source_index(oz, tz, d.kd, sz, pz, d.dd, in_d, is_transposed);
            const int iy = pac::source_index(oy, ty, d.kh, sy, py, d.dh, in_h, is_transposed);
            const int ix = pac::source_index(ox, tx, d.kw, sx, px, d.dw, in_w, is_transposed);
            return (iz < 0 || iy < 0 || ix < 0) ? I(-1) : ((I)iz * in_h + iy) * in_w + ix;
        };
        // The upstream factor of channel c at tap t: what multiplies K_t * x[c, source].
        auto upstream_factor = [&](int c, int t) -> T {
            if (upstream_kind == pac::UPSTREAM_DEPTHWISE) {
                return tap_weight[t] * upstream[(n * channels + c) * out_volume + pixel];
            }
            return upstream[((b * channels + c) * taps + t) * columns + col];
        };
        // The gradient of the normalized K at tap t (0 without a source).
        auto kernel_gradient = [&](int t, I offset) -> T {
            if (upstream_kind == pac::UPSTREAM_KERNEL) {
                return upstream[((n * fk_count + kc) * taps + t) * out_volume + pixel];
            }
            if (offset < 0) return T(0);
            T sum = T(0);
            for (int c = c0; c < c0 + per_item; ++c) {
                sum += upstream_factor(c, t) * x[(n * channels + c) * in_volume + offset];
            }
            return sum;
        };

        // First walk: 1/Z and S = sum_t gK_t U_t (fused kernels only).
        T inverse_z = T(1);
        T gz = T(0);
        if (active && fused) {
            T s = T(0);
            const bool need_s = sum_kernel && d.normalize != pac::NORMALIZE_NONE;
            inverse_z = pac::walk_taps<T, I>(
                d, n, kc, oz, oy, ox,
                [&](int tz, int ty, int tx) { return source(tz, ty, tx) >= 0; },
                [&](int t, int tz, int ty, int tx, T u) {
                    if (need_s && u != T(0)) s += kernel_gradient(t, source(tz, ty, tx)) * u;
                });
            gz = -s * inverse_z * inverse_z;
        }

        // Second walk, in step across the block: every thread visits every tap.
        const I centre = pac::centre_offset<T, I>(d, oz, oy, ox);
        const I volume = (I)d.guide_d * d.guide_h * d.guide_w;
        const T half_lam = inverse ? T(0.5) * d.lam[kc] : T(0);
        T alpha_sum = T(0), lam_sum = T(0);
        // One flat loop over t = (tz*kh + ty)*kw + tx with the three tap indices stepped
        // along: it keeps every thread of the block in the same iteration for the sums below.
        for (int t = 0, tz = 0, ty = 0, tx = 0; t < taps; ++t) {
            const int qz = oz * d.ksz - d.kpz + tz * d.dd;
            const int qy = oy * d.ksy - d.kpy + ty * d.dh;
            T weight_part = T(0), spatial_part = T(0);
            const int qx = ox * d.ksx - d.kpx + tx * d.dw;
            const bool in_range = qz >= 0 && qz < d.guide_d && qy >= 0 && qy < d.guide_h &&
                                  qx >= 0 && qx < d.guide_w;
            if (active && (use_explicit || in_range)) {
                const I neighbour = ((I)qz * d.guide_h + qy) * d.guide_w + qx;
                const I offset = source(tz, ty, tx);
                const bool has_source =
                    upstream_kind == pac::UPSTREAM_KERNEL || offset >= 0;
                T k = T(0);              // the normalized K_t
                T raw = T(0);            // kappa
                T pw = T(0), bs = T(0);  // the power and its base (see pac::kappa)
                T m = T(1);
                const T g = d.spatial[t];
                if (use_explicit) {
                    k = explicit_k[((n * fk_count + kc) * taps + t) * out_volume + pixel];
                } else {
                    if (d.has_mask) m = d.mask[n * volume + neighbour];
                    if (kernel_in_z || has_source) {
                        if (d.family == pac::FAMILY_CONSTANT) {
                            raw = T(1);
                        } else {
                            const T squared =
                                pac::squared_distance<T, I>(d, n, kc, centre, neighbour);
                            if (d.family == pac::FAMILY_GAUSSIAN) {
                                pw = pac::exponential(T(-0.5) * squared);
                                raw = pw;
                            } else {
                                bs = squared + d.eps2;
                                pw = pac::power(bs, half_lam);
                                raw = d.alpha[kc] + pw;
                            }
                        }
                    }
                    k = raw * g * m * inverse_z;
                }
                const T gk = has_source ? kernel_gradient(t, offset) : T(0);
                if (need_kernel && use_explicit) {
                    const I k_at = ((n * fk_count + kc) * taps + t) * out_volume + pixel;
                    grad_explicit[k_at] = gk;
                }
                if (upstream_kind != pac::UPSTREAM_KERNEL && offset >= 0) {
                    for (int c = c0; c < c0 + per_item; ++c) {
                        const I at = (n * channels + c) * in_volume + offset;
                        if (need_x) atomicAdd(&grad_x[at], upstream_factor(c, t) * k);
                        if (sum_weights) {
                            const I y_at = (n * channels + c) * out_volume + pixel;
                            weight_part += upstream[y_at] * k * x[at];
                        }
                    }
                }
                if (sum_kernel) {
                    // K = U/Z: dU = gK/Z, dZ = gz; U and Z's term depend on kappa, G, M.
                    const T rr = gk * inverse_z;
                    T a, g_kappa, g_mask;
                    if (d.normalize == pac::NORMALIZE_KERNEL) {
                        a = m * rr + gz;
                        g_kappa = g * a;
                        spatial_part = raw * a;
                        g_mask = raw * g * rr;
                    } else if (d.normalize == pac::NORMALIZE_MASK) {
                        a = m * rr;
                        g_kappa = g * a;
                        spatial_part = raw * a;
                        g_mask = raw * g * rr + gz;
                    } else if (d.normalize == pac::NORMALIZE_MASK_KERNEL) {
                        a = rr + gz;
                        g_kappa = g * m * a;
                        spatial_part = raw * m * a;
                        g_mask = raw * g * a;
                    } else {
                        a = m * rr;
                        g_kappa = g * a;
                        spatial_part = raw * a;
                        g_mask = raw * g * rr;
                    }
                    if (d.has_mask) {
                        atomicAdd(&grad_mask[n * volume + neighbour], g_mask);
                    }
                    T g_squared = T(0);  // the gradient of the squared distance
                    if (d.family == pac::FAMILY_GAUSSIAN) {
                        g_squared = T(-0.5) * g_kappa * pw;
                    } else if (inverse) {
                        alpha_sum += g_kappa;
                        // At d2 + eps^2 == 0 (eps = 0, equal features) the derivative is
                        // taken as 0, as on the CPU.
                        if (bs > T(0)) {
                            lam_sum += g_kappa * T(0.5) * pac::logarithm(bs) * pw;
                            g_squared = g_kappa * half_lam * pw / bs;
                        }
                    }
                    if (need_guide && d.family != pac::FAMILY_CONSTANT) {
                        const int f_first = d.channel_wise ? kc : 0;
                        const int f_last = d.channel_wise ? kc + 1 : d.features;
                        for (int f = f_first; f < f_last; ++f) {
                            const I at = (n * d.features + f) * volume;
                            T diff = d.centre[at + centre] - d.guide[at + neighbour];
                            if (d.family == pac::FAMILY_INVERSE_ASYMMETRIC && diff < T(0)) {
                                diff = T(0);
                            }
                            const T g_diff = T(2) * g_squared * diff;
                            grad_centre[at + centre] += g_diff;
                            atomicAdd(&grad_guide[at + neighbour], -g_diff);
                        }
                    }
                }
            }
            if (sum_weights) {
                pac::add_warp_sum(weight_part, t, weight_sums, tap_capacity,
                                  grad_tap_weight);
            }
            if (sum_kernel) {
                pac::add_warp_sum(spatial_part, t, spatial_sums, tap_capacity,
                                  grad_spatial);
            }
            if (++tx == d.kw) {
                tx = 0;
                if (++ty == d.kh) {
                    ty = 0;
                    ++tz;
                }
            }
        }
        if (sum_kernel && inverse && active) {
            if (kc < channel_capacity) {
                atomicAdd(&alpha_sums[kc], alpha_sum);
                atomicAdd(&lam_sums[kc], lam_sum);
            } else {
                atomicAdd(&grad_alpha[kc], alpha_sum);
                atomicAdd(&grad_lam[kc], lam_sum);
            }
        }
    }

    __syncthreads();
    if (sum_weights) pac::flush_shared(weight_sums, tap_capacity, grad_tap_weight);
    if (sum_kernel) {
        pac::flush_shared(spatial_sums, tap_capacity, grad_spatial);
        if (inverse) {
            pac::flush_shared(alpha_sums, channel_capacity, grad_alpha);
            pac::flush_shared(lam_sums, channel_capacity, grad_lam);
        }
    }
}
