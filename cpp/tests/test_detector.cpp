// deploykit::Detector: pixels in, detections in original-image pixels out.
// On the toy pixels-in graphs (outputs are functions of the image size and per-channel means,
// so packing mistakes show) and, when the exporter makes them, the bundled demo detector
// exported pixels-in (fixed and dynamic), against the Python Detector.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <set>
#include <thread>
#include <tuple>

#include "api_helpers.hpp"
#include "deploykit/deploykit.hpp"
#include "fixtures.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct Image {
    int height, width;
    std::vector<uint8_t> pixels;  // packed RGB
    deploykit::ImageView view() const { return {pixels.data(), width, height}; }
};

Image random_image(int h, int w, uint32_t seed) {
    std::mt19937 rng(seed);
    Image im{h, w, std::vector<uint8_t>(static_cast<size_t>(h) * w * 3)};
    for (auto& v : im.pixels) v = static_cast<uint8_t>(rng() & 0xff);
    return im;
}

void expect_same(const std::vector<deploykit::Detection>& a, const std::vector<deploykit::Detection>& b) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t k = 0; k < a.size(); ++k) {
        EXPECT_EQ(a[k].x1, b[k].x1);
        EXPECT_EQ(a[k].y1, b[k].y1);
        EXPECT_EQ(a[k].x2, b[k].x2);
        EXPECT_EQ(a[k].y2, b[k].y2);
        EXPECT_EQ(a[k].score, b[k].score);
        EXPECT_EQ(a[k].label, b[k].label);
        EXPECT_EQ(a[k].label_name, b[k].label_name);
    }
}

// Detections equal a Python Detections.to_json() list: boxes within `tol` px, labels identical.
void expect_matches_python(const std::vector<deploykit::Detection>& got, const json& want, float tol,
                           const std::string& what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    for (size_t k = 0; k < got.size(); ++k) {
        const json& w = want[k];
        const float box[4] = {got[k].x1, got[k].y1, got[k].x2, got[k].y2};
        for (int j = 0; j < 4; ++j) EXPECT_NEAR(box[j], w["box"][j].get<double>(), tol) << what << " det " << k;
        EXPECT_NEAR(got[k].score, w["score"].get<double>(), 1e-6) << what << " det " << k;
        EXPECT_EQ(got[k].label, w["label"].get<int>()) << what << " det " << k;
        EXPECT_EQ(got[k].label_name, w["label_name"].get<std::string>()) << what << " det " << k;
    }
}

}  // namespace

TEST(Detector, ToyEqualsThePythonRuntime) {
    deploykit::Detector det(fixtures::path("toy_dynamic").string(), deploykit::Options::with_threads(1));
    EXPECT_EQ(det.class_names(), (std::vector<std::string>{"__background__", "red", "green", "blue"}));
    EXPECT_EQ(det.max_batch(), 4);
    size_t unnamed = 0;
    for (const auto& c : fixtures::index()["toy_cases"]) {
        auto pixels = fixtures::array<uint8_t>(c["image"]);
        auto shape = fixtures::shape(c["image"]);
        auto got = det.predict(deploykit::ImageView{pixels.data(), int(shape[1]), int(shape[0])});
        ASSERT_EQ(got.size(), c["labels"].size());
        for (size_t k = 0; k < got.size(); ++k) {
            EXPECT_EQ(got[k].x1, c["boxes"][k][0].get<float>());
            EXPECT_EQ(got[k].y2, c["boxes"][k][3].get<float>());
            EXPECT_EQ(got[k].score, c["scores"][k].get<float>());
            EXPECT_EQ(got[k].label, c["labels"][k].get<int>());
            if (got[k].label == 4) {
                EXPECT_EQ(got[k].label_name, "class_4");
                ++unnamed;
            }
        }
    }
    EXPECT_GT(unnamed, 0u);  // the cases reach the label the manifest has no name for
}

TEST(Detector, BgrAndStridedImagesPackToTheSameTensor) {
    deploykit::Detector det(fixtures::path("toy_dynamic").string(), deploykit::Options::with_threads(1));
    Image rgb = random_image(37, 53, 1);
    for (size_t i = 0; i < rgb.pixels.size(); i += 3) rgb.pixels[i] /= 3;  // channels differ in mean
    auto want = det.predict(rgb.view());
    // BGR: the same pixels in OpenCV order
    Image bgr = rgb;
    for (size_t i = 0; i < bgr.pixels.size(); i += 3) std::swap(bgr.pixels[i], bgr.pixels[i + 2]);
    auto view = bgr.view();
    view.format = deploykit::PixelFormat::BGR;
    expect_same(det.predict(view), want);
    // treating BGR bytes as RGB changes the answer (the check above can fail)
    EXPECT_NE(det.predict(bgr.view())[0].x1, want[0].x1);
    // a row stride with padding (an ROI of a larger image), RGB and BGR
    const size_t stride = 53 * 3 + 29;
    std::vector<uint8_t> padded(37 * stride, 0xee), padded_bgr(37 * stride, 0x11);
    for (int y = 0; y < 37; ++y) {
        std::copy_n(rgb.pixels.data() + y * 53 * 3, 53 * 3, padded.data() + y * stride);
        std::copy_n(bgr.pixels.data() + y * 53 * 3, 53 * 3, padded_bgr.data() + y * stride);
    }
    expect_same(det.predict(deploykit::ImageView{padded.data(), 53, 37, stride}), want);
    expect_same(det.predict(deploykit::ImageView{padded_bgr.data(), 53, 37, stride, deploykit::PixelFormat::BGR}), want);
}

TEST(Detector, BatchesChunksAndFixedBatchFill) {
    deploykit::Detector det(fixtures::path("toy_dynamic").string(), deploykit::Options::with_threads(1));  // batch 1..4
    std::vector<Image> images;
    for (int i = 0; i < 6; ++i) images.push_back(random_image(40, 30, 100 + i));
    std::vector<deploykit::ImageView> views;
    for (const auto& im : images) views.push_back(im.view());
    auto batched = det.predict(views);  // runs of 4 + 2
    ASSERT_EQ(batched.size(), 6u);
    for (size_t i = 0; i < 6; ++i) expect_same(batched[i], det.predict(views[i]));
    // a static batch of 2: one image is padded with a blank one whose result is dropped
    deploykit::Detector two(fixtures::path("toy_batch2").string(), deploykit::Options::with_threads(1));
    EXPECT_EQ(two.max_batch(), 2);
    expect_same(two.predict(views[0]), batched[0]);
    auto three = two.predict(std::vector<deploykit::ImageView>{views[0], views[1], views[2]});
    ASSERT_EQ(three.size(), 3u);
    expect_same(three[2], batched[2]);
    EXPECT_TRUE(det.predict(std::vector<deploykit::ImageView>{}).empty());
}

TEST(Detector, RefusesBadImagesWithOneLine) {
    deploykit::Detector det(fixtures::path("toy_dynamic").string());
    Image ok = random_image(40, 30, 5), big = random_image(20, 600, 6), other = random_image(41, 30, 7);
    struct Case {
        std::vector<deploykit::ImageView> images;
        std::string message;
    };
    auto with = [&](auto change) {
        deploykit::ImageView v = ok.view();
        change(v);
        return v;
    };
    std::vector<Case> cases = {
        {{with([](auto& v) { v.channels = 4; })},
         "image channels: expected 3 (an RGB or BGR uint8 image; convert gray or 4-channel images first), got 4"},
        {{with([](auto& v) { v.channels = 1; })}, "image channels: expected 3"},
        {{with([](auto& v) { v.stride = 89; })}, "image stride: expected >= width * 3 = 90 bytes per row, got 89"},
        {{with([](auto& v) { v.data = nullptr; })}, "image data: expected a pointer to (40, 30) x 3 uint8 pixels, got null"},
        {{with([](auto& v) { v.width = 0; })}, "image size (H, W): expected at least (1, 1), got (40, 0)"},
        {{with([](auto& v) { v.height = 10; })},
         "image size (H, W): expected between (16, 16) and (512, 512) (manifest image_size_range), got (10, 30)"},
        {{big.view()}, "image size (H, W): expected between (16, 16) and (512, 512) (manifest image_size_range), got (20, 600)"},
        {{ok.view(), other.view()}, "image 1 size (H, W): expected (40, 30) as image 0 (one size per batch), got (41, 30)"},
        {{ok.view(), ok.view(), ok.view(), ok.view(), ok.view(), with([](auto& v) { v.channels = 2; })},
         "image 5 channels: expected 3"},
    };
    for (const auto& c : cases) {
        auto [status, message] = error_of([&] { det.predict(c.images); });
        EXPECT_EQ(status, DK_ERR_BAD_INPUT) << message;
        EXPECT_EQ(message.rfind(c.message, 0), 0u) << message << "\n  wanted: " << c.message;
    }
    // a graph with a fixed input size
    deploykit::Detector fixed(fixtures::path("toy_fixed").string());
    Image exact = random_image(48, 64, 8), off = random_image(48, 65, 9);
    EXPECT_EQ(fixed.predict(exact.view()).size(), fixed.predict(exact.view()).size());
    EXPECT_EQ(error_of([&] { fixed.predict(off.view()); }).second,
              "image size (H, W): expected (48, 64) (the graph's fixed input size), got (48, 65)");
    // C API: a format that is neither RGB nor BGR
    dk_detector* raw = nullptr;
    ASSERT_EQ(dk_detector_create(fixtures::path("toy_dynamic").string().c_str(), nullptr, &raw), DK_OK);
    dk_image im{ok.pixels.data(), 30, 40, 3, 0, DK_RGB};
    const int bad_format = 7;  // as a C caller could store it
    std::memcpy(&im.format, &bad_format, sizeof bad_format);
    dk_detections* out = nullptr;
    EXPECT_EQ(dk_detector_predict(raw, &im, 1, &out), DK_ERR_BAD_INPUT);
    EXPECT_STREQ(dk_last_error(), "image 0 format: expected DK_RGB or DK_BGR, got 7");
    EXPECT_EQ(out, nullptr);
    im.format = DK_BGR;
    ASSERT_EQ(dk_detector_predict(raw, &im, 1, &out), DK_OK);
    size_t n = 0;
    EXPECT_NE(dk_detections_get(out, 0, &n), nullptr);
    EXPECT_GT(n, 0u);
    EXPECT_EQ(dk_detections_get(out, 1, &n), nullptr);
    EXPECT_EQ(n, 0u);
    dk_detections_release(out);
    dk_detector_destroy(raw);
}

TEST(Detector, RefusesGraphsItCannotFeed) {
    auto [s1, m1] = error_of([] { deploykit::Detector(fixtures::path("toy_tensor_input").string()); });
    EXPECT_EQ(s1, DK_ERR_UNSUPPORTED);
    EXPECT_CONTAINS(m1, "expected a pixels-in graph (input 'image' uint8 [B, H, W, 3]");
    EXPECT_CONTAINS(m1, "`deploykit export MODEL --input image [--input-size HxW]`");
    EXPECT_CONTAINS(m1, "got a tensor-input graph (inputs 'images' float32 and 'image_sizes')");
    auto [s2, m2] = error_of([] { deploykit::Detector(fixtures::path("spade_demo").string()); });
    EXPECT_EQ(s2, DK_ERR_BAD_INPUT);
    EXPECT_CONTAINS(m2, "manifest kind: expected 'detector', got 'generator'");
    // a pixels-in manifest with a value this runtime does not support
    fixtures::TempDir tmp;
    fs::path copy = tmp.copy_artifact(fixtures::path("toy_dynamic"));
    fs::path manifest = fs::path(copy).replace_extension(".json");
    for (auto [pointer, value, part] : {std::tuple{"/preprocessing/color", "BGR", "preprocessing field 'color': expected 'RGB', got 'BGR'"},
                                        std::tuple{"/preprocessing/layout", "NCHW", "field 'layout': expected 'NHWC', got 'NCHW'"},
                                        std::tuple{"/postprocessing/box_coordinates", "network-input pixels",
                                                   "field 'box_coordinates': expected 'original-image pixels', got 'network-input pixels'"}}) {
        json m = json::parse(fixtures::read_file(fixtures::path("toy_dynamic").replace_extension(".json")));
        m[json::json_pointer(pointer)] = value;
        fixtures::write_file(manifest, m.dump());
        auto [status, message] = error_of([&] { deploykit::Detector(copy.string()); });
        EXPECT_EQ(status, DK_ERR_UNSUPPORTED);
        EXPECT_CONTAINS(message, part);
    }
}

namespace {

// 8 threads x 50 requests on one Detector, all running at once; request j of thread t uses image
// (7 t + j) mod N, so at any moment the threads work on different images. Every answer is compared
// with the one the same Detector gave for that image alone, before the threads started.
void hammer(const deploykit::Detector& det, const std::vector<Image>& images) {
    constexpr int kThreads = 8, kPerThread = 50;
    const size_t n = images.size();
    auto image_of = [n](int t, int j) { return static_cast<size_t>(7 * t + j) % n; };
    std::vector<std::vector<deploykit::Detection>> expected;
    for (const auto& im : images) expected.push_back(det.predict(im.view()));
    std::vector<std::vector<std::vector<deploykit::Detection>>> got(kThreads);
    std::vector<std::string> errors(kThreads);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            try {
                for (int j = 0; j < kPerThread; ++j) got[t].push_back(det.predict(images[image_of(t, j)].view()));
            } catch (const std::exception& e) {
                errors[t] = e.what();
            }
        });
    }
    for (auto& th : threads) th.join();
    size_t checked = 0;
    for (int t = 0; t < kThreads; ++t) {
        ASSERT_EQ(errors[t], "") << "thread " << t;
        ASSERT_EQ(got[t].size(), size_t(kPerThread));
        for (int j = 0; j < kPerThread; ++j, ++checked) expect_same(got[t][j], expected[image_of(t, j)]);
    }
    EXPECT_EQ(checked, 400u);
    // the images are distinct: their answers differ
    std::set<float> first_x;
    for (const auto& e : expected)
        if (!e.empty()) first_x.insert(e[0].x1);
    EXPECT_GT(first_x.size(), n / 2);
}

}  // namespace

TEST(DetectorThreads, EightThreadsFiftyRequestsEachOnOneToyDetector) {  // 400 distinct images
    deploykit::Detector det(fixtures::path("toy_dynamic").string(), deploykit::Options::with_threads(1));
    std::vector<Image> images;
    for (int i = 0; i < 400; ++i) images.push_back(random_image(16 + (i % 23) * 5, 16 + (i % 17) * 7, 1000 + i));
    hammer(det, images);
}

// -- the bundled demo detector, exported pixels-in ----------------------------------------

namespace {
const json* demo_refs() {
    const json& idx = fixtures::index();
    return idx.contains("demo_detector") && !idx["demo_detector"].is_null() ? &idx["demo_detector"] : nullptr;
}
std::string demo_skip() {
    const json& idx = fixtures::index();
    return idx.contains("demo_detector_skip") ? idx["demo_detector_skip"].get<std::string>() : "no demo detector fixture";
}
}  // namespace

class DemoDetector : public testing::TestWithParam<const char*> {};

TEST_P(DemoDetector, EqualsThePythonDetectorOnHeldOutImages) {
    const json* refs = demo_refs();
    if (!refs) GTEST_SKIP() << demo_skip();
    const json& ref = (*refs)[GetParam()];
    deploykit::Detector det((fixtures::dir() / ref["file"].get<std::string>()).string(), deploykit::Options::with_threads(2));
    const json& images = fixtures::index()["heldout_images"];
    ASSERT_GE(images.size(), 20u);
    std::set<std::pair<int64_t, int64_t>> sizes;
    size_t detections = 0;
    for (size_t i = 0; i < images.size(); ++i) {
        auto pixels = fixtures::array<uint8_t>(images[i]);
        auto shape = fixtures::shape(images[i]);
        sizes.insert({shape[0], shape[1]});
        auto got = det.predict(deploykit::ImageView{pixels.data(), int(shape[1]), int(shape[0])});
        expect_matches_python(got, ref["detections"][i], 1e-4f, std::string(GetParam()) + " image " + std::to_string(i));
        detections += got.size();
    }
    EXPECT_GE(sizes.size(), 10u);  // varied sizes
    EXPECT_GT(detections, images.size());
}

INSTANTIATE_TEST_SUITE_P(FixedAndDynamic, DemoDetector, testing::Values("demo_fixed", "demo_dynamic"));

// An image-list graph: the 24 held-out images of different sizes as one list, run in chunks of the
// graph's largest batch (4), one call each, equal the Python Detector's predict(list).
TEST(ImageListDetector, OneCallPerChunkOfMixedSizesEqualsThePythonDetector) {
    const json* refs = demo_refs();
    if (!refs) GTEST_SKIP() << demo_skip();
    if (!refs->contains("demo_list")) GTEST_SKIP() << "no image-list fixture";
    const json& ref = (*refs)["demo_list"];
    deploykit::Detector det((fixtures::dir() / ref["file"].get<std::string>()).string(), deploykit::Options::with_threads(2));
    EXPECT_TRUE(det.image_list());
    EXPECT_EQ(det.max_batch(), 4);
    const json& images = fixtures::index()["heldout_images"];
    std::vector<std::vector<uint8_t>> pixels;
    std::vector<deploykit::ImageView> views;
    for (const auto& item : images) {
        pixels.push_back(fixtures::array<uint8_t>(item));
        auto shape = fixtures::shape(item);
        views.emplace_back(pixels.back().data(), int(shape[1]), int(shape[0]));
    }
    std::set<std::pair<int, int>> sizes;
    for (const auto& v : views) sizes.insert({v.height, v.width});
    ASSERT_GE(sizes.size(), 10u);  // the chunks do mix sizes
    auto got = det.predict(views);
    ASSERT_EQ(got.size(), views.size());
    for (size_t i = 0; i < got.size(); ++i)
        expect_matches_python(got[i], ref["detections"][i], 1e-4f, "demo_list image " + std::to_string(i));
}

// Mask R-CNN: masks pasted in the graph (copied out) and compact masks pasted here with the shared rule
// equal the Python Detector's, mask for mask (RLE decoded), with the same detections.
std::vector<uint8_t> decode_rle(const json& rle) {
    const int64_t h = rle["size"][0], w = rle["size"][1];
    std::vector<uint8_t> mask(size_t(h * w), 0);
    int64_t at = 0;
    uint8_t value = 0;
    for (const auto& run : rle["counts"]) {
        for (int64_t i = 0; i < run.get<int64_t>(); ++i, ++at) mask[size_t((at % h) * w + at / h)] = value;  // column-major
        value ^= 1;
    }
    return mask;
}

class MaskDetector : public testing::TestWithParam<const char*> {};

TEST_P(MaskDetector, MasksEqualThePythonDetector) {
    const json& idx = fixtures::index();
    if (!idx.contains("maskrcnn_demo") || idx["maskrcnn_demo"].is_null())
        GTEST_SKIP() << idx.value("maskrcnn_demo_skip", std::string("no Mask R-CNN fixture"));
    const json& ref = idx["maskrcnn_demo"][GetParam()];
    deploykit::Detector det((fixtures::dir() / ref["file"].get<std::string>()).string(), deploykit::Options::with_threads(2));
    EXPECT_TRUE(det.has_masks());
    const json& images = idx["heldout_images"];
    size_t masks = 0, pixels_on = 0;
    for (size_t i = 0; i < ref["detections"].size(); ++i) {
        auto pixels = fixtures::array<uint8_t>(images[i]);
        auto shape = fixtures::shape(images[i]);
        auto got = det.predict(deploykit::ImageView{pixels.data(), int(shape[1]), int(shape[0])});
        const json& want = ref["detections"][i];
        const std::string where = std::string(GetParam()) + " image " + std::to_string(i);
        expect_matches_python(got, want, 1e-4f, where);
        for (size_t k = 0; k < got.size() && k < want.size(); ++k) {
            ASSERT_EQ(got[k].mask_height, shape[0]) << where;
            ASSERT_EQ(got[k].mask_width, shape[1]) << where;
            EXPECT_EQ(got[k].mask, decode_rle(want[k]["segmentation"])) << where << " mask " << k;
            pixels_on += size_t(std::count(got[k].mask.begin(), got[k].mask.end(), uint8_t(1)));
            ++masks;
        }
    }
    EXPECT_GT(masks, ref["detections"].size());  // the model finds things
    EXPECT_GT(pixels_on, masks * 20);          // and their masks are not empty
}

INSTANTIATE_TEST_SUITE_P(PastedAndCompact, MaskDetector, testing::Values("maskrcnn_pasted", "maskrcnn_compact"));

TEST(DetectorThreads, EightThreadsFiftyRequestsEachOnTheDemoDetector) {
    const json* refs = demo_refs();
    if (!refs) GTEST_SKIP() << demo_skip();
    deploykit::Detector det((fixtures::dir() / (*refs)["demo_dynamic"]["file"].get<std::string>()).string(), deploykit::Options::with_threads(1));
    const json& heldout = fixtures::index()["heldout_images"];
    std::vector<Image> images;
    for (int i = 0; i < 40; ++i) {  // distinct: held-out images, each cropped differently
        const json& src = heldout[i % heldout.size()];
        auto pixels = fixtures::array<uint8_t>(src);
        auto shape = fixtures::shape(src);
        int h = int(shape[0]) - 3 * (i / int(heldout.size())) - i % 5, w = int(shape[1]) - 2 * (i % 7);
        Image im{h, w, std::vector<uint8_t>(size_t(h) * w * 3)};
        for (int y = 0; y < h; ++y) std::copy_n(pixels.data() + size_t(y) * shape[1] * 3, size_t(w) * 3, im.pixels.data() + size_t(y) * w * 3);
        images.push_back(std::move(im));
    }
    hammer(det, images);
}
