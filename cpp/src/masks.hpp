// Instance masks: the paste rule every deploykit runtime shares (docs/detector.md, "Masks";
// Python: deploykit/runtime/masks.py). An M x M probability mask gets a one-pixel zero border,
// is resized bilinearly (align_corners=False, float32 as PyTorch computes it) to the integer box
// (x0, y0, x1, y1) of the original image and placed there, clipped to the image.
#pragma once

#include <cstddef>
#include <cstdint>

namespace deploykit::core {

// Pastes `prob` (m x m floats, row-major) at `corners` into `out` (height x width bytes, row-major,
// fully written): 1 where the pasted probability exceeds `threshold`, else 0.
void paste_mask(const float* prob, int64_t m, const int32_t corners[4], int64_t height, int64_t width,
                float threshold, uint8_t* out);

}  // namespace deploykit::core
