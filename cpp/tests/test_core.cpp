// Internals without a public face: SHA-256, manifest reading and its strictness, manifest file
// names (contract 2), and the native TensorRT backend's GPU-free logic.
#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include "error.hpp"
#include "fixtures.hpp"
#include "manifest.hpp"
#include "sha256.hpp"
#include "trt_plan.hpp"

using namespace deploykit::core;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// A manifest the parser accepts, to mutate per test.
json base_manifest() {
    return json::parse(R"({
      "format": "deploykit-manifest/1", "kind": "detector",
      "artifact": {"file": "m.onnx", "format": "onnx", "sha256": "0000000000000000000000000000000000000000000000000000000000000000"},
      "model": {"name": "toy", "anything": {"goes": "here"}},
      "inputs": [{"name": "image", "dtype": "uint8", "shape": ["batch", "height", "width", 3]}],
      "outputs": [{"name": "boxes", "dtype": "float32", "shape": ["batch", 100, 4]}],
      "batch": {"dynamic": true, "min": 1, "opt": 2, "max": 8},
      "class_names": ["__background__", "a"],
      "precision": {"mode": "int8", "calibration": {"samples": 64}},
      "versions": {"deploykit": "0.1.0"}
    })");
}

// The message of the Error `body` throws, with its code.
template <typename F>
std::pair<Code, std::string> error_of(F&& body) {
    try {
        body();
    } catch (const Error& e) {
        return {e.code(), e.what()};
    }
    ADD_FAILURE() << "no error thrown";
    return {Code::runtime, ""};
}

}  // namespace

// -- SHA-256 ----------------------------------------------------------------------------------

TEST(Sha256, KnownAnswerVectors) {  // FIPS 180-4 examples and the empty message
    EXPECT_EQ(sha256_hex("", 0), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    EXPECT_EQ(sha256_hex("abc", 3), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    std::string two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    EXPECT_EQ(sha256_hex(two_blocks.data(), two_blocks.size()),
              "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    std::string million(1000000, 'a');
    EXPECT_EQ(sha256_hex(million.data(), million.size()),
              "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, StreamingEqualsOneShotAtEveryBlockBoundary) {
    std::string data;
    for (int i = 0; i < 300; ++i) data.push_back(static_cast<char>(i * 7 + 3));
    const std::string whole = sha256_hex(data.data(), data.size());
    for (size_t split : {0, 1, 55, 56, 63, 64, 65, 127, 128, 200, 300}) {
        Sha256 h;
        h.update(data.data(), split);
        h.update(data.data() + split, data.size() - split);
        EXPECT_EQ(h.hex_digest(), whole) << "split at " << split;
    }
}

TEST(Sha256, EqualsPythonHashlibOnTheExportedArtifacts) {
    for (const char* key : {"toy_dynamic", "spade_demo"}) {
        fs::path artifact = fixtures::path(key);
        std::string bytes = fixtures::read_file(artifact);
        json manifest = json::parse(fixtures::read_file(fs::path(artifact).replace_extension(".json")));
        EXPECT_EQ(sha256_hex(bytes.data(), bytes.size()), manifest["artifact"]["sha256"].get<std::string>()) << key;
    }
}

// -- manifest -----------------------------------------------------------------------------------

TEST(Manifest, ParsesSpecsBatchAndClassNames) {
    Manifest m = parse_manifest(base_manifest().dump(), "m.json");
    EXPECT_EQ(m.kind, "detector");
    ASSERT_EQ(m.inputs.size(), 1u);
    EXPECT_EQ(m.inputs[0].describe(), "uint8 [batch, height, width, 3]");
    EXPECT_EQ(m.outputs[0].describe(), "float32 [batch, 100, 4]");
    EXPECT_TRUE(m.batch.dynamic);
    EXPECT_EQ(m.batch.max, 8);
    EXPECT_EQ(m.class_names, (std::vector<std::string>{"__background__", "a"}));
    EXPECT_FALSE(m.tensorrt.has_value());
}

TEST(Manifest, RefusesUnknownFieldsNamingThem) {
    struct Case {
        const char* pointer;  // where to add the field
        const char* where;    // what the message names
    };
    for (Case c : {Case{"", "field 'surprise'"}, Case{"/artifact", "artifact field 'surprise'"},
                   Case{"/batch", "batch field 'surprise'"}, Case{"/inputs/0", "inputs[0] field 'surprise'"}}) {
        json j = base_manifest();
        j[json::json_pointer(c.pointer)]["surprise"] = 1;
        auto [code, message] = error_of([&] { parse_manifest(j.dump(), "m.json"); });
        EXPECT_EQ(code, Code::unsupported) << message;
        EXPECT_NE(message.find(c.where), std::string::npos) << message;
        EXPECT_NE(message.find("expected one of the fields this runtime reads"), std::string::npos) << message;
        EXPECT_NE(message.find("got an unknown field"), std::string::npos) << message;
    }
}

TEST(Manifest, InformationalSectionsAreNotInterpreted) {
    json j = base_manifest();
    j["model"]["new_fact"] = {1, 2};
    j["precision"]["budget"] = {{"metric", "map-drop"}};
    j["versions"]["tensorrt"] = "11.4";
    EXPECT_NO_THROW(parse_manifest(j.dump(), "m.json"));
}

TEST(Manifest, RefusesBadValuesWithExpectedAndGot) {
    struct Case {
        std::function<void(json&)> mutate;
        const char* part;
    };
    std::vector<Case> cases = {
        {[](json& j) { j["format"] = "deploykit-manifest/2"; }, "field 'format': expected 'deploykit-manifest/1', got \"deploykit-manifest/2\""},
        {[](json& j) { j.erase("batch"); }, "field 'batch': expected present, got missing"},
        {[](json& j) { j["artifact"]["format"] = "tflite"; }, "artifact field 'format': expected 'onnx' or 'tensorrt-plan', got \"tflite\""},
        {[](json& j) { j["inputs"][0]["dtype"] = "float8"; }, "inputs[0] dtype: expected a numpy dtype name"},
        {[](json& j) { j["inputs"][0]["shape"][3] = -3; }, "inputs[0] shape dim 3: expected a non-negative int or a dimension name, got -3"},
        {[](json& j) { j["batch"]["min"] = 4; }, "batch: expected ints with 1 <= min <= opt <= max, got min=4 opt=2 max=8"},
        {[](json& j) { j["class_names"] = {1, 2}; }, "field 'class_names': expected a list of strings"},
        {[](json& j) { j["kind"] = 3; }, "field 'kind': expected a string, got an int 3"},
    };
    for (auto& c : cases) {
        json j = base_manifest();
        c.mutate(j);
        auto [code, message] = error_of([&] { parse_manifest(j.dump(), "dir/m.json"); });
        EXPECT_NE(message.find("manifest dir/m.json"), std::string::npos) << message;
        EXPECT_NE(message.find(c.part), std::string::npos) << message;
        EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    }
    auto [code, message] = error_of([] { parse_manifest("{not json", "m.json"); });
    EXPECT_EQ(code, Code::bad_input);
    EXPECT_EQ(message, "manifest m.json: expected valid JSON, got a parse error");
}

TEST(Manifest, FileNamesFollowContract2) {
    fixtures::TempDir tmp;
    const fs::path onnx = tmp.path() / "demo.onnx", plan = tmp.path() / "demo.plan";
    EXPECT_EQ(manifest_path(onnx), tmp.path() / "demo.json");
    EXPECT_EQ(manifest_path(plan), tmp.path() / "demo.plan.json");  // primary name, none exists yet
    EXPECT_EQ(manifest_path(tmp.path() / "demo.engine"), tmp.path() / "demo.engine.json");
    // older plans: demo.json is the plan's manifest only when it names the plan
    json j = base_manifest();
    j["artifact"]["file"] = "demo.onnx";
    fixtures::write_file(tmp.path() / "demo.json", j.dump());
    EXPECT_EQ(manifest_path(plan), tmp.path() / "demo.plan.json");
    j["artifact"]["file"] = "demo.plan";
    fixtures::write_file(tmp.path() / "demo.json", j.dump());
    EXPECT_EQ(manifest_path(plan), tmp.path() / "demo.json");
    fixtures::write_file(tmp.path() / "demo.plan.json", j.dump());  // the primary name wins
    EXPECT_EQ(manifest_path(plan), tmp.path() / "demo.plan.json");
}

// The crash-safe write (deploykit/manifest.py write_artifact): what a killed writer leaves is finished or
// undone by the reader, by the sha256 the pending manifest records.
TEST(Manifest, SettlesAnInterruptedWrite) {
    fixtures::TempDir tmp;
    const fs::path a = tmp.path() / "a.onnx", m = tmp.path() / "a.json";
    auto manifest_of = [](const std::string& bytes) {
        return json{{"artifact", {{"sha256", sha256_hex(bytes.data(), bytes.size())}}}}.dump();
    };
    auto slurp = [](const fs::path& p) {
        std::ifstream in(p, std::ios::binary);
        return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    };
    fixtures::write_file(a, "old");
    fixtures::write_file(m, manifest_of("old"));
    // past the commit point (both .new complete): rolled forward
    fixtures::write_file(tmp.path() / "a.onnx.new", "new");
    fixtures::write_file(tmp.path() / "a.json.new", manifest_of("new"));
    settle_artifact(a);
    EXPECT_EQ(slurp(a), "new");
    EXPECT_EQ(slurp(m), manifest_of("new"));
    EXPECT_FALSE(fs::exists(tmp.path() / "a.onnx.new"));
    EXPECT_FALSE(fs::exists(tmp.path() / "a.json.new"));
    // the artifact renamed already, the manifest not yet: rolled forward
    fixtures::write_file(a, "newer");
    fixtures::write_file(tmp.path() / "a.json.new", manifest_of("newer"));
    settle_artifact(a);
    EXPECT_EQ(slurp(m), manifest_of("newer"));
    // before the commit point (only the artifact's .new): rolled back
    fixtures::write_file(tmp.path() / "a.onnx.new", "half");
    settle_artifact(a);
    EXPECT_EQ(slurp(a), "newer");
    EXPECT_FALSE(fs::exists(tmp.path() / "a.onnx.new"));
    // a pending manifest that matches nothing: dropped, the committed pair stands
    fixtures::write_file(tmp.path() / "a.json.new", manifest_of("other"));
    settle_artifact(a);
    EXPECT_FALSE(fs::exists(tmp.path() / "a.json.new"));
    EXPECT_EQ(slurp(m), manifest_of("newer"));
}

TEST(Manifest, RefusesHostileValuesWithLimits) {
    struct Case {
        std::function<void(json&)> mutate;
        const char* part;
    };
    std::vector<Case> cases = {
        {[](json& j) { j["class_names"] = json::array(); for (int i = 0; i < 65537; ++i) j["class_names"].push_back("c"); },
         "field 'class_names': expected at most 65536 names, got 65537"},
        {[](json& j) { j["artifact"]["file"] = "../x.onnx"; }, "artifact field 'file': expected a file name without folders"},
        {[](json& j) { j["artifact"]["sha256"] = "abc"; }, "artifact field 'sha256': expected 64 lowercase hex digits"},
        {[](json& j) { j["batch"]["max"] = 70000; }, "batch: expected max at most 65536, got max=70000"},
        {[](json& j) { j["batch"]["max"] = 18446744073709551615ull; }, "batch field 'max': expected an int of 64 bits"},
        {[](json& j) { j["inputs"][0]["shape"][1] = 4294967296ll; }, "shape dim 1: expected at most 2147483647"},
    };
    for (auto& c : cases) {
        json j = base_manifest();
        c.mutate(j);
        auto [code, message] = error_of([&] { parse_manifest(j.dump(), "m.json"); });
        EXPECT_EQ(code, Code::bad_input) << message;
        EXPECT_NE(message.find(c.part), std::string::npos) << message;
    }
    std::string deep = std::string(100, '[') + std::string(100, ']');
    auto [code, message] = error_of([&] { parse_manifest(deep, "m.json"); });
    EXPECT_EQ(message, "manifest m.json: expected JSON nested at most 64 deep, got deeper nesting");
}

TEST(Manifest, Sha256MismatchNamesBothDigests) {
    fixtures::TempDir tmp;
    fs::path copy = tmp.copy_artifact(fixtures::path("toy_fixed"));
    auto [code, message] = error_of([&] { find_manifest(copy, std::string(64, 'f')); });
    EXPECT_EQ(code, Code::bad_input);
    EXPECT_NE(message.find("expected sha256 of toy_fixed.onnx = "), std::string::npos) << message;
    EXPECT_NE(message.find("got ffffffffffff... (artifact changed after export"), std::string::npos) << message;
}

// -- TensorRT backend logic (no GPU needed) ----------------------------------------------------

TEST(TensorRTPlan, ProfileShapesFromTheManifestBatchRange) {
    json j = base_manifest();
    j["inputs"] = json::parse(R"([{"name": "images", "dtype": "float32", "shape": ["batch", 3, 64, 96]},
                                  {"name": "scale", "dtype": "float32", "shape": [2]}])");
    auto shapes = trt::profile_shapes(parse_manifest(j.dump(), "m.json"));
    using V = std::vector<int64_t>;
    EXPECT_EQ(shapes["images"][0], (V{1, 3, 64, 96}));
    EXPECT_EQ(shapes["images"][1], (V{2, 3, 64, 96}));
    EXPECT_EQ(shapes["images"][2], (V{8, 3, 64, 96}));
    EXPECT_EQ(shapes["scale"][0], (V{2}));
    j["batch"] = {{"dynamic", false}, {"min", 4}, {"opt", 4}, {"max", 4}};
    shapes = trt::profile_shapes(parse_manifest(j.dump(), "m.json"));
    EXPECT_EQ(shapes["images"][0], (V{4, 3, 64, 96}));
    EXPECT_EQ(shapes["images"][2], (V{4, 3, 64, 96}));
}

TEST(TensorRTPlan, ProfileImageDimsFromTheImageSizeRange) {
    json j = base_manifest();  // image [batch, height, width, 3]
    j["preprocessing"] = {{"image_size_range", {{"min", {32, 48}}, {"opt", {720, 1280}}, {"max", {4096, 4000}}}}};
    auto shapes = trt::profile_shapes(parse_manifest(j.dump(), "m.json"));
    using V = std::vector<int64_t>;
    EXPECT_EQ(shapes["image"][0], (V{1, 32, 48, 3}));
    EXPECT_EQ(shapes["image"][1], (V{2, 720, 1280, 3}));
    EXPECT_EQ(shapes["image"][2], (V{8, 4096, 4000, 3}));
    shapes = trt::profile_shapes(parse_manifest(j.dump(), "m.json"), std::make_pair(int64_t(480), int64_t(640)));
    EXPECT_EQ(shapes["image"][1], (V{2, 480, 640, 3}));
    auto [code, message] = error_of([&] {
        trt::profile_shapes(parse_manifest(j.dump(), "m.json"), std::make_pair(int64_t(8000), int64_t(640)));
    });
    EXPECT_EQ(message, "profile for height: expected min <= opt <= max within 32..4096, got opt 8000");
}

TEST(TensorRTPlan, ProfileRefusesDimsWithoutARange) {
    Manifest m = parse_manifest(base_manifest().dump(), "m.json");  // no image_size_range
    EXPECT_EQ(error_of([&] { trt::profile_shapes(m); }).second,
              "manifest input 'image' dim 1 (height): expected a range in manifest preprocessing.image_size_range, got none");
    json j = base_manifest();
    j["inputs"][0]["shape"] = {"batch", "depth", 3};
    EXPECT_EQ(error_of([&] { trt::profile_shapes(parse_manifest(j.dump(), "m.json")); }).second,
              "manifest input 'image' dim 1: expected an int, 'batch' or a detector image dimension (height, width, "
              "padded_height, padded_width), got 'depth'");
}

TEST(TensorRTPlan, BufferSizesAndDtypes) {
    EXPECT_EQ(trt::buffer_nbytes({2, 3, 4}, DType::float32), 96u);
    EXPECT_EQ(trt::buffer_nbytes({1, 100}, DType::int32), 400u);
    EXPECT_EQ(trt::buffer_nbytes({}, DType::float16), 2u);  // a scalar
    EXPECT_EQ(trt::buffer_nbytes({5, 0, 3}, DType::uint8), 0u);
    EXPECT_EQ(error_of([] { trt::buffer_nbytes({2, -1}, DType::float32); }).first, Code::bad_input);
    EXPECT_EQ(trt::dtype_from_trt_name("HALF", "x"), DType::float16);
    EXPECT_EQ(trt::dtype_from_trt_name("UINT8", "image"), DType::uint8);
    auto [code, message] = error_of([] { trt::dtype_from_trt_name("BF16", "logits"); });
    EXPECT_EQ(message, "engine I/O 'logits' dtype: expected one of BOOL, FLOAT, HALF, INT32, INT64, INT8, UINT8, got BF16");
}

TEST(TensorRTPlan, VersionTextFromTheLibraryInteger) {
    EXPECT_EQ(trt::version_text(110400), "11.4.0");
    EXPECT_EQ(trt::version_text(101401), "10.14.1");
}

TEST(TensorRTPlan, RefusesAPlanFromAnotherTensorRTOrGpu) {
    TensorRTFacts built{"11.4.0.7", "8.7", "Orin"};
    EXPECT_NO_THROW(trt::check_compatible(built, "11.4.0", "8.7", "demo.plan"));
    EXPECT_NO_THROW(trt::check_compatible(std::nullopt, "11.4.0", "8.7", "demo.plan"));  // nothing recorded
    auto [c1, version] = error_of([&] { trt::check_compatible(built, "11.5.0", "8.7", "demo.plan"); });
    EXPECT_EQ(c1, Code::bad_input);
    EXPECT_EQ(version, "TensorRT engine demo.plan: expected built by the running TensorRT 11.5.0, got built by "
                       "TensorRT 11.4.0.7; rebuild it with `deploykit build`");
    auto [c2, gpu] = error_of([&] { trt::check_compatible(built, "11.4.0", "9.0", "demo.plan"); });
    EXPECT_EQ(gpu, "TensorRT engine demo.plan: expected built for this GPU (compute capability 9.0), got built for "
                   "compute capability 8.7 (Orin); rebuild it on this GPU");
    EXPECT_NE(error_of([&] { trt::check_compatible(TensorRTFacts{"11.4", "", ""}, "11.4.0", "9.0", "p"); }).second, "");
}

TEST(TensorRTPlan, WithinProfile) {
    EXPECT_TRUE(trt::within_profile({2, 3}, {1, 3}, {8, 3}));
    EXPECT_FALSE(trt::within_profile({9, 3}, {1, 3}, {8, 3}));
    EXPECT_FALSE(trt::within_profile({2}, {1, 3}, {8, 3}));
}

TEST(TensorRTPlan, ManifestTensorRTSectionIsRead) {
    json j = base_manifest();
    j["artifact"]["format"] = "tensorrt-plan";
    j["tensorrt"] = {{"version", "11.4.0"}, {"gpu", "Orin"}, {"compute_capability", "8.7"}, {"workspace_mb", 1024}};
    Manifest m = parse_manifest(j.dump(), "m.plan.json");
    ASSERT_TRUE(m.tensorrt.has_value());
    EXPECT_EQ(m.tensorrt->version, "11.4.0");
    EXPECT_EQ(m.tensorrt->compute_capability, "8.7");
}
