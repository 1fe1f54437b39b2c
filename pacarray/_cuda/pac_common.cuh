// Device code shared by pacarray's CUDA kernels: integer codes, the adaptive-kernel description
// and the walk over the taps of one output position.
//
// This header is included by every .cu file of the package. It must compile three ways:
// with NVRTC (through cupy.RawModule), with nvcc, and with g++ against the host-emulation
// header of tests/cuda_emulation. So: no standard-library headers, no host-only code, and only
// the CUDA built-ins that the emulation header provides.
//
// Index types. Every kernel is a template on the float type T and the index type I (int or
// long long). Linear offsets into arrays are computed in I; the launcher picks int only when
// every array the kernel touches, plus the grid-stride overshoot, stays below 2**31 elements.
// Spatial coordinates (a slice, a row or a column) are always int.
#pragma once

namespace pac {

// Kernel families and normalizations: the integer codes of pacarray/_codes.py (tests/test_codes.py
// checks that they agree). Enumerators, not constexpr variables: those would become device
// globals under NVRTC's default execution space.
enum : int {
    FAMILY_CONSTANT = 0,
    FAMILY_GAUSSIAN = 1,
    FAMILY_INVERSE = 2,
    FAMILY_INVERSE_ASYMMETRIC = 3,
};

enum : int {
    NORMALIZE_NONE = 0,
    NORMALIZE_KERNEL = 1,
    NORMALIZE_MASK = 2,
    NORMALIZE_MASK_KERNEL = 3,
};

// Output channels one thread of the direct kernel accumulates (registers, not memory).
enum : int { DIRECT_GROUP = 4 };

__device__ __forceinline__ float exponential(float v) { return expf(v); }
__device__ __forceinline__ double exponential(double v) { return exp(v); }
__device__ __forceinline__ float power(float base, float exponent) { return powf(base, exponent); }
__device__ __forceinline__ double power(double base, double exponent) { return pow(base, exponent); }
__device__ __forceinline__ float logarithm(float v) { return logf(v); }
__device__ __forceinline__ double logarithm(double v) { return log(v); }

// Floor division for a possibly negative numerator and a positive divisor.
__device__ __forceinline__ int floor_div(int numerator, int divisor) {
    int quotient = numerator / divisor;
    return (numerator % divisor != 0 && numerator < 0) ? quotient - 1 : quotient;
}

// Input index read by output `o` at kernel tap `a`, or -1 when there is none.
// Forward: o*s - p + a*d. Transposed: the weight tap is k-1-a and the input i satisfies
// i*s = o + p - (k-1-a)*d (the gather form of the transposed convolution).
__device__ __forceinline__ int source_index(int o, int a, int k, int stride, int padding,
                                            int dilation, int size, bool transposed) {
    int i;
    if (transposed) {
        int numerator = o + padding - (k - 1 - a) * dilation;
        if (numerator < 0 || numerator % stride != 0) return -1;
        i = numerator / stride;
    } else {
        i = o * stride - padding + a * dilation;
    }
    return (i >= 0 && i < size) ? i : -1;
}

// The fused adaptive kernel: everything needed to evaluate K[n, fk, t, oz, oy, ox] on the fly.
// Every kernel works in three spatial dimensions (depth, rows, columns); the backend lifts a
// 1-D or 2-D call by prepending singleton axes (size 1, kernel 1, stride 1, padding 0, dilation
// 1), so a 2-D call runs the same arithmetic in the same order as a 2-D kernel would
// (docs/design.md §3.3). guide/centre are (N, F, Dg, Hg, Wg) (centre = the smoothed guide, or the
// guide itself), mask is (N, Dg, Hg, Wg), spatial is (kd*kh*kw), alpha/lam are (Fk).
// (ksz, ksy, ksx, kpz, kpy, kpx) are the stride and padding of the kernel grid: the op's own for
// forward ops, (1, 1, 1, d(k-1)/2) for transposed ones.
template <typename T>
struct KernelDescription {
    const T* guide;
    const T* centre;
    const T* alpha;
    const T* lam;
    const T* spatial;
    const T* mask;
    T eps2;
    int features, guide_d, guide_h, guide_w;
    int family, has_mask, normalize, channel_wise;
    int kd, kh, kw, ksz, ksy, ksx, kpz, kpy, kpx, dd, dh, dw;
};

// Squared feature distance between the centre and an in-range neighbour, given as offsets
// into one (Dg, Hg, Wg) guide volume: over all features for a shared kernel (fk = 0), feature fk
// for a channel-wise one; clamped to max(0, fc - fq) per feature for the asymmetric family.
template <typename T, typename I>
__device__ __forceinline__ T squared_distance(const KernelDescription<T>& d, I n, int fk,
                                              I centre_offset, I neighbour_offset) {
    const I volume = (I)d.guide_d * d.guide_h * d.guide_w;
    const bool clamp = d.family == FAMILY_INVERSE_ASYMMETRIC;
    const int f_first = d.channel_wise ? fk : 0;
    const int f_last = d.channel_wise ? fk + 1 : d.features;
    T squared = T(0);
    I base = (n * d.features + f_first) * volume;
    for (int f = f_first; f < f_last; ++f, base += volume) {
        T diff = d.centre[base + centre_offset] - d.guide[base + neighbour_offset];
        if (clamp && diff < T(0)) diff = T(0);
        squared += diff * diff;
    }
    return squared;
}

// kappa(fc, fq) for the centre and an in-range neighbour (offsets into a guide volume); fk is
// the kernel channel (0 for a shared kernel, which sums the squared differences over all
// features).
template <typename T, typename I>
__device__ __forceinline__ T kappa(const KernelDescription<T>& d, I n, int fk, I centre_offset,
                                   I neighbour_offset) {
    if (d.family == FAMILY_CONSTANT) return T(1);
    const T squared = squared_distance<T, I>(d, n, fk, centre_offset, neighbour_offset);
    if (d.family == FAMILY_GAUSSIAN) return exponential(T(-0.5) * squared);
    return d.alpha[fk] + power(squared + d.eps2, T(0.5) * d.lam[fk]);
}

// The centre of output (oz, oy, ox) on the kernel grid, as an offset into a guide volume.
template <typename T, typename I>
__device__ __forceinline__ I centre_offset(const KernelDescription<T>& d, int oz, int oy,
                                           int ox) {
    const int cz = oz * d.ksz - d.kpz + d.dd * ((d.kd - 1) / 2);
    const int cy = oy * d.ksy - d.kpy + d.dh * ((d.kh - 1) / 2);
    const int cx = ox * d.ksx - d.kpx + d.dw * ((d.kw - 1) / 2);
    return ((I)cz * d.guide_h + cy) * d.guide_w + cx;
}

// Walks the kd*kh*kw taps of output (oz, oy, ox) on the kernel grid in order
// t = (tz*kh + ty)*kw + tx = 0, 1, ... For each tap it calls visit(t, tz, ty, tx, k) with
// k = M * G * kappa, the unnormalized kernel value (0 for a neighbour outside the guide). kappa
// is only evaluated where the normalizer needs it or where wanted(tz, ty, tx) is true, so a
// transposed op skips taps without a source input. Returns the factor that normalizes the
// visited values: 1/Z, 0 where Z == 0, 1 without normalization. Dividing once at the end gives
// the same numbers as dividing each tap first, up to rounding.
template <typename T, typename I, typename Wanted, typename Visit>
__device__ __forceinline__ T walk_taps(const KernelDescription<T>& d, I n, int fk, int oz, int oy,
                                       int ox, Wanted wanted, Visit visit) {
    const I centre = centre_offset<T, I>(d, oz, oy, ox);
    const bool kernel_in_z =
        d.normalize == NORMALIZE_KERNEL || d.normalize == NORMALIZE_MASK_KERNEL;
    const I volume = (I)d.guide_d * d.guide_h * d.guide_w;
    T z = T(0);
    const int taps = d.kd * d.kh * d.kw;
    // One flat loop over t = (tz*kh + ty)*kw + tx, the tap indices stepped along (fewer live
    // registers than three nested loops).
    for (int t = 0, tz = 0, ty = 0, tx = 0; t < taps; ++t) {
        const int qz = oz * d.ksz - d.kpz + tz * d.dd;
        const int qy = oy * d.ksy - d.kpy + ty * d.dh;
        const int qx = ox * d.ksx - d.kpx + tx * d.dw;
        if (qz >= 0 && qz < d.guide_d && qy >= 0 && qy < d.guide_h && qx >= 0 &&
            qx < d.guide_w) {
            const I neighbour = ((I)qz * d.guide_h + qy) * d.guide_w + qx;
            const T m = d.has_mask ? d.mask[n * volume + neighbour] : T(1);
            T k = T(0);
            if (kernel_in_z || wanted(tz, ty, tx)) {
                k = kappa<T, I>(d, n, fk, centre, neighbour) * d.spatial[t];
                if (d.normalize == NORMALIZE_KERNEL) z += k;
                else if (d.normalize == NORMALIZE_MASK_KERNEL) z += m * k;
                k *= m;
            }
            if (d.normalize == NORMALIZE_MASK) z += m;
            visit(t, tz, ty, tx, k);
        } else {
            visit(t, tz, ty, tx, T(0));
        }
        if (++tx == d.kw) {
            tx = 0;
            if (++ty == d.kh) {
                ty = 0;
                ++tz;
            }
        }
    }
    if (d.normalize == NORMALIZE_NONE) return T(1);
    return z == T(0) ? T(0) : T(1) / z;
}

// Splits a linear index over (..., D, H, W) into (rest, z, y, x); `rest` gets the leading part.
template <typename I>
__device__ __forceinline__ void split_position(I index, int depth, int height, int width, I& rest,
                                               int& z, int& y, int& x) {
    x = (int)(index % width);
    rest = index / width;
    y = (int)(rest % height);
    rest /= height;
    z = (int)(rest % depth);
    rest /= depth;
}

// Grid-stride loop bounds: the first linear index of this thread and the step.
template <typename I>
__device__ __forceinline__ I first_index() {
    return (I)blockIdx.x * blockDim.x + threadIdx.x;
}

template <typename I>
__device__ __forceinline__ I grid_step() {
    return (I)blockDim.x * gridDim.x;
}

}  // namespace pac

// The fused-kernel parameters every kernel ends with (see pac::KernelDescription).
#define PAC_DESCRIPTION_PARAMS(T)                                                            \
    const T *guide, const T *centre, const T *alpha, const T *lam, const T *spatial,        \
        const T *mask, T eps2, int features, int guide_d, int guide_h, int guide_w,         \
        int family, int has_mask, int normalize, int channel_wise, int kd, int kh, int kw,  \
        int ksz, int ksy, int ksx, int kpz, int kpy, int kpx, int dd, int dh, int dw

#define PAC_DESCRIPTION(T)                                                                  \
    pac::KernelDescription<T> {                                                             \
        guide, centre, alpha, lam, spatial, mask, eps2, features, guide_d, guide_h, guide_w, \
            family, has_mask, normalize, channel_wise, kd, kh, kw, ksz, ksy, ksx, kpz, kpy,  \
            kpx, dd, dh, dw                                                                  \
    }
