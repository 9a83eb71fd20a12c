// deploykit-detect MODEL IMAGE... -o DIR: the C++ twin of `deploykit infer` for detectors.
// Writes DIR/<stem>.json per image with the schema `deploykit infer` writes:
//   {"image", "width", "height", "model", "min_score",
//    "detections": [{"box": [x1, y1, x2, y2], "score", "label", "label_name"}]}
// (boxes in the image's pixels; Mask R-CNN: each detection's mask as COCO RLE in "segmentation").
// No drawn PNG (the Python CLI also writes one). Images are decoded with stb_image (PNG decodes to the same pixels as PIL; JPEG decoders may differ by a grey level).
#include <stb_image.h>

#include "../image_check.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "deploykit/deploykit.hpp"

namespace fs = std::filesystem;

namespace {

const char* kUsage =
    "usage: deploykit-detect MODEL IMAGE... -o DIR [--min-score S] [--threads N] [--providers LIST]\n"
    "\n"
    "Run a pixels-in detector (deploykit export MODEL --input image ...) on image files and write\n"
    "DIR/<stem>.json per image, as `deploykit infer` does.\n"
    "\n"
    "  MODEL            .onnx (ONNX Runtime) or .plan (TensorRT) with its deploykit manifest beside it\n"
    "  IMAGE...         PNG, JPEG, BMP, ... (decoded with stb_image; converted to RGB)\n"
    "  -o, --out DIR    output folder (created; default: none, required)\n"
    "  --min-score S    keep detections with score >= S (default 0.3, as `deploykit infer`)\n"
    "  --threads N      ONNX Runtime intra-op threads (default 0: ONNX Runtime decides)\n"
    "  --providers L    ONNX Runtime providers, best first, e.g. cuda,cpu (default: all available)\n"
    "  -h, --help       this text\n"
    "\n"
    "Exit codes: 0 success, 2 bad usage or bad input (one line on stderr), 1 a runtime failure.\n";

struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A binary mask as COCO uncompressed RLE, as `deploykit infer` writes it: {"size": [h, w], "counts":
// [...]}, runs over the pixels in column-major order, starting with a run of zeros.
nlohmann::json rle(const std::vector<uint8_t>& mask, int width, int height) {
    std::vector<int64_t> counts;
    uint8_t current = 0;
    int64_t run = 0;
    for (int x = 0; x < width; ++x)
        for (int y = 0; y < height; ++y) {
            const uint8_t v = mask[static_cast<size_t>(y) * static_cast<size_t>(width) + static_cast<size_t>(x)] ? 1 : 0;
            if (v != current) {
                counts.push_back(run);
                current = v, run = 0;
            }
            ++run;
        }
    if (width > 0 && height > 0) counts.push_back(run);
    return {{"size", {height, width}}, {"counts", counts}};
}

void write_atomic(const fs::path& path, const std::string& text) {
    fs::path tmp = path.parent_path() / ("." + path.filename().string() + ".tmp");
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        out << text;
        if (!out) {
            std::error_code ec;
            fs::remove(tmp, ec);
            throw deploykit::Error(DK_ERR_BAD_INPUT, "output " + path.string() + ": expected a writable file, got a write error");
        }
    }
    fs::rename(tmp, path);
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> positional;
    std::string out_dir;
    double min_score = 0.3;  // the default of `deploykit infer --min-score` (deploykit/runtime/infer.py)
    deploykit::Options options;
    try {
        for (int i = 1; i < argc; ++i) {
            std::string arg = argv[i];
            auto value = [&](const char* name) -> std::string {
                if (i + 1 >= argc) throw UsageError(std::string(name) + ": expected a value, got none");
                return argv[++i];
            };
            if (arg == "-h" || arg == "--help") {
                std::cout << kUsage;
                return 0;
            } else if (arg == "-o" || arg == "--out") {
                out_dir = value("-o");
            } else if (arg == "--min-score") {
                std::string v = value("--min-score");
                char* end = nullptr;
                min_score = std::strtod(v.c_str(), &end);
                if (end == v.c_str() || *end) throw UsageError("--min-score: expected a number, got '" + v + "'");
            } else if (arg == "--threads") {
                std::string v = value("--threads");
                char* end = nullptr;
                long n = std::strtol(v.c_str(), &end, 10);
                if (end == v.c_str() || *end || n < 0) throw UsageError("--threads: expected an int >= 0, got '" + v + "'");
                options.threads = static_cast<int>(n);
            } else if (arg == "--providers") {
                std::string v = value("--providers");
                for (size_t start = 0; start <= v.size();) {
                    size_t comma = v.find(',', start);
                    if (comma == std::string::npos) comma = v.size();
                    options.providers.push_back(v.substr(start, comma - start));
                    start = comma + 1;
                }
            } else if (!arg.empty() && arg[0] == '-') {
                throw UsageError("option " + arg + ": expected one of -o, --min-score, --threads, --providers, --help, got an unknown option");
            } else {
                positional.push_back(arg);
            }
        }
        if (positional.size() < 2) throw UsageError("arguments: expected MODEL IMAGE..., got " + std::to_string(positional.size()) + " paths");
        if (out_dir.empty()) throw UsageError("-o DIR: expected an output folder, got none");
        const std::string model = positional[0];
        std::vector<fs::path> images(positional.begin() + 1, positional.end());
        std::map<std::string, fs::path> stems;
        for (const auto& p : images) {
            auto [it, fresh] = stems.emplace(p.stem().string(), p);
            if (!fresh && it->second != p)
                throw deploykit::Error(DK_ERR_BAD_INPUT, "image " + p.string() + ": expected a file stem unique among the inputs "
                                       "(outputs are <stem>.json in " + out_dir + "), got same stem as " + it->second.string());
        }
        deploykit::Detector detector(model, options);
        fs::create_directories(out_dir);
        // An image-list graph takes images of any sizes in one call (chunks of its largest batch); others
        // take one size per call: one image at a time.
        const size_t chunk = detector.image_list() ? static_cast<size_t>(std::max(detector.max_batch(), 1)) : 1;
        for (size_t start = 0; start < images.size(); start += chunk) {
            const std::vector<fs::path> paths(images.begin() + static_cast<std::ptrdiff_t>(start),
                                              images.begin() + static_cast<std::ptrdiff_t>(std::min(images.size(), start + chunk)));
            std::vector<std::unique_ptr<unsigned char, void (*)(void*)>> owned;
            std::vector<deploykit::ImageView> views;
            for (const auto& path : paths) {
                int width = 0, height = 0;
                const char* why = nullptr;  // size and JPEG checks before stb (../image_check.h)
                unsigned char* pixels = dk_load_image_file(path.string().c_str(), &width, &height, &why);
                if (!pixels) {
                    const std::string reason = fs::exists(path) ? why : "no such file";
                    throw deploykit::Error(DK_ERR_BAD_INPUT, "image " + path.string() + ": expected a readable image file, got " + reason);
                }
                owned.emplace_back(pixels, stbi_image_free);
                views.emplace_back(pixels, width, height, 0, deploykit::PixelFormat::RGB);
            }
            std::vector<std::vector<deploykit::Detection>> found;
            try {
                found = detector.predict(views);
            } catch (const deploykit::Error& e) {
                // name the file: the image that fails alone (a chunk's message counts images within it)
                for (size_t k = 0; k < views.size(); ++k) {
                    try {
                        detector.predict(views[k]);
                    } catch (const deploykit::Error& alone) {
                        throw deploykit::Error(alone.status(), paths[k].string() + ": " + alone.what());
                    }
                }
                throw;
            }
            for (size_t k = 0; k < views.size(); ++k) {
                nlohmann::json detections = nlohmann::json::array();
                for (const auto& d : found[k]) {
                    if (d.score < min_score) continue;
                    detections.push_back({{"box", {double(d.x1), double(d.y1), double(d.x2), double(d.y2)}},
                                          {"score", double(d.score)}, {"label", d.label}, {"label_name", d.label_name}});
                    if (!d.mask.empty()) detections.back()["segmentation"] = rle(d.mask, d.mask_width, d.mask_height);
                }
                nlohmann::ordered_json doc;
                doc["image"] = paths[k].string();
                doc["width"] = views[k].width;
                doc["height"] = views[k].height;
                doc["model"] = model;
                doc["min_score"] = min_score;
                doc["detections"] = detections;
                write_atomic(fs::path(out_dir) / (paths[k].stem().string() + ".json"), doc.dump(2) + "\n");
                std::cerr << paths[k].string() << ": " << detections.size() << " detections\n";
            }
        }
    } catch (const UsageError& e) {
        std::cerr << "deploykit-detect: " << e.what() << "\n" << "try deploykit-detect --help\n";
        return 2;
    } catch (const deploykit::Error& e) {
        std::cerr << "deploykit-detect: " << e.what() << "\n";
        return e.status() == DK_ERR_RUNTIME ? 1 : 2;
    } catch (const std::exception& e) {
        std::cerr << "deploykit-detect: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
