// Access to the fixtures made by fixtures/make_fixtures.py (folder in $DEPLOYKIT_CPP_FIXTURES).
#pragma once

#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <cstring>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace fixtures {

namespace fs = std::filesystem;

inline fs::path dir() {
    const char* env = std::getenv("DEPLOYKIT_CPP_FIXTURES");
    if (!env || !*env) throw std::runtime_error("DEPLOYKIT_CPP_FIXTURES is not set (run the tests with ctest)");
    return env;
}

inline const nlohmann::json& index() {
    static const nlohmann::json j = [] {
        std::ifstream in(dir() / "fixtures.json");
        if (!in) throw std::runtime_error("no fixtures.json in " + dir().string());
        return nlohmann::json::parse(in);
    }();
    return j;
}

inline fs::path path(const std::string& key) { return dir() / index().at(key).get<std::string>(); }

inline std::string read_file(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

inline void write_file(const fs::path& p, const std::string& bytes) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out << bytes;
}

template <typename T>
std::vector<T> array(const nlohmann::json& entry) {
    std::string bytes = read_file(dir() / entry.at("file").get<std::string>());
    std::vector<T> v(bytes.size() / sizeof(T));
    std::memcpy(v.data(), bytes.data(), v.size() * sizeof(T));
    return v;
}

inline std::vector<int64_t> shape(const nlohmann::json& entry) { return entry.at("shape").get<std::vector<int64_t>>(); }

// A fresh folder under the system temp dir, removed at the end of the test.
class TempDir {
public:
    TempDir() {
        static std::atomic<int> counter{0};
        path_ = fs::temp_directory_path() /
                ("deploykit-cpp-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
        fs::create_directories(path_);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    const fs::path& path() const { return path_; }
    // Copy fixture `name` (+ its manifest `stem.json`) in; returns the copy's path.
    fs::path copy_artifact(const fs::path& artifact) const {
        fs::copy_file(artifact, path_ / artifact.filename(), fs::copy_options::overwrite_existing);
        fs::path manifest = fs::path(artifact).replace_extension(".json");
        if (fs::exists(manifest))
            fs::copy_file(manifest, path_ / manifest.filename(), fs::copy_options::overwrite_existing);
        return path_ / artifact.filename();
    }

private:
    fs::path path_;
};

}  // namespace fixtures
