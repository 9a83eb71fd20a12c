#include "tensor.hpp"

#include <limits>

#include "error.hpp"

namespace deploykit::core {
namespace {

struct DTypeInfo {
    DType dtype;
    const char* name;
    size_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::float32, "float32", 4}, {DType::float16, "float16", 2}, {DType::float64, "float64", 8},
    {DType::int8, "int8", 1},       {DType::int16, "int16", 2},     {DType::int32, "int32", 4},
    {DType::int64, "int64", 8},     {DType::uint8, "uint8", 1},     {DType::uint16, "uint16", 2},
    {DType::uint32, "uint32", 4},   {DType::uint64, "uint64", 8},   {DType::boolean, "bool", 1},
};

}  // namespace

const char* dtype_name(DType dtype) {
    for (const auto& info : kDTypes)
        if (info.dtype == dtype) return info.name;
    return "unknown";
}

bool dtype_from_name(const std::string& name, DType* out) {
    for (const auto& info : kDTypes) {
        if (name == info.name) {
            *out = info.dtype;
            return true;
        }
    }
    return false;
}

size_t dtype_size(DType dtype) {
    for (const auto& info : kDTypes)
        if (info.dtype == dtype) return info.size;
    return 0;
}

bool dtype_valid(int value) {
    for (const auto& info : kDTypes)
        if (static_cast<int>(info.dtype) == value) return true;
    return false;
}

std::string TensorSpec::describe() const {
    std::string text = std::string(dtype_name(dtype)) + " [";
    for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + shape[i].text();
    return text + "]";
}

std::string shape_text(const std::vector<int64_t>& shape) {
    std::string text = "[";
    for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
    return text + "]";
}

size_t element_count(const std::vector<int64_t>& shape, const std::string& what) {
    size_t count = 1;
    for (int64_t d : shape) {
        if (d < 0) bad_input(what, "non-negative dimensions", shape_text(shape));
        if (d != 0 && count > std::numeric_limits<size_t>::max() / static_cast<size_t>(d))
            bad_input(what, "a shape whose size fits in memory", shape_text(shape));
        count *= static_cast<size_t>(d);
    }
    return count;
}

size_t OutputTensor::count() const {
    size_t n = 1;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    return n;
}

const OutputTensor& Outputs::at(const std::string& name) const {
    std::string names;
    for (const auto& t : tensors) {
        if (t.name == name) return t;
        names += (names.empty() ? "" : ", ") + t.name;
    }
    bad_input("output '" + name + "'", "one of the model outputs [" + names + "]", "an unknown name");
}

}  // namespace deploykit::core
