/* deploykit C API: run deploykit artifacts (ONNX on ONNX Runtime, TensorRT plans) from C, Go, Rust, C#...
 *
 * Opaque handles, created by *_create and freed by *_destroy; results (dk_outputs, dk_detections,
 * dk_rgb_image) are owned by the caller and freed by their *_release function. Every function that
 * can fail returns a dk_status; on failure dk_last_error() returns a one-line message (the thing,
 * what was expected, what was got), valid on the calling thread until its next deploykit call.
 * Destroy/release functions accept NULL.
 *
 * Thread safety: a dk_session, dk_detector or dk_generator may be used by several threads at once
 * (ONNX Runtime sessions are thread-safe; the TensorRT backend keeps one execution context per
 * concurrent caller). dk_options is not shared-safe while being changed.
 */
#ifndef DEPLOYKIT_H
#define DEPLOYKIT_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32) && defined(DK_BUILDING)
#define DK_API __declspec(dllexport)
#elif defined(_WIN32)
#define DK_API __declspec(dllimport)
#elif defined(__GNUC__)
#define DK_API __attribute__((visibility("default")))
#else
#define DK_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define DK_API_VERSION 1

typedef enum dk_status {
    DK_OK = 0,
    DK_ERR_BAD_INPUT = 1,        /* bad input or a refused artifact/manifest (the CLI's exit code 2) */
    DK_ERR_UNSUPPORTED = 2,      /* something this build or machine does not support */
    DK_ERR_RUNTIME = 3,          /* the backend failed (out of memory, CUDA error, ...) */
    DK_ERR_INVALID_ARGUMENT = 4  /* a NULL handle or pointer where one is required */
} dk_status;

typedef enum dk_dtype {
    DK_FLOAT32 = 1, DK_FLOAT16 = 2, DK_FLOAT64 = 3, DK_INT8 = 4, DK_INT16 = 5, DK_INT32 = 6, DK_INT64 = 7,
    DK_UINT8 = 8, DK_UINT16 = 9, DK_UINT32 = 10, DK_UINT64 = 11, DK_BOOL = 12
} dk_dtype;

typedef enum dk_pixel_format { DK_RGB = 0, DK_BGR = 1 } dk_pixel_format;

DK_API const char* dk_last_error(void);   /* "" when the last call succeeded */
DK_API const char* dk_version(void);      /* library version, e.g. "0.1.0" */
DK_API int dk_api_version(void);          /* DK_API_VERSION the library was built with */
DK_API const char* dk_dtype_name(dk_dtype dtype); /* "float32", "uint8", ... ; "unknown" */
DK_API int dk_has_tensorrt(void);         /* 1 when this build has the native TensorRT backend */

/* -- options (all optional; pass NULL for defaults) ------------------------------------------ */
typedef struct dk_options dk_options;
DK_API dk_status dk_options_create(dk_options** out);
DK_API void dk_options_destroy(dk_options* options);
/* ONNX Runtime intra-op threads (inter-op is then 1); 0 (default) lets ONNX Runtime decide. */
DK_API dk_status dk_options_set_threads(dk_options* options, int threads);
/* ONNX Runtime execution providers, best first, comma-separated: "tensorrt", "cuda", "cpu" (or
 * ONNX Runtime's names). Default: every one this ONNX Runtime has, in that order. */
DK_API dk_status dk_options_set_providers(dk_options* options, const char* providers);
/* CUDA device for the CUDA/TensorRT providers and the native TensorRT backend (default 0). */
DK_API dk_status dk_options_set_device_id(dk_options* options, int device_id);
/* ONNX Runtime TensorRT provider: engine cache folder (default: no cache). */
DK_API dk_status dk_options_set_trt_engine_cache(dk_options* options, const char* folder);
/* Native TensorRT backend (.plan): replay inference as a captured CUDA graph (default 0). */
DK_API dk_status dk_options_set_cuda_graph(dk_options* options, int enable);

/* -- session: any artifact, tensors in and out ------------------------------------------------ */
typedef struct dk_session dk_session;

/* A tensor: for inputs the caller owns `data`; for outputs the dk_outputs does. `shape` holds
 * `rank` dims. In dk_session_input/output, a dynamic dim is -1 and dim_names[i] its name ("batch";
 * "?" when the graph has none; "" for static dims). */
typedef struct dk_tensor {
    const char* name;
    dk_dtype dtype;
    int32_t rank;
    const int64_t* shape;
    const void* data;
    const char* const* dim_names; /* only set by dk_session_input/output */
} dk_tensor;

/* Open `path`: .onnx (ONNX Runtime) or .plan/.engine (native TensorRT). The manifest beside it
 * (X.json; X.plan.json for plans) is read when present and must match the file's sha256. */
DK_API dk_status dk_session_create(const char* path, const dk_options* options, dk_session** out);
DK_API void dk_session_destroy(dk_session* session);
DK_API size_t dk_session_input_count(const dk_session* session);
DK_API size_t dk_session_output_count(const dk_session* session);
/* Spec of input/output i (data is NULL); pointers live as long as the session. */
DK_API dk_status dk_session_input(const dk_session* session, size_t index, dk_tensor* out);
DK_API dk_status dk_session_output(const dk_session* session, size_t index, dk_tensor* out);
/* Backend in use, e.g. "onnxruntime 1.32.0 (CPUExecutionProvider)"; lives as long as the session. */
DK_API const char* dk_session_backend(const dk_session* session);

typedef struct dk_outputs dk_outputs;
/* Run on `count` named inputs (names, dtypes and shapes are checked first). */
DK_API dk_status dk_session_run(dk_session* session, const dk_tensor* inputs, size_t count, dk_outputs** out);
DK_API size_t dk_outputs_count(const dk_outputs* outputs);
DK_API dk_status dk_outputs_get(const dk_outputs* outputs, size_t index, dk_tensor* out);
DK_API dk_status dk_outputs_find(const dk_outputs* outputs, const char* name, dk_tensor* out);
DK_API void dk_outputs_release(dk_outputs* outputs);

/* -- detector: images in, detections in the original image's pixels out ---------------------- */
typedef struct dk_detector dk_detector;

/* A caller-owned uint8 image, `height` rows of `stride` bytes (0: width * 3), 3 channels in
 * RGB or BGR order (converted while packing, never copied twice). */
typedef struct dk_image {
    const uint8_t* data;
    int32_t width;
    int32_t height;
    int32_t channels; /* must be 3; 0 means 3 */
    size_t stride;
    dk_pixel_format format;
} dk_image;

typedef struct dk_detection {
    float x1, y1, x2, y2; /* original-image pixels */
    float score;
    int32_t label;
    const char* label_name; /* the manifest's class name, or "class_<label>" */
} dk_detection;

typedef struct dk_detections dk_detections;

/* Needs a pixels-in detector graph (deploykit export MODEL --input image ...) and its manifest. */
DK_API dk_status dk_detector_create(const char* path, const dk_options* options, dk_detector** out);
DK_API void dk_detector_destroy(dk_detector* detector);
/* Detect on `count` images; larger lists run in batches of up to dk_detector_max_batch. A pixels-in
 * graph takes one size per run; an image-list graph (deploykit export --input image-list) takes a
 * run of any sizes as one call, as torchvision batches a list (results for image i: dk_detections_get
 * with image i, each in its own image's pixels). */
DK_API dk_status dk_detector_predict(dk_detector* detector, const dk_image* images, size_t count, dk_detections** out);
DK_API size_t dk_detections_image_count(const dk_detections* detections);
/* The detections of image i (sorted by score, descending) and their number; NULL when out of range. */
DK_API const dk_detection* dk_detections_get(const dk_detections* detections, size_t image, size_t* count);
DK_API void dk_detections_release(dk_detections* detections);
/* Mask R-CNN: detection `index` of image `image` as a mask in that image's pixels, *height rows of
 * *width bytes, 1 inside the instance (probability above the manifest's threshold), else 0; owned by
 * the dk_detections. NULL (and 0 sizes) for a box-only detector or out of range. */
DK_API const uint8_t* dk_detections_mask(const dk_detections* detections, size_t image, size_t index,
                                         int32_t* width, int32_t* height);
/* 1 when the detector's graph takes images of different sizes in one call (an image-list export), else 0. */
DK_API int dk_detector_image_list(const dk_detector* detector);
/* 1 when the detector's graph gives instance masks (a Mask R-CNN export), else 0. */
DK_API int dk_detector_has_masks(const dk_detector* detector);
DK_API size_t dk_detector_class_count(const dk_detector* detector);
DK_API const char* dk_detector_class_name(const dk_detector* detector, size_t index); /* NULL when out of range */
DK_API int dk_detector_max_batch(const dk_detector* detector);

/* -- generator (SPADE): label map (+ instance map) in, RGB image out -------------------------- */
typedef struct dk_generator dk_generator;

typedef struct dk_map {
    const void* data;
    dk_dtype dtype; /* DK_UINT8, DK_UINT16, DK_INT32 or DK_INT64 */
    int32_t width;
    int32_t height;
    size_t stride; /* bytes per row; 0: width * element size */
} dk_map;

typedef struct dk_rgb_image dk_rgb_image;

DK_API dk_status dk_generator_create(const char* path, const dk_options* options, dk_generator** out);
DK_API void dk_generator_destroy(dk_generator* generator);
/* instance_map: required by instance generators, NULL otherwise. z/z_size: VAE generators only.
 * resize != 0 resizes maps of another size (nearest); else they must have the generator's size. */
DK_API dk_status dk_generator_generate(dk_generator* generator, const dk_map* label_map, const dk_map* instance_map,
                                       const float* z, size_t z_size, int resize, dk_rgb_image** out);
/* The generator's map size. */
DK_API void dk_generator_size(const dk_generator* generator, int32_t* width, int32_t* height);
/* Pixels (height rows of width * 3 bytes, RGB) and size of a generated image. */
DK_API const uint8_t* dk_rgb_image_data(const dk_rgb_image* image, int32_t* width, int32_t* height);
DK_API void dk_rgb_image_release(dk_rgb_image* image);

#ifdef __cplusplus
}
#endif

#endif /* DEPLOYKIT_H */
