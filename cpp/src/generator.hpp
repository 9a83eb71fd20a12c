// Generator: a SPADE label map (and instance map) -> an H x W x 3 uint8 RGB image.
// The graph does the one-hot encoding, the dontcare mapping and the instance edges; this class
// checks the maps (size, dtype, label range) exactly as deploykit/runtime/generator.py does and turns
// the output into pixels: floor((clip(y, -1, 1) + 1) * 127.5 + 0.5) in float32.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "session.hpp"

namespace deploykit::core {

struct MapView {
    const void* data = nullptr;
    DType dtype = DType::uint8;  // uint8, uint16, int32 or int64
    int64_t width = 0, height = 0;
    size_t stride = 0;  // bytes per row; 0 means width * element size
};

struct GenerateOptions {
    bool resize = false;     // resize maps of another size to the generator's (nearest, as the upstream loader)
    const float* z = nullptr;  // VAE generators: the latent, z_dim floats
    size_t z_size = 0;
};

struct RgbImage {
    int64_t width = 0, height = 0;
    std::vector<uint8_t> pixels;  // height * width * 3, RGB
};

class Generator {
public:
    Generator(const std::filesystem::path& path, const SessionOptions& options);

    RgbImage generate(const MapView& label_map, const MapView* instance_map, const GenerateOptions& options) const;
    // The graph's raw output for the same input (float32 [B, 3, H, W] or uint8 [B, H, W, 3]).
    Outputs run(const MapView& label_map, const MapView* instance_map, const GenerateOptions& options) const;

    const Session& session() const { return *session_; }
    std::pair<int64_t, int64_t> size() const { return {height_, width_}; }
    std::pair<int64_t, int64_t> label_range() const { return {label_lo_, label_hi_}; }
    const std::vector<int64_t>& dontcare_values() const { return dontcare_; }
    bool uses_instances() const { return use_instance_; }
    // "0..9 or 255 (dontcare)"
    std::string allowed_labels() const;

private:
    std::vector<int64_t> read_map(const MapView& map, const std::string& what, bool resize) const;
    void check_labels(const std::vector<int64_t>& labels) const;

    std::unique_ptr<Session> session_;
    std::string where_;
    int64_t height_ = 0, width_ = 0;
    int64_t label_lo_ = 0, label_hi_ = 0;
    std::vector<int64_t> dontcare_;
    bool use_instance_ = false, use_vae_ = false;
    int64_t z_dim_ = 0;
    DType label_dtype_ = DType::uint8;
    int64_t batch_ = 1;
    bool uint8_output_ = false;
};

}  // namespace deploykit::core
