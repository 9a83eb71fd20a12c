// Built when NvInfer.h or CUDA was not found: .plan files get a one-line error saying so.
#include "error.hpp"
#include "session.hpp"

namespace deploykit::core {

bool tensorrt_backend_compiled() { return false; }

std::unique_ptr<Backend> make_tensorrt_backend(const std::string&, const std::filesystem::path& path,
                                               const std::optional<Manifest>&, const SessionOptions&) {
    unsupported("TensorRT engine " + path.string(),
                "a deploykit build with the native TensorRT backend (cmake -DDEPLOYKIT_TENSORRT=ON, with "
                "NvInfer.h and CUDA)",
                "a build without it (NvInfer.h or CUDA not found at configure time)");
}

}  // namespace deploykit::core
