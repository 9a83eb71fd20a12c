// ONNX Runtime backend through its C++ API (header-only wrappers over the versioned C API: built
// with older headers, the program asks the library for the headers' ORT_API_VERSION).
#include <onnxruntime/onnxruntime_cxx_api.h>

#include <mutex>

#include "error.hpp"
#include "session.hpp"

namespace deploykit::core {
namespace {

struct OrtTypeName {
    ONNXTensorElementDataType ort;
    DType dtype;
};

constexpr OrtTypeName kOrtTypes[] = {
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, DType::float32},   {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, DType::float16},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE, DType::float64},  {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8, DType::int8},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16, DType::int16},     {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, DType::int32},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, DType::int64},     {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, DType::uint8},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16, DType::uint16},   {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32, DType::uint32},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64, DType::uint64},   {ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL, DType::boolean},
};

DType from_ort(ONNXTensorElementDataType t, const std::string& what) {
    for (const auto& e : kOrtTypes)
        if (e.ort == t) return e.dtype;
    unsupported(what + " type", "a numeric tensor type (float32, uint8, int32, ...)", "ONNX element type " + std::to_string(int(t)));
}

ONNXTensorElementDataType to_ort(DType d) {
    for (const auto& e : kOrtTypes)
        if (e.dtype == d) return e.ort;
    return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}

// One process-wide environment (ONNX Runtime wants one), created on first use.
std::shared_ptr<Ort::Env> shared_env() {
    static std::mutex mutex;
    static std::weak_ptr<Ort::Env> weak;
    std::lock_guard<std::mutex> lock(mutex);
    auto env = weak.lock();
    if (!env) {
        env = std::make_shared<Ort::Env>(ORT_LOGGING_LEVEL_ERROR, "deploykit");
        weak = env;
    }
    return env;
}

const char* kProviders[][2] = {
    {"tensorrt", "TensorrtExecutionProvider"}, {"cuda", "CUDAExecutionProvider"}, {"cpu", "CPUExecutionProvider"}};

std::string provider_full_name(const std::string& name) {
    for (const auto& p : kProviders)
        if (name == p[0] || name == p[1]) return p[1];
    return name;
}

std::string join(const std::vector<std::string>& items) {
    std::string text = "[";
    for (size_t i = 0; i < items.size(); ++i) text += (i ? ", " : "") + items[i];
    return text + "]";
}

void append_provider(Ort::SessionOptions& so, const std::string& provider, const SessionOptions& options) {
    const OrtApi& api = Ort::GetApi();
    const std::string device = std::to_string(options.device_id);
    if (provider == "TensorrtExecutionProvider") {
        OrtTensorRTProviderOptionsV2* trt = nullptr;
        Ort::ThrowOnError(api.CreateTensorRTProviderOptions(&trt));
        std::unique_ptr<OrtTensorRTProviderOptionsV2, decltype(api.ReleaseTensorRTProviderOptions)> guard(
            trt, api.ReleaseTensorRTProviderOptions);
        // FP16/INT8 off: precision is in the graph (casts, Q/DQ), as TensorRT 11's strong typing wants.
        std::vector<std::string> keys = {"device_id", "trt_fp16_enable", "trt_int8_enable"};
        std::vector<std::string> values = {device, "0", "0"};
        if (!options.trt_engine_cache.empty()) {
            keys.insert(keys.end(), {"trt_engine_cache_enable", "trt_engine_cache_path"});
            values.insert(values.end(), {"1", options.trt_engine_cache});
        }
        std::vector<const char*> k, v;
        for (size_t i = 0; i < keys.size(); ++i) k.push_back(keys[i].c_str()), v.push_back(values[i].c_str());
        Ort::ThrowOnError(api.UpdateTensorRTProviderOptions(trt, k.data(), v.data(), k.size()));
        Ort::ThrowOnError(api.SessionOptionsAppendExecutionProvider_TensorRT_V2(so, trt));
    } else if (provider == "CUDAExecutionProvider") {
        OrtCUDAProviderOptionsV2* cuda = nullptr;
        Ort::ThrowOnError(api.CreateCUDAProviderOptions(&cuda));
        std::unique_ptr<OrtCUDAProviderOptionsV2, decltype(api.ReleaseCUDAProviderOptions)> guard(
            cuda, api.ReleaseCUDAProviderOptions);
        const char* k[] = {"device_id"};
        const char* v[] = {device.c_str()};
        Ort::ThrowOnError(api.UpdateCUDAProviderOptions(cuda, k, v, 1));
        Ort::ThrowOnError(api.SessionOptionsAppendExecutionProvider_CUDA_V2(so, cuda));
    }
    // CPU: always there, last in ONNX Runtime's list.
}

class OrtBackend : public Backend {
public:
    OrtBackend(const std::string& bytes, const std::filesystem::path& path, const SessionOptions& options)
        : env_(shared_env()), memory_(Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault)) {
        Ort::SessionOptions so;
        so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
        if (options.threads > 0) {
            so.SetIntraOpNumThreads(options.threads);
            so.SetInterOpNumThreads(1);
        }
        std::vector<std::string> available = Ort::GetAvailableProviders();
        std::vector<std::string> chosen;
        if (options.providers.empty()) {
            for (const auto& p : kProviders)
                for (const auto& a : available)
                    if (a == p[1]) chosen.push_back(a);
        } else {
            std::vector<std::string> unknown;
            for (const auto& p : options.providers) {
                std::string full = provider_full_name(p);
                bool ok = false;
                for (const auto& a : available) ok = ok || a == full;
                (ok ? chosen : unknown).push_back(full);
            }
            if (!unknown.empty())
                bad_input("providers", "a subset of this ONNX Runtime's " + join(available),
                          join(options.providers) + " (" + join(unknown) + " not available)");
        }
        try {
            for (const auto& p : chosen) append_provider(so, p, options);
            session_ = std::make_unique<Ort::Session>(*env_, bytes.data(), bytes.size(), so);
        } catch (const Ort::Exception& e) {
            bad_input("ONNX model " + path.string(), "a valid ONNX file ONNX Runtime can load", one_line(e.what()));
        }
        providers_ = chosen;
        Ort::AllocatorWithDefaultOptions allocator;
        for (size_t i = 0; i < session_->GetInputCount(); ++i)
            inputs_.push_back(spec(session_->GetInputNameAllocated(i, allocator).get(), session_->GetInputTypeInfo(i), "input"));
        for (size_t i = 0; i < session_->GetOutputCount(); ++i)
            outputs_.push_back(spec(session_->GetOutputNameAllocated(i, allocator).get(), session_->GetOutputTypeInfo(i), "output"));
        for (const auto& s : inputs_) input_names_.push_back(s.name.c_str());
        for (const auto& s : outputs_) output_names_.push_back(s.name.c_str());
    }

    std::string name() const override {
        std::string text = "onnxruntime " + Ort::GetVersionString() + " (";
        for (size_t i = 0; i < providers_.size(); ++i) text += (i ? ", " : "") + providers_[i];
        return text + ")";
    }

    Outputs run(const std::vector<const TensorView*>& inputs) const override {
        std::vector<Ort::Value> values;
        values.reserve(inputs.size());
        for (const TensorView* t : inputs) {
            size_t bytes = element_count(t->shape, "input '" + t->name + "'") * dtype_size(t->dtype);
            // ONNX Runtime does not write to inputs; its API takes a non-const pointer.
            values.push_back(Ort::Value::CreateTensor(memory_, const_cast<void*>(t->data), bytes, t->shape.data(),
                                                      t->shape.size(), to_ort(t->dtype)));
        }
        auto results = std::make_shared<std::vector<Ort::Value>>();
        try {
            *results = session_->Run(Ort::RunOptions{nullptr}, input_names_.data(), values.data(), values.size(),
                                     output_names_.data(), output_names_.size());
        } catch (const Ort::Exception& e) {
            runtime_error("ONNX Runtime Run failed: " + std::string(e.what()));
        }
        Outputs out;
        for (size_t i = 0; i < results->size(); ++i) {
            Ort::Value& v = (*results)[i];
            auto info = v.GetTensorTypeAndShapeInfo();
            OutputTensor t;
            t.name = outputs_[i].name;
            t.dtype = from_ort(info.GetElementType(), "output '" + t.name + "'");
            t.shape = info.GetShape();
            t.data = v.GetTensorRawData();
            out.tensors.push_back(std::move(t));
        }
        out.storage = results;
        return out;
    }

private:
    static TensorSpec spec(const std::string& name, const Ort::TypeInfo& type, const char* what) {
        if (type.GetONNXType() != ONNX_TYPE_TENSOR)
            unsupported(std::string(what) + " '" + name + "'", "a tensor", "a non-tensor ONNX value");
        auto info = type.GetTensorTypeAndShapeInfo();
        TensorSpec s;
        s.name = name;
        s.dtype = from_ort(info.GetElementType(), std::string(what) + " '" + name + "'");
        std::vector<int64_t> dims = info.GetShape();
        std::vector<const char*> symbols(dims.size(), nullptr);
        info.GetSymbolicDimensions(symbols.data(), symbols.size());
        for (size_t a = 0; a < dims.size(); ++a)
            s.shape.push_back(dims[a] >= 0 ? Dim::fixed(dims[a]) : Dim::dynamic(symbols[a] ? symbols[a] : ""));
        return s;
    }

    std::shared_ptr<Ort::Env> env_;
    Ort::MemoryInfo memory_;
    std::unique_ptr<Ort::Session> session_;
    std::vector<std::string> providers_;
    std::vector<const char*> input_names_, output_names_;
};

}  // namespace

std::unique_ptr<Backend> make_onnxruntime_backend(const std::string& bytes, const std::filesystem::path& path,
                                                  const SessionOptions& options) {
    return std::make_unique<OrtBackend>(bytes, path, options);
}

}  // namespace deploykit::core
