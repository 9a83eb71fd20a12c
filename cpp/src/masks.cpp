#include "masks.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace deploykit::core {
namespace {

// One axis's bilinear taps for `out` samples of a `size`-sample source, as PyTorch's
// align_corners=False resize computes them in float32.
struct Taps {
    std::vector<int64_t> i0, i1;
    std::vector<float> w0, w1;
};

Taps taps(int64_t size, int64_t out) {
    Taps t;
    t.i0.resize(out), t.i1.resize(out), t.w0.resize(out), t.w1.resize(out);
    const float ratio = static_cast<float>(size) / static_cast<float>(out);
    for (int64_t j = 0; j < out; ++j) {
        float src = ratio * (static_cast<float>(j) + 0.5f) - 0.5f;
        src = std::max(src, 0.0f);
        const int64_t lo = std::min<int64_t>(static_cast<int64_t>(std::floor(src)), size - 1);
        const float lam1 = std::clamp(src - static_cast<float>(lo), 0.0f, 1.0f);
        t.i0[j] = lo;
        t.i1[j] = lo < size - 1 ? lo + 1 : lo;
        t.w0[j] = 1.0f - lam1;
        t.w1[j] = lam1;
    }
    return t;
}

}  // namespace

void paste_mask(const float* prob, int64_t m, const int32_t corners[4], int64_t height, int64_t width,
                float threshold, uint8_t* out) {
    std::memset(out, 0, static_cast<size_t>(height * width));
    const int64_t x0 = corners[0], y0 = corners[1], x1 = corners[2], y1 = corners[3];
    const int64_t xa = std::max<int64_t>(x0, 0), xb = std::min<int64_t>(x1 + 1, width);
    const int64_t ya = std::max<int64_t>(y0, 0), yb = std::min<int64_t>(y1 + 1, height);
    if (xa >= xb || ya >= yb) return;
    const int64_t size = m + 2;  // the mask with its one-pixel zero border
    std::vector<float> padded(static_cast<size_t>(size * size), 0.0f);
    for (int64_t r = 0; r < m; ++r)
        std::memcpy(&padded[static_cast<size_t>((r + 1) * size + 1)], prob + r * m, static_cast<size_t>(m) * sizeof(float));
    const Taps tx = taps(size, std::max<int64_t>(x1 - x0 + 1, 1));
    const Taps ty = taps(size, std::max<int64_t>(y1 - y0 + 1, 1));
    for (int64_t y = ya; y < yb; ++y) {
        const int64_t j = y - y0;
        const float* top = &padded[static_cast<size_t>(ty.i0[j] * size)];
        const float* bottom = &padded[static_cast<size_t>(ty.i1[j] * size)];
        uint8_t* row = out + y * width;
        for (int64_t x = xa; x < xb; ++x) {
            const int64_t k = x - x0;
            // across each row first, then between the two rows (PyTorch's order)
            const float a = top[tx.i0[k]] * tx.w0[k] + top[tx.i1[k]] * tx.w1[k];
            const float b = bottom[tx.i0[k]] * tx.w0[k] + bottom[tx.i1[k]] * tx.w1[k];
            row[x] = (a * ty.w0[j] + b * ty.w1[j]) > threshold ? 1 : 0;
        }
    }
}

}  // namespace deploykit::core
