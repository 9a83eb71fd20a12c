// Detector: caller-owned uint8 images -> a pixels-in detector graph -> detections in the original
// image's pixels. The graph does resize, normalise, pad and the box rescale (contract 1 of the
// design: input `image` uint8 [B, H, W, 3] RGB); this class only packs pixels and reads results.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "session.hpp"

namespace deploykit::core {

struct ImageView {
    const uint8_t* data = nullptr;  // row-major, `stride` bytes per row
    int64_t width = 0, height = 0;
    int64_t channels = 3;
    size_t stride = 0;  // bytes per row; 0 means width * channels
    bool bgr = false;   // BGR pixel order (OpenCV's); converted while packing
};

struct Detection {
    float box[4];  // x1, y1, x2, y2 in the original image's pixels
    float score;
    int32_t label;
    std::string label_name;  // class_names[label], or "class_<label>" when the manifest has none
    // Mask R-CNN: the instance mask in the original image's pixels, height x width bytes (row-major),
    // 1 where the mask probability exceeds the manifest's threshold; empty for a box-only detector.
    std::vector<uint8_t> mask;
};

// Where a Mask R-CNN graph's masks come from (manifest postprocessing.masks).
enum class MaskForm { none, pasted, compact };

class Detector {
public:
    Detector(const std::filesystem::path& path, const SessionOptions& options);

    // Detections per image, in input order. Images run in batches of up to max_batch(). A pixels-in
    // graph takes one size per run (else bad_input); an image-list graph (export --input image-list)
    // takes a run of any sizes as one call, as torchvision batches a list (each image resized from its
    // own size, all padded to the run's largest). A fixed batch's last chunk is filled with blank
    // images (image-list: copies of the last one) whose results are dropped. Thread-safe.
    std::vector<std::vector<Detection>> predict(const std::vector<ImageView>& images) const;

    const Session& session() const { return *session_; }
    const std::vector<std::string>& class_names() const { return class_names_; }
    int64_t max_batch() const { return batch_max_; }
    MaskForm mask_form() const { return mask_form_; }
    bool image_list() const { return list_; }
    std::string label_name(int32_t label) const;
    // image_size_range of the manifest: {min_h, min_w}, {max_h, max_w}.
    std::pair<int64_t, int64_t> min_size() const { return {min_h_, min_w_}; }
    std::pair<int64_t, int64_t> max_size() const { return {max_h_, max_w_}; }

private:
    class PackBuffer;
    void configure();
    void check_image(const ImageView& image, const std::string& name) const;
    void configure_masks(const nlohmann::json& post, const std::string& where);
    void read_masks(const Outputs& out, size_t image, int64_t height, int64_t width, std::vector<Detection>& dets) const;
    void configure_list(const nlohmann::json& pre, const std::string& where);
    // torchvision's resized size of an h x w image (the model's min_size/max_size rule, float64).
    std::pair<int64_t, int64_t> resized_size(int64_t h, int64_t w) const;
    std::vector<std::vector<Detection>> predict_batch(const ImageView* images, size_t count, size_t offset) const;

    std::unique_ptr<Session> session_;
    std::string where_;
    std::string input_;
    std::vector<std::string> class_names_;
    int64_t batch_min_ = 1, batch_max_ = 1;
    int64_t fixed_h_ = -1, fixed_w_ = -1;  // the graph's static H/W, -1 when dynamic
    int64_t min_h_ = 1, min_w_ = 1, max_h_ = 0, max_w_ = 0;
    MaskForm mask_form_ = MaskForm::none;
    bool list_ = false;  // an image-list graph: inputs image, image_hw, canvas
    int64_t min_size_ = 0, max_size_ = 0, size_divisible_ = 32;
    float mask_threshold_ = 0.5f;
    mutable std::mutex pool_mutex_;
    mutable std::vector<std::vector<uint8_t>> pool_;  // packing buffers for reuse
};

}  // namespace deploykit::core
