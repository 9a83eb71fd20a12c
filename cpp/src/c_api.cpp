// The C API over the library's C++ core: handles own core objects, every entry point turns
// exceptions into a status and a thread-local last-error message.
#define DK_BUILDING
#include "deploykit/deploykit.h"

#include <cstring>
#include <new>
#include <type_traits>
#include <string>
#include <vector>

#include "detector.hpp"
#include "error.hpp"
#include "generator.hpp"
#include "session.hpp"

#ifndef DEPLOYKIT_VERSION
#define DEPLOYKIT_VERSION "0.0.0"
#endif

using namespace deploykit::core;

struct dk_options {
    SessionOptions options;
};

struct dk_session {
    std::unique_ptr<Session> session;
    std::string backend;
    struct Spec {
        std::vector<int64_t> shape;
        std::vector<const char*> names;
    };
    std::vector<Spec> inputs, outputs;  // dk_tensor views of the specs
};

struct dk_outputs {
    Outputs outputs;
};

struct dk_detector {
    std::unique_ptr<Detector> detector;
};

struct dk_detections {
    std::vector<std::vector<Detection>> detections;
    std::vector<std::vector<dk_detection>> views;
    std::vector<std::pair<int32_t, int32_t>> sizes;  // each image's (width, height): the masks' size
};

struct dk_generator {
    std::unique_ptr<Generator> generator;
};

struct dk_rgb_image {
    RgbImage image;
};

namespace {

thread_local std::string last_error;

dk_status fail(dk_status status, const std::string& message) {
    last_error = message;
    return status;
}

template <typename F>
dk_status guarded(F&& body) {
    try {
        body();
        last_error.clear();
        return DK_OK;
    } catch (const Error& e) {
        return fail(static_cast<dk_status>(e.code()), e.what());
    } catch (const std::bad_alloc&) {
        return fail(DK_ERR_RUNTIME, "deploykit: out of memory");
    } catch (const std::exception& e) {
        return fail(DK_ERR_RUNTIME, one_line(e.what()));
    } catch (...) {
        return fail(DK_ERR_RUNTIME, "deploykit: unknown error");
    }
}

#define DK_REQUIRE(ptr, what)                                                                    \
    do {                                                                                         \
        if (!(ptr)) return fail(DK_ERR_INVALID_ARGUMENT, std::string(what) + ": expected a non-NULL pointer, got NULL"); \
    } while (0)

// The integer a caller put in an enum field. C callers can store any int there, and loading an
// out-of-range value as a C++ enum is undefined: read the bytes instead.
template <typename E>
int raw_enum(const E& value) {
    std::underlying_type_t<E> raw;
    std::memcpy(&raw, &value, sizeof raw);
    return static_cast<int>(raw);
}

SessionOptions options_of(const dk_options* options) { return options ? options->options : SessionOptions{}; }

void view_of_spec(const TensorSpec& spec, dk_session::Spec& store) {
    store.shape.clear();
    store.names.clear();
    for (const Dim& d : spec.shape) {
        store.shape.push_back(d.is_static() ? d.value : -1);
        store.names.push_back(d.is_static() ? "" : d.symbol.c_str());
    }
}

void tensor_of_spec(const TensorSpec& spec, const dk_session::Spec& store, dk_tensor* out) {
    out->name = spec.name.c_str();
    out->dtype = static_cast<dk_dtype>(spec.dtype);
    out->rank = static_cast<int32_t>(spec.shape.size());
    out->shape = store.shape.data();
    out->data = nullptr;
    out->dim_names = store.names.data();
}

void tensor_of_output(const OutputTensor& t, dk_tensor* out) {
    out->name = t.name.c_str();
    out->dtype = static_cast<dk_dtype>(t.dtype);
    out->rank = static_cast<int32_t>(t.shape.size());
    out->shape = t.shape.data();
    out->data = t.data;
    out->dim_names = nullptr;
}

}  // namespace

extern "C" {

const char* dk_last_error(void) { return last_error.c_str(); }
const char* dk_version(void) { return DEPLOYKIT_VERSION; }
int dk_api_version(void) { return DK_API_VERSION; }
const char* dk_dtype_name(dk_dtype dtype) {
    return dtype_valid(raw_enum(dtype)) ? dtype_name(static_cast<DType>(raw_enum(dtype))) : "unknown";
}
int dk_has_tensorrt(void) { return tensorrt_backend_compiled() ? 1 : 0; }

dk_status dk_options_create(dk_options** out) {
    DK_REQUIRE(out, "dk_options_create out");
    *out = nullptr;
    return guarded([&] { *out = new dk_options(); });
}
void dk_options_destroy(dk_options* options) { delete options; }

dk_status dk_options_set_threads(dk_options* options, int threads) {
    DK_REQUIRE(options, "options");
    if (threads < 0) return fail(DK_ERR_BAD_INPUT, expected_got("threads", "0 (ONNX Runtime decides) or a positive int", std::to_string(threads)));
    options->options.threads = threads;
    return guarded([] {});
}

dk_status dk_options_set_providers(dk_options* options, const char* providers) {
    DK_REQUIRE(options, "options");
    DK_REQUIRE(providers, "providers");
    return guarded([&] {
        std::vector<std::string> list;
        std::string item;
        for (const char* p = providers;; ++p) {
            if (*p == ',' || *p == '\0') {
                size_t a = item.find_first_not_of(' '), b = item.find_last_not_of(' ');
                if (a == std::string::npos) bad_input("providers", "a comma-separated list of names", "an empty name in '" + std::string(providers) + "'");
                list.push_back(item.substr(a, b - a + 1));
                item.clear();
                if (*p == '\0') break;
            } else {
                item.push_back(*p);
            }
        }
        options->options.providers = list;
    });
}

dk_status dk_options_set_device_id(dk_options* options, int device_id) {
    DK_REQUIRE(options, "options");
    if (device_id < 0) return fail(DK_ERR_BAD_INPUT, expected_got("device_id", "a CUDA device index >= 0", std::to_string(device_id)));
    options->options.device_id = device_id;
    return guarded([] {});
}

dk_status dk_options_set_trt_engine_cache(dk_options* options, const char* folder) {
    DK_REQUIRE(options, "options");
    DK_REQUIRE(folder, "folder");
    return guarded([&] { options->options.trt_engine_cache = folder; });
}

dk_status dk_options_set_cuda_graph(dk_options* options, int enable) {
    DK_REQUIRE(options, "options");
    options->options.cuda_graph = enable != 0;
    return guarded([] {});
}

// -- session ------------------------------------------------------------------------------

dk_status dk_session_create(const char* path, const dk_options* options, dk_session** out) {
    DK_REQUIRE(out, "dk_session_create out");
    *out = nullptr;
    DK_REQUIRE(path, "path");
    return guarded([&] {
        auto s = std::make_unique<dk_session>();
        s->session = std::make_unique<Session>(path, options_of(options));
        s->backend = s->session->backend_name();
        s->inputs.resize(s->session->inputs().size());
        s->outputs.resize(s->session->outputs().size());
        for (size_t i = 0; i < s->inputs.size(); ++i) view_of_spec(s->session->inputs()[i], s->inputs[i]);
        for (size_t i = 0; i < s->outputs.size(); ++i) view_of_spec(s->session->outputs()[i], s->outputs[i]);
        *out = s.release();
    });
}

void dk_session_destroy(dk_session* session) { delete session; }
size_t dk_session_input_count(const dk_session* session) { return session ? session->inputs.size() : 0; }
size_t dk_session_output_count(const dk_session* session) { return session ? session->outputs.size() : 0; }
const char* dk_session_backend(const dk_session* session) { return session ? session->backend.c_str() : ""; }

dk_status dk_session_input(const dk_session* session, size_t index, dk_tensor* out) {
    DK_REQUIRE(session, "session");
    DK_REQUIRE(out, "out");
    if (index >= session->inputs.size())
        return fail(DK_ERR_BAD_INPUT, expected_got("input index", "below " + std::to_string(session->inputs.size()), std::to_string(index)));
    tensor_of_spec(session->session->inputs()[index], session->inputs[index], out);
    return guarded([] {});
}

dk_status dk_session_output(const dk_session* session, size_t index, dk_tensor* out) {
    DK_REQUIRE(session, "session");
    DK_REQUIRE(out, "out");
    if (index >= session->outputs.size())
        return fail(DK_ERR_BAD_INPUT, expected_got("output index", "below " + std::to_string(session->outputs.size()), std::to_string(index)));
    tensor_of_spec(session->session->outputs()[index], session->outputs[index], out);
    return guarded([] {});
}

dk_status dk_session_run(dk_session* session, const dk_tensor* inputs, size_t count, dk_outputs** out) {
    DK_REQUIRE(out, "dk_session_run out");
    *out = nullptr;
    DK_REQUIRE(session, "session");
    if (count) DK_REQUIRE(inputs, "inputs");
    return guarded([&] {
        std::vector<TensorView> feed;
        for (size_t i = 0; i < count; ++i) {
            const dk_tensor& t = inputs[i];
            std::string what = "input " + std::to_string(i);
            if (!t.name) bad_input(what + " name", "a string", "NULL");
            if (!dtype_valid(raw_enum(t.dtype))) bad_input("input '" + std::string(t.name) + "' dtype", "a dk_dtype", std::to_string(raw_enum(t.dtype)));
            if (t.rank < 0 || (t.rank > 0 && !t.shape)) bad_input("input '" + std::string(t.name) + "' shape", "rank >= 0 dims", "rank " + std::to_string(t.rank) + (t.shape ? "" : " and a NULL shape"));
            feed.push_back({t.name, static_cast<DType>(t.dtype), std::vector<int64_t>(t.shape, t.shape + t.rank), t.data});
        }
        auto result = std::make_unique<dk_outputs>();
        result->outputs = session->session->run(feed);
        *out = result.release();
    });
}

size_t dk_outputs_count(const dk_outputs* outputs) { return outputs ? outputs->outputs.tensors.size() : 0; }

dk_status dk_outputs_get(const dk_outputs* outputs, size_t index, dk_tensor* out) {
    DK_REQUIRE(outputs, "outputs");
    DK_REQUIRE(out, "out");
    if (index >= outputs->outputs.tensors.size())
        return fail(DK_ERR_BAD_INPUT, expected_got("output index", "below " + std::to_string(outputs->outputs.tensors.size()), std::to_string(index)));
    tensor_of_output(outputs->outputs.tensors[index], out);
    return guarded([] {});
}

dk_status dk_outputs_find(const dk_outputs* outputs, const char* name, dk_tensor* out) {
    DK_REQUIRE(outputs, "outputs");
    DK_REQUIRE(name, "name");
    DK_REQUIRE(out, "out");
    return guarded([&] { tensor_of_output(outputs->outputs.at(name), out); });
}

void dk_outputs_release(dk_outputs* outputs) { delete outputs; }

// -- detector -----------------------------------------------------------------------------

dk_status dk_detector_create(const char* path, const dk_options* options, dk_detector** out) {
    DK_REQUIRE(out, "dk_detector_create out");
    *out = nullptr;
    DK_REQUIRE(path, "path");
    return guarded([&] {
        auto d = std::make_unique<dk_detector>();
        d->detector = std::make_unique<Detector>(path, options_of(options));
        *out = d.release();
    });
}

void dk_detector_destroy(dk_detector* detector) { delete detector; }

dk_status dk_detector_predict(dk_detector* detector, const dk_image* images, size_t count, dk_detections** out) {
    DK_REQUIRE(out, "dk_detector_predict out");
    *out = nullptr;
    DK_REQUIRE(detector, "detector");
    if (count) DK_REQUIRE(images, "images");
    return guarded([&] {
        std::vector<ImageView> views(count);
        for (size_t i = 0; i < count; ++i) {
            const dk_image& im = images[i];
            const int format = raw_enum(im.format);
            if (format != DK_RGB && format != DK_BGR)
                bad_input("image " + std::to_string(i) + " format", "DK_RGB or DK_BGR", std::to_string(format));
            views[i] = ImageView{im.data, im.width, im.height, im.channels ? im.channels : 3, im.stride, format == DK_BGR};
        }
        auto result = std::make_unique<dk_detections>();
        result->detections = detector->detector->predict(views);
        for (const auto& v : views) result->sizes.emplace_back(static_cast<int32_t>(v.width), static_cast<int32_t>(v.height));
        for (const auto& per_image : result->detections) {
            std::vector<dk_detection> v;
            v.reserve(per_image.size());
            for (const auto& d : per_image)
                v.push_back({d.box[0], d.box[1], d.box[2], d.box[3], d.score, d.label, d.label_name.c_str()});
            result->views.push_back(std::move(v));
        }
        *out = result.release();
    });
}

size_t dk_detections_image_count(const dk_detections* detections) { return detections ? detections->views.size() : 0; }

const dk_detection* dk_detections_get(const dk_detections* detections, size_t image, size_t* count) {
    if (count) *count = 0;
    if (!detections || image >= detections->views.size()) return nullptr;
    if (count) *count = detections->views[image].size();
    static const dk_detection none{};
    return detections->views[image].empty() ? &none : detections->views[image].data();
}

void dk_detections_release(dk_detections* detections) { delete detections; }

const uint8_t* dk_detections_mask(const dk_detections* detections, size_t image, size_t index, int32_t* width,
                                  int32_t* height) {
    if (width) *width = 0;
    if (height) *height = 0;
    if (!detections || image >= detections->detections.size() || index >= detections->detections[image].size())
        return nullptr;
    const auto& mask = detections->detections[image][index].mask;
    if (mask.empty()) return nullptr;
    if (width) *width = detections->sizes[image].first;
    if (height) *height = detections->sizes[image].second;
    return mask.data();
}

int dk_detector_image_list(const dk_detector* detector) {
    return detector && detector->detector->image_list() ? 1 : 0;
}

int dk_detector_has_masks(const dk_detector* detector) {
    return detector && detector->detector->mask_form() != deploykit::core::MaskForm::none ? 1 : 0;
}
size_t dk_detector_class_count(const dk_detector* detector) { return detector ? detector->detector->class_names().size() : 0; }

const char* dk_detector_class_name(const dk_detector* detector, size_t index) {
    if (!detector || index >= detector->detector->class_names().size()) return nullptr;
    return detector->detector->class_names()[index].c_str();
}

int dk_detector_max_batch(const dk_detector* detector) { return detector ? static_cast<int>(detector->detector->max_batch()) : 0; }

// -- generator ----------------------------------------------------------------------------

dk_status dk_generator_create(const char* path, const dk_options* options, dk_generator** out) {
    DK_REQUIRE(out, "dk_generator_create out");
    *out = nullptr;
    DK_REQUIRE(path, "path");
    return guarded([&] {
        auto g = std::make_unique<dk_generator>();
        g->generator = std::make_unique<Generator>(path, options_of(options));
        *out = g.release();
    });
}

void dk_generator_destroy(dk_generator* generator) { delete generator; }

dk_status dk_generator_generate(dk_generator* generator, const dk_map* label_map, const dk_map* instance_map,
                                const float* z, size_t z_size, int resize, dk_rgb_image** out) {
    DK_REQUIRE(out, "dk_generator_generate out");
    *out = nullptr;
    DK_REQUIRE(generator, "generator");
    DK_REQUIRE(label_map, "label_map");
    return guarded([&] {
        auto view = [](const dk_map& m) {
            if (!dtype_valid(raw_enum(m.dtype))) bad_input("map dtype", "a dk_dtype", std::to_string(raw_enum(m.dtype)));
            return MapView{m.data, static_cast<DType>(m.dtype), m.width, m.height, m.stride};
        };
        MapView labels = view(*label_map);
        MapView instances;
        if (instance_map) instances = view(*instance_map);
        GenerateOptions options{resize != 0, z, z_size};
        auto result = std::make_unique<dk_rgb_image>();
        result->image = generator->generator->generate(labels, instance_map ? &instances : nullptr, options);
        *out = result.release();
    });
}

void dk_generator_size(const dk_generator* generator, int32_t* width, int32_t* height) {
    auto [h, w] = generator ? generator->generator->size() : std::pair<int64_t, int64_t>{0, 0};
    if (width) *width = static_cast<int32_t>(w);
    if (height) *height = static_cast<int32_t>(h);
}

const uint8_t* dk_rgb_image_data(const dk_rgb_image* image, int32_t* width, int32_t* height) {
    if (width) *width = image ? static_cast<int32_t>(image->image.width) : 0;
    if (height) *height = image ? static_cast<int32_t>(image->image.height) : 0;
    return image ? image->image.pixels.data() : nullptr;
}

void dk_rgb_image_release(dk_rgb_image* image) { delete image; }

}  // extern "C"
