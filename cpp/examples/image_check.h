/* Checks the examples make on image bytes before stb_image decodes them (C99, for detect.c and
 * deploykit-detect; cpp/fuzz/fuzz_stb.cpp fuzzes exactly this path).
 *
 * - Size: images over DK_MAX_IMAGE_PIXELS pixels (stbi_info) are refused before decoding, so a
 *   small file cannot make the decoder allocate gigabytes.
 * - What stb_image 2.27 (Debian 12's libstb) gets wrong, each found by fuzz_stb: a JPEG Huffman
 *   table whose 16 code counts add up to more than 256 (stb writes past its 256-entry tables: the
 *   marker segments are walked as stb reads them and such a file is refused as corrupt); a 16-bit
 *   PGM/PPM (stb reads past its buffer converting it to 8 bits: refused); a PNG whose first IDAT chunk
 *   is empty (memcpy to NULL: refused); numbers of ten digits in a
 *   PGM/PPM header (signed overflow in stb: refused); a failure without a
 *   reason and a PNM with a zero side (reported as errors, see dk_decode_image).
 */
#ifndef DEPLOYKIT_EXAMPLES_IMAGE_CHECK_H
#define DEPLOYKIT_EXAMPLES_IMAGE_CHECK_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <stb_image.h>

#define DK_MAX_IMAGE_PIXELS (1LL << 26)

/* NULL when the JPEG's Huffman tables are sane (or it is no JPEG), else why not. */
static inline const char* dk_jpeg_tables_problem(const unsigned char* data, size_t size) {
    size_t pos = 1;
    if (size < 2 || data[0] != 0xFF) return NULL;
    while (pos < size && data[pos] == 0xFF) ++pos; /* stb skips fill bytes before SOI too */
    if (pos >= size || data[pos] != 0xD8) return NULL;
    ++pos;
    while (pos + 1 < size) {
        if (data[pos] != 0xFF) { /* entropy-coded data after a scan: up to the next marker */
            ++pos;
            continue;
        }
        unsigned marker = data[pos + 1];
        if (marker == 0xFF || marker == 0x00 || (marker >= 0xD0 && marker <= 0xD7) || marker == 0x01) {
            pos += marker == 0xFF ? 1 : 2; /* fill byte, stuffed zero, restart marker: no length */
            continue;
        }
        if (marker == 0xD9) return NULL; /* end of image */
        if (pos + 3 >= size) return NULL; /* truncated: stb says so */
        size_t length = ((size_t)data[pos + 2] << 8) | data[pos + 3];
        if (length < 2) return "a JPEG segment shorter than its length field";
        if (marker == 0xC4) { /* DHT: tables of 1 + 16 + sum(counts) bytes */
            size_t at = pos + 4, end = pos + 2 + length;
            if (end > size) end = size;
            /* as stb reads them: 16 counts per table even past the segment's length, zeros past the file's end */
            while (at < end) {
                unsigned total = 0;
                for (size_t i = 1; i <= 16 && at + i < size; ++i) total += data[at + i];
                if (total > 256) return "a JPEG Huffman table of more than 256 codes (corrupt JPEG)";
                at += 17 + total;
            }
        }
        pos += 2 + length;
    }
    return NULL;
}

/* NULL unless a PNG's first IDAT chunk is empty: stb 2.27 then copies 0 bytes to a NULL buffer (memcpy
 * with NULL, undefined behaviour; found by fuzz_stb). Chunks walked from the signature. */
static inline const char* dk_png_problem(const unsigned char* data, size_t size) {
    static const unsigned char signature[8] = {137, 80, 78, 71, 13, 10, 26, 10};
    size_t pos = 8;
    if (size < 8 || memcmp(data, signature, 8) != 0) return NULL;
    while (pos + 8 <= size) {
        size_t length = ((size_t)data[pos] << 24) | ((size_t)data[pos + 1] << 16) | ((size_t)data[pos + 2] << 8) |
                        data[pos + 3];
        const unsigned char* type = data + pos + 4;
        if (memcmp(type, "IDAT", 4) == 0) return length == 0 ? "a PNG whose first IDAT chunk is empty" : NULL;
        if (memcmp(type, "IEND", 4) == 0 || length > size) return NULL;
        pos += 12 + length;
    }
    return NULL;
}

/* NULL when a PGM/PPM header's numbers fit stb's int arithmetic (or it is no PGM/PPM), else why not.
 * Read as stb 2.27 reads them (whitespace and # comments skipped, digits accumulated): it multiplies
 * without a bound, a signed overflow for a number of ten digits or more (found by fuzz_stb). */
static inline const char* dk_pnm_header_problem(const unsigned char* data, size_t size) {
    size_t pos = 2; /* the next byte stb would read */
    int c, n;
    if (size < 2 || data[0] != 'P' || (data[1] != '5' && data[1] != '6')) return NULL;
#define DK_PNM_EOF (pos >= size)
#define DK_PNM_GET (pos < size ? (int)data[pos++] : 0)
    c = DK_PNM_GET;
    for (n = 0; n < 3; ++n) {
        long long value = 0;
        for (;;) { /* whitespace, then # comments to the end of the line */
            while (!DK_PNM_EOF && (c == ' ' || (c >= '\t' && c <= '\r'))) c = DK_PNM_GET;
            if (DK_PNM_EOF || c != '#') break;
            while (!DK_PNM_EOF && c != '\n' && c != '\r') c = DK_PNM_GET;
        }
        while (!DK_PNM_EOF && c >= '0' && c <= '9') {
            if (value > 214748364LL) return "a PGM/PPM header with numbers below 2147483648";
            value = value * 10 + (c - '0');
            c = DK_PNM_GET;
        }
    }
#undef DK_PNM_EOF
#undef DK_PNM_GET
    return NULL;
}

/* NULL when stb_image may decode these bytes, else why not (one line). */
static inline const char* dk_image_problem(const unsigned char* data, size_t size) {
    int width = 0, height = 0, channels = 0;
    const char* early = dk_jpeg_tables_problem(data, size); /* first: stbi_info parses these too */
    if (!early) early = dk_pnm_header_problem(data, size);
    if (!early) early = dk_png_problem(data, size);
    if (early) return early;
    if (size > (size_t)INT32_MAX) return "a file smaller than 2 GiB";
    if (stbi_info_from_memory(data, (int)size, &width, &height, &channels) &&
        (long long)width * (long long)height > DK_MAX_IMAGE_PIXELS)
        return "an image of at most 67108864 pixels (8192 x 8192)";
    /* stb 2.27 reads past its buffer converting a 16-bit PGM/PPM to 8 bits (found by fuzz_stb) */
    if (size >= 2 && data[0] == 'P' && (data[1] == '5' || data[1] == '6') && stbi_is_16_bit_from_memory(data, (int)size))
        return "a PGM/PPM of at most 8 bits per sample (maxval <= 255)";
    return NULL;
}

/* Decode image bytes to RGB after the checks (stbi_image_free the result); NULL with *why set on failure. */
static inline unsigned char* dk_decode_image(const unsigned char* data, size_t size, int* width, int* height,
                                             const char** why) {
    int channels = 0;
    unsigned char* pixels;
    *why = dk_image_problem(data, size);
    if (*why) return NULL;
    pixels = stbi_load_from_memory(data, (int)size, width, height, &channels, 3);
    if (!pixels) { /* stb 2.27 fails some inputs without a reason (found by fuzz_stb) */
        *why = stbi_failure_reason() && *stbi_failure_reason() ? stbi_failure_reason() : "an image stb_image can decode";
        return NULL;
    }
    if (*width < 1 || *height < 1) { /* stb 2.27 accepts a PNM with a zero side (found by fuzz_stb) */
        stbi_image_free(pixels);
        *why = "an image of at least 1 x 1 pixels";
        return NULL;
    }
    return pixels;
}

/* Read and decode an image file to RGB (stbi_image_free the result); NULL with *why set on failure. */
static inline unsigned char* dk_load_image_file(const char* path, int* width, int* height, const char** why) {
    FILE* f = fopen(path, "rb");
    unsigned char* bytes = NULL;
    unsigned char* pixels = NULL;
    long size;
    *why = "no such file or not readable";
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return NULL;
    }
    bytes = (unsigned char*)malloc(size > 0 ? (size_t)size : 1);
    if (!bytes || fread(bytes, 1, (size_t)size, f) != (size_t)size) {
        free(bytes);
        fclose(f);
        *why = "a read error";
        return NULL;
    }
    fclose(f);
    pixels = dk_decode_image(bytes, (size_t)size, width, height, why);
    free(bytes);
    return pixels;
}

#endif /* DEPLOYKIT_EXAMPLES_IMAGE_CHECK_H */
