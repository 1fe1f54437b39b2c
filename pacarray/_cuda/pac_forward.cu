// Forward kernels of pacarray's CUDA backend: materializing K, the direct gather (pooling,
// shared filters, dense convolution for small channel counts, forward and transposed) and the
// K-weighted patch builder whose output cuBLAS multiplies by the weight matrix.
//
// One thread per output element (grid-stride loops); no barriers. Every kernel works in three
// spatial dimensions (D, H, W), depth outermost; 1-D and 2-D calls arrive lifted with singleton
// leading axes (pac_common.cuh). Every kernel takes the fused kernel description
// (PAC_DESCRIPTION_PARAMS) last, in the order pacarray._cuda.launch packs it.
#include "pac_common.cuh"

// K of shape (N, Fk, kd*kh*kw, Do, Ho, Wo), normalized, and valid (N, Fk, Do, Ho, Wo) = (Z != 0).
// One thread per (n, fk, oz, oy, ox); total = N*Fk*Do*Ho*Wo.
template <typename T, typename I>
__global__ void pac_fill(I total, int fk_count, int out_d, int out_h, int out_w,
                         T* __restrict__ out, bool* __restrict__ valid,
                         PAC_DESCRIPTION_PARAMS(T)) {
    const pac::KernelDescription<T> d = PAC_DESCRIPTION(T);
    const int taps = d.kd * d.kh * d.kw;
    const I out_volume = (I)out_d * out_h * out_w;
    for (I index = pac::first_index<I>(); index < total; index += pac::grid_step<I>()) {
        I rest;
        int oz, oy, ox;
        pac::split_position(index, out_d, out_h, out_w, rest, oz, oy, ox);
        const int fk = (int)(rest % fk_count);
        const I n = rest / fk_count;
        const I pixel = ((I)oz * out_h + oy) * out_w + ox;
        T* k_out = out + (n * fk_count + fk) * taps * out_volume + pixel;
        const T inverse_z = pac::walk_taps<T, I>(
            d, n, fk, oz, oy, ox, [](int, int, int) { return true; },
            [&](int t, int, int, int, T k) { k_out[t * out_volume] = k; });
        if (d.normalize != pac::NORMALIZE_NONE) {
            for (int t = 0; t < taps; ++t) k_out[t * out_volume] *= inverse_z;
        }
        valid[index] = inverse_z != T(0);
    }
}

// Direct gather: y[n,o,oz,oy,ox] = sum over taps (and input channels when dense) of
// weight * K * x[source]. Depthwise (dense == 0): output channel o reads input channel o with
// weight[t], K channel o when channel-wise. Dense: weight is the (C_out, C*T) matrix and every
// input channel contributes, K channel c when channel-wise. Transposed ops gather the inputs
// i*s = o + p - (k-1-t)*d (the caller flips the weights). One thread per (n, group of output
// channels, oz, oy, ox); total = N * ceil(C_out/group) * Do*Ho*Wo, group <= pac::DIRECT_GROUP
// (1 for a depthwise channel-wise kernel).
template <typename T, typename I>
__global__ void pac_direct(I total, const T* __restrict__ x, int channels, int in_d, int in_h,
                           int in_w, const T* __restrict__ weight, int dense, T* __restrict__ y,
                           int out_channels, int out_d, int out_h, int out_w, int group, int sz,
                           int sy, int sx, int pz, int py, int px, int transposed,
                           const T* __restrict__ explicit_k, int use_explicit, int fk_count,
                           PAC_DESCRIPTION_PARAMS(T)) {
    const pac::KernelDescription<T> d = PAC_DESCRIPTION(T);
    const int taps = d.kd * d.kh * d.kw;
    const I in_volume = (I)in_d * in_h * in_w;
    const I out_volume = (I)out_d * out_h * out_w;
    const int groups = (out_channels + group - 1) / group;
    const bool is_transposed = transposed != 0;
    for (I index = pac::first_index<I>(); index < total; index += pac::grid_step<I>()) {
        I rest;
        int oz, oy, ox;
        pac::split_position(index, out_d, out_h, out_w, rest, oz, oy, ox);
        const int o0 = (int)(rest % groups) * group;
        const I n = rest / groups;
        const int count = out_channels - o0 < group ? out_channels - o0 : group;
        const I pixel = ((I)oz * out_h + oy) * out_w + ox;
        // Source offset of tap (tz, ty, tx) in an input volume, or -1.
        auto source = [&](int tz, int ty, int tx) -> I {
            const int iz = pac::source_index(oz, tz, d.kd, sz, pz, d.dd, in_d, is_transposed);
            const int iy = pac::source_index(oy, ty, d.kh, sy, py, d.dh, in_h, is_transposed);
            const int ix = pac::source_index(ox, tx, d.kw, sx, px, d.dw, in_w, is_transposed);
            return (iz < 0 || iy < 0 || ix < 0) ? I(-1) : ((I)iz * in_h + iy) * in_w + ix;
        };
        auto has_source = [&](int tz, int ty, int tx) { return source(tz, ty, tx) >= 0; };
        // Explicit K value of kernel channel kc at tap t.
        auto explicit_value = [&](int kc, int t) {
            return explicit_k[((n * fk_count + kc) * taps + t) * out_volume + pixel];
        };
        // Visits every tap with the explicit K of kernel channel kc.
        auto walk_explicit = [&](int kc, auto visit) {
            for (int tz = 0; tz < d.kd; ++tz)
                for (int ty = 0; ty < d.kh; ++ty)
                    for (int tx = 0; tx < d.kw; ++tx) {
                        const int t = (tz * d.kh + ty) * d.kw + tx;
                        visit(t, tz, ty, tx, explicit_value(kc, t));
                    }
        };
        T acc[pac::DIRECT_GROUP];
        for (int j = 0; j < pac::DIRECT_GROUP; ++j) acc[j] = T(0);

        if (!dense) {
            const int kc = fk_count > 1 ? o0 : 0;
            const T* x_n = x + (n * channels + o0) * in_volume;
            auto accumulate = [&](int t, int tz, int ty, int tx, T k) {
                const I offset = source(tz, ty, tx);
                if (offset < 0) return;
                const T wk = weight[t] * k;
                for (int j = 0; j < pac::DIRECT_GROUP; ++j) {
                    if (j < count) acc[j] += wk * x_n[j * in_volume + offset];
                }
            };
            if (use_explicit) {
                walk_explicit(kc, accumulate);
            } else {
                const T inverse_z =
                    pac::walk_taps<T, I>(d, n, kc, oz, oy, ox, has_source, accumulate);
                for (int j = 0; j < pac::DIRECT_GROUP; ++j) acc[j] *= inverse_z;
            }
        } else {
            const I row = (I)channels * taps;
            const T* w_o = weight + o0 * row;
            // Adds tap t of input channels [c_begin, c_end) into sums[].
            auto dense_tap = [&](int c_begin, int c_end, T* sums, int t, int tz, int ty, int tx,
                                 T k) {
                const I offset = source(tz, ty, tx);
                if (offset < 0) return;
                for (int c = c_begin; c < c_end; ++c) {
                    const T kx = k * x[(n * channels + c) * in_volume + offset];
                    for (int j = 0; j < pac::DIRECT_GROUP; ++j) {
                        if (j < count) sums[j] += w_o[j * row + c * taps + t] * kx;
                    }
                }
            };
            if (use_explicit || fk_count > 1) {
                // Channel by channel: a channel-wise kernel has its own normalizer per channel.
                for (int c = 0; c < channels; ++c) {
                    const int kc = fk_count > 1 ? c : 0;
                    T partial[pac::DIRECT_GROUP];
                    for (int j = 0; j < pac::DIRECT_GROUP; ++j) partial[j] = T(0);
                    auto add = [&](int t, int tz, int ty, int tx, T k) {
                        dense_tap(c, c + 1, partial, t, tz, ty, tx, k);
                    };
                    T factor = T(1);
                    if (use_explicit) {
                        walk_explicit(kc, add);
                    } else {
                        factor = pac::walk_taps<T, I>(d, n, kc, oz, oy, ox, has_source, add);
                    }
                    for (int j = 0; j < pac::DIRECT_GROUP; ++j) acc[j] += partial[j] * factor;
                }
            } else {
                // Shared fused kernel: evaluate each tap once for all input channels.
                const T inverse_z = pac::walk_taps<T, I>(
                    d, n, 0, oz, oy, ox, has_source, [&](int t, int tz, int ty, int tx, T k) {
                        dense_tap(0, channels, acc, t, tz, ty, tx, k);
                    });
                for (int j = 0; j < pac::DIRECT_GROUP; ++j) acc[j] *= inverse_z;
            }
        }
        T* y_out = y + (n * out_channels + o0) * out_volume + pixel;
        for (int j = 0; j < pac::DIRECT_GROUP; ++j) {
            if (j < count) y_out[j * out_volume] = acc[j];
        }
    }
}

// K-weighted patches of output lines [row_start, row_start + rows) of images [n0, n0 + nb),
// a line being one (oz, oy) pair in C order (line = oz*Ho + oy; 2-D: a row):
// patch[b, c*T + t, r*Wo + ox] = K[n0+b, (c), t, line, ox] * x[n0+b, c, source]
// (0 without a source). One thread per (b, kernel channel, r, ox): a shared kernel's thread
// writes every input channel, a channel-wise kernel's thread its own channel;
// total = nb * (Fk > 1 ? C : 1) * rows * Wo.
template <typename T, typename I>
__global__ void pac_patches(I total, const T* __restrict__ x, int channels, int in_d, int in_h,
                            int in_w, T* __restrict__ patch, int n0, int row_start, int rows,
                            int out_d, int out_h, int out_w, int sz, int sy, int sx, int pz,
                            int py, int px, int transposed, const T* __restrict__ explicit_k,
                            int use_explicit, int fk_count, PAC_DESCRIPTION_PARAMS(T)) {
    const pac::KernelDescription<T> d = PAC_DESCRIPTION(T);
    const int taps = d.kd * d.kh * d.kw;
    const I in_volume = (I)in_d * in_h * in_w;
    const I out_volume = (I)out_d * out_h * out_w;
    const I columns = (I)rows * out_w;
    const int kernel_groups = fk_count > 1 ? channels : 1;
    const int per_thread = fk_count > 1 ? 1 : channels;
    const bool is_transposed = transposed != 0;
    for (I index = pac::first_index<I>(); index < total; index += pac::grid_step<I>()) {
        const int ox = (int)(index % out_w);
        I rest = index / out_w;
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
        T* p = patch + (b * channels + c0) * taps * columns + (I)r * out_w + ox;
        const T* x_n = x + (n * channels + c0) * in_volume;
        auto source = [&](int tz, int ty, int tx) -> I {
            const int iz = pac::source_index(oz, tz, d.kd, sz, pz, d.dd, in_d, is_transposed);
            const int iy = pac::source_index(oy, ty, d.kh, sy, py, d.dh, in_h, is_transposed);
            const int ix = pac::source_index(ox, tx, d.kw, sx, px, d.dw, in_w, is_transposed);
            return (iz < 0 || iy < 0 || ix < 0) ? I(-1) : ((I)iz * in_h + iy) * in_w + ix;
        };
        auto write = [&](int t, int tz, int ty, int tx, T k) {
            const I offset = source(tz, ty, tx);
            for (int c = 0; c < per_thread; ++c) {
                p[(c * taps + t) * columns] =
                    offset < 0 ? T(0) : k * x_n[c * in_volume + offset];
            }
        };
        if (use_explicit) {
            for (int tz = 0; tz < d.kd; ++tz)
                for (int ty = 0; ty < d.kh; ++ty)
                    for (int tx = 0; tx < d.kw; ++tx) {
                        const int t = (tz * d.kh + ty) * d.kw + tx;
                        write(t, tz, ty, tx,
                              explicit_k[((n * fk_count + kc) * taps + t) * out_volume + pixel]);
                    }
            continue;
        }
        const T inverse_z = pac::walk_taps<T, I>(
            d, n, kc, oz, oy, ox,
            [&](int tz, int ty, int tx) { return source(tz, ty, tx) >= 0; }, write);
        if (d.normalize == pac::NORMALIZE_NONE) continue;
        for (int tz = 0; tz < d.kd; ++tz)
            for (int ty = 0; ty < d.kh; ++ty)
                for (int tx = 0; tx < d.kw; ++tx) {
                    if (source(tz, ty, tx) < 0) continue;
                    const int t = (tz * d.kh + ty) * d.kw + tx;
                    for (int c = 0; c < per_thread; ++c) p[(c * taps + t) * columns] *= inverse_z;
                }
    }
}
