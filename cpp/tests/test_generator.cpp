// deploykit::Generator (SPADE demo, exported): the same image as the Python Generator, the same
// raw output to 1e-6, and the same checks and messages on bad maps.
#include <gtest/gtest.h>

#include <cmath>

#include "api_helpers.hpp"
#include "deploykit/deploykit.hpp"
#include "fixtures.hpp"

using nlohmann::json;

namespace {

struct Maps {
    std::vector<uint8_t> labels;
    std::vector<int32_t> ids;
    int height, width;
    deploykit::MapView label_view() const { return {labels.data(), deploykit::DType::UInt8, width, height}; }
    deploykit::MapView id_view() const { return {ids.data(), deploykit::DType::Int32, width, height}; }
};

Maps maps_of(const json& c) {
    auto shape = fixtures::shape(c["label_map"]);
    return {fixtures::array<uint8_t>(c["label_map"]), fixtures::array<int32_t>(c["instance_map"]), int(shape[0]), int(shape[1])};
}

}  // namespace

TEST(Generator, EqualsThePythonGenerator) {
    deploykit::Generator gen(fixtures::path("spade_demo").string(), deploykit::Options::with_threads(2));
    EXPECT_EQ(gen.size(), (std::pair<int, int>{128, 128}));
    deploykit::Session session(fixtures::path("spade_demo").string(), deploykit::Options::with_threads(2));
    double worst = 0;
    for (const auto& c : fixtures::index()["spade_cases"]) {
        Maps m = maps_of(c);
        deploykit::MapView labels = m.label_view(), ids = m.id_view();
        // the uint8 image: identical
        auto rgb = gen.generate(labels, &ids);
        EXPECT_EQ(rgb.pixels, fixtures::array<uint8_t>(c["rgb"]));
        // the graph's float output: within 1e-6 of the Python runtime's
        auto out = session.run({{"label_map", deploykit::DType::UInt8, {1, 128, 128}, m.labels.data()},
                                {"instance_map", deploykit::DType::Int32, {1, 128, 128}, m.ids.data()}});
        auto want = fixtures::array<float>(c["float"]);
        auto image = out["image"];
        ASSERT_EQ(image.count(), want.size());
        for (size_t i = 0; i < want.size(); ++i) worst = std::max(worst, double(std::fabs(image.as<float>()[i] - want[i])));
    }
    EXPECT_LE(worst, 1e-6);
}

TEST(Generator, ResizesWithNearestLikePython) {
    deploykit::Generator gen(fixtures::path("spade_demo").string(), deploykit::Options::with_threads(2));
    const json& c = fixtures::index()["spade_resize"];
    Maps m = maps_of(c);
    deploykit::MapView labels = m.label_view(), ids = m.id_view();
    EXPECT_EQ(gen.generate(labels, &ids, /*resize=*/true).pixels, fixtures::array<uint8_t>(c["rgb"]));
    EXPECT_EQ(error_of([&] { gen.generate(labels, &ids); }).second,
              "label_map size (H, W): expected (128, 128), got (64, 43) (resize it, or set resize for nearest)");
}

TEST(Generator, OutOfRangeLabelsGiveThePythonMessage) {
    deploykit::Generator gen(fixtures::path("spade_demo").string());
    const json& c = fixtures::index()["spade_bad_labels"];
    Maps m = maps_of(c);
    deploykit::MapView labels = m.label_view(), ids = m.id_view();
    auto [status, message] = error_of([&] { gen.generate(labels, &ids); });
    EXPECT_EQ(status, DK_ERR_BAD_INPUT);
    EXPECT_EQ(message, c["message"].get<std::string>());
}

TEST(Generator, RefusesBadMaps) {
    deploykit::Generator gen(fixtures::path("spade_demo").string());
    Maps m = maps_of(fixtures::index()["spade_cases"][0]);
    deploykit::MapView labels = m.label_view(), ids = m.id_view();
    EXPECT_EQ(error_of([&] { gen.generate(labels); }).second,
              "instance_map: expected an instance map (this generator uses instance edges), got none");
    std::vector<float> floats(128 * 128);
    deploykit::MapView as_float{floats.data(), deploykit::DType::Float32, 128, 128};
    EXPECT_EQ(error_of([&] { gen.generate(as_float, &ids); }).second,
              "label_map dtype: expected an integer type (uint8, uint16, int32, int64), got float32");
    deploykit::MapView narrow = labels;
    narrow.stride = 100;
    EXPECT_EQ(error_of([&] { gen.generate(narrow, &ids); }).second,
              "label_map stride: expected >= width * 1 = 128 bytes per row, got 100");
    deploykit::MapView none = labels;
    none.data = nullptr;
    EXPECT_EQ(error_of([&] { gen.generate(none, &ids); }).first, DK_ERR_BAD_INPUT);
    // other integer types and strides give the same image
    std::vector<uint16_t> wide(128 * 130, 0);
    for (int y = 0; y < 128; ++y)
        for (int x = 0; x < 128; ++x) wide[size_t(y) * 130 + x] = m.labels[size_t(y) * 128 + x];
    deploykit::MapView wide_view{wide.data(), deploykit::DType::UInt16, 128, 128, 130 * 2};
    EXPECT_EQ(gen.generate(wide_view, &ids).pixels, gen.generate(labels, &ids).pixels);
    // the detector graph is not a generator
    EXPECT_CONTAINS(error_of([] { deploykit::Generator(fixtures::path("toy_dynamic").string()); }).second,
                    "expected a generator manifest (kind 'generator'), got kind 'detector'");
}
