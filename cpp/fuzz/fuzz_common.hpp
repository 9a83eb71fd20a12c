// What the fuzz targets share: a finding is reported and aborts (libFuzzer then saves the input).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "deploykit/deploykit.h"

namespace fuzz {

[[noreturn]] inline void finding(const std::string& what) {
    std::fprintf(stderr, "FINDING: %s\n", what.c_str());
    std::abort();
}

// A refused call: its message must be one line, not empty.
inline void check_message(const char* call) {
    const char* message = dk_last_error();
    if (!message || !*message) finding(std::string(call) + ": failed without a message");
    if (std::strchr(message, '\n') || std::strchr(message, '\r'))
        finding(std::string(call) + ": message of several lines: " + message);
}

// Structure from bytes, deterministic (the replay program needs no libFuzzer).
struct Reader {
    const uint8_t* data;
    size_t size, pos = 0;
    Reader(const uint8_t* d, size_t n) : data(d), size(n) {}
    uint8_t u8() { return pos < size ? data[pos++] : 0; }
    uint16_t u16() { return static_cast<uint16_t>(u8() | (u8() << 8)); }
    uint32_t u32() { return static_cast<uint32_t>(u16()) | (static_cast<uint32_t>(u16()) << 16); }
    size_t left() const { return size - pos; }
    std::string bytes(size_t n) {
        n = n < left() ? n : left();
        std::string out(reinterpret_cast<const char*>(data + pos), n);
        pos += n;
        return out;
    }
};

}  // namespace fuzz
