// Native TensorRT 11 backend: IRuntime -> ICudaEngine -> a pool of workers, each one
// IExecutionContext + CUDA stream + device and pinned host buffers (allocated once per shape and
// reused), enqueueV3 on the stream, optionally replayed as a captured CUDA graph. Outputs with a
// data-dependent dimension (-1 once the input shapes are set: Mask R-CNN's pasted masks, one per
// detection) get an IOutputAllocator: TensorRT asks it for the bytes it needs during enqueueV3 and
// reports the shape; such engines are not captured into CUDA graphs (their enqueue allocates).
//
// Written against the TensorRT 11 C++ API. Built into the library when TensorRT and CUDA are found
// (DEPLOYKIT_TENSORRT). Where they are not (the project's CI: no TensorRT, no GPU), CMake compiles
// this file, not linked, against TensorRT's real public headers (DEPLOYKIT_TENSORRT_HEADERS) and
// CUDA's with -Werror, so an API mistake fails the build; it has never run here. The logic that
// needs no GPU lives in trt_plan.cpp and is tested.
#include <NvInfer.h>
#include <NvInferPlugin.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>

#include "error.hpp"
#include "session.hpp"
#include "trt_plan.hpp"

namespace deploykit::core {
namespace {

void cuda_check(cudaError_t status, const char* what) {
    if (status != cudaSuccess) runtime_error(std::string("CUDA ") + what + " failed: " + cudaGetErrorString(status));
}

class Logger : public nvinfer1::ILogger {
public:
    void log(Severity severity, const char* message) noexcept override {
        if (severity <= Severity::kERROR) {
            std::lock_guard<std::mutex> lock(mutex_);
            last_ = message ? message : "";
        }
    }
    std::string last() {
        std::lock_guard<std::mutex> lock(mutex_);
        return last_;
    }

private:
    std::mutex mutex_;
    std::string last_;
};

const char* trt_type_name(nvinfer1::DataType t) {
    switch (t) {
        case nvinfer1::DataType::kFLOAT: return "FLOAT";
        case nvinfer1::DataType::kHALF: return "HALF";
        case nvinfer1::DataType::kINT8: return "INT8";
        case nvinfer1::DataType::kINT32: return "INT32";
        case nvinfer1::DataType::kINT64: return "INT64";
        case nvinfer1::DataType::kBOOL: return "BOOL";
        case nvinfer1::DataType::kUINT8: return "UINT8";
        default: return "another TensorRT type (BF16, FP8, INT4, FP4, ...)";
    }
}

std::vector<int64_t> to_vector(const nvinfer1::Dims& d) { return std::vector<int64_t>(d.d, d.d + d.nbDims); }

nvinfer1::Dims to_dims(const std::vector<int64_t>& shape) {
    nvinfer1::Dims d{};
    d.nbDims = static_cast<int32_t>(shape.size());
    for (size_t i = 0; i < shape.size(); ++i) d.d[i] = shape[i];
    return d;
}

struct Buffer {  // one device buffer and one pinned host buffer of the same size
    void* device = nullptr;
    void* host = nullptr;
    size_t bytes = 0;
    void reserve(size_t need) {
        if (need <= bytes && device) return;
        release();
        bytes = need ? need : 1;
        cuda_check(cudaMalloc(&device, bytes), "cudaMalloc");
        cuda_check(cudaMallocHost(&host, bytes), "cudaMallocHost");
    }
    void release() {
        if (device) cudaFree(device);
        if (host) cudaFreeHost(host);
        device = host = nullptr;
        bytes = 0;
    }
};

// Device and pinned host memory for the outputs TensorRT sizes while it runs, and the shapes it reports.
// Buffers are kept per output and grown; a failed allocation returns nullptr (TensorRT then fails the
// enqueue) and is kept for the error message. Nothing here throws into TensorRT.
class OutputAllocator : public nvinfer1::IOutputAllocator {
public:
    ~OutputAllocator() override {
        for (auto& entry : buffers_) entry.second.release();
    }
    void* reallocateOutputAsync(char const* tensorName, void* /*currentMemory*/, uint64_t size, uint64_t /*alignment*/,
                                cudaStream_t /*stream*/) override {  // cudaMalloc: 256-byte aligned
        try {
            Buffer& b = buffers_[tensorName];
            if (size > b.bytes || !b.device) b.reserve(std::max<size_t>(static_cast<size_t>(size), 2 * b.bytes));
            return b.device;
        } catch (const std::exception& e) {
            error_ = "allocating " + std::to_string(size) + " bytes for output '" + std::string(tensorName) +
                     "': " + e.what();
            return nullptr;
        }
    }
    void notifyShape(char const* tensorName, nvinfer1::Dims const& dims) noexcept override {
        try {
            shapes_[tensorName] = std::vector<int64_t>(dims.d, dims.d + dims.nbDims);
        } catch (...) {
            error_ = "out of memory recording an output shape";
        }
    }
    // The last shape TensorRT reported for `name` (kept, not cleared: right whether TensorRT reports it on every
    // enqueue or only when it changes) and its buffer; throws if none was ever reported.
    std::pair<std::vector<int64_t>, Buffer*> reported(const std::string& name) {
        auto shape = shapes_.find(name);
        auto buffer = buffers_.find(name);
        if (shape == shapes_.end() || buffer == buffers_.end())
            runtime_error("TensorRT did not report the shape of output '" + name + "'");
        return {shape->second, &buffer->second};
    }
    std::string take_error() { return std::exchange(error_, std::string()); }

private:
    std::map<std::string, Buffer> buffers_;
    std::map<std::string, std::vector<int64_t>> shapes_;
    std::string error_;
};

// One execution context with its stream and buffers: used by one thread at a time.
class Worker {
public:
    Worker(nvinfer1::ICudaEngine& engine, const std::vector<TensorSpec>& ins, const std::vector<TensorSpec>& outs,
           bool cuda_graph)
        : inputs_(ins), outputs_(outs), cuda_graph_(cuda_graph) {
        context_.reset(engine.createExecutionContext());
        if (!context_) runtime_error("TensorRT could not create an execution context (out of GPU memory?)");
        cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
        buffers_.resize(ins.size() + outs.size());
    }
    ~Worker() {
        if (stream_) cudaStreamSynchronize(stream_);
        drop_graph();
        for (auto& b : buffers_) b.release();
        if (stream_) cudaStreamDestroy(stream_);
    }

    Outputs run(const std::vector<const TensorView*>& feed) {
        std::vector<std::vector<int64_t>> shapes;
        for (const auto* t : feed) shapes.push_back(t->shape);
        if (shapes != bound_) bind(shapes);
        for (size_t i = 0; i < feed.size(); ++i) {
            size_t bytes = trt::buffer_nbytes(feed[i]->shape, feed[i]->dtype);
            std::memcpy(buffers_[i].host, feed[i]->data, bytes);
            cuda_check(cudaMemcpyAsync(buffers_[i].device, buffers_[i].host, bytes, cudaMemcpyHostToDevice, stream_),
                       "cudaMemcpyAsync");
        }
        execute();
        std::vector<std::vector<int64_t>> run_shapes = out_shapes_;
        std::vector<Buffer*> run_buffers;
        for (size_t o = 0; o < outputs_.size(); ++o) {
            Buffer* b = &buffers_[inputs_.size() + o];
            if (data_dependent_[o]) std::tie(run_shapes[o], b) = allocator_.reported(outputs_[o].name);
            run_buffers.push_back(b);
            cuda_check(cudaMemcpyAsync(b->host, b->device, trt::buffer_nbytes(run_shapes[o], outputs_[o].dtype),
                                       cudaMemcpyDeviceToHost, stream_),
                       "cudaMemcpyAsync");
        }
        cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
        // Pinned buffers are reused by the next run: the caller gets its own copy.
        auto storage = std::make_shared<std::vector<std::vector<unsigned char>>>();
        Outputs out;
        for (size_t o = 0; o < outputs_.size(); ++o) {
            size_t bytes = trt::buffer_nbytes(run_shapes[o], outputs_[o].dtype);
            const auto* host = static_cast<const unsigned char*>(run_buffers[o]->host);
            storage->emplace_back(host, host + bytes);
        }
        for (size_t o = 0; o < outputs_.size(); ++o)
            out.tensors.push_back({outputs_[o].name, outputs_[o].dtype, run_shapes[o], (*storage)[o].data()});
        out.storage = storage;
        return out;
    }

private:
    void bind(const std::vector<std::vector<int64_t>>& shapes) {
        drop_graph();  // captured for other shapes or addresses
        for (size_t i = 0; i < inputs_.size(); ++i) {
            if (!context_->setInputShape(inputs_[i].name.c_str(), to_dims(shapes[i])))
                bad_input("input '" + inputs_[i].name + "'", "a shape within the engine's optimisation profile",
                          shape_text(shapes[i]));
            buffers_[i].reserve(trt::buffer_nbytes(shapes[i], inputs_[i].dtype));
            context_->setTensorAddress(inputs_[i].name.c_str(), buffers_[i].device);
        }
        out_shapes_.clear();
        data_dependent_.assign(outputs_.size(), false);
        for (size_t o = 0; o < outputs_.size(); ++o) {
            std::vector<int64_t> shape = to_vector(context_->getTensorShape(outputs_[o].name.c_str()));
            out_shapes_.push_back(shape);
            if (std::any_of(shape.begin(), shape.end(), [](int64_t d) { return d < 0; })) {
                // known only while TensorRT runs: the allocator gives the memory and learns the shape
                if (!context_->setOutputAllocator(outputs_[o].name.c_str(), &allocator_))
                    runtime_error("TensorRT setOutputAllocator failed for output '" + outputs_[o].name + "'");
                data_dependent_[o] = true;
                cuda_graph_ = false;  // an enqueue that allocates is not captured
                continue;
            }
            Buffer& b = buffers_[inputs_.size() + o];
            b.reserve(trt::buffer_nbytes(shape, outputs_[o].dtype));
            context_->setTensorAddress(outputs_[o].name.c_str(), b.device);
        }
        bound_ = shapes;
    }

    void execute() {
        if (graph_exec_) {
            cuda_check(cudaGraphLaunch(graph_exec_, stream_), "cudaGraphLaunch");
            return;
        }
        if (!context_->enqueueV3(stream_)) {
            const std::string why = allocator_.take_error();
            runtime_error("TensorRT enqueueV3 failed" + (why.empty() ? std::string(" (see the TensorRT log)") : ": " + why));
        }
        // Enqueued once for these shapes (TensorRT did its deferred setup): now capture one enqueue.
        if (cuda_graph_) capture();
    }

    void capture() {
        cudaGraph_t graph = nullptr;
        cuda_check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
        bool ok = context_->enqueueV3(stream_);
        cudaError_t end = cudaStreamEndCapture(stream_, &graph);  // always: leaves capture mode
        if (ok && end == cudaSuccess && graph && cudaGraphInstantiate(&graph_exec_, graph, 0) == cudaSuccess) {
            graph_ = graph;
            return;  // captured, not run: this run's enqueue above already computed the outputs
        }
        if (graph) cudaGraphDestroy(graph);
        graph_exec_ = nullptr;
        cuda_graph_ = false;  // not capturable: plain enqueueV3 from now on
        cudaGetLastError();
    }

    void drop_graph() {
        if (graph_exec_) cudaGraphExecDestroy(graph_exec_);
        if (graph_) cudaGraphDestroy(graph_);
        graph_exec_ = nullptr;
        graph_ = nullptr;
    }

    std::vector<TensorSpec> inputs_, outputs_;
    bool cuda_graph_;
    OutputAllocator allocator_;  // before context_: the context (destroyed first) holds a pointer to it
    std::unique_ptr<nvinfer1::IExecutionContext> context_;
    cudaStream_t stream_ = nullptr;
    std::vector<Buffer> buffers_;  // inputs, then outputs
    std::vector<std::vector<int64_t>> bound_, out_shapes_;
    std::vector<bool> data_dependent_;  // per output: served by allocator_
    cudaGraph_t graph_ = nullptr;
    cudaGraphExec_t graph_exec_ = nullptr;
};

class TensorRTBackend : public Backend {
public:
    TensorRTBackend(const std::string& bytes, const std::filesystem::path& path, const std::optional<Manifest>& manifest,
                    const SessionOptions& options)
        : device_(options.device_id), cuda_graph_(options.cuda_graph) {
        int count = 0;
        if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0)
            unsupported("TensorRT engine " + path.string(), "an NVIDIA GPU", "CUDA reports no device");
        if (device_ >= count)
            bad_input("device_id", "a CUDA device index below " + std::to_string(count), std::to_string(device_));
        cuda_check(cudaSetDevice(device_), "cudaSetDevice");
        cudaDeviceProp prop{};
        cuda_check(cudaGetDeviceProperties(&prop, device_), "cudaGetDeviceProperties");
        const std::string cc = std::to_string(prop.major) + "." + std::to_string(prop.minor);
        running_ = trt::version_text(getInferLibVersion());
        trt::check_compatible(manifest ? manifest->tensorrt : std::nullopt, running_, cc, path.string());
        // ROIAlign_TRT and the other standard plugins, before deserialising (as the Python runtime does)
        if (!initLibNvInferPlugins(&logger_, ""))
            runtime_error("TensorRT initLibNvInferPlugins failed (is libnvinfer_plugin installed?): " + logger_.last());
        runtime_.reset(nvinfer1::createInferRuntime(logger_));
        if (!runtime_) runtime_error("TensorRT createInferRuntime failed");
        engine_.reset(runtime_->deserializeCudaEngine(bytes.data(), bytes.size()));
        if (!engine_)
            bad_input("TensorRT engine " + path.string(), "a plan serialized by TensorRT " + running_ + " for this GPU",
                      "a file TensorRT cannot deserialize (corrupt, truncated, or built by another TensorRT or GPU): " +
                          logger_.last());
        for (int32_t i = 0; i < engine_->getNbIOTensors(); ++i) {
            const char* name = engine_->getIOTensorName(i);
            TensorSpec spec;
            spec.name = name;
            spec.dtype = trt::dtype_from_trt_name(trt_type_name(engine_->getTensorDataType(name)), name);
            const TensorSpec* declared = nullptr;
            if (manifest)
                for (const auto& s : manifest->inputs) declared = s.name == spec.name ? &s : declared;
            if (manifest)
                for (const auto& s : manifest->outputs) declared = s.name == spec.name ? &s : declared;
            std::vector<int64_t> dims = to_vector(engine_->getTensorShape(name));
            for (size_t a = 0; a < dims.size(); ++a) {
                bool named = declared && a < declared->shape.size() && !declared->shape[a].is_static();
                spec.shape.push_back(dims[a] >= 0 ? Dim::fixed(dims[a])
                                                  : Dim::dynamic(named ? declared->shape[a].symbol : ""));
            }
            (engine_->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT ? inputs_ : outputs_).push_back(spec);
        }
    }

    ~TensorRTBackend() override {
        cudaSetDevice(device_);
        idle_.clear();  // contexts before the engine, the engine before the runtime
        engine_.reset();
        runtime_.reset();
    }

    std::string name() const override { return "tensorrt " + running_ + (cuda_graph_ ? " (CUDA graphs)" : ""); }

    Outputs run(const std::vector<const TensorView*>& inputs) const override {
        cuda_check(cudaSetDevice(device_), "cudaSetDevice");  // per calling thread
        std::unique_ptr<Worker> worker = acquire();
        struct Return {  // back to the pool on every exit path
            const TensorRTBackend* self;
            std::unique_ptr<Worker>& w;
            ~Return() { self->release(std::move(w)); }
        } back{this, worker};
        return worker->run(inputs);
    }

private:
    std::unique_ptr<Worker> acquire() const {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (!idle_.empty()) {
                auto w = std::move(idle_.back());
                idle_.pop_back();
                return w;
            }
        }
        return std::make_unique<Worker>(*engine_, inputs_, outputs_, cuda_graph_);
    }
    void release(std::unique_ptr<Worker> w) const {
        if (!w) return;
        std::lock_guard<std::mutex> lock(mutex_);
        idle_.push_back(std::move(w));
    }

    int device_;
    bool cuda_graph_;
    std::string running_;
    mutable Logger logger_;
    std::unique_ptr<nvinfer1::IRuntime> runtime_;
    std::unique_ptr<nvinfer1::ICudaEngine> engine_;
    mutable std::mutex mutex_;
    mutable std::vector<std::unique_ptr<Worker>> idle_;  // one context per concurrent caller, reused
};

}  // namespace

bool tensorrt_backend_compiled() { return true; }

std::unique_ptr<Backend> make_tensorrt_backend(const std::string& bytes, const std::filesystem::path& path,
                                               const std::optional<Manifest>& manifest, const SessionOptions& options) {
    return std::make_unique<TensorRTBackend>(bytes, path, manifest, options);
}

}  // namespace deploykit::core
