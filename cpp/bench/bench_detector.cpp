// bench_detector MODEL IMAGE.u8 HEIGHT WIDTH [ROUNDS] [bgr]: deploykit::Detector::predict against a bare
// ONNX Runtime C++ Run on the same feed (the same uint8 [1, H, W, 3] tensor, 2 intra-op threads,
// all graph optimisations: what the Detector's session uses), interleaved in one process,
// medians. A second bare session (the control) measures the noise floor: on a shared machine two
// identical sessions differ by a few percent, so read the Detector's overhead against that. With "bgr" the Detector gets the image in BGR order (converted while packing: one copy)
// and the bare Run the RGB tensor; without it the Detector feeds the caller's RGB buffer as is.
// Prints one JSON line. Speed is reported, never asserted.
#include <onnxruntime/onnxruntime_cxx_api.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "deploykit/deploykit.hpp"

namespace {

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

template <typename F>
double time_ms(F&& f) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 5) {
        std::cerr << "usage: bench_detector MODEL IMAGE.u8 HEIGHT WIDTH [ROUNDS] [bgr]\n";
        return 2;
    }
    const std::string model = argv[1];
    const int height = std::stoi(argv[3]), width = std::stoi(argv[4]);
    const int rounds = argc > 5 ? std::stoi(argv[5]) : 15;
    const bool bgr = argc > 6 && std::string(argv[6]) == "bgr";
    std::ifstream in(argv[2], std::ios::binary);
    std::vector<uint8_t> pixels((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (pixels.size() != size_t(height) * width * 3) {
        std::cerr << "bench_detector: image: expected " << height << "x" << width << "x3 bytes, got " << pixels.size() << "\n";
        return 2;
    }
    try {
        deploykit::Detector detector(model, deploykit::Options::with_threads(2));
        std::vector<uint8_t> swapped(pixels);
        for (size_t i = 0; i < swapped.size(); i += 3) std::swap(swapped[i], swapped[i + 2]);
        deploykit::ImageView view(bgr ? swapped.data() : pixels.data(), width, height, 0,
                                  bgr ? deploykit::PixelFormat::BGR : deploykit::PixelFormat::RGB);

        Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "bench");
        Ort::SessionOptions so;
        so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
        so.SetIntraOpNumThreads(2);
        so.SetInterOpNumThreads(1);
        Ort::Session bare(env, model.c_str(), so), control(env, model.c_str(), so);
        Ort::AllocatorWithDefaultOptions alloc;
        std::string in_name = bare.GetInputNameAllocated(0, alloc).get();
        std::vector<std::string> out_names;
        for (size_t i = 0; i < bare.GetOutputCount(); ++i) out_names.push_back(bare.GetOutputNameAllocated(i, alloc).get());
        std::vector<const char*> outs;
        for (const auto& n : out_names) outs.push_back(n.c_str());
        const char* ins[] = {in_name.c_str()};
        auto memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
        const int64_t shape[] = {1, height, width, 3};
        auto run_on = [&](Ort::Session& session) {
            Ort::Value tensor = Ort::Value::CreateTensor<uint8_t>(memory, pixels.data(), pixels.size(), shape, 4);
            auto result = session.Run(Ort::RunOptions{nullptr}, ins, &tensor, 1, outs.data(), outs.size());
            return result[0].GetTensorData<int32_t>()[0];
        };
        auto run_bare = [&] { return run_on(bare); };
        size_t found = 0;
        int32_t bare_found = 0;
        for (int w = 0; w < 2; ++w) {  // warm-up
            found = detector.predict(view).size();
            bare_found = run_bare();
        }
        std::vector<double> t_detector, t_bare, t_control;
        for (int r = 0; r < rounds; ++r) {  // interleaved; the order rotates every round
            for (int k = 0; k < 3; ++k) {
                switch ((r + k) % 3) {
                    case 0: t_detector.push_back(time_ms([&] { found = detector.predict(view).size(); })); break;
                    case 1: t_bare.push_back(time_ms([&] { bare_found = run_bare(); })); break;
                    default: t_control.push_back(time_ms([&] { run_on(control); })); break;
                }
            }
        }
        const double md = median(t_detector), mb = median(t_bare), mc = median(t_control);
        std::cout << "{\"image\": [" << height << ", " << width << "], \"bgr\": " << (bgr ? "true" : "false")
                  << ", \"rounds\": " << rounds
                  << ", \"detector_ms\": " << md << ", \"bare_ort_run_ms\": " << mb
                  << ", \"overhead_pct\": " << 100.0 * (md / mb - 1.0) << ", \"control_bare_ms\": " << mc
                  << ", \"control_vs_bare_pct\": " << 100.0 * (mc / mb - 1.0) << ", \"detections\": " << found
                  << ", \"bare_num_detections\": " << bare_found << "}\n";
    } catch (const std::exception& e) {
        std::cerr << "bench_detector: " << e.what() << "\n";
        return 2;
    }
    return 0;
}
