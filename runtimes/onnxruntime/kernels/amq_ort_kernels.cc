// ONNX Runtime CPU kernels for what the standard op set makes AMQ graphs copy (domain "amq.ort").
//
// QuantizeRows(x float [R, F], start int64 [1], end int64 [1], scale float [], zero_point uint8 [],
//              low uint8 [], high uint8 []) -> uint8 [end - start, F]
//   Rows start..end of x (bounds as Slice takes them: negative from the end, clamped to 0..R), each element
//   clamp(round_half_even(x / scale) + zero_point, low, high): the integers of
//   Clip(QuantizeLinear(Slice(x, start, end, axes=[0]), scale, zero_point), low, high)
//   in one pass, reading the floats once (no float copy of the segment, no second pass for the clip).
//
// ScatterAddRows(data float [N, F], index int64 [E, 1], updates float [E, F][, source int64 [E]]) -> float [N, F]
//   data with updates[e] added to row index[e] (negative indices count from the end), in edge order:
//   ScatterND(data, index, updates, reduction="add"); with source, updates [M, F] and row source[e] added:
//   ScatterND(data, index, Gather(updates, source, axis=0), reduction="add") without the gathered copy. It may work in data's buffer (ONNX Runtime then
//   skips the copy of the accumulator), and on several intra-op threads each thread owns a range of target
//   rows, so no two threads ever add into the same row (ONNX Runtime's ScatterND loses updates there).
//
// ScatterValues(data int64 [N], index int64 [M], updates int64 [M]) -> int64 [N]
//   data with data[index[m]] = updates[m], in order m (a later write wins; negative indices count from the
//   end): ScatterElements(data, index, updates, axis=0) on vectors, as the bucket sort inverts its
//   permutations, in one plain loop (ONNX Runtime's generic kernel takes about 8 ns a value), in data's
//   buffer where ONNX Runtime allows it.
//
// Built against ONNX Runtime's C API headers only (version 21, which later runtimes accept), without
// linking the runtime: ONNX Runtime hands its API to RegisterCustomOps. runtimes/onnxruntime/kernels/build.py
// compiles it.

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace {

constexpr const char* kDomain = "amq.ort";
constexpr int64_t kRowBlock = 1024;    // rows per parallel task of QuantizeRows

int64_t ScalarInt64(const Ort::ConstValue& value, const char* what) {
  auto info = value.GetTensorTypeAndShapeInfo();
  if (info.GetElementCount() != 1) {
    ORT_CXX_API_THROW(std::string("QuantizeRows: ") + what + " must hold one value", ORT_INVALID_ARGUMENT);
  }
  return value.GetTensorData<int64_t>()[0];
}

// A Slice bound on an axis of `rows`: negative counts from the end, then clamped to 0..rows.
int64_t SliceBound(int64_t bound, int64_t rows) {
  if (bound < 0) bound = bound < -rows ? 0 : bound + rows;
  return std::min(bound, rows);
}

template <typename T>
T Scalar(const Ort::ConstValue& value, const char* op, const char* what) {
  if (value.GetTensorTypeAndShapeInfo().GetElementCount() != 1) {
    ORT_CXX_API_THROW(std::string(op) + ": " + what + " must be a scalar", ORT_INVALID_ARGUMENT);
  }
  return value.GetTensorData<T>()[0];
}

struct QuantizeTask {
  const float* x;
  uint8_t* q;
  int64_t rows, columns;
  float scale, lo, hi, zero_point;  // lo, hi: the bounds minus the zero point, as floats
};

// Divide, clamp (to integer bounds, so clamping before rounding equals clamping after), round half to
// even (the SIMD conversion under the default rounding mode; std::nearbyint elsewhere), add the zero point:
// ONNX Runtime's QuantizeLinear computes the same integers (tested bit for bit).
int64_t QuantizeTail(const QuantizeTask& t, const float* x, uint8_t* q, int64_t i, int64_t count) {
  const int zp = static_cast<int>(t.zero_point);
  for (; i < count; ++i) {
    const float f = std::min(std::max(x[i] / t.scale, t.lo), t.hi);
    q[i] = static_cast<uint8_t>(static_cast<int>(std::nearbyint(f)) + zp);
  }
  return count;
}

#if defined(__x86_64__)
__attribute__((target("avx512f"))) int64_t QuantizeAvx512(const QuantizeTask& t, const float* x, uint8_t* q,
                                                           int64_t count) {
  const __m512 scale = _mm512_set1_ps(t.scale), lo = _mm512_set1_ps(t.lo), hi = _mm512_set1_ps(t.hi);
  const __m512i zero_point = _mm512_set1_epi32(static_cast<int>(t.zero_point));
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    __m512 f = _mm512_div_ps(_mm512_loadu_ps(x + i), scale);
    f = _mm512_min_ps(_mm512_max_ps(f, lo), hi);
    const __m512i v = _mm512_add_epi32(_mm512_cvtps_epi32(f), zero_point);  // in 0..255
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_cvtusepi32_epi8(v));
  }
  return i;
}

__attribute__((target("avx2"))) int64_t QuantizeAvx2(const QuantizeTask& t, const float* x, uint8_t* q,
                                                       int64_t count) {
  const __m256 scale = _mm256_set1_ps(t.scale), lo = _mm256_set1_ps(t.lo), hi = _mm256_set1_ps(t.hi);
  const __m256i zero_point = _mm256_set1_epi32(static_cast<int>(t.zero_point));
  const __m256i lane_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undo the packs' lane interleave
  int64_t i = 0;
  for (; i + 32 <= count; i += 32) {
    __m256i v[4];
    for (int j = 0; j < 4; ++j) {
      __m256 f = _mm256_div_ps(_mm256_loadu_ps(x + i + 8 * j), scale);
      f = _mm256_min_ps(_mm256_max_ps(f, lo), hi);
      v[j] = _mm256_add_epi32(_mm256_cvtps_epi32(f), zero_point);
    }
    const __m256i bytes = _mm256_packus_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), _mm256_permutevar8x32_epi32(bytes, lane_order));
  }
  return i;
}

// The widest vector path this CPU has, read once when the library loads (__builtin_cpu_init first: a static
// initialiser may run before libgcc's own). $AMQ_ORT_KERNELS_ISA (avx512, avx2, scalar) caps it, so that
// every path can be tested on one machine. (x86-64 CPUs without AVX2, made before 2013, take the scalar loop.)
enum class Isa { kScalar, kAvx2, kAvx512 };

Isa ChooseIsa() {
  __builtin_cpu_init();
  Isa isa = __builtin_cpu_supports("avx512f") ? Isa::kAvx512 : __builtin_cpu_supports("avx2") ? Isa::kAvx2 : Isa::kScalar;
  if (const char* cap = std::getenv("AMQ_ORT_KERNELS_ISA")) {
    const std::string name(cap);
    const Isa limit = name == "scalar" ? Isa::kScalar : name == "avx2" ? Isa::kAvx2 : Isa::kAvx512;
    isa = std::min(isa, limit);
  }
  return isa;
}

const Isa kIsa = ChooseIsa();
#endif

void QuantizeBlock(void* data, size_t block) {
  const auto& t = *static_cast<const QuantizeTask*>(data);
  const int64_t first = static_cast<int64_t>(block) * kRowBlock;
  const int64_t count = (std::min(first + kRowBlock, t.rows) - first) * t.columns;
  const float* x = t.x + first * t.columns;
  uint8_t* q = t.q + first * t.columns;
  int64_t done = 0;
#if defined(__x86_64__)
  switch (kIsa) {
    case Isa::kAvx512: done = QuantizeAvx512(t, x, q, count); break;
    case Isa::kAvx2: done = QuantizeAvx2(t, x, q, count); break;
    case Isa::kScalar: break;
  }
#endif
  QuantizeTail(t, x, q, done, count);
}

// Errors thrown by a kernel become the status ONNX Runtime reports (no exception crosses its C API).
template <typename Kernel>
struct StatusKernel {
  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    try {
      static_cast<Kernel*>(this)->Compute(context);
      return nullptr;
    } catch (const Ort::Exception& error) {
      return Ort::Status(error).release();
    } catch (const std::exception& error) {
      return Ort::Status(error).release();
    }
  }
};

struct QuantizeRowsKernel : StatusKernel<QuantizeRowsKernel> {
  void Compute(OrtKernelContext* raw) {
    Ort::KernelContext context(raw);
    auto x = context.GetInput(0);
    const auto shape = x.GetTensorTypeAndShapeInfo().GetShape();
    if (shape.size() != 2) {
      ORT_CXX_API_THROW("QuantizeRows: x must be [rows, columns]", ORT_INVALID_ARGUMENT);
    }
    const int64_t rows = shape[0], columns = shape[1];
    const int64_t start = SliceBound(ScalarInt64(context.GetInput(1), "start"), rows);
    const int64_t end = std::max(start, SliceBound(ScalarInt64(context.GetInput(2), "end"), rows));
    QuantizeTask task;
    task.scale = Scalar<float>(context.GetInput(3), "QuantizeRows", "scale");
    const uint8_t zero_point = Scalar<uint8_t>(context.GetInput(4), "QuantizeRows", "zero_point");
    const uint8_t low = Scalar<uint8_t>(context.GetInput(5), "QuantizeRows", "low");
    const uint8_t high = Scalar<uint8_t>(context.GetInput(6), "QuantizeRows", "high");
    if (low > high) {
      ORT_CXX_API_THROW("QuantizeRows: low must not exceed high", ORT_INVALID_ARGUMENT);
    }
    task.zero_point = zero_point;
    task.lo = static_cast<float>(low) - zero_point;
    task.hi = static_cast<float>(high) - zero_point;
    task.rows = end - start;
    task.columns = columns;
    auto out = context.GetOutput(0, std::vector<int64_t>{task.rows, columns});
    task.x = x.GetTensorData<float>() + start * columns;
    task.q = out.GetTensorMutableData<uint8_t>();
    const int64_t blocks = (task.rows + kRowBlock - 1) / kRowBlock;
    if (blocks > 0) context.ParallelFor(QuantizeBlock, static_cast<size_t>(blocks), 0, &task);
  }
};

struct ScatterTask {
  float* out;
  const int64_t* index;
  const float* updates;
  const int64_t* source;  // null: edge e adds updates row e; else updates row source[e]
  int64_t edges, columns, rows_per_block;
};

constexpr int64_t kScatterBlocks = 2;  // target row ranges: one per thread on two, two passes on one

// Every edge whose target row lies in this block's range, in edge order (the order ScatterND adds in).
// Each block scans the whole index but touches only its own rows, so two passes on one thread cost
// one scan of the index more than one pass, not a second round of random row accesses.
void ScatterBlock(void* data, size_t block) {
  const auto& t = *static_cast<const ScatterTask*>(data);
  const int64_t lo = static_cast<int64_t>(block) * t.rows_per_block, hi = lo + t.rows_per_block;
  for (int64_t e = 0; e < t.edges; ++e) {
    const int64_t r = t.index[e];
    if (r < lo || r >= hi) continue;
    float* row = t.out + r * t.columns;
    const float* update = t.updates + (t.source ? t.source[e] : e) * t.columns;
    for (int64_t c = 0; c < t.columns; ++c) row[c] += update[c];
  }
}

// Indices into `limit` rows, negative ones counting from the end (as ScatterND's and Gather's do): the
// indices themselves, or a wrapped copy in `wrapped` where some are negative; out of range is an error.
const int64_t* RowIndices(const int64_t* raw, int64_t count, int64_t limit, const char* op, const char* what,
                          std::vector<int64_t>& wrapped) {
  for (int64_t e = 0; e < count; ++e) {
    const int64_t i = raw[e];
    if (i < -limit || i >= limit) {
      ORT_CXX_API_THROW(std::string(op) + ": " + what + " " + std::to_string(i) + " is out of range for " +
                            std::to_string(limit) + " rows", ORT_INVALID_ARGUMENT);
    }
    if (i < 0) {
      if (wrapped.empty()) wrapped.assign(raw, raw + count);
      wrapped[e] = i + limit;
    }
  }
  return wrapped.empty() ? raw : wrapped.data();
}

struct ScatterAddRowsKernel : StatusKernel<ScatterAddRowsKernel> {
  void Compute(OrtKernelContext* raw) {
    Ort::KernelContext context(raw);
    auto data = context.GetInput(0);
    auto index = context.GetInput(1);
    auto updates = context.GetInput(2);
    Ort::ConstValue source = context.GetInputCount() > 3 ? context.GetInput(3) : Ort::ConstValue{nullptr};
    const auto shape = data.GetTensorTypeAndShapeInfo().GetShape();
    const auto index_shape = index.GetTensorTypeAndShapeInfo().GetShape();
    const auto update_shape = updates.GetTensorTypeAndShapeInfo().GetShape();
    const int64_t edges = index_shape.size() == 2 ? index_shape[0] : -1;
    const bool gathered = source != nullptr;
    if (shape.size() != 2 || edges < 0 || index_shape[1] != 1 || update_shape.size() != 2 ||
        update_shape[1] != shape[1] || (!gathered && update_shape[0] != edges) ||
        (gathered && source.GetTensorTypeAndShapeInfo().GetElementCount() != static_cast<size_t>(edges))) {
      ORT_CXX_API_THROW("ScatterAddRows: expected data [N, F], index [E, 1], updates [E, F] (or updates [M, F] "
                        "and source [E])", ORT_INVALID_ARGUMENT);
    }
    const int64_t rows = shape[0], columns = shape[1];
    auto out = context.GetOutput(0, shape);
    float* target = out.GetTensorMutableData<float>();
    const float* before = data.GetTensorData<float>();
    if (target != before && rows * columns > 0) {  // ONNX Runtime did not hand over data's buffer
      std::memcpy(target, before, static_cast<size_t>(rows * columns) * sizeof(float));
    }
    std::vector<int64_t> wrapped_index, wrapped_source;
    ScatterTask task{target,
                     RowIndices(index.GetTensorData<int64_t>(), edges, rows, "ScatterAddRows", "index", wrapped_index),
                     updates.GetTensorData<float>(),
                     gathered ? RowIndices(source.GetTensorData<int64_t>(), edges, update_shape[0], "ScatterAddRows", "source",
                                           wrapped_source)
                              : nullptr,
                     edges, columns, (rows + kScatterBlocks - 1) / kScatterBlocks};
    if (rows > 0 && edges > 0 && columns > 0) context.ParallelFor(ScatterBlock, kScatterBlocks, 0, &task);
  }
};

struct ScatterValuesKernel : StatusKernel<ScatterValuesKernel> {
  void Compute(OrtKernelContext* raw) {
    Ort::KernelContext context(raw);
    auto data = context.GetInput(0);
    auto index = context.GetInput(1);
    auto updates = context.GetInput(2);
    const auto shape = data.GetTensorTypeAndShapeInfo().GetShape();
    const auto index_shape = index.GetTensorTypeAndShapeInfo().GetShape();
    if (shape.size() != 1 || index_shape.size() != 1 ||
        updates.GetTensorTypeAndShapeInfo().GetShape() != index_shape) {
      ORT_CXX_API_THROW("ScatterValues: expected data [N], index [M], updates [M]", ORT_INVALID_ARGUMENT);
    }
    const int64_t n = shape[0], count = index_shape[0];
    auto out = context.GetOutput(0, shape);
    int64_t* target = out.GetTensorMutableData<int64_t>();
    const int64_t* before = data.GetTensorData<int64_t>();
    if (target != before && n > 0) std::memcpy(target, before, static_cast<size_t>(n) * sizeof(int64_t));
    std::vector<int64_t> wrapped;
    const int64_t* at = RowIndices(index.GetTensorData<int64_t>(), count, n, "ScatterValues", "index", wrapped);
    const int64_t* values = updates.GetTensorData<int64_t>();
    for (int64_t m = 0; m < count; ++m) target[at[m]] = values[m];
  }
};

size_t DataMayBeOutput(int** input_index, int** output_index) {
  *input_index = new int[1]{0};
  *output_index = new int[1]{0};
  return 1;
}

void ReleasePairs(int* input_index, int* output_index) {
  delete[] input_index;
  delete[] output_index;
}

// What every op here shares: a kernel made without attributes; with InPlace, ONNX Runtime may hand the first
// input's buffer over as the output (when nothing else reads it), which saves the kernel its copy.
template <typename Op, typename Kernel, bool InPlace>
struct KernelOp : Ort::CustomOpBase<Op, Kernel, true> {
  KernelOp() {
    if (InPlace) {
      OrtCustomOp::GetMayInplace = DataMayBeOutput;
      OrtCustomOp::ReleaseMayInplace = ReleasePairs;
    }
  }
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo*, void** kernel) const {
    *kernel = new Kernel();
    return nullptr;
  }
};

struct QuantizeRowsOp : KernelOp<QuantizeRowsOp, QuantizeRowsKernel, false> {
  const char* GetName() const { return "QuantizeRows"; }
  size_t GetInputTypeCount() const { return 7; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    if (index == 0 || index == 3) return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    if (index == 1 || index == 2) return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
    return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8; }
};

struct ScatterAddRowsOp : KernelOp<ScatterAddRowsOp, ScatterAddRowsKernel, true> {
  const char* GetName() const { return "ScatterAddRows"; }
  size_t GetInputTypeCount() const { return 4; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return index == 1 || index == 3 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index == 3 ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL
                      : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

struct ScatterValuesOp : KernelOp<ScatterValuesOp, ScatterValuesKernel, true> {
  const char* GetName() const { return "ScatterValues"; }
  size_t GetInputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64; }
};

const QuantizeRowsOp kQuantizeRows;
const ScatterAddRowsOp kScatterAddRows;
const ScatterValuesOp kScatterValues;

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    return nullptr;  // cannot even report: this runtime predates the headers the library was built with
  }
  Ort::InitApi(api);
  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* status = api->CreateCustomOpDomain(kDomain, &domain)) return status;
  // The domain must outlive every session using it; the library stays loaded for the process anyway.
  for (const OrtCustomOp* op : {static_cast<const OrtCustomOp*>(&kQuantizeRows),
                                static_cast<const OrtCustomOp*>(&kScatterAddRows),
                                static_cast<const OrtCustomOp*>(&kScatterValues)}) {
    if (OrtStatus* status = api->CustomOpDomain_Add(domain, op)) return status;
  }
  return api->AddCustomOpDomain(options, domain);
}
