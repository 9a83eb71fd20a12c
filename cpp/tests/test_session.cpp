// deploykit::Session and the C API's session functions, on the toy graphs: specs, the Python
// runtime's answers, feed validation, and bad artifacts (corrupt/truncated ONNX and plans,
// sha256 mismatches, unknown manifest fields) -> a status and a one-line message, no crash.
#include <gtest/gtest.h>

#include <cstring>
#include <thread>

#include "api_helpers.hpp"
#include "deploykit/deploykit.hpp"
#include "fixtures.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

deploykit::Tensor image_tensor(const std::vector<uint8_t>& pixels, std::vector<int64_t> shape) {
    return {"image", deploykit::DType::UInt8, std::move(shape), pixels.data()};
}

json read_json(const fs::path& p) { return json::parse(fixtures::read_file(p)); }
void write_json(const fs::path& p, const json& j) { fixtures::write_file(p, j.dump(2)); }

}  // namespace

TEST(Session, SpecsWithSymbolicDims) {
    deploykit::Session s(fixtures::path("toy_dynamic").string());
    auto ins = s.inputs();
    ASSERT_EQ(ins.size(), 1u);
    EXPECT_EQ(ins[0].name, "image");
    EXPECT_EQ(ins[0].dtype, deploykit::DType::UInt8);
    EXPECT_EQ(ins[0].shape, (std::vector<int64_t>{-1, -1, -1, 3}));
    EXPECT_EQ(ins[0].dim_names, (std::vector<std::string>{"batch", "height", "width", ""}));
    auto outs = s.outputs();
    ASSERT_EQ(outs.size(), 4u);
    EXPECT_EQ(outs[1].name, "boxes");
    EXPECT_EQ(outs[1].shape, (std::vector<int64_t>{-1, 4, 4}));
    EXPECT_CONTAINS(s.backend(), "onnxruntime 1.");
    EXPECT_CONTAINS(s.backend(), "CPUExecutionProvider");
}

TEST(Session, RunEqualsThePythonRuntime) {
    deploykit::Session s(fixtures::path("toy_dynamic").string(), deploykit::Options::with_threads(1));
    for (const auto& c : fixtures::index()["toy_cases"]) {
        auto pixels = fixtures::array<uint8_t>(c["image"]);
        auto shape = fixtures::shape(c["image"]);
        auto out = s.run({image_tensor(pixels, {1, shape[0], shape[1], 3})});
        ASSERT_EQ(out.size(), 4u);
        auto num = out["num_detections"];
        ASSERT_EQ(num.as<int32_t>()[0], static_cast<int32_t>(c["labels"].size()));
        auto boxes = out["boxes"];
        for (size_t k = 0; k < c["boxes"].size(); ++k)
            for (size_t j = 0; j < 4; ++j) EXPECT_EQ(boxes.as<float>()[k * 4 + j], c["boxes"][k][j].get<float>());
    }
}

TEST(Session, ValidatesTheFeedInOnePlace) {
    deploykit::Session s(fixtures::path("toy_dynamic").string());
    std::vector<uint8_t> px(2 * 20 * 20 * 3, 7);
    std::vector<float> fpx(px.size());
    struct Case {
        std::vector<deploykit::Tensor> feed;
        std::string message;
    };
    std::vector<Case> cases = {
        {{{"images", deploykit::DType::UInt8, {1, 20, 20, 3}, px.data()}},
         "input 'images': expected one of the model inputs ['image'], got an unknown name"},
        {{}, "input 'image': expected in the feed (model inputs ['image']), got missing"},
        {{{"image", deploykit::DType::Float32, {1, 20, 20, 3}, fpx.data()}},
         "input 'image': expected uint8 [batch, height, width, 3], got float32 [1, 20, 20, 3] (wrong dtype)"},
        {{image_tensor(px, {20, 20, 3})},
         "input 'image': expected uint8 [batch, height, width, 3], got uint8 [20, 20, 3] (rank 3, expected 4)"},
        {{image_tensor(px, {1, 20, 20, 4})}, "input 'image': expected uint8 [batch, height, width, 3], got uint8 [1, 20, 20, 4] (dim 3)"},
        {{image_tensor(px, {5, 2, 2, 3})}, "input 'image' batch: expected 1..4 (manifest batch range), got 5"},
        {{image_tensor(px, {1, 20, 20, 3}), image_tensor(px, {1, 20, 20, 3})}, "input 'image': expected once in the feed, got twice"},
        {{{"image", deploykit::DType::UInt8, {1, 20, 20, 3}, nullptr}}, "input 'image' data: expected a pointer to 1200 bytes, got null"},
    };
    for (const auto& c : cases) {
        auto [status, message] = error_of([&] { s.run(c.feed); });
        EXPECT_EQ(status, DK_ERR_BAD_INPUT) << message;
        EXPECT_EQ(message, c.message);
    }
    EXPECT_EQ(s.run({image_tensor(px, {2, 20, 20, 3})})["boxes"].shape, (std::vector<int64_t>{2, 4, 4}));
}

TEST(Session, SymbolicDimsMustAgreeAcrossInputs) {
    // toy_fixed has one input; use the generator's two maps: label_map and instance_map share [1, 128, 128]
    deploykit::Session s(fixtures::path("spade_demo").string());
    std::vector<uint8_t> labels(128 * 128);
    std::vector<int32_t> ids(128 * 127);
    auto [status, message] = error_of([&] {
        s.run({{"label_map", deploykit::DType::UInt8, {1, 128, 128}, labels.data()},
               {"instance_map", deploykit::DType::Int32, {1, 128, 127}, ids.data()}});
    });
    EXPECT_EQ(status, DK_ERR_BAD_INPUT);
    EXPECT_EQ(message, "input 'instance_map': expected int32 [1, 128, 128], got int32 [1, 128, 127] (dim 2)");
}

TEST(Session, MissingFileWrongSuffixAndDirectory) {
    fixtures::TempDir tmp;
    EXPECT_EQ(error_of([&] { deploykit::Session((tmp.path() / "none.onnx").string()); }).second,
              "model " + (tmp.path() / "none.onnx").string() + ": expected an existing .onnx, .plan or .engine file, got no such file");
    fixtures::write_file(tmp.path() / "model.pt", "x");
    EXPECT_CONTAINS(error_of([&] { deploykit::Session((tmp.path() / "model.pt").string()); }).second,
                    "expected a file ending in .onnx, .plan or .engine, got '.pt'");
    fs::create_directories(tmp.path() / "d.onnx");
    EXPECT_CONTAINS(error_of([&] { deploykit::Session((tmp.path() / "d.onnx").string()); }).second, "got a directory");
}

TEST(BadArtifacts, CorruptAndTruncatedOnnx) {
    fixtures::TempDir tmp;
    std::string bytes = fixtures::read_file(fixtures::path("toy_dynamic"));
    // no manifest beside them: ONNX Runtime's parser is what refuses them
    fixtures::write_file(tmp.path() / "garbage.onnx", std::string(4096, '\x7f'));
    fixtures::write_file(tmp.path() / "truncated.onnx", bytes.substr(0, bytes.size() / 2));
    fixtures::write_file(tmp.path() / "empty.onnx", "");
    for (const char* name : {"garbage.onnx", "truncated.onnx", "empty.onnx"}) {
        auto [status, message] = error_of([&] { deploykit::Session((tmp.path() / name).string()); });
        EXPECT_EQ(status, DK_ERR_BAD_INPUT) << name;
        EXPECT_CONTAINS(message, "expected a valid ONNX file ONNX Runtime can load, got ");
        EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    }
}

TEST(BadArtifacts, ManifestWhoseSha256DoesNotMatch) {
    fixtures::TempDir tmp;
    fs::path copy = tmp.copy_artifact(fixtures::path("toy_dynamic"));
    std::string bytes = fixtures::read_file(copy);
    fixtures::write_file(copy, bytes.substr(0, bytes.size() - 10));  // truncated after export
    auto [status, message] = error_of([&] { deploykit::Detector(copy.string()); });
    EXPECT_EQ(status, DK_ERR_BAD_INPUT);
    EXPECT_CONTAINS(message, "toy_dynamic.json: expected sha256 of toy_dynamic.onnx = ");
    EXPECT_CONTAINS(message, "(artifact changed after export, or manifest belongs to another file)");
}

TEST(BadArtifacts, CorruptOrTruncatedPlan) {
    fixtures::TempDir tmp;
    // a plan whose manifest (X.plan.json) records other bytes: refused before any backend runs
    std::string bytes(2048, '\x11');
    fixtures::write_file(tmp.path() / "demo.plan", bytes.substr(0, 1000));
    json m = read_json(fs::path(fixtures::path("toy_dynamic")).replace_extension(".json"));
    m["artifact"] = {{"file", "demo.plan"}, {"format", "tensorrt-plan"}, {"sha256", std::string(64, 'a')}};
    m["tensorrt"] = {{"version", "11.4.0"}, {"gpu", "Orin"}, {"compute_capability", "8.7"}};
    write_json(tmp.path() / "demo.plan.json", m);
    auto [s1, m1] = error_of([&] { deploykit::Session((tmp.path() / "demo.plan").string()); });
    EXPECT_EQ(s1, DK_ERR_BAD_INPUT);
    EXPECT_CONTAINS(m1, "demo.plan.json: expected sha256 of demo.plan = aaaaaaaaaaaa...");
    // without a manifest the backend is reached: this build has no TensorRT -> unsupported, one line
    fs::remove(tmp.path() / "demo.plan.json");
    auto [s2, m2] = error_of([&] { deploykit::Session((tmp.path() / "demo.plan").string()); });
    if (dk_has_tensorrt()) {
        EXPECT_NE(s2, DK_OK);  // TensorRT refuses to deserialize it, or there is no GPU
    } else {
        EXPECT_EQ(s2, DK_ERR_UNSUPPORTED);
        EXPECT_CONTAINS(m2, "TensorRT engine " + (tmp.path() / "demo.plan").string() +
                                ": expected a deploykit build with the native TensorRT backend");
    }
    // cuda_graph is for plans only
    auto [s3, m3] = error_of([&] { deploykit::Options o;
        o.cuda_graph = true;
        deploykit::Session(fixtures::path("toy_fixed").string(), o); });
    EXPECT_EQ(s3, DK_ERR_BAD_INPUT);
    EXPECT_CONTAINS(m3, "expected a TensorRT engine (.plan or .engine), got '.onnx', run by ONNX Runtime");
}

TEST(BadArtifacts, UnknownManifestFieldsAreRefused) {
    struct Case {
        const char* pointer;
        const char* field;
    };
    for (Case c : {Case{"", "field 'compression'"}, Case{"/preprocessing", "preprocessing field 'compression'"},
                   Case{"/postprocessing", "postprocessing field 'compression'"},
                   Case{"/preprocessing/image_size_range", "image_size_range field 'compression'"}}) {
        fixtures::TempDir tmp;
        fs::path copy = tmp.copy_artifact(fixtures::path("toy_dynamic"));
        fs::path manifest = fs::path(copy).replace_extension(".json");
        json m = read_json(manifest);
        m[json::json_pointer(c.pointer)]["compression"] = "zstd";
        write_json(manifest, m);
        auto [status, message] = error_of([&] { deploykit::Detector(copy.string()); });
        EXPECT_EQ(status, DK_ERR_UNSUPPORTED) << message;
        EXPECT_CONTAINS(message, c.field);
        EXPECT_CONTAINS(message, "got an unknown field");
    }
}

TEST(BadArtifacts, ManifestThatDescribesAnotherGraph) {
    fixtures::TempDir tmp;
    fs::path copy = tmp.copy_artifact(fixtures::path("toy_dynamic"));
    fs::path manifest = fs::path(copy).replace_extension(".json");
    json m = read_json(manifest);
    m["outputs"][1]["dtype"] = "float16";
    write_json(manifest, m);
    auto [status, message] = error_of([&] { deploykit::Session(copy.string()); });
    EXPECT_EQ(status, DK_ERR_BAD_INPUT);
    EXPECT_CONTAINS(message, "outputs 'boxes': expected the graph's float32 [batch, 4, 4], got float16 [batch, 4, 4]");
}

TEST(CApi, StatusesAndLastErrorFromC) {
    dk_session* s = nullptr;
    EXPECT_EQ(dk_session_create(nullptr, nullptr, &s), DK_ERR_INVALID_ARGUMENT);
    EXPECT_STREQ(dk_last_error(), "path: expected a non-NULL pointer, got NULL");
    EXPECT_EQ(s, nullptr);
    EXPECT_EQ(dk_session_create("/no/such.onnx", nullptr, &s), DK_ERR_BAD_INPUT);
    EXPECT_CONTAINS(dk_last_error(), "/no/such.onnx: expected an existing");
    ASSERT_EQ(dk_session_create(fixtures::path("toy_fixed").string().c_str(), nullptr, &s), DK_OK);
    EXPECT_STREQ(dk_last_error(), "");
    dk_tensor spec{};
    EXPECT_EQ(dk_session_input(s, 3, &spec), DK_ERR_BAD_INPUT);
    ASSERT_EQ(dk_session_input(s, 0, &spec), DK_OK);
    EXPECT_STREQ(spec.name, "image");
    EXPECT_EQ(spec.rank, 4);
    EXPECT_EQ(spec.shape[1], 48);
    std::vector<uint8_t> px(48 * 64 * 3, 100);
    const int64_t shape[] = {1, 48, 64, 3};
    dk_tensor in{"image", DK_UINT8, 4, shape, px.data(), nullptr};
    dk_outputs* out = nullptr;
    EXPECT_EQ(dk_session_run(s, &in, 1, nullptr), DK_ERR_INVALID_ARGUMENT);
    const int bad_dtype = 99;  // as a C caller could store it
    std::memcpy(&in.dtype, &bad_dtype, sizeof bad_dtype);
    EXPECT_EQ(dk_session_run(s, &in, 1, &out), DK_ERR_BAD_INPUT);
    EXPECT_STREQ(dk_last_error(), "input 'image' dtype: expected a dk_dtype, got 99");
    in.dtype = DK_UINT8;
    ASSERT_EQ(dk_session_run(s, &in, 1, &out), DK_OK);
    EXPECT_EQ(dk_outputs_count(out), 4u);
    dk_tensor num{};
    ASSERT_EQ(dk_outputs_find(out, "num_detections", &num), DK_OK);
    EXPECT_EQ(static_cast<const int32_t*>(num.data)[0], 2);  // 1 + floor(100 / 86)
    EXPECT_EQ(dk_outputs_find(out, "nope", &num), DK_ERR_BAD_INPUT);
    EXPECT_CONTAINS(dk_last_error(), "output 'nope': expected one of the model outputs [num_detections, boxes, scores, labels]");
    dk_outputs_release(out);
    dk_session_destroy(s);
    // release/destroy take NULL
    dk_outputs_release(nullptr);
    dk_session_destroy(nullptr);
    dk_detections_release(nullptr);
    dk_detector_destroy(nullptr);
    dk_generator_destroy(nullptr);
    dk_rgb_image_release(nullptr);
    dk_options_destroy(nullptr);
    EXPECT_STREQ(dk_dtype_name(DK_FLOAT16), "float16");
    dk_dtype zero;
    const int zero_value = 0;
    std::memcpy(&zero, &zero_value, sizeof zero);
    EXPECT_STREQ(dk_dtype_name(zero), "unknown");
    EXPECT_EQ(dk_api_version(), DK_API_VERSION);
}

TEST(CApi, OptionsAreChecked) {
    dk_options* o = nullptr;
    ASSERT_EQ(dk_options_create(&o), DK_OK);
    EXPECT_EQ(dk_options_set_threads(o, -1), DK_ERR_BAD_INPUT);
    EXPECT_EQ(dk_options_set_device_id(o, -2), DK_ERR_BAD_INPUT);
    EXPECT_EQ(dk_options_set_providers(o, "cpu,,cuda"), DK_ERR_BAD_INPUT);
    ASSERT_EQ(dk_options_set_providers(o, "cuda, cpu"), DK_OK);
    dk_session* s = nullptr;
    // this ONNX Runtime (the CPU wheel) has no CUDA provider: a one-line refusal naming what there is
    EXPECT_EQ(dk_session_create(fixtures::path("toy_fixed").string().c_str(), o, &s), DK_ERR_BAD_INPUT);
    EXPECT_CONTAINS(dk_last_error(), "providers: expected a subset of this ONNX Runtime's [");
    EXPECT_CONTAINS(dk_last_error(), "([CUDAExecutionProvider] not available)");
    ASSERT_EQ(dk_options_set_providers(o, "cpu"), DK_OK);
    ASSERT_EQ(dk_options_set_threads(o, 1), DK_OK);
    ASSERT_EQ(dk_session_create(fixtures::path("toy_fixed").string().c_str(), o, &s), DK_OK);
    EXPECT_CONTAINS(dk_session_backend(s), "(CPUExecutionProvider)");
    dk_session_destroy(s);
    dk_options_destroy(o);
}

TEST(CApi, LastErrorIsPerThread) {
    dk_session* s = nullptr;
    ASSERT_EQ(dk_session_create("/no/such.onnx", nullptr, &s), DK_ERR_BAD_INPUT);
    std::string other;
    std::thread([&] { other = dk_last_error(); }).join();
    EXPECT_EQ(other, "");
    EXPECT_CONTAINS(dk_last_error(), "/no/such.onnx");
}
