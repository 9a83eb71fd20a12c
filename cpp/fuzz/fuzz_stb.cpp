// Fuzz target: the image decoding of deploykit-detect and detect_c: the checks of
// cpp/examples/image_check.h (size limit, JPEG Huffman tables), then stb_image converting to 3
// channels, as the examples do. stb is compiled into this target (instrumented); the examples link
// Debian's libstb, the same source (2.27). Contract: a decoded image has width, height >= 1 and
// width * height * 3 readable bytes, or it is refused with a reason; never a crash or a sanitizer
// report.
#define STBI_NO_STDIO
#include <string>

#include "../examples/image_check.h"  // stb_image.h's declarations
#include "fuzz_common.hpp"

#define STB_IMAGE_IMPLEMENTATION  // and here its implementation, instrumented
#include <stb_image.h>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    int width = 0, height = 0, channels = 0;
    // The examples decode up to 2^26 pixels; the fuzzer skips declared sizes over 2^22 to keep its speed.
    if (size < (1u << 30) && !dk_jpeg_tables_problem(data, size) && !dk_pnm_header_problem(data, size) && !dk_png_problem(data, size) && stbi_info_from_memory(data, static_cast<int>(size), &width, &height, &channels) &&
        static_cast<long long>(width) * height > (1LL << 22))
        return 0;
    const char* why = nullptr;
    unsigned char* pixels = dk_decode_image(data, size, &width, &height, &why);  // the examples' decoding
    if (!pixels) {
        if (!why || !*why) fuzz::finding("decoding failed without a reason");
        return 0;
    }
    if (width < 1 || height < 1) fuzz::finding("decoded image of size " + std::to_string(width) + "x" + std::to_string(height));
    const size_t bytes = static_cast<size_t>(width) * static_cast<size_t>(height) * 3;
    unsigned sum = 0;
    for (size_t i = 0; i < bytes; i += 997) sum += pixels[i];
    sum += pixels[bytes - 1];
    dk_image view = {pixels, width, height, 3, 0, DK_RGB};
    (void)view;
    (void)sum;
    stbi_image_free(pixels);
    return 0;
}
