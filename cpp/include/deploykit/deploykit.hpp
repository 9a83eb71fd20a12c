// deploykit C++ API: thin, exception-safe RAII classes over the C API (deploykit.h), which is the
// library's stable boundary (as onnxruntime_cxx_api.h over onnxruntime_c_api.h). Header-only;
// link deploykit::runtime.
//
//   deploykit::Detector detector("demo.onnx");
//   deploykit::ImageView image{pixels, width, height, stride, deploykit::PixelFormat::BGR};
//   for (const auto& d : detector.predict(image)) std::cout << d.label_name << " " << d.score << "\n";
//
// Errors throw deploykit::Error (status() and a one-line what()).
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "deploykit/deploykit.h"

namespace deploykit {

class Error : public std::runtime_error {
public:
    Error(dk_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
    dk_status status() const noexcept { return status_; }

private:
    dk_status status_;
};

namespace detail {
inline void check(dk_status status) {
    if (status != DK_OK) throw Error(status, dk_last_error());
}
template <typename T, void (*Release)(T*)>
struct Releaser {
    void operator()(T* p) const noexcept { Release(p); }
};
template <typename T, void (*Release)(T*)>
using Handle = std::unique_ptr<T, Releaser<T, Release>>;
}  // namespace detail

enum class DType : int {
    Float32 = DK_FLOAT32, Float16 = DK_FLOAT16, Float64 = DK_FLOAT64, Int8 = DK_INT8, Int16 = DK_INT16,
    Int32 = DK_INT32, Int64 = DK_INT64, UInt8 = DK_UINT8, UInt16 = DK_UINT16, UInt32 = DK_UINT32,
    UInt64 = DK_UINT64, Bool = DK_BOOL,
};
inline const char* dtype_name(DType d) { return dk_dtype_name(static_cast<dk_dtype>(d)); }

enum class PixelFormat { RGB = DK_RGB, BGR = DK_BGR };

struct Options {
    static Options with_threads(int n) {
        Options o;
        o.threads = n;
        return o;
    }
    int threads = 0;                     // ONNX Runtime intra-op threads; 0: ONNX Runtime decides
    std::vector<std::string> providers;  // "tensorrt", "cuda", "cpu" best first; empty: all there are
    int device_id = 0;                   // CUDA device (CUDA/TensorRT providers, native TensorRT)
    std::string trt_engine_cache;        // ONNX Runtime TensorRT provider: engine cache folder
    bool cuda_graph = false;             // native TensorRT (.plan): CUDA-graph replay
};

namespace detail {
using OptionsHandle = Handle<dk_options, dk_options_destroy>;
inline OptionsHandle make_options(const Options& o) {
    dk_options* raw = nullptr;
    check(dk_options_create(&raw));
    OptionsHandle handle(raw);
    check(dk_options_set_threads(raw, o.threads));
    if (!o.providers.empty()) {
        std::string list;
        for (const auto& p : o.providers) list += (list.empty() ? "" : ",") + p;
        check(dk_options_set_providers(raw, list.c_str()));
    }
    check(dk_options_set_device_id(raw, o.device_id));
    if (!o.trt_engine_cache.empty()) check(dk_options_set_trt_engine_cache(raw, o.trt_engine_cache.c_str()));
    check(dk_options_set_cuda_graph(raw, o.cuda_graph ? 1 : 0));
    return handle;
}
}  // namespace detail

// -- Session ---------------------------------------------------------------------------------

struct TensorSpec {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;         // -1 for a dynamic dim
    std::vector<std::string> dim_names; // the dynamic dims' names ("batch"), "" for static ones
};

// An input: the caller owns the data.
struct Tensor {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    const void* data;
};

// A view of one output; valid while its Outputs lives.
struct TensorView {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    const void* data;
    template <typename T> const T* as() const { return static_cast<const T*>(data); }
    size_t count() const {
        size_t n = 1;
        for (int64_t d : shape) n *= static_cast<size_t>(d);
        return n;
    }
};

class Outputs {
public:
    explicit Outputs(dk_outputs* raw) : handle_(raw) {}
    size_t size() const { return dk_outputs_count(handle_.get()); }
    TensorView operator[](size_t i) const {
        dk_tensor t{};
        detail::check(dk_outputs_get(handle_.get(), i, &t));
        return view(t);
    }
    TensorView operator[](const std::string& name) const {
        dk_tensor t{};
        detail::check(dk_outputs_find(handle_.get(), name.c_str(), &t));
        return view(t);
    }

private:
    static TensorView view(const dk_tensor& t) {
        return {t.name, static_cast<DType>(t.dtype), std::vector<int64_t>(t.shape, t.shape + t.rank), t.data};
    }
    detail::Handle<dk_outputs, dk_outputs_release> handle_;
};

class Session {
public:
    explicit Session(const std::string& path, const Options& options = {}) {
        auto o = detail::make_options(options);
        dk_session* raw = nullptr;
        detail::check(dk_session_create(path.c_str(), o.get(), &raw));
        handle_.reset(raw);
    }
    std::vector<TensorSpec> inputs() const { return specs(dk_session_input_count(handle_.get()), dk_session_input); }
    std::vector<TensorSpec> outputs() const { return specs(dk_session_output_count(handle_.get()), dk_session_output); }
    std::string backend() const { return dk_session_backend(handle_.get()); }
    // Names, dtypes and shapes are checked against inputs() first (Error with DK_ERR_BAD_INPUT).
    Outputs run(const std::vector<Tensor>& feed) const {
        std::vector<dk_tensor> raw;
        for (const auto& t : feed)
            raw.push_back({t.name.c_str(), static_cast<dk_dtype>(t.dtype), static_cast<int32_t>(t.shape.size()),
                           t.shape.data(), t.data, nullptr});
        dk_outputs* out = nullptr;
        detail::check(dk_session_run(handle_.get(), raw.data(), raw.size(), &out));
        return Outputs(out);
    }
    dk_session* handle() const { return handle_.get(); }

private:
    std::vector<TensorSpec> specs(size_t n, dk_status (*get)(const dk_session*, size_t, dk_tensor*)) const {
        std::vector<TensorSpec> out;
        for (size_t i = 0; i < n; ++i) {
            dk_tensor t{};
            detail::check(get(handle_.get(), i, &t));
            TensorSpec s{t.name, static_cast<DType>(t.dtype), std::vector<int64_t>(t.shape, t.shape + t.rank), {}};
            for (int32_t a = 0; a < t.rank; ++a) s.dim_names.emplace_back(t.dim_names[a]);
            out.push_back(std::move(s));
        }
        return out;
    }
    detail::Handle<dk_session, dk_session_destroy> handle_;
};

// -- Detector --------------------------------------------------------------------------------

// A caller-owned uint8 H x W x 3 image; stride is bytes per row (0: width * 3).
struct ImageView {
    ImageView() = default;
    ImageView(const uint8_t* data_, int width_, int height_, size_t stride_ = 0, PixelFormat format_ = PixelFormat::RGB,
              int channels_ = 3)
        : data(data_), width(width_), height(height_), stride(stride_), format(format_), channels(channels_) {}
    const uint8_t* data = nullptr;
    int width = 0;
    int height = 0;
    size_t stride = 0;
    PixelFormat format = PixelFormat::RGB;
    int channels = 3;
};

struct Detection {
    float x1, y1, x2, y2;  // original-image pixels
    float score;
    int label;
    std::string label_name;
    // Mask R-CNN: mask_height rows of mask_width bytes (the image's size), 1 inside the instance; empty otherwise.
    std::vector<uint8_t> mask;
    int mask_width = 0, mask_height = 0;
};

class Detector {
public:
    explicit Detector(const std::string& path, const Options& options = {}) {
        auto o = detail::make_options(options);
        dk_detector* raw = nullptr;
        detail::check(dk_detector_create(path.c_str(), o.get(), &raw));
        handle_.reset(raw);
    }
    std::vector<Detection> predict(const ImageView& image) const { return std::move(predict(std::vector<ImageView>{image})[0]); }
    std::vector<std::vector<Detection>> predict(const std::vector<ImageView>& images) const {
        std::vector<dk_image> raw;
        for (const auto& im : images)
            raw.push_back({im.data, im.width, im.height, im.channels, im.stride, static_cast<dk_pixel_format>(im.format)});
        dk_detections* out = nullptr;
        detail::check(dk_detector_predict(handle_.get(), raw.data(), raw.size(), &out));
        detail::Handle<dk_detections, dk_detections_release> result(out);
        std::vector<std::vector<Detection>> all(images.size());
        for (size_t i = 0; i < images.size(); ++i) {
            size_t n = 0;
            const dk_detection* d = dk_detections_get(out, i, &n);
            for (size_t k = 0; k < n; ++k) {
                Detection det{d[k].x1, d[k].y1, d[k].x2, d[k].y2, d[k].score, d[k].label, d[k].label_name, {}, 0, 0};
                int32_t w = 0, h = 0;
                if (const uint8_t* m = dk_detections_mask(out, i, k, &w, &h)) {
                    det.mask.assign(m, m + static_cast<size_t>(w) * static_cast<size_t>(h));
                    det.mask_width = w, det.mask_height = h;
                }
                all[i].push_back(std::move(det));
            }
        }
        return all;
    }
    std::vector<std::string> class_names() const {
        std::vector<std::string> names;
        for (size_t i = 0; i < dk_detector_class_count(handle_.get()); ++i)
            names.emplace_back(dk_detector_class_name(handle_.get(), i));
        return names;
    }
    int max_batch() const { return dk_detector_max_batch(handle_.get()); }
    bool has_masks() const { return dk_detector_has_masks(handle_.get()) != 0; }
    // Images of different sizes in one predict() run (an image-list graph), else one size per run.
    bool image_list() const { return dk_detector_image_list(handle_.get()) != 0; }

private:
    detail::Handle<dk_detector, dk_detector_destroy> handle_;
};

// -- Generator -------------------------------------------------------------------------------

// A caller-owned integer map (label or instance ids); stride is bytes per row (0: packed).
struct MapView {
    MapView() = default;
    MapView(const void* data_, DType dtype_, int width_, int height_, size_t stride_ = 0)
        : data(data_), dtype(dtype_), width(width_), height(height_), stride(stride_) {}
    const void* data = nullptr;
    DType dtype = DType::UInt8;  // UInt8, UInt16, Int32 or Int64
    int width = 0;
    int height = 0;
    size_t stride = 0;
};

struct RgbImage {
    int width = 0, height = 0;
    std::vector<uint8_t> pixels;  // height * width * 3
};

class Generator {
public:
    explicit Generator(const std::string& path, const Options& options = {}) {
        auto o = detail::make_options(options);
        dk_generator* raw = nullptr;
        detail::check(dk_generator_create(path.c_str(), o.get(), &raw));
        handle_.reset(raw);
    }
    // instance_map: required by instance generators; z: VAE generators only; resize: nearest.
    RgbImage generate(const MapView& label_map, const MapView* instance_map = nullptr, bool resize = false,
                      const std::vector<float>& z = {}) const {
        dk_map labels = raw(label_map), instances{};
        if (instance_map) instances = raw(*instance_map);
        dk_rgb_image* out = nullptr;
        detail::check(dk_generator_generate(handle_.get(), &labels, instance_map ? &instances : nullptr,
                                            z.empty() ? nullptr : z.data(), z.size(), resize ? 1 : 0, &out));
        detail::Handle<dk_rgb_image, dk_rgb_image_release> result(out);
        RgbImage image;
        const uint8_t* data = dk_rgb_image_data(out, &image.width, &image.height);
        image.pixels.assign(data, data + static_cast<size_t>(image.width) * image.height * 3);
        return image;
    }
    std::pair<int, int> size() const {  // (height, width)
        int32_t w = 0, h = 0;
        dk_generator_size(handle_.get(), &w, &h);
        return {h, w};
    }

private:
    static dk_map raw(const MapView& m) {
        return {m.data, static_cast<dk_dtype>(m.dtype), m.width, m.height, m.stride};
    }
    detail::Handle<dk_generator, dk_generator_destroy> handle_;
};

}  // namespace deploykit
