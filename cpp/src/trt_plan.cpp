#include "trt_plan.hpp"

#include <sstream>

#include "error.hpp"

namespace deploykit::core::trt {

DType dtype_from_trt_name(const std::string& trt_name, const std::string& tensor) {
    static const std::pair<const char*, DType> table[] = {
        {"FLOAT", DType::float32}, {"HALF", DType::float16}, {"INT8", DType::int8},   {"INT32", DType::int32},
        {"INT64", DType::int64},   {"BOOL", DType::boolean}, {"UINT8", DType::uint8},
    };
    for (const auto& [name, dtype] : table)
        if (trt_name == name) return dtype;
    bad_input("engine I/O '" + tensor + "' dtype", "one of BOOL, FLOAT, HALF, INT32, INT64, INT8, UINT8", trt_name);
}

size_t buffer_nbytes(const std::vector<int64_t>& shape, DType dtype) {
    return element_count(shape, "buffer shape") * dtype_size(dtype);
}

namespace {

// {min, opt, max} of image dimension `dim` from preprocessing.<key>, or nullopt when `dim` is not one.
std::optional<std::array<int64_t, 3>> image_dim_range(const Manifest& manifest, const std::string& dim,
                                                      const std::optional<std::pair<int64_t, int64_t>>& opt_image,
                                                      const std::string& where) {
    static const std::pair<const char*, std::pair<const char*, int>> dims[] = {
        {"height", {"image_size_range", 0}}, {"width", {"image_size_range", 1}},
        {"padded_height", {"padded_size_range", 0}}, {"padded_width", {"padded_size_range", 1}}};
    for (const auto& [name, where_in] : dims) {
        if (dim != name) continue;
        const char* key = where_in.first;  // not a structured binding: lambdas capture it (clang < 16)
        const int axis = where_in.second;
        const nlohmann::json& pre = manifest.section("preprocessing");
        auto it = pre.find(key);
        if (it == pre.end() || !it->is_object())
            bad_input(where + " (" + dim + ")", std::string("a range in manifest preprocessing.") + key, "none");
        auto at = [&](const char* which, const char* fallback) -> int64_t {
            const nlohmann::json* v = it->contains(which) ? &(*it)[which] : (fallback && it->contains(fallback) ? &(*it)[fallback] : nullptr);
            if (!v || !v->is_array() || v->size() != 2 || !(*v)[axis].is_number_integer())
                bad_input(std::string("manifest preprocessing.") + key, "{min: [h, w], opt: [h, w], max: [h, w]}", json_text(*it));
            return (*v)[axis].get<int64_t>();
        };
        int64_t low = at("min", nullptr), high = at("max", nullptr), opt = at("opt", "min");
        if (opt_image && std::string(key) == "image_size_range") opt = axis == 0 ? opt_image->first : opt_image->second;
        if (!(1 <= low && low <= opt && opt <= high))
            bad_input("profile for " + dim, "min <= opt <= max within " + std::to_string(low) + ".." + std::to_string(high),
                      "opt " + std::to_string(opt));
        return std::array<int64_t, 3>{low, opt, high};
    }
    return std::nullopt;
}

}  // namespace

ProfileShapes profile_shapes(const Manifest& manifest, const std::optional<std::pair<int64_t, int64_t>>& opt_image_size) {
    BatchRange b = manifest.batch;
    int64_t low = b.dynamic ? b.min : b.opt, opt = b.opt, high = b.dynamic ? b.max : b.opt;
    ProfileShapes shapes;
    for (const auto& spec : manifest.inputs) {
        std::array<std::vector<int64_t>, 3> per;
        for (size_t axis = 0; axis < spec.shape.size(); ++axis) {
            const Dim& d = spec.shape[axis];
            const std::string where = "manifest input '" + spec.name + "' dim " + std::to_string(axis);
            if (d.is_static()) {
                for (auto& p : per) p.push_back(d.value);
            } else if (d.symbol == "batch") {
                per[0].push_back(low), per[1].push_back(opt), per[2].push_back(high);
            } else if (auto range = image_dim_range(manifest, d.symbol, opt_image_size, where)) {
                for (int i = 0; i < 3; ++i) per[i].push_back((*range)[i]);
            } else {
                bad_input(where, "an int, 'batch' or a detector image dimension (height, width, padded_height, padded_width)",
                          "'" + d.symbol + "'");
            }
        }
        shapes[spec.name] = per;
    }
    if (shapes.empty()) bad_input("manifest inputs", "at least one input", "none");
    return shapes;
}

std::string version_text(int lib_version) {
    return std::to_string(lib_version / 10000) + "." + std::to_string((lib_version / 100) % 100) + "." +
           std::to_string(lib_version % 100);
}

namespace {
std::vector<std::string> components(const std::string& version) {
    std::vector<std::string> parts;
    std::stringstream in(version);
    for (std::string p; std::getline(in, p, '.');) parts.push_back(p);
    return parts;
}
}  // namespace

void check_compatible(const std::optional<TensorRTFacts>& built, const std::string& running_version,
                      const std::string& compute_capability, const std::string& plan) {
    if (!built) return;
    if (!built->version.empty()) {
        auto want = components(running_version), have = components(built->version);
        bool same = have.size() >= want.size();
        for (size_t i = 0; same && i < want.size(); ++i) same = want[i] == have[i];
        if (!same)
            bad_input("TensorRT engine " + plan, "built by the running TensorRT " + running_version,
                      "built by TensorRT " + built->version + "; rebuild it with `deploykit build`");
    }
    if (!built->compute_capability.empty() && built->compute_capability != compute_capability)
        bad_input("TensorRT engine " + plan, "built for this GPU (compute capability " + compute_capability + ")",
                  "built for compute capability " + built->compute_capability + " (" +
                      (built->gpu.empty() ? std::string("unknown GPU") : built->gpu) + "); rebuild it on this GPU");
}

bool within_profile(const std::vector<int64_t>& shape, const std::vector<int64_t>& min, const std::vector<int64_t>& max) {
    if (shape.size() != min.size() || shape.size() != max.size()) return false;
    for (size_t i = 0; i < shape.size(); ++i)
        if (shape[i] < min[i] || shape[i] > max[i]) return false;
    return true;
}

}  // namespace deploykit::core::trt
