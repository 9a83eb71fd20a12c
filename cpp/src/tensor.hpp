// Element types, tensor specs (name, dtype, shape with symbolic dims) and tensor views.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace deploykit::core {

// Values equal dk_dtype in deploykit.h.
enum class DType : int {
    float32 = 1, float16 = 2, float64 = 3, int8 = 4, int16 = 5, int32 = 6, int64 = 7,
    uint8 = 8, uint16 = 9, uint32 = 10, uint64 = 11, boolean = 12,
};

// numpy's names: "float32", "uint8", "bool", ...
const char* dtype_name(DType dtype);
bool dtype_from_name(const std::string& name, DType* out);
size_t dtype_size(DType dtype);
bool dtype_valid(int value);

// A dimension: static (value >= 0, symbol empty) or dynamic (value -1, symbol = the graph's name
// such as "batch", or "?" when it has none).
struct Dim {
    int64_t value = -1;
    std::string symbol;
    bool is_static() const { return symbol.empty(); }
    static Dim fixed(int64_t v) { return Dim{v, {}}; }
    static Dim dynamic(std::string name) { return Dim{-1, name.empty() ? std::string("?") : std::move(name)}; }
    std::string text() const { return is_static() ? std::to_string(value) : symbol; }
};

struct TensorSpec {
    std::string name;
    DType dtype = DType::float32;
    std::vector<Dim> shape;
    // "float32 [batch, 3, 320, 320]"
    std::string describe() const;
};

std::string shape_text(const std::vector<int64_t>& shape);
// Number of elements; throws bad_input on a negative dim or an overflow.
size_t element_count(const std::vector<int64_t>& shape, const std::string& what);

// A caller-owned tensor (an input).
struct TensorView {
    std::string name;
    DType dtype = DType::float32;
    std::vector<int64_t> shape;
    const void* data = nullptr;
};

// One output tensor; its memory is owned by the Outputs that holds it.
struct OutputTensor {
    std::string name;
    DType dtype = DType::float32;
    std::vector<int64_t> shape;
    const void* data = nullptr;
    size_t count() const;
    template <typename T> const T* as() const { return static_cast<const T*>(data); }
};

struct Outputs {
    std::vector<OutputTensor> tensors;
    std::shared_ptr<void> storage;  // keeps the backend's output memory alive
    // The output called `name`; throws bad_input naming the outputs there are.
    const OutputTensor& at(const std::string& name) const;
};

}  // namespace deploykit::core
