#include "error.hpp"

namespace deploykit::core {

namespace {

// Control characters (a newline in a manifest's field name, say) as \xNN: a message stays one line.
std::string printable(const std::string& text) {
    std::string out;
    out.reserve(text.size());
    for (unsigned char c : text) {
        if (c < 0x20 || c == 0x7f) {
            static const char* hex = "0123456789abcdef";
            out += "\\x";
            out += hex[c >> 4];
            out += hex[c & 15];
        } else {
            out += static_cast<char>(c);
        }
    }
    return out;
}

}  // namespace

std::string expected_got(const std::string& thing, const std::string& expected, const std::string& got) {
    return printable(thing + ": expected " + expected + ", got " + got);
}

void bad_input(const std::string& thing, const std::string& expected, const std::string& got) {
    throw Error(Code::bad_input, expected_got(thing, expected, got));
}

void unsupported(const std::string& thing, const std::string& expected, const std::string& got) {
    throw Error(Code::unsupported, expected_got(thing, expected, got));
}

void runtime_error(const std::string& message) { throw Error(Code::runtime, one_line(message)); }

std::string one_line(const std::string& text) {
    size_t start = 0;
    while (start < text.size()) {
        size_t end = text.find('\n', start);
        if (end == std::string::npos) end = text.size();
        std::string line = text.substr(start, end - start);
        size_t a = line.find_first_not_of(" \t\r");
        if (a != std::string::npos) {
            size_t b = line.find_last_not_of(" \t\r");
            line = line.substr(a, b - a + 1);
            return line.size() > 300 ? line.substr(0, 300) : line;
        }
        start = end + 1;
    }
    return "unknown error";
}

}  // namespace deploykit::core
