// A declarations-only stand-in for the parts of TensorRT 11's NvInfer.h that src/trt_backend.cpp
// uses, written from the documented API (nvinfer1::IRuntime, ICudaEngine, IExecutionContext,
// ILogger, Dims64, DataType, TensorIOMode). Only for the `tensorrt_backend_compiles` test, which
// compiles trt_backend.cpp with -fsyntax-only against it and the CUDA headers, so the backend that
// cannot be built on machines without TensorRT at least stays valid C++ against its CUDA calls.
// It proves nothing about TensorRT itself: nothing here is linked or run.
#pragma once
#include <cstdint>
#include <cstddef>
#include <cuda_runtime_api.h>
namespace nvinfer1 {
using AsciiChar = char;
struct Dims { static constexpr int32_t MAX_DIMS = 8; int32_t nbDims; int64_t d[MAX_DIMS]; };
using Dims64 = Dims;
enum class DataType : int32_t { kFLOAT = 0, kHALF = 1, kINT8 = 2, kINT32 = 3, kBOOL = 4, kUINT8 = 5, kFP8 = 6, kBF16 = 7, kINT64 = 8, kINT4 = 9 };
enum class TensorIOMode : int32_t { kNONE = 0, kINPUT = 1, kOUTPUT = 2 };
class ILogger { public: enum class Severity : int32_t { kINTERNAL_ERROR = 0, kERROR = 1, kWARNING = 2, kINFO = 3, kVERBOSE = 4 };
  virtual void log(Severity severity, AsciiChar const* msg) noexcept = 0; virtual ~ILogger() = default; };
class IExecutionContext { public: virtual ~IExecutionContext() = default;
  bool setInputShape(char const* tensorName, Dims const& dims) noexcept;
  Dims getTensorShape(char const* tensorName) const noexcept;
  bool setTensorAddress(char const* tensorName, void* data) noexcept;
  bool enqueueV3(cudaStream_t stream) noexcept; };
class ICudaEngine { public: virtual ~ICudaEngine() = default;
  int32_t getNbIOTensors() const noexcept; char const* getIOTensorName(int32_t index) const noexcept;
  TensorIOMode getTensorIOMode(char const* tensorName) const noexcept; DataType getTensorDataType(char const* tensorName) const noexcept;
  Dims getTensorShape(char const* tensorName) const noexcept; IExecutionContext* createExecutionContext() noexcept; };
class IRuntime { public: virtual ~IRuntime() = default; ICudaEngine* deserializeCudaEngine(void const* blob, std::size_t size) noexcept; };
IRuntime* createInferRuntime(ILogger& logger) noexcept;
}
extern "C" int32_t getInferLibVersion() noexcept;
