// Fuzz target: the C API entry points that take caller data (deploykit.h).
//
// The first byte picks what the rest drives:
//   0  create: a manifest (and optionally ONNX bytes after "\n--ONNX--\n") written beside each other,
//      then dk_session_create / dk_detector_create / dk_generator_create on them; "@SHA@" in the
//      manifest becomes the artifact's sha256 so mutants get past the hash check. What opens is
//      then run once (predict / generate / run) on a plain input;
//   1  dk_detector_predict on the toy detector with arbitrary image views (sizes, strides, channels,
//      pixel formats, NULL data, NULL arrays, counts), then every dk_detections_* accessor;
//   2  dk_generator_generate on the toy generator with arbitrary maps (dtype, size, stride, NULL data,
//      instance map, z, resize);
//   3  dk_session_run on the toy detector's session with arbitrary tensors (names, dtypes, ranks,
//      shapes, NULL pointers).
// Buffers always hold what the view declares (the caller's side of the contract); the library
// must answer DK_OK or a refusal status with a one-line dk_last_error(), never crash or read past
// what was declared. The toy artifacts come from $DEPLOYKIT_FUZZ_ARTIFACTS (tests/fuzz/toys.py).
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "fuzz_common.hpp"
#include "sha256.hpp"

namespace fs = std::filesystem;
using fuzz::Reader;

namespace {

fs::path artifacts() {
    const char* dir = std::getenv("DEPLOYKIT_FUZZ_ARTIFACTS");
    if (!dir || !*dir) fuzz::finding("set DEPLOYKIT_FUZZ_ARTIFACTS to a folder made by tests/fuzz/toys.py");
    return dir;
}

const std::string* g_scratch = nullptr;  // never destroyed: the exit handler below still reads it

fs::path scratch() {
    if (!g_scratch) {
        std::string tmpl = (fs::temp_directory_path() / "deploykit-fuzz-XXXXXX").string();
        if (!mkdtemp(tmpl.data())) fuzz::finding("cannot make a temporary folder");
        g_scratch = new std::string(tmpl);
        std::atexit([] {
            std::error_code ec;
            fs::remove_all(*g_scratch, ec);
        });
    }
    return *g_scratch;
}

std::string read_file(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_file(const fs::path& p, const std::string& bytes) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out << bytes;
}

// A call's status: refusals must carry a one-line message; `runtime_ok`: DK_ERR_RUNTIME allowed.
bool ok(dk_status status, const char* call, bool runtime_ok = false) {
    if (status == DK_OK) {
        if (*dk_last_error()) fuzz::finding(std::string(call) + ": DK_OK with an error message");
        return true;
    }
    if (status != DK_ERR_BAD_INPUT && status != DK_ERR_UNSUPPORTED && status != DK_ERR_INVALID_ARGUMENT &&
        !(runtime_ok && status == DK_ERR_RUNTIME))
        fuzz::finding(std::string(call) + ": status " + std::to_string(status) + ": " + dk_last_error());
    fuzz::check_message(call);
    return false;
}

void use_detections(dk_detections* out, size_t images) {
    const size_t count = dk_detections_image_count(out);
    if (count != images) fuzz::finding("dk_detections_image_count: " + std::to_string(count) + " for " + std::to_string(images));
    for (size_t i = 0; i <= count; ++i) {
        size_t n = 0;
        const dk_detection* d = dk_detections_get(out, i, &n);
        if (i == count && d) fuzz::finding("dk_detections_get past the end gave detections");
        for (size_t k = 0; d && k < n; ++k) {
            volatile float sum = d[k].x1 + d[k].y1 + d[k].x2 + d[k].y2 + d[k].score;
            (void)sum;
            if (!d[k].label_name) fuzz::finding("detection without a label name");
            volatile size_t len = std::strlen(d[k].label_name);
            (void)len;
        }
        int32_t w = 0, h = 0;
        (void)dk_detections_mask(out, i, n, &w, &h);
        (void)dk_detections_mask(out, i, 0, &w, &h);
    }
    dk_detections_release(out);
}

void predict_plain(dk_detector* det, bool runtime_ok) {
    std::vector<uint8_t> pixels(13 * 9 * 3, 90);
    dk_image image = {pixels.data(), 13, 9, 3, 0, DK_RGB};
    dk_detections* out = nullptr;
    if (ok(dk_detector_predict(det, &image, 1, &out), "dk_detector_predict", runtime_ok)) use_detections(out, 1);
}

void generate_plain(dk_generator* gen, bool runtime_ok) {
    int32_t w = 0, h = 0;
    dk_generator_size(gen, &w, &h);
    for (int resize = 0; resize < 2; ++resize) {
        const int32_t mw = resize ? 5 : w, mh = resize ? 3 : h;
        if (mw <= 0 || mh <= 0 || mw > 256 || mh > 256) return;
        std::vector<uint8_t> labels(static_cast<size_t>(mw) * static_cast<size_t>(mh), 1);
        dk_map map = {labels.data(), DK_UINT8, mw, mh, 0};
        dk_rgb_image* image = nullptr;
        if (ok(dk_generator_generate(gen, &map, nullptr, nullptr, 0, resize, &image), "dk_generator_generate", runtime_ok)) {
            int32_t iw = 0, ih = 0;
            const uint8_t* data = dk_rgb_image_data(image, &iw, &ih);
            if (!data || iw <= 0 || ih <= 0) fuzz::finding("generated image without pixels");
            volatile uint8_t last = data[static_cast<size_t>(iw) * static_cast<size_t>(ih) * 3 - 1];
            (void)last;
            dk_rgb_image_release(image);
        }
    }
}

void create(Reader& r) {
    const int kind = r.u8() % 3;
    std::string rest = r.bytes(r.left());
    const std::string sep = "\n--ONNX--\n";
    std::string manifest = rest, model;
    const size_t at = rest.find(sep);
    if (at != std::string::npos) {
        manifest = rest.substr(0, at);
        model = rest.substr(at + sep.size());
    } else {
        model = read_file(artifacts() / (kind == 2 ? "gen.onnx" : "det.onnx"));
    }
    const std::string sha = deploykit::core::sha256_hex(model.data(), model.size());
    for (size_t p = manifest.find("@SHA@"); p != std::string::npos; p = manifest.find("@SHA@", p))
        manifest.replace(p, 5, sha);
    const fs::path onnx = scratch() / "m.onnx";
    write_file(onnx, model);
    write_file(scratch() / "m.json", manifest);
    dk_options* options = nullptr;
    if (!ok(dk_options_create(&options), "dk_options_create")) return;
    dk_options_set_threads(options, 1);
    const std::string path = onnx.string();
    if (kind == 0) {
        dk_session* s = nullptr;
        if (ok(dk_session_create(path.c_str(), options, &s), "dk_session_create")) {
            for (size_t i = 0; i <= dk_session_input_count(s); ++i) {
                dk_tensor t;
                (void)dk_session_input(s, i, &t);
            }
            for (size_t i = 0; i <= dk_session_output_count(s); ++i) {
                dk_tensor t;
                (void)dk_session_output(s, i, &t);
            }
            dk_session_destroy(s);
        }
    } else if (kind == 1) {
        dk_detector* d = nullptr;
        if (ok(dk_detector_create(path.c_str(), options, &d), "dk_detector_create")) {
            for (size_t i = 0; i <= dk_detector_class_count(d); ++i) (void)dk_detector_class_name(d, i);
            (void)dk_detector_max_batch(d);
            predict_plain(d, true);
            dk_detector_destroy(d);
        }
    } else {
        dk_generator* g = nullptr;
        if (ok(dk_generator_create(path.c_str(), options, &g), "dk_generator_create")) {
            generate_plain(g, true);
            dk_generator_destroy(g);
        }
    }
    dk_options_destroy(options);
}

template <typename T, dk_status (*Create)(const char*, const dk_options*, T**)>
T* toy(const char* file) {
    T* object = nullptr;
    dk_options* options = nullptr;
    dk_options_create(&options);
    dk_options_set_threads(options, 1);
    const std::string path = (artifacts() / file).string();
    if (Create(path.c_str(), options, &object) != DK_OK)
        fuzz::finding(std::string("toy artifact ") + path + ": " + dk_last_error());
    dk_options_destroy(options);
    return object;
}

dk_detector* toy_detector() {
    static dk_detector* d = toy<dk_detector, dk_detector_create>("det.onnx");
    return d;
}
dk_generator* toy_generator() {
    static dk_generator* g = toy<dk_generator, dk_generator_create>("gen.onnx");
    return g;
}
dk_session* toy_session() {
    static dk_session* s = toy<dk_session, dk_session_create>("det.onnx");
    return s;
}

// Bytes for a buffer the caller declares: filled from the input, then a pattern.
std::vector<uint8_t> buffer(Reader& r, size_t size) {
    std::vector<uint8_t> out(size);
    for (size_t i = 0; i < size; ++i) out[i] = r.left() ? r.u8() : static_cast<uint8_t>(i * 31);
    return out;
}

void predict(Reader& r) {
    const size_t count = r.u8() % 4;
    std::vector<std::vector<uint8_t>> owned(count);
    std::vector<dk_image> images(count);
    for (size_t i = 0; i < count; ++i) {
        const int32_t w = static_cast<int32_t>(r.u8() % 70) - (r.u8() % 16 == 0 ? 80 : 0);
        const int32_t h = static_cast<int32_t>(r.u8() % 70);
        const int32_t channels = r.u8() % 5;
        const uint8_t s = r.u8();
        const size_t row = w > 0 ? static_cast<size_t>(w) * 3 : 0;
        const size_t stride = (s & 1) ? 0 : (s & 2) ? row + (s >> 2) : (row > (s >> 2) ? row - (s >> 2) : 0);
        const int format = r.u8() % 4 == 3 ? static_cast<int>(r.u8()) : r.u8() % 2;
        const bool null_data = r.u8() % 16 == 0;
        const size_t rows = h > 0 ? static_cast<size_t>(h) : 0;
        owned[i] = buffer(r, (stride ? stride : row) * rows + 1);
        images[i].data = null_data ? nullptr : owned[i].data();
        images[i].width = w;
        images[i].height = h;
        images[i].channels = channels;
        images[i].stride = stride;
        std::memcpy(&images[i].format, &format, sizeof format);  // any int, as a C caller may store
    }
    dk_detections* out = nullptr;
    const bool null_array = count > 0 && r.u8() % 16 == 0;
    const dk_status status = dk_detector_predict(toy_detector(), null_array ? nullptr : images.data(), count, &out);
    if (ok(status, "dk_detector_predict")) use_detections(out, count);
}

void generate(Reader& r) {
    auto map_of = [&r](std::vector<uint8_t>& owned) {
        dk_map m{};
        const int dtype = r.u8() % 14;
        std::memcpy(&m.dtype, &dtype, sizeof dtype);
        m.width = static_cast<int32_t>(r.u8() % 20) - (r.u8() % 32 == 0 ? 30 : 0);
        m.height = static_cast<int32_t>(r.u8() % 20);
        const size_t elem = dtype == DK_UINT8 ? 1 : dtype == DK_UINT16 ? 2 : dtype == DK_INT32 ? 4 : 8;
        const size_t row = m.width > 0 ? static_cast<size_t>(m.width) * elem : 0;
        const uint8_t s = r.u8();
        m.stride = (s & 1) ? 0 : row + (s >> 1) % 9;
        owned = buffer(r, (m.stride ? m.stride : row) * static_cast<size_t>(m.height > 0 ? m.height : 0) + 8);
        m.data = r.u8() % 16 == 0 ? nullptr : owned.data();
        return m;
    };
    std::vector<uint8_t> label_bytes, inst_bytes;
    dk_map labels = map_of(label_bytes);
    const bool with_instances = r.u8() % 4 == 0;
    dk_map instances{};
    if (with_instances) instances = map_of(inst_bytes);
    std::vector<float> z(r.u8() % 5, 0.5f);
    const bool z_null = r.u8() % 2;
    const int resize = r.u8() % 3;
    dk_rgb_image* image = nullptr;
    const dk_status status = dk_generator_generate(toy_generator(), r.u8() % 32 == 0 ? nullptr : &labels,
                                                   with_instances ? &instances : nullptr,
                                                   z_null ? nullptr : z.data(), z.size(), resize, &image);
    if (ok(status, "dk_generator_generate")) {
        int32_t w = 0, h = 0;
        const uint8_t* data = dk_rgb_image_data(image, &w, &h);
        volatile uint8_t last = data[static_cast<size_t>(w) * static_cast<size_t>(h) * 3 - 1];
        (void)last;
        dk_rgb_image_release(image);
    }
}

void run(Reader& r) {
    static const char* names[] = {"image", "label_map", "bogus", ""};
    const size_t count = r.u8() % 3;
    std::vector<dk_tensor> tensors(count);
    std::vector<std::vector<int64_t>> shapes(count);
    std::vector<std::vector<uint8_t>> data(count);
    for (size_t i = 0; i < count; ++i) {
        const uint8_t pick = r.u8();
        tensors[i].name = pick % 5 == 4 ? nullptr : names[pick % 4];
        const int dtype = r.u8() % 14;
        std::memcpy(&tensors[i].dtype, &dtype, sizeof dtype);
        const int32_t rank = static_cast<int32_t>(r.u8() % 6) - (r.u8() % 32 == 0 ? 8 : 0);
        tensors[i].rank = rank;
        size_t elements = 1;
        for (int32_t a = 0; a < rank; ++a) {
            const int64_t d = static_cast<int64_t>(r.u8() % 9) - (r.u8() % 32 == 0 ? 3 : 0);
            shapes[i].push_back(d);
            elements *= d > 0 ? static_cast<size_t>(d) : 0;
        }
        tensors[i].shape = rank > 0 && r.u8() % 16 == 0 ? nullptr : shapes[i].data();
        data[i] = buffer(r, elements * 8 + 1);  // enough for any dtype's element size
        tensors[i].data = r.u8() % 16 == 0 ? nullptr : data[i].data();
        tensors[i].dim_names = nullptr;
    }
    dk_outputs* out = nullptr;
    const dk_status status = dk_session_run(toy_session(), count && r.u8() % 16 == 0 ? nullptr : tensors.data(),
                                            count, &out);
    if (ok(status, "dk_session_run")) {
        for (size_t i = 0; i <= dk_outputs_count(out); ++i) {
            dk_tensor t;
            (void)dk_outputs_get(out, i, &t);
        }
        dk_tensor t;
        (void)dk_outputs_find(out, "boxes", &t);
        (void)dk_outputs_find(out, "nope", &t);
        dk_outputs_release(out);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    Reader r(data, size);
    switch (r.u8() % 4) {
        case 0: create(r); break;
        case 1: predict(r); break;
        case 2: generate(r); break;
        default: run(r); break;
    }
    return 0;
}
