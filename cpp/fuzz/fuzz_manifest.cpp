// Fuzz target: the manifest parser and validator (src/manifest.cpp) on arbitrary bytes.
// Contract: parse_manifest either returns or throws core::Error (bad input / unsupported) with a
// one-line message; anything else (another exception, a crash, a sanitizer report) is a finding.
#include <exception>
#include <string>

#include "error.hpp"
#include "fuzz_common.hpp"
#include "manifest.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace deploykit::core;
    const std::string text(reinterpret_cast<const char*>(data), size);
    try {
        Manifest m = parse_manifest(text, "fuzz.json");
        // what the pipelines read next: every section they interpret, as they read it
        (void)m.section("preprocessing");
        (void)m.section("postprocessing");
        for (const auto& spec : m.inputs) (void)spec.describe();
        for (const auto& spec : m.outputs) (void)spec.describe();
        (void)json_text(m.doc);
    } catch (const Error& e) {
        if (e.code() != Code::bad_input && e.code() != Code::unsupported)
            fuzz::finding(std::string("parse_manifest: status ") + std::to_string(static_cast<int>(e.code())) + ": " + e.what());
        const std::string message = e.what();
        if (message.empty() || message.find('\n') != std::string::npos)
            fuzz::finding("parse_manifest: message not one line: " + message);
    } catch (const std::exception& e) {
        fuzz::finding(std::string("parse_manifest threw ") + e.what());
    }
    return 0;
}
