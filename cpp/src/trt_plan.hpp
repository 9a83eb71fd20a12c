// The native TensorRT backend's logic that needs no GPU, compiled and tested everywhere
// (the Python twin: deploykit/runtime/tensorrt.py).
#pragma once

#include <array>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "manifest.hpp"
#include "tensor.hpp"

namespace deploykit::core::trt {

// TensorRT DataType name ("FLOAT", "HALF", "INT8", "INT32", "INT64", "BOOL", "UINT8") -> dtype;
// others (BF16, FP8, INT4, FP4, E8M0) are refused at the I/O boundary with bad_input.
DType dtype_from_trt_name(const std::string& trt_name, const std::string& tensor);

// Bytes for a concrete shape of `dtype`; a scalar (rank 0) takes one element.
size_t buffer_nbytes(const std::vector<int64_t>& shape, DType dtype);

// Optimisation-profile shapes {input: (min, opt, max)} from a manifest: "batch" takes the
// manifest's batch range when it is dynamic (opt for all three when not); a detector's image
// dimensions take preprocessing.image_size_range (height, width of a pixels-in graph) or
// padded_size_range (padded_height, padded_width of a dynamic tensor-input graph), with
// `opt_image_size` {h, w} replacing the image range's opt when given; any other symbolic
// dimension has no range to build for and is refused.
using ProfileShapes = std::map<std::string, std::array<std::vector<int64_t>, 3>>;
ProfileShapes profile_shapes(const Manifest& manifest, const std::optional<std::pair<int64_t, int64_t>>& opt_image_size = std::nullopt);

// "11.4.0" from getInferLibVersion()'s integer (major * 10000 + minor * 100 + patch).
std::string version_text(int lib_version);

// Refuse a plan built by another TensorRT (the manifest's version, compared on as many
// components as the running version has) or for another GPU (compute capability "8.7").
// No tensorrt section: nothing to check here (deserialisation then refuses an incompatible plan).
void check_compatible(const std::optional<TensorRTFacts>& built, const std::string& running_version,
                      const std::string& compute_capability, const std::string& plan);

// Whether `shape` (the input's concrete shape) lies within the profile's [min, max] per axis.
bool within_profile(const std::vector<int64_t>& shape, const std::vector<int64_t>& min, const std::vector<int64_t>& max);

}  // namespace deploykit::core::trt
