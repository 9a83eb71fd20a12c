#include "manifest.hpp"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <fstream>
#include <sstream>

#include "error.hpp"
#include "sha256.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>
#endif

namespace deploykit::core {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const std::vector<std::string> kTopLevel = {"format", "kind", "artifact", "model", "inputs", "outputs", "batch",
                                            "preprocessing", "postprocessing", "class_names", "precision",
                                            "versions", "tensorrt"};
const std::vector<std::string> kRequired = {"format", "kind", "artifact", "model", "inputs", "outputs", "batch"};

// Limits on what a manifest may hold, the same as deploykit/manifest.py's (and worded the same).
constexpr size_t kMaxBytes = size_t{16} << 20;
constexpr int kMaxDepth = 64;
constexpr size_t kMaxClasses = 65536;
constexpr size_t kMaxTensors = 256;
constexpr size_t kMaxRank = 16;
constexpr int64_t kMaxDim = (int64_t{1} << 31) - 1;
constexpr int64_t kMaxBatch = 65536;
constexpr int64_t kMaxBatchMin = 64;  // a dynamic batch is filled up to its min with blank images

// The deepest nesting of [ and { outside strings, counted before parsing (the parser recurses).
int nesting_depth(const std::string& text) {
    int depth = 0, deepest = 0;
    bool in_string = false, escaped = false;
    for (char c : text) {
        if (in_string) {
            if (escaped) escaped = false;
            else if (c == '\\') escaped = true;
            else if (c == '"') in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            deepest = std::max(deepest, ++depth);
        } else if (c == ']' || c == '}') {
            --depth;
        }
    }
    return deepest;
}

bool plain_file_name(const std::string& name) {
    return !name.empty() && name != "." && name != ".." && name.find_first_of(std::string("/\\\0", 3)) == std::string::npos;
}

bool sha256_text(const std::string& text) {
    if (text.size() != 64) return false;
    for (char c : text)
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    return true;
}

std::string list_text(const std::vector<std::string>& items) {
    std::string text = "[";
    for (size_t i = 0; i < items.size(); ++i) text += (i ? ", " : "") + items[i];
    return text + "]";
}

std::string json_type(const json& v) {
    if (v.is_null()) return "null";
    if (v.is_boolean()) return "a bool";
    if (v.is_number_integer()) return "an int";
    if (v.is_number()) return "a number";
    if (v.is_string()) return "a string";
    if (v.is_array()) return "a list";
    return "an object";
}

std::optional<std::string> read_text(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return std::nullopt;
    std::ostringstream buffer;
    buffer << in.rdbuf();
    return buffer.str();
}

std::vector<TensorSpec> parse_specs(const json& list, const std::string& where) {
    if (!list.is_array()) bad_input(where, "a list of {name, dtype, shape}", json_type(list));
    if (list.size() > kMaxTensors) bad_input(where, "at most " + std::to_string(kMaxTensors) + " tensors", std::to_string(list.size()));
    std::vector<TensorSpec> specs;
    for (size_t i = 0; i < list.size(); ++i) {
        const json& item = list[i];
        std::string at = where + "[" + std::to_string(i) + "]";
        if (!item.is_object()) bad_input(at, "an object {name, dtype, shape}", json_type(item));
        refuse_unknown_keys(item, {"name", "dtype", "shape"}, at);
        TensorSpec spec;
        spec.name = require_string(item, "name", at);
        std::string dtype = require_string(item, "dtype", at);
        if (!dtype_from_name(dtype, &spec.dtype))
            bad_input(at + " dtype", "a numpy dtype name (float32, uint8, int32, ...)", json_text(dtype));
        const json& shape = require_field(item, "shape", at);
        if (!shape.is_array()) bad_input(at + " shape", "a list of ints and strings", json_type(shape));
        if (shape.size() > kMaxRank) bad_input(at + " shape", "at most " + std::to_string(kMaxRank) + " dims", std::to_string(shape.size()));
        for (size_t a = 0; a < shape.size(); ++a) {
            if (shape[a].is_number_unsigned() && shape[a].get<uint64_t>() > static_cast<uint64_t>(kMaxDim))
                bad_input(at + " shape dim " + std::to_string(a), "at most " + std::to_string(kMaxDim), json_text(shape[a]));
            if (shape[a].is_number_integer() && shape[a].get<int64_t>() >= 0)
                spec.shape.push_back(Dim::fixed(shape[a].get<int64_t>()));
            else if (shape[a].is_string() && !shape[a].get<std::string>().empty())
                spec.shape.push_back(Dim::dynamic(shape[a].get<std::string>()));
            else
                bad_input(at + " shape dim " + std::to_string(a), "a non-negative int or a dimension name",
                          json_text(shape[a]));
        }
        specs.push_back(std::move(spec));
    }
    return specs;
}

BatchRange parse_batch(const json& batch, const std::string& where) {
    if (!batch.is_object()) bad_input(where, "an object {dynamic, min, opt, max}", json_type(batch));
    refuse_unknown_keys(batch, {"dynamic", "min", "opt", "max"}, where);
    BatchRange range;
    range.dynamic = batch.contains("dynamic") ? require_bool(batch, "dynamic", where) : false;
    range.min = batch.contains("min") ? require_int(batch, "min", where) : 1;
    range.opt = batch.contains("opt") ? require_int(batch, "opt", where) : range.min;
    range.max = batch.contains("max") ? require_int(batch, "max", where) : range.opt;
    if (!(1 <= range.min && range.min <= range.opt && range.opt <= range.max))
        bad_input(where, "ints with 1 <= min <= opt <= max",
                  "min=" + std::to_string(range.min) + " opt=" + std::to_string(range.opt) +
                      " max=" + std::to_string(range.max));
    if (range.max > kMaxBatch) bad_input(where, "max at most " + std::to_string(kMaxBatch), "max=" + std::to_string(range.max));
    if (range.min > kMaxBatchMin)
        bad_input(where, "min at most " + std::to_string(kMaxBatchMin) + " (runtimes fill a batch up to it)",
                  "min=" + std::to_string(range.min));
    return range;
}

}  // namespace

std::string json_text(const json& value) {
    std::string text = value.dump();
    return text.size() > 120 ? text.substr(0, 117) + "..." : text;
}

const json& require_field(const json& object, const std::string& key, const std::string& where) {
    auto it = object.find(key);
    if (it == object.end()) bad_input(where + " field '" + key + "'", "present", "missing");
    return *it;
}

std::string require_string(const json& object, const std::string& key, const std::string& where) {
    const json& v = require_field(object, key, where);
    if (!v.is_string()) bad_input(where + " field '" + key + "'", "a string", json_type(v) + " " + json_text(v));
    return v.get<std::string>();
}

int64_t require_int(const json& object, const std::string& key, const std::string& where) {
    const json& v = require_field(object, key, where);
    if (!v.is_number_integer()) bad_input(where + " field '" + key + "'", "an int", json_type(v) + " " + json_text(v));
    if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
        bad_input(where + " field '" + key + "'", "an int of 64 bits", json_text(v));
    return v.get<int64_t>();
}

bool require_bool(const json& object, const std::string& key, const std::string& where) {
    const json& v = require_field(object, key, where);
    if (!v.is_boolean()) bad_input(where + " field '" + key + "'", "true or false", json_type(v) + " " + json_text(v));
    return v.get<bool>();
}

std::pair<int64_t, int64_t> require_int_pair(const json& object, const std::string& key, const std::string& where) {
    const json& v = require_field(object, key, where);
    if (!v.is_array() || v.size() != 2 || !v[0].is_number_integer() || !v[1].is_number_integer())
        bad_input(where + " field '" + key + "'", "a list of two ints", json_text(v));
    return {v[0].get<int64_t>(), v[1].get<int64_t>()};
}

void refuse_unknown_keys(const json& object, const std::vector<std::string>& known, const std::string& where) {
    for (auto it = object.begin(); it != object.end(); ++it) {
        bool ok = false;
        for (const auto& k : known) ok = ok || k == it.key();
        if (!ok)
            unsupported(where + " field '" + it.key() + "'", "one of the fields this runtime reads " + list_text(known),
                        "an unknown field (a newer exporter? update deploykit)");
    }
}

const json& Manifest::section(const std::string& name) const {
    static const json empty = json::object();
    auto it = doc.find(name);
    if (it == doc.end() || it->is_null()) return empty;
    if (!it->is_object()) bad_input(where() + " field '" + name + "'", "an object", json_type(*it));
    return *it;
}

fs::path manifest_path(const fs::path& artifact) {
    std::string ext = artifact.extension().string();
    if (ext != ".plan" && ext != ".engine") return fs::path(artifact).replace_extension(".json");
    fs::path primary = artifact;
    primary += ".json";
    if (fs::is_regular_file(primary)) return primary;
    fs::path legacy = fs::path(artifact).replace_extension(".json");
    if (fs::is_regular_file(legacy)) {
        // older plans: X.json is the plan's manifest only when it names the plan
        auto text = read_text(legacy);
        if (text) {
            json j = json::parse(*text, nullptr, false);
            if (j.is_object() && j.contains("artifact") && j["artifact"].is_object() &&
                j["artifact"].value("file", "") == artifact.filename().string())
                return legacy;
        }
    }
    return primary;
}

Manifest parse_manifest(const std::string& text, const fs::path& path) {
    Manifest m;
    m.path = path;
    const std::string where = m.where();
    if (text.size() > kMaxBytes)
        bad_input(where, "a file of at most " + std::to_string(kMaxBytes >> 20) + " MiB", std::to_string(text.size()) + " bytes");
    if (nesting_depth(text) > kMaxDepth)
        bad_input(where, "JSON nested at most " + std::to_string(kMaxDepth) + " deep", "deeper nesting");
    m.doc = json::parse(text, nullptr, false);
    if (m.doc.is_discarded()) bad_input(where, "valid JSON", "a parse error");
    if (!m.doc.is_object()) bad_input(where, "a JSON object", json_type(m.doc));
    if (!m.doc.contains("format") || m.doc["format"] != kManifestFormat)
        bad_input(where + " field 'format'", std::string("'") + kManifestFormat + "'",
                  m.doc.contains("format") ? json_text(m.doc["format"]) : "missing");
    refuse_unknown_keys(m.doc, kTopLevel, where);
    for (const auto& key : kRequired)
        if (!m.doc.contains(key)) bad_input(where + " field '" + key + "'", "present", "missing");
    m.kind = require_string(m.doc, "kind", where);

    const json& art = m.section("artifact");
    refuse_unknown_keys(art, {"file", "format", "sha256"}, where + " artifact");
    m.artifact_file = require_string(art, "file", where + " artifact");
    if (!plain_file_name(m.artifact_file))
        bad_input(where + " artifact field 'file'", "a file name without folders", json_text(m.artifact_file));
    m.artifact_format = require_string(art, "format", where + " artifact");
    if (m.artifact_format != "onnx" && m.artifact_format != "tensorrt-plan")
        unsupported(where + " artifact field 'format'", "'onnx' or 'tensorrt-plan'", json_text(m.artifact_format));
    m.artifact_sha256 = require_string(art, "sha256", where + " artifact");
    if (!sha256_text(m.artifact_sha256))
        bad_input(where + " artifact field 'sha256'", "64 lowercase hex digits", json_text(m.artifact_sha256));

    m.inputs = parse_specs(m.doc["inputs"], where + " inputs");
    m.outputs = parse_specs(m.doc["outputs"], where + " outputs");
    m.batch = parse_batch(m.doc["batch"], where + " batch");

    if (m.doc.contains("class_names") && !m.doc["class_names"].is_null()) {
        const json& names = m.doc["class_names"];
        if (!names.is_array()) bad_input(where + " field 'class_names'", "a list of strings", json_type(names));
        if (names.size() > kMaxClasses)
            bad_input(where + " field 'class_names'", "at most " + std::to_string(kMaxClasses) + " names", std::to_string(names.size()));
        for (const auto& n : names) {
            if (!n.is_string()) bad_input(where + " field 'class_names'", "a list of strings", json_text(n));
            m.class_names.push_back(n.get<std::string>());
        }
    }
    const json& trt = m.section("tensorrt");
    if (!trt.empty()) {
        TensorRTFacts facts;
        auto text_of = [&](const char* key) -> std::string {
            if (!trt.contains(key) || trt[key].is_null()) return {};
            return trt[key].is_string() ? trt[key].get<std::string>() : trt[key].dump();
        };
        facts.version = text_of("version");
        facts.compute_capability = text_of("compute_capability");
        facts.gpu = text_of("gpu");
        m.tensorrt = facts;
    }
    (void)m.section("preprocessing");
    (void)m.section("postprocessing");
    return m;
}

DirLock::DirLock(const fs::path& folder, bool shared) {
#if defined(__unix__) || defined(__APPLE__)
    fd_ = ::open(folder.empty() ? "." : folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd_ >= 0 && ::flock(fd_, shared ? LOCK_SH : LOCK_EX) != 0) {
        ::close(fd_);
        fd_ = -1;
    }
#else
    (void)folder;
    (void)shared;
#endif
}

DirLock::~DirLock() {
#if defined(__unix__) || defined(__APPLE__)
    if (fd_ >= 0) ::close(fd_);  // releases the lock
#endif
}

namespace {

fs::path pending(const fs::path& p) {
    fs::path out = p;
    out += ".new";
    return out;
}

std::string file_sha256(const fs::path& p) {
    auto text = read_text(p);
    return text ? sha256_hex(text->data(), text->size()) : std::string();
}

// The sha256 a pending manifest records, or "" when it cannot be read.
std::string recorded_sha256(const fs::path& manifest) {
    auto text = read_text(manifest);
    if (!text || text->size() > kMaxBytes || nesting_depth(*text) > kMaxDepth) return {};
    json j = json::parse(*text, nullptr, false);
    if (!j.is_object() || !j.contains("artifact") || !j["artifact"].is_object()) return {};
    const json& art = j["artifact"];
    return art.contains("sha256") && art["sha256"].is_string() ? art["sha256"].get<std::string>() : std::string();
}

fs::path writer_manifest_path(const fs::path& artifact) {
    std::string ext = artifact.extension().string();
    if (ext != ".plan" && ext != ".engine") return fs::path(artifact).replace_extension(".json");
    fs::path p = artifact;
    p += ".json";
    return p;
}

}  // namespace

void settle_artifact(const fs::path& artifact) {
    const fs::path mpath = writer_manifest_path(artifact);
    const fs::path a_new = pending(artifact), m_new = pending(mpath);
    std::error_code ec;
    if (!fs::exists(a_new, ec) && !fs::exists(m_new, ec)) return;
    DirLock lock(artifact.parent_path(), /*shared=*/false);
    if (fs::exists(m_new, ec)) {  // past the commit point: finish when the artifact matches
        const std::string want = recorded_sha256(m_new);
        if (!want.empty() && fs::exists(a_new, ec) && file_sha256(a_new) == want) {
            fs::rename(a_new, artifact, ec);
            if (!ec) fs::rename(m_new, mpath, ec);
        } else if (!want.empty() && !fs::exists(a_new, ec) && file_sha256(artifact) == want) {
            fs::rename(m_new, mpath, ec);
        } else {
            fs::remove(m_new, ec);
            fs::remove(a_new, ec);
        }
    } else {
        fs::remove(a_new, ec);  // before the commit point: the previous pair stands
    }
}

std::optional<Manifest> find_manifest(const fs::path& artifact, const std::string& artifact_sha256) {
    fs::path path = manifest_path(artifact);
    if (!fs::exists(path)) return std::nullopt;
    auto text = read_text(path);
    if (!text) bad_input("manifest " + path.string(), "a readable file", "it cannot be opened");
    Manifest m = parse_manifest(*text, path);
    std::string want_format = artifact.extension() == ".onnx" ? "onnx" : "tensorrt-plan";
    if (m.artifact_format != want_format)
        bad_input(m.where() + " artifact field 'format'", "'" + want_format + "' for " + artifact.filename().string(),
                  json_text(m.artifact_format));
    if (m.artifact_sha256 != artifact_sha256)
        bad_input(m.where(), "sha256 of " + artifact.filename().string() + " = " + m.artifact_sha256.substr(0, 12) + "...",
                  artifact_sha256.substr(0, 12) + "... (artifact changed after export, or manifest belongs to another file)");
    return m;
}

}  // namespace deploykit::core
