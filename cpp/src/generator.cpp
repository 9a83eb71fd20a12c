#include "generator.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>

#include "error.hpp"

namespace deploykit::core {
using nlohmann::json;

namespace {

const std::vector<std::string> kPreprocessingKeys = {
    "type", "label_nc", "contain_dontcare_label", "dontcare_values", "label_minus_one", "label_range", "use_instance",
    "input_size", "resize", "input_dtypes", "use_vae", "z_dim", "semantic_nc"};
const std::vector<std::string> kPostprocessingKeys = {"output", "layout", "range", "to_uint8"};

std::string size_text(int64_t h, int64_t w) { return "(" + std::to_string(h) + ", " + std::to_string(w) + ")"; }

int64_t element(const MapView& m, int64_t y, int64_t x, size_t stride) {
    const auto* row = static_cast<const unsigned char*>(m.data) + static_cast<size_t>(y) * stride;
    switch (m.dtype) {
        case DType::uint8: return row[x];
        case DType::uint16: { uint16_t v; std::memcpy(&v, row + 2 * x, 2); return v; }
        case DType::int32: { int32_t v; std::memcpy(&v, row + 4 * x, 4); return v; }
        default: { int64_t v; std::memcpy(&v, row + 8 * x, 8); return v; }
    }
}

// PIL's NEAREST (what the upstream SPADE loader uses): source index floor((i + 0.5) * in / out).
std::vector<int64_t> nearest_index(int64_t out, int64_t in) {
    std::vector<int64_t> index(static_cast<size_t>(out));
    for (int64_t i = 0; i < out; ++i)
        index[i] = std::min<int64_t>(static_cast<int64_t>((static_cast<double>(i) + 0.5) * static_cast<double>(in) /
                                                          static_cast<double>(out)),
                                     in - 1);
    return index;
}

}  // namespace

Generator::Generator(const std::filesystem::path& path, const SessionOptions& options)
    : session_(std::make_unique<Session>(path, options, /*require_manifest=*/true)), where_("generator " + path.string()) {
    const Manifest& m = *session_->manifest();
    if (m.kind != "generator")
        bad_input("model " + path.string(), "a generator manifest (kind 'generator')", "kind '" + m.kind + "'");
    const json& pre = m.section("preprocessing");
    const std::string pwhere = where_ + " manifest preprocessing";
    refuse_unknown_keys(pre, kPreprocessingKeys, pwhere);
    std::string type = require_string(pre, "type", pwhere);
    if (type != "spade-label-map") unsupported(pwhere + " field 'type'", "'spade-label-map'", "'" + type + "'");
    std::tie(height_, width_) = require_int_pair(pre, "input_size", pwhere);
    std::tie(label_lo_, label_hi_) = require_int_pair(pre, "label_range", pwhere);
    if (pre.contains("dontcare_values")) {
        const json& d = pre["dontcare_values"];
        if (!d.is_array()) bad_input(pwhere + " field 'dontcare_values'", "a list of ints", json_text(d));
        for (const auto& v : d) {
            if (!v.is_number_integer()) bad_input(pwhere + " field 'dontcare_values'", "a list of ints", json_text(d));
            dontcare_.push_back(v.get<int64_t>());
        }
    }
    use_instance_ = require_bool(pre, "use_instance", pwhere);
    use_vae_ = pre.contains("use_vae") && require_bool(pre, "use_vae", pwhere);
    if (use_vae_) z_dim_ = require_int(pre, "z_dim", pwhere);
    if (pre.contains("resize") && pre["resize"] != "nearest")
        unsupported(pwhere + " field 'resize'", "'nearest'", json_text(pre["resize"]));
    const json& dtypes = require_field(pre, "input_dtypes", pwhere);
    if (!dtypes.is_object()) bad_input(pwhere + " field 'input_dtypes'", "an object {input: dtype}", json_text(dtypes));
    std::string label_dtype = require_string(dtypes, "label_map", pwhere + " input_dtypes");
    if (label_dtype != "uint8" && label_dtype != "int32")
        unsupported(pwhere + " input_dtypes field 'label_map'", "'uint8' or 'int32'", "'" + label_dtype + "'");
    dtype_from_name(label_dtype, &label_dtype_);

    const json& post = m.section("postprocessing");
    const std::string qwhere = where_ + " manifest postprocessing";
    refuse_unknown_keys(post, kPostprocessingKeys, qwhere);
    std::string output = post.contains("output") ? require_string(post, "output", qwhere) : "float";
    if (output != "float" && output != "uint8") unsupported(qwhere + " field 'output'", "'float' or 'uint8'", "'" + output + "'");
    uint8_output_ = output == "uint8";
    // The batch a run repeats the map to: the graph's own static batch (the artifact is verified by its
    // sha256; the manifest's batch section could ask for any number of copies), else one.
    const TensorSpec* labels = session_->input("label_map");
    batch_ = labels && !labels->shape.empty() && labels->shape[0].is_static() ? labels->shape[0].value : 1;
    if (batch_ < 1) batch_ = 1;

    const TensorSpec* image = session_->output("image");
    bool ok = image && image->shape.size() == 4 && image->dtype == (uint8_output_ ? DType::uint8 : DType::float32);
    if (!ok)
        bad_input(where_ + " output 'image'", uint8_output_ ? "uint8 [B, H, W, 3]" : "float32 [B, 3, H, W]",
                  image ? image->describe() : "missing");
}

std::string Generator::allowed_labels() const {
    std::string text = std::to_string(label_lo_) + ".." + std::to_string(label_hi_);
    for (int64_t v : dontcare_)
        if (v < label_lo_ || v > label_hi_) text += " or " + std::to_string(v) + " (dontcare)";
    return text;
}

std::vector<int64_t> Generator::read_map(const MapView& map, const std::string& what, bool resize) const {
    if (map.dtype != DType::uint8 && map.dtype != DType::uint16 && map.dtype != DType::int32 && map.dtype != DType::int64)
        bad_input(what + " dtype", "an integer type (uint8, uint16, int32, int64)", dtype_name(map.dtype));
    if (map.width < 1 || map.height < 1) bad_input(what + " size (H, W)", "at least (1, 1)", size_text(map.height, map.width));
    const size_t row = static_cast<size_t>(map.width) * dtype_size(map.dtype);
    if (map.stride != 0 && map.stride < row)
        bad_input(what + " stride", ">= width * " + std::to_string(dtype_size(map.dtype)) + " = " + std::to_string(row) +
                                        " bytes per row", std::to_string(map.stride));
    if (!map.data) bad_input(what + " data", "a pointer to the map", "null");
    if ((map.height != height_ || map.width != width_) && !resize)
        bad_input(what + " size (H, W)", size_text(height_, width_),
                  size_text(map.height, map.width) + " (resize it, or set resize for nearest)");
    const size_t stride = map.stride ? map.stride : row;
    std::vector<int64_t> rows = nearest_index(height_, map.height), cols = nearest_index(width_, map.width);
    std::vector<int64_t> values(static_cast<size_t>(height_ * width_));
    for (int64_t y = 0; y < height_; ++y)
        for (int64_t x = 0; x < width_; ++x) values[y * width_ + x] = element(map, rows[y], cols[x], stride);
    return values;
}

void Generator::check_labels(const std::vector<int64_t>& labels) const {
    auto bad = [&](int64_t v) {
        if (v >= label_lo_ && v <= label_hi_) return false;
        return std::find(dontcare_.begin(), dontcare_.end(), v) == dontcare_.end();
    };
    size_t first = labels.size(), n = 0;
    for (size_t i = 0; i < labels.size(); ++i) {
        if (bad(labels[i])) {
            if (!n) first = i;
            ++n;
        }
    }
    if (!n) return;
    std::string more = n > 1 ? " (" + std::to_string(n - 1) + " more pixels out of range)" : "";
    bad_input("label_map value", "labels " + allowed_labels(),
              std::to_string(labels[first]) + " at (x=" + std::to_string(first % width_) +
                  ", y=" + std::to_string(first / width_) + ")" + more);
}

Outputs Generator::run(const MapView& label_map, const MapView* instance_map, const GenerateOptions& options) const {
    std::vector<int64_t> labels = read_map(label_map, "label_map", options.resize);
    check_labels(labels);
    const size_t pixels = static_cast<size_t>(height_ * width_), batch = static_cast<size_t>(batch_);
    std::vector<TensorView> feed;
    std::vector<uint8_t> labels_u8;
    std::vector<int32_t> labels_i32, instances;
    std::vector<float> z;
    const std::vector<int64_t> map_shape = {batch_, height_, width_};
    if (label_dtype_ == DType::uint8) {
        labels_u8.resize(pixels * batch);
        for (size_t b = 0; b < batch; ++b)
            for (size_t i = 0; i < pixels; ++i) labels_u8[b * pixels + i] = static_cast<uint8_t>(labels[i]);
        feed.push_back({"label_map", DType::uint8, map_shape, labels_u8.data()});
    } else {
        labels_i32.resize(pixels * batch);
        for (size_t b = 0; b < batch; ++b)
            for (size_t i = 0; i < pixels; ++i) labels_i32[b * pixels + i] = static_cast<int32_t>(labels[i]);
        feed.push_back({"label_map", DType::int32, map_shape, labels_i32.data()});
    }
    if (use_instance_) {
        if (!instance_map)
            bad_input("instance_map", "an instance map (this generator uses instance edges)", "none");
        std::vector<int64_t> ids = read_map(*instance_map, "instance_map", options.resize);
        auto [lo, hi] = std::minmax_element(ids.begin(), ids.end());
        if (*lo < INT32_MIN || *hi > INT32_MAX) {  // only equality of neighbours matters: renumber compactly
            std::map<int64_t, int64_t> rank;
            for (int64_t v : ids) rank.emplace(v, 0);
            int64_t next = 0;
            for (auto& [v, r] : rank) r = next++;
            for (int64_t& v : ids) v = rank[v];
        }
        instances.resize(pixels * batch);
        for (size_t b = 0; b < batch; ++b)
            for (size_t i = 0; i < pixels; ++i) instances[b * pixels + i] = static_cast<int32_t>(ids[i]);
        feed.push_back({"instance_map", DType::int32, map_shape, instances.data()});
    } else if (instance_map) {
        bad_input("instance_map", "none (this generator uses no instance edges)", "a map");
    }
    if (use_vae_) {
        if (!options.z) bad_input("z", "a latent of " + std::to_string(z_dim_) + " floats (this generator is a VAE)", "none");
        if (static_cast<int64_t>(options.z_size) != z_dim_)
            bad_input("z shape", "[" + std::to_string(z_dim_) + "]", "[" + std::to_string(options.z_size) + "]");
        for (size_t b = 0; b < batch; ++b) z.insert(z.end(), options.z, options.z + options.z_size);
        feed.push_back({"z", DType::float32, {batch_, z_dim_}, z.data()});
    }
    return session_->run(feed);
}

RgbImage Generator::generate(const MapView& label_map, const MapView* instance_map, const GenerateOptions& options) const {
    Outputs out = run(label_map, instance_map, options);
    const OutputTensor& image = out.at("image");
    RgbImage rgb;
    rgb.height = height_;
    rgb.width = width_;
    const size_t pixels = static_cast<size_t>(height_ * width_);
    rgb.pixels.resize(pixels * 3);
    if (uint8_output_) {  // [B, H, W, 3]: the first image
        std::memcpy(rgb.pixels.data(), image.data, pixels * 3);
        return rgb;
    }
    const float* y = image.as<float>();  // [B, 3, H, W] in [-1, 1]
    for (size_t c = 0; c < 3; ++c) {
        for (size_t i = 0; i < pixels; ++i) {
            // the Python runtime's to_uint8_image, in float32 (no contraction into an FMA: -ffp-contract=off)
            float v = std::floor((std::clamp(y[c * pixels + i], -1.0f, 1.0f) + 1.0f) * 127.5f + 0.5f);
            rgb.pixels[i * 3 + c] = static_cast<uint8_t>(std::clamp(v, 0.0f, 255.0f));
        }
    }
    return rgb;
}

}  // namespace deploykit::core
