#include "session.hpp"

#include <fstream>
#include <map>
#include <sstream>

#include "error.hpp"
#include "sha256.hpp"

namespace deploykit::core {
namespace fs = std::filesystem;

namespace {

std::string read_bytes(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) bad_input("model " + path.string(), "a readable file", "it cannot be opened");
    std::ostringstream buffer;
    buffer << in.rdbuf();
    if (in.bad()) bad_input("model " + path.string(), "a readable file", "a read error");
    return buffer.str();
}

std::string got_text(const TensorView& t) { return std::string(dtype_name(t.dtype)) + " " + shape_text(t.shape); }

std::string names_text(const std::vector<TensorSpec>& specs) {
    std::string text = "[";
    for (size_t i = 0; i < specs.size(); ++i) text += (i ? ", '" : "'") + specs[i].name + "'";
    return text + "]";
}

}  // namespace

Session::Session(const fs::path& path, const SessionOptions& options, bool require_manifest) : path_(path) {
    settle_artifact(path);  // finish or undo an interrupted write of the artifact and its manifest
    if (!fs::is_regular_file(path)) {
        std::string got = fs::is_directory(path) ? "a directory" : "no such file";
        bad_input("model " + path.string(), "an existing .onnx, .plan or .engine file", got);
    }
    std::string ext = path.extension().string();
    if (ext != ".onnx" && ext != ".plan" && ext != ".engine")
        bad_input("model " + path.string(), "a file ending in .onnx, .plan or .engine",
                  "'" + (ext.empty() ? std::string("no suffix") : ext) + "'");
    if (options.threads < 0) bad_input("threads", "0 (ONNX Runtime decides) or a positive int", std::to_string(options.threads));
    if (options.device_id < 0) bad_input("device_id", "a CUDA device index >= 0", std::to_string(options.device_id));
    // The verified bytes are the loaded bytes: read once, hash, hand the same buffer to the backend.
    std::string bytes;
    {
        DirLock lock(path.parent_path(), /*shared=*/true);  // a writer's commit waits: artifact and manifest agree
        bytes = read_bytes(path);
        manifest_ = find_manifest(path, sha256_hex(bytes.data(), bytes.size()));
    }
    if (require_manifest && !manifest_)
        bad_input("model " + path.string(), "a deploykit manifest " + manifest_path(path).filename().string() + " beside it",
                  "no manifest");
    if (ext == ".onnx") {
        if (options.cuda_graph)
            bad_input("cuda_graph for model " + path.string(), "a TensorRT engine (.plan or .engine)",
                      "'.onnx', run by ONNX Runtime");
        backend_ = make_onnxruntime_backend(bytes, path, options);
    } else {
        backend_ = make_tensorrt_backend(bytes, path, manifest_, options);
    }
    check_manifest_matches_graph();
}

Session::~Session() = default;

const TensorSpec* Session::input(const std::string& name) const {
    for (const auto& s : inputs())
        if (s.name == name) return &s;
    return nullptr;
}

const TensorSpec* Session::output(const std::string& name) const {
    for (const auto& s : outputs())
        if (s.name == name) return &s;
    return nullptr;
}

void Session::check_manifest_matches_graph() const {
    if (!manifest_) return;
    auto compare = [&](const std::vector<TensorSpec>& declared, const std::vector<TensorSpec>& graph, const char* what) {
        std::string where = manifest_->where() + " " + what;
        if (declared.size() != graph.size()) bad_input(where, "the graph's " + names_text(graph), names_text(declared));
        for (const auto& d : declared) {
            const TensorSpec* g = nullptr;
            for (const auto& s : graph)
                if (s.name == d.name) g = &s;
            if (!g) bad_input(where, "the graph's " + names_text(graph), names_text(declared));
            bool same = g->dtype == d.dtype && g->shape.size() == d.shape.size();
            for (size_t a = 0; same && a < d.shape.size(); ++a)
                same = !(g->shape[a].is_static() && d.shape[a].is_static()) || g->shape[a].value == d.shape[a].value;
            if (!same) bad_input(where + " '" + d.name + "'", "the graph's " + g->describe(), d.describe());
        }
    };
    compare(manifest_->inputs, inputs(), "inputs");
    compare(manifest_->outputs, outputs(), "outputs");
}

std::vector<const TensorView*> Session::validate(const std::vector<TensorView>& feed) const {
    const auto& specs = inputs();
    for (const auto& t : feed) {
        if (!input(t.name)) bad_input("input '" + t.name + "'", "one of the model inputs " + names_text(specs), "an unknown name");
    }
    std::map<std::string, std::pair<int64_t, std::string>> symbols;
    std::vector<const TensorView*> ordered;
    for (const auto& spec : specs) {
        const TensorView* found = nullptr;
        for (const auto& t : feed) {
            if (t.name != spec.name) continue;
            if (found) bad_input("input '" + spec.name + "'", "once in the feed", "twice");
            found = &t;
        }
        const std::string thing = "input '" + spec.name + "'";
        if (!found) bad_input(thing, "in the feed (model inputs " + names_text(specs) + ")", "missing");
        const TensorView& t = *found;
        if (t.dtype != spec.dtype) bad_input(thing, spec.describe(), got_text(t) + " (wrong dtype)");
        if (t.shape.size() != spec.shape.size())
            bad_input(thing, spec.describe(), got_text(t) + " (rank " + std::to_string(t.shape.size()) + ", expected " +
                                                  std::to_string(spec.shape.size()) + ")");
        for (size_t axis = 0; axis < spec.shape.size(); ++axis) {
            const Dim& want = spec.shape[axis];
            int64_t have = t.shape[axis];
            if (have < 0) bad_input(thing, spec.describe(), got_text(t) + " (negative dim " + std::to_string(axis) + ")");
            if (want.is_static()) {
                if (want.value != have) bad_input(thing, spec.describe(), got_text(t) + " (dim " + std::to_string(axis) + ")");
            } else if (want.symbol != "?") {
                auto seen = symbols.emplace(want.symbol, std::make_pair(have, spec.name)).first->second;
                if (seen.first != have)
                    bad_input(thing + " dim " + std::to_string(axis) + " (" + want.symbol + ")",
                              std::to_string(seen.first) + " as in input '" + seen.second + "'", std::to_string(have));
            }
        }
        if (manifest_ && manifest_->batch.dynamic && !spec.shape.empty() && spec.shape[0].symbol == "batch") {
            const auto& b = manifest_->batch;
            if (t.shape[0] < b.min || t.shape[0] > b.max)
                bad_input(thing + " batch", std::to_string(b.min) + ".." + std::to_string(b.max) + " (manifest batch range)",
                          std::to_string(t.shape[0]));
        }
        size_t bytes = element_count(t.shape, thing) * dtype_size(t.dtype);
        if (bytes && !t.data) bad_input(thing + " data", "a pointer to " + std::to_string(bytes) + " bytes", "null");
        ordered.push_back(found);
    }
    return ordered;
}

Outputs Session::run(const std::vector<TensorView>& feed) const { return backend_->run(validate(feed)); }

}  // namespace deploykit::core
