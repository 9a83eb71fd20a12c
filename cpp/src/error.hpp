// Errors inside the library. Every message is one line: the thing, what was expected, what was got
// (the same shape as deploykit.errors.expected_got on the Python side).
#pragma once

#include <stdexcept>
#include <string>

namespace deploykit::core {

// Mirrors dk_status in deploykit.h (bad input = the CLI's exit code 2 on the Python side).
enum class Code { bad_input = 1, unsupported = 2, runtime = 3, invalid_argument = 4 };

class Error : public std::runtime_error {
public:
    Error(Code code, const std::string& message) : std::runtime_error(message), code_(code) {}
    Code code() const noexcept { return code_; }

private:
    Code code_;
};

// "<thing>: expected <expected>, got <got>"
std::string expected_got(const std::string& thing, const std::string& expected, const std::string& got);

[[noreturn]] void bad_input(const std::string& thing, const std::string& expected, const std::string& got);
[[noreturn]] void unsupported(const std::string& thing, const std::string& expected, const std::string& got);
[[noreturn]] void runtime_error(const std::string& message);

// First non-empty line of a (library's) message, at most 300 characters.
std::string one_line(const std::string& text);

}  // namespace deploykit::core
