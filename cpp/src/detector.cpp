#include "detector.hpp"

#include <algorithm>
#include <cstring>

#include "error.hpp"
#include "masks.hpp"

namespace deploykit::core {
using nlohmann::json;

namespace {

const char* kExportHint =
    "a pixels-in graph (input 'image' uint8 [B, H, W, 3], manifest preprocessing.in_graph true; export it with "
    "`deploykit export MODEL --input image [--input-size HxW]`)";

std::string size_text(int64_t h, int64_t w) { return "(" + std::to_string(h) + ", " + std::to_string(w) + ")"; }

// The fields of a pixels-in detector's preprocessing this runtime knows: the ones it checks, and
// the resize facts it leaves to the graph.
const std::vector<std::string> kPreprocessingKeys = {
    "in_graph", "input", "layout", "color", "input_dtype", "mode", "image_size_range",
    // resize facts (the graph applies them)
    "input_size", "canvas", "min_size", "max_size", "resize", "interpolation", "mean", "std", "pixel_scale",
    "size_divisible", "pad_value", "padding_emulation", "reference_transform", "padded_size_range"};
const std::vector<std::string> kPostprocessingKeys = {"raw", "score_threshold", "nms_iou", "max_detections",
                                                      "box_format", "box_coordinates", "padding", "rpn", "anchors",
                                                      "masks"};
const std::vector<std::string> kMaskKeys = {"form", "mask_size", "threshold", "paste", "dtype", "bytes_per_image_pixel",
                                            "bytes_at_max_image", "rows"};

// BGR -> RGB for one row while packing (non-aliasing pointers let the compiler keep it tight).
void rgb_from_bgr(uint8_t* __restrict dst, const uint8_t* __restrict src, size_t pixels) {
    for (size_t p = 0; p < pixels; ++p) {
        dst[3 * p] = src[3 * p + 2];
        dst[3 * p + 1] = src[3 * p + 1];
        dst[3 * p + 2] = src[3 * p];
    }
}

void expect_value(const json& section, const std::string& key, const std::string& want, const std::string& where) {
    std::string got = require_string(section, key, where);
    if (got != want) unsupported(where + " field '" + key + "'", "'" + want + "'", "'" + got + "'");
}

}  // namespace

// A packing buffer from the Detector's pool, back to it when the call ends: large images do not
// pay a fresh allocation (and its page faults) per call, and concurrent calls each get their own.
class Detector::PackBuffer {
public:
    explicit PackBuffer(const Detector& owner) : owner_(owner) {
        std::lock_guard<std::mutex> lock(owner_.pool_mutex_);
        if (!owner_.pool_.empty()) {
            buffer_ = std::move(owner_.pool_.back());
            owner_.pool_.pop_back();
        }
    }
    ~PackBuffer() {
        if (buffer_.empty()) return;
        std::lock_guard<std::mutex> lock(owner_.pool_mutex_);
        if (owner_.pool_.size() < kKeep) owner_.pool_.push_back(std::move(buffer_));
    }
    PackBuffer(const PackBuffer&) = delete;
    PackBuffer& operator=(const PackBuffer&) = delete;
    void reserve(size_t bytes) {
        if (buffer_.size() < bytes) buffer_.resize(bytes);
    }
    uint8_t* data() { return buffer_.data(); }

private:
    static constexpr size_t kKeep = 8;  // buffers kept for reuse (one per concurrent caller, up to 8)
    const Detector& owner_;
    std::vector<uint8_t> buffer_;
};

Detector::Detector(const std::filesystem::path& path, const SessionOptions& options)
    : session_(std::make_unique<Session>(path, options, /*require_manifest=*/true)), where_("detector " + path.string()) {
    configure();
}

void Detector::configure() {
    const Manifest& m = *session_->manifest();
    if (m.kind != "detector") bad_input(where_ + " manifest kind", "'detector'", "'" + m.kind + "'");
    const json& pre = m.section("preprocessing");
    bool tensor_graph = session_->input("images") && session_->input("image_sizes");
    if (tensor_graph || !pre.contains("in_graph") || pre["in_graph"] != true)
        unsupported(where_, kExportHint,
                    tensor_graph ? "a tensor-input graph (inputs 'images' float32 and 'image_sizes')"
                                 : "preprocessing.in_graph " + (pre.contains("in_graph") ? json_text(pre["in_graph"]) : "missing"));
    const std::string pwhere = where_ + " manifest preprocessing";
    refuse_unknown_keys(pre, kPreprocessingKeys, pwhere);
    input_ = require_string(pre, "input", pwhere);
    expect_value(pre, "layout", "NHWC", pwhere);
    expect_value(pre, "color", "RGB", pwhere);
    expect_value(pre, "input_dtype", "uint8", pwhere);
    std::string mode = require_string(pre, "mode", pwhere);
    if (mode != "dynamic" && mode != "fixed") unsupported(pwhere + " field 'mode'", "'dynamic' or 'fixed'", "'" + mode + "'");
    const json& range = require_field(pre, "image_size_range", pwhere);
    if (!range.is_object()) bad_input(pwhere + " field 'image_size_range'", "an object {min, opt, max}", json_text(range));
    refuse_unknown_keys(range, {"min", "opt", "max"}, pwhere + " image_size_range");
    auto [min_h, min_w] = require_int_pair(range, "min", pwhere + " image_size_range");
    auto [opt_h, opt_w] = require_int_pair(range, "opt", pwhere + " image_size_range");
    auto [max_h, max_w] = require_int_pair(range, "max", pwhere + " image_size_range");
    if (!(1 <= min_h && min_h <= opt_h && opt_h <= max_h && 1 <= min_w && min_w <= opt_w && opt_w <= max_w))
        bad_input(pwhere + " image_size_range", "1 <= min <= opt <= max per axis",
                  "min " + size_text(min_h, min_w) + ", opt " + size_text(opt_h, opt_w) + ", max " + size_text(max_h, max_w));
    min_h_ = min_h, min_w_ = min_w, max_h_ = max_h, max_w_ = max_w;

    if (input_ == "image-list") configure_list(pre, pwhere);

    const json& post = m.section("postprocessing");
    const std::string qwhere = where_ + " manifest postprocessing";
    refuse_unknown_keys(post, kPostprocessingKeys, qwhere);
    expect_value(post, "box_coordinates", "original-image pixels", qwhere);
    if (post.contains("box_format")) expect_value(post, "box_format", "xyxy", qwhere);
    if (post.contains("raw") && post["raw"] != false)
        unsupported(qwhere + " field 'raw'", "false (final detections)", json_text(post["raw"]));
    class_names_ = m.class_names;

    // The graph: one uint8 [B, H, W, 3] input (image-list: and image_hw, canvas) and the four padded outputs.
    const size_t n_inputs = list_ ? 3 : 1;
    if (session_->inputs().size() != n_inputs || session_->inputs()[0].name != input_)
        bad_input(where_ + " inputs", list_ ? "'image', 'image_hw', 'canvas' (an image-list graph)"
                                            : "one input '" + input_ + "' (manifest preprocessing.input)",
                  std::to_string(session_->inputs().size()) + " inputs, the first '" +
                      (session_->inputs().empty() ? std::string() : session_->inputs()[0].name) + "'");
    const TensorSpec& in = session_->inputs()[0];
    bool nhwc = in.dtype == DType::uint8 && in.shape.size() == 4 && in.shape[3].is_static() && in.shape[3].value == 3;
    if (!nhwc) bad_input(where_ + " input '" + in.name + "'", "uint8 [B, H, W, 3]", in.describe());
    if (in.shape[1].is_static()) fixed_h_ = in.shape[1].value;
    if (in.shape[2].is_static()) fixed_w_ = in.shape[2].value;
    auto want = [&](const char* name, DType dtype, size_t rank) {
        const TensorSpec* s = session_->output(name);
        if (!s || s->dtype != dtype || s->shape.size() != rank)
            bad_input(where_ + " output '" + name + "'", std::string(dtype_name(dtype)) + " of rank " + std::to_string(rank),
                      s ? s->describe() : "missing");
    };
    want("num_detections", DType::int32, 1);
    want("boxes", DType::float32, 3);
    want("scores", DType::float32, 2);
    want("labels", DType::int32, 2);
    configure_masks(post, qwhere);
    if (in.shape[0].is_static()) {
        batch_min_ = batch_max_ = in.shape[0].value;
    } else {
        batch_min_ = m.batch.min;
        batch_max_ = m.batch.max;
    }
}

void Detector::configure_list(const json& pre, const std::string& where) {
    list_ = true;
    input_ = "image";
    if (require_string(pre, "mode", where) != "dynamic")
        bad_input(where + " field 'mode'", "'dynamic' for an image-list graph", json_text(pre["mode"]));
    min_size_ = require_int(pre, "min_size", where);
    max_size_ = require_int(pre, "max_size", where);
    size_divisible_ = pre.contains("size_divisible") ? require_int(pre, "size_divisible", where) : 32;
    if (min_size_ < 1 || max_size_ < 1 || size_divisible_ < 1)
        bad_input(where + " min_size, max_size, size_divisible", "positive ints",
                  std::to_string(min_size_) + ", " + std::to_string(max_size_) + ", " + std::to_string(size_divisible_));
    const TensorSpec* hw = session_->input("image_hw");
    const TensorSpec* canvas = session_->input("canvas");
    if (!hw || hw->dtype != DType::int32 || hw->shape.size() != 2)
        bad_input(where_ + " input 'image_hw'", "int32 [B, 2]", hw ? hw->describe() : "missing");
    if (!canvas || canvas->dtype != DType::uint8 || canvas->shape.size() != 2)
        bad_input(where_ + " input 'canvas'", "uint8 [Hp, Wp]", canvas ? canvas->describe() : "missing");
}

std::pair<int64_t, int64_t> Detector::resized_size(int64_t h, int64_t w) const {
    // GeneralizedRCNNTransform: scale = min(min_size / min(h, w), max_size / max(h, w)) in Python floats (double),
    // each side int(side * scale) as interpolate(recompute_scale_factor=True) floors it
    const double scale = std::min(static_cast<double>(min_size_) / static_cast<double>(std::min(h, w)),
                                  static_cast<double>(max_size_) / static_cast<double>(std::max(h, w)));
    return {static_cast<int64_t>(static_cast<double>(h) * scale), static_cast<int64_t>(static_cast<double>(w) * scale)};
}

void Detector::configure_masks(const json& post, const std::string& where) {
    const TensorSpec* pasted = session_->output("masks");
    const TensorSpec* probs = session_->output("mask_probs");
    const TensorSpec* corners = session_->output("mask_boxes");
    if (!post.contains("masks")) {
        if (pasted || probs) bad_input(where + " field 'masks'", "present for a graph with mask outputs", "missing");
        return;
    }
    const json& section = post["masks"];
    const std::string mwhere = where + " masks";
    if (!section.is_object()) bad_input(mwhere, "an object {form, mask_size, threshold, ...}", json_text(section));
    refuse_unknown_keys(section, kMaskKeys, mwhere);
    if (section.contains("threshold") && !section["threshold"].is_null()) {
        const json& t = section["threshold"];
        if (!t.is_number() || t.get<double>() < 0.0 || t.get<double>() >= 1.0)
            bad_input(mwhere + " field 'threshold'", "a number in [0, 1) or null", json_text(t));
        mask_threshold_ = t.get<float>();
    }
    if (pasted) {
        const bool ok = (pasted->dtype == DType::uint8 || pasted->dtype == DType::float32) && pasted->shape.size() == 4;
        if (!ok) bad_input(where_ + " output 'masks'", "uint8 or float32 [B, K, H, W]", pasted->describe());
        mask_form_ = MaskForm::pasted;
    } else if (probs && corners) {
        if (probs->dtype != DType::float32 || probs->shape.size() != 4)
            bad_input(where_ + " output 'mask_probs'", "float32 [B, K, M, M]", probs->describe());
        if (corners->dtype != DType::int32 || corners->shape.size() != 3)
            bad_input(where_ + " output 'mask_boxes'", "int32 [B, K, 4]", corners->describe());
        mask_form_ = MaskForm::compact;
    } else {
        bad_input(where_ + " outputs", "'masks', or 'mask_probs' and 'mask_boxes' (manifest postprocessing.masks)",
                  "none of them");
    }
}

void Detector::read_masks(const Outputs& out, size_t image, int64_t height, int64_t width,
                          std::vector<Detection>& dets) const {
    const size_t plane = static_cast<size_t>(height * width);
    if (mask_form_ == MaskForm::pasted) {
        const OutputTensor& masks = out.at("masks");
        // [B, K, H, W]: the frame is the image's own size, or (image-list) the batch's largest slot
        if (masks.shape.size() != 4 || masks.shape[2] < height || masks.shape[3] < width ||
            masks.shape[1] < static_cast<int64_t>(dets.size()))
            runtime_error(where_ + " output 'masks': expected [B, K, >= " + std::to_string(height) + ", >= " +
                          std::to_string(width) + "], got " + shape_text(masks.shape));
        const size_t frame_w = static_cast<size_t>(masks.shape[3]);
        const size_t frame = static_cast<size_t>(masks.shape[2]) * frame_w;
        const size_t first = image * static_cast<size_t>(masks.shape[1]) * frame;
        for (size_t k = 0; k < dets.size(); ++k) {
            auto& mask = dets[k].mask;
            mask.resize(plane);
            for (int64_t y = 0; y < height; ++y) {
                const size_t at = first + k * frame + static_cast<size_t>(y) * frame_w;
                uint8_t* dst = mask.data() + static_cast<size_t>(y * width);
                if (masks.dtype == DType::uint8) {
                    std::memcpy(dst, masks.as<uint8_t>() + at, static_cast<size_t>(width));
                } else {  // probabilities: the manifest's threshold
                    const float* p = masks.as<float>() + at;
                    for (int64_t x = 0; x < width; ++x) dst[x] = p[x] > mask_threshold_ ? 1 : 0;
                }
            }
        }
        return;
    }
    const OutputTensor& probs = out.at("mask_probs");
    const OutputTensor& corners = out.at("mask_boxes");
    if (probs.shape.size() != 4 || probs.shape[2] != probs.shape[3] || corners.shape.size() != 3 ||
        corners.shape[2] != 4 || probs.shape[1] != corners.shape[1] || probs.shape[1] < static_cast<int64_t>(dets.size()))
        runtime_error(where_ + " outputs: expected mask_probs [B, K, M, M] and mask_boxes [B, K, 4], got " +
                      shape_text(probs.shape) + " and " + shape_text(corners.shape));
    const int64_t m = probs.shape[2], k_cap = probs.shape[1];
    for (size_t k = 0; k < dets.size(); ++k) {
        const size_t at = image * static_cast<size_t>(k_cap) + k;
        dets[k].mask.resize(plane);
        paste_mask(probs.as<float>() + at * static_cast<size_t>(m * m), m, corners.as<int32_t>() + at * 4, height,
                   width, mask_threshold_, dets[k].mask.data());
    }
}

std::string Detector::label_name(int32_t label) const {
    if (label >= 0 && static_cast<size_t>(label) < class_names_.size()) return class_names_[label];
    return "class_" + std::to_string(label);
}

void Detector::check_image(const ImageView& im, const std::string& name) const {
    if (im.channels != 3)
        bad_input(name + " channels", "3 (an RGB or BGR uint8 image; convert gray or 4-channel images first)",
                  std::to_string(im.channels));
    if (im.width < 1 || im.height < 1)
        bad_input(name + " size (H, W)", "at least (1, 1)", size_text(im.height, im.width));
    const size_t row = static_cast<size_t>(im.width) * 3;
    if (im.stride != 0 && im.stride < row)
        bad_input(name + " stride", ">= width * 3 = " + std::to_string(row) + " bytes per row", std::to_string(im.stride));
    if (!im.data) bad_input(name + " data", "a pointer to " + size_text(im.height, im.width) + " x 3 uint8 pixels", "null");
    if ((fixed_h_ >= 0 && im.height != fixed_h_) || (fixed_w_ >= 0 && im.width != fixed_w_))
        bad_input(name + " size (H, W)",
                  size_text(fixed_h_ >= 0 ? fixed_h_ : im.height, fixed_w_ >= 0 ? fixed_w_ : im.width) +
                      " (the graph's fixed input size)",
                  size_text(im.height, im.width));
    if (im.height < min_h_ || im.width < min_w_ || im.height > max_h_ || im.width > max_w_)
        bad_input(name + " size (H, W)",
                  "between " + size_text(min_h_, min_w_) + " and " + size_text(max_h_, max_w_) +
                      " (manifest image_size_range)",
                  size_text(im.height, im.width));
}

std::vector<std::vector<Detection>> Detector::predict(const std::vector<ImageView>& images) const {
    std::vector<std::vector<Detection>> results;
    results.reserve(images.size());
    const size_t step = static_cast<size_t>(batch_max_);
    for (size_t start = 0; start < images.size(); start += step) {
        auto part = predict_batch(images.data() + start, std::min(step, images.size() - start), start);
        for (auto& r : part) results.push_back(std::move(r));
    }
    return results;
}

std::vector<std::vector<Detection>> Detector::predict_batch(const ImageView* images, size_t count, size_t offset) const {
    const bool several = count > 1 || offset > 0;
    auto name_of = [&](size_t i) { return several ? "image " + std::to_string(offset + i) : std::string("image"); };
    for (size_t i = 0; i < count; ++i) check_image(images[i], name_of(i));
    int64_t h = images[0].height, w = images[0].width;
    for (size_t i = 1; i < count; ++i) {
        if (list_) {  // an image-list graph: slots of the largest height and width
            h = std::max(h, images[i].height), w = std::max(w, images[i].width);
        } else if (images[i].height != h || images[i].width != w) {
            bad_input(name_of(i) + " size (H, W)", size_text(h, w) + " as " + name_of(0) + " (one size per batch)",
                      size_text(images[i].height, images[i].width));
        }
    }
    const size_t batch = std::max<size_t>(count, static_cast<size_t>(batch_min_));  // fill for a fixed batch
    const size_t row = static_cast<size_t>(w) * 3, plane = row * static_cast<size_t>(h);
    // an image-list batch's fill repeats the last image (its size keeps the batch's canvas); others are blank
    auto source = [&](size_t i) -> const ImageView& { return images[std::min(i, list_ ? count - 1 : i)]; };

    std::vector<TensorView> feed{TensorView{input_, DType::uint8, {static_cast<int64_t>(batch), h, w, 3}, nullptr}};
    PackBuffer packed(*this);
    const ImageView& first = images[0];
    if (batch == 1 && !first.bgr && (first.stride == 0 || first.stride == row)) {
        feed[0].data = first.data;  // already the tensor: no copy
    } else {
        packed.reserve(batch * plane);  // every byte is written below
        const size_t filled = list_ ? batch : count;
        for (size_t i = 0; i < filled; ++i) {
            const ImageView& im = source(i);
            const size_t own = static_cast<size_t>(im.width) * 3;
            const size_t stride = im.stride ? im.stride : own;
            uint8_t* dst = packed.data() + i * plane;
            for (int64_t y = 0; y < h; ++y, dst += row) {
                if (y >= im.height) {
                    std::memset(dst, 0, row);
                    continue;
                }
                const uint8_t* src = im.data + static_cast<size_t>(y) * stride;
                if (im.bgr)
                    rgb_from_bgr(dst, src, static_cast<size_t>(im.width));  // converted while packing
                else
                    std::memcpy(dst, src, own);
                std::memset(dst + own, 0, row - own);  // the slot beyond a smaller image
            }
        }
        std::memset(packed.data() + filled * plane, 0, (batch - filled) * plane);  // blank fill images
        feed[0].data = packed.data();
    }
    std::vector<int32_t> image_hw;
    std::vector<uint8_t> canvas;
    if (list_) {
        int64_t padded_h = 0, padded_w = 0;
        for (size_t i = 0; i < batch; ++i) {
            const ImageView& im = source(i);
            image_hw.push_back(static_cast<int32_t>(im.height));
            image_hw.push_back(static_cast<int32_t>(im.width));
            auto [rh, rw] = resized_size(im.height, im.width);
            padded_h = std::max(padded_h, rh), padded_w = std::max(padded_w, rw);
        }
        // torchvision's batch_images: the largest resized size, rounded up to size_divisible
        padded_h = (padded_h + size_divisible_ - 1) / size_divisible_ * size_divisible_;
        padded_w = (padded_w + size_divisible_ - 1) / size_divisible_ * size_divisible_;
        canvas.assign(static_cast<size_t>(padded_h * padded_w), 0);  // only its shape is read
        feed.push_back(TensorView{"image_hw", DType::int32, {static_cast<int64_t>(batch), 2}, image_hw.data()});
        feed.push_back(TensorView{"canvas", DType::uint8, {padded_h, padded_w}, canvas.data()});
    }
    Outputs out = session_->run(feed);
    const OutputTensor& num = out.at("num_detections");
    const OutputTensor& boxes = out.at("boxes");
    const OutputTensor& scores = out.at("scores");
    const OutputTensor& labels = out.at("labels");
    const int64_t capacity = scores.shape.size() == 2 ? scores.shape[1] : 0;
    bool shapes_ok = num.shape == std::vector<int64_t>{int64_t(batch)} &&
                     boxes.shape == std::vector<int64_t>{int64_t(batch), capacity, 4} &&
                     labels.shape == std::vector<int64_t>{int64_t(batch), capacity} && scores.shape[0] == int64_t(batch);
    if (!shapes_ok)
        runtime_error(where_ + " outputs: expected num_detections [B], boxes [B, K, 4], scores [B, K], labels [B, K] for B=" +
                      std::to_string(batch) + ", got boxes " + shape_text(boxes.shape) + ", scores " + shape_text(scores.shape));
    std::vector<std::vector<Detection>> results(count);
    for (size_t i = 0; i < count; ++i) {
        const int64_t n = std::clamp<int64_t>(num.as<int32_t>()[i], 0, capacity);
        results[i].reserve(static_cast<size_t>(n));
        for (int64_t k = 0; k < n; ++k) {
            const size_t at = i * static_cast<size_t>(capacity) + static_cast<size_t>(k);
            Detection d;
            std::memcpy(d.box, boxes.as<float>() + at * 4, sizeof(d.box));
            d.score = scores.as<float>()[at];
            d.label = labels.as<int32_t>()[at];
            d.label_name = label_name(d.label);
            results[i].push_back(std::move(d));
        }
        if (mask_form_ != MaskForm::none) read_masks(out, i, images[i].height, images[i].width, results[i]);
    }
    return results;
}

}  // namespace deploykit::core
