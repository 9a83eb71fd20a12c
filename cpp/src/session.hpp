// Session: one artifact (.onnx on ONNX Runtime, .plan/.engine on native TensorRT) with its manifest.
// run() validates the feed once, here, and each backend implements only Backend::run
// (Polygraphy's infer / infer_impl split; deploykit.runtime.Session in Python).
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "manifest.hpp"
#include "tensor.hpp"

namespace deploykit::core {

struct SessionOptions {
    int threads = 0;                     // ONNX Runtime intra-op threads (inter-op 1); 0: ONNX Runtime decides
    std::vector<std::string> providers;  // ONNX Runtime EPs best first ("tensorrt", "cuda", "cpu"); empty: all there are
    int device_id = 0;                   // CUDA device for the CUDA/TensorRT EPs and the native TensorRT backend
    std::string trt_engine_cache;        // ONNX Runtime TensorRT EP: engine cache folder ("" = no cache)
    bool cuda_graph = false;             // native TensorRT only: replay inference as a captured CUDA graph
};

class Backend {
public:
    virtual ~Backend() = default;
    const std::vector<TensorSpec>& inputs() const { return inputs_; }
    const std::vector<TensorSpec>& outputs() const { return outputs_; }
    virtual std::string name() const = 0;
    // `inputs` follow inputs() order and were validated by Session::run. Must be thread-safe.
    virtual Outputs run(const std::vector<const TensorView*>& inputs) const = 0;

protected:
    std::vector<TensorSpec> inputs_, outputs_;
};

// Backends (defined in ort_backend.cpp and trt_backend.cpp / trt_missing.cpp).
std::unique_ptr<Backend> make_onnxruntime_backend(const std::string& bytes, const std::filesystem::path& path,
                                                  const SessionOptions& options);
std::unique_ptr<Backend> make_tensorrt_backend(const std::string& bytes, const std::filesystem::path& path,
                                               const std::optional<Manifest>& manifest, const SessionOptions& options);
// Whether this build has the native TensorRT backend.
bool tensorrt_backend_compiled();

class Session {
public:
    // Open `path` (suffix picks the backend). The manifest beside it is read when it exists and its
    // sha256 must match the loaded bytes; `require_manifest` makes a missing one an error.
    Session(const std::filesystem::path& path, const SessionOptions& options, bool require_manifest = false);
    ~Session();
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    const std::filesystem::path& path() const { return path_; }
    const std::vector<TensorSpec>& inputs() const { return backend_->inputs(); }
    const std::vector<TensorSpec>& outputs() const { return backend_->outputs(); }
    const Manifest* manifest() const { return manifest_ ? &*manifest_ : nullptr; }
    std::string backend_name() const { return backend_->name(); }
    const TensorSpec* input(const std::string& name) const;
    const TensorSpec* output(const std::string& name) const;

    // Validates names, dtypes, ranks, static dims, symbolic dims shared between inputs and the
    // manifest's batch range, then runs. Thread-safe.
    Outputs run(const std::vector<TensorView>& feed) const;

private:
    std::vector<const TensorView*> validate(const std::vector<TensorView>& feed) const;
    void check_manifest_matches_graph() const;

    std::filesystem::path path_;
    std::optional<Manifest> manifest_;
    std::unique_ptr<Backend> backend_;
};

}  // namespace deploykit::core
