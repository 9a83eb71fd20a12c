// The JSON manifest beside every artifact (deploykit-manifest/1; see deploykit/manifest.py).
//
// Read strictly: an unknown top-level field, an unknown field in a section the runtime
// interprets (artifact, batch, tensor specs, tensorrt's checked fields are read, its others are
// build facts), or a value it does not support is refused with the field, the expected and the
// got. model, precision and versions are informational and not interpreted.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tensor.hpp"

namespace deploykit::core {

inline constexpr const char* kManifestFormat = "deploykit-manifest/1";

struct BatchRange {
    bool dynamic = false;
    int64_t min = 1, opt = 1, max = 1;
};

struct TensorRTFacts {  // the plan manifest's "tensorrt" section (written by deploykit build)
    std::string version;
    std::string compute_capability;
    std::string gpu;
};

struct Manifest {
    std::filesystem::path path;
    nlohmann::json doc;
    std::string kind;
    std::string artifact_file, artifact_format, artifact_sha256;
    std::vector<TensorSpec> inputs, outputs;
    BatchRange batch;
    std::vector<std::string> class_names;
    std::optional<TensorRTFacts> tensorrt;

    // Where: "manifest <path>" (the thing errors name).
    std::string where() const { return "manifest " + path.string(); }
    // The section `name` (an object), or an empty object when absent; bad_input when not an object.
    const nlohmann::json& section(const std::string& name) const;
};

// Contract 2: X.onnx -> X.json; X.plan / X.engine -> X.plan.json / X.engine.json, falling back to
// X.json when that file's artifact.file names the plan. Returns the path that exists, or the
// primary path when none does.
std::filesystem::path manifest_path(const std::filesystem::path& artifact);

// Parse and validate a manifest's text (no sha256 check; `path` only names it in errors).
Manifest parse_manifest(const std::string& text, const std::filesystem::path& path);

// The manifest beside `artifact`, or nullopt when there is none. `artifact_sha256` (the hex digest
// of the bytes that will be loaded) must equal the manifest's, else bad_input.
std::optional<Manifest> find_manifest(const std::filesystem::path& artifact, const std::string& artifact_sha256);

// The crash-safe write of an artifact and its manifest (deploykit/manifest.py, write_artifact): a
// writer renames X.onnx.new then X.json.new into place (X.json.new is the commit point). Readers
// finish such an interrupted commit (both .new complete, checked by the sha256 X.json.new records)
// or undo it (only X.onnx.new: the old pair stands) before they read; where the folder is not
// writable the committed names are read as they are.
void settle_artifact(const std::filesystem::path& artifact);

// flock on a folder (shared for readers, exclusive for writers); nothing where it cannot be taken.
class DirLock {
public:
    DirLock(const std::filesystem::path& folder, bool shared);
    ~DirLock();
    DirLock(const DirLock&) = delete;
    DirLock& operator=(const DirLock&) = delete;

private:
    int fd_ = -1;
};

// Reading helpers shared by the pipelines: each throws bad_input naming `where` + field.
const nlohmann::json& require_field(const nlohmann::json& object, const std::string& key, const std::string& where);
std::string require_string(const nlohmann::json& object, const std::string& key, const std::string& where);
int64_t require_int(const nlohmann::json& object, const std::string& key, const std::string& where);
bool require_bool(const nlohmann::json& object, const std::string& key, const std::string& where);
// [a, b] of ints.
std::pair<int64_t, int64_t> require_int_pair(const nlohmann::json& object, const std::string& key,
                                             const std::string& where);
// Refuses keys of `object` that are not in `known`.
void refuse_unknown_keys(const nlohmann::json& object, const std::vector<std::string>& known,
                         const std::string& where);
// A JSON value as it reads in an error message (strings quoted, long values cut).
std::string json_text(const nlohmann::json& value);

}  // namespace deploykit::core
