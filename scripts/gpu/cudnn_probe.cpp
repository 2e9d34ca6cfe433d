// What cudnn.h says about the parts of cuDNN that tfkd declares by hand
// (crates/tfkd-core/src/cudnn.rs), printed one fact per line:
//
//   sig NAME R(ARGS)   a function's return and parameter kinds, one letter
//                      each: i = int or enum, z = size_t, d = double,
//                      f = float, p = any pointer (handles and descriptors
//                      are pointers in cudnn.h)
//   const NAME VALUE   an enum value, under the name of tfkd's constant
//   layout NAME SIZE OFFSET_OF_MEMORY OFFSET_OF_MATH_TYPE
//
// The cudnn.rs test `the_declarations_match_cudnn_h` compares these lines
// with its own. Built and run by scripts/gpu/host_check_cudnn.sh against the
// headers of the nvidia-cudnn-cu13 wheel; no GPU is needed.
#include <cstddef>
#include <cstdio>
#include <string>
#include <type_traits>

#include <cudnn.h>

template <class T> constexpr char kind() {
    if constexpr (std::is_pointer_v<T>) return 'p';
    else if constexpr (std::is_enum_v<T> || std::is_same_v<T, int>) return 'i';
    else if constexpr (std::is_same_v<T, size_t>) return 'z';
    else if constexpr (std::is_same_v<T, double>) return 'd';
    else if constexpr (std::is_same_v<T, float>) return 'f';
    else return '?';
}

template <class R, class... A> std::string signature(R (*)(A...)) {
    return std::string(1, kind<R>()) + "(" + std::string{kind<A>()...} + ")";
}

// decltype only: the probe is compiled, never linked against cuDNN.
#define SIG(f) std::printf("sig %s %s\n", #f, signature(static_cast<decltype(&f)>(nullptr)).c_str())
#define CONST(name, value) std::printf("const %s %d\n", name, static_cast<int>(value))
#define LAYOUT(name, T) \
    std::printf("layout %s %zu %zu %zu\n", name, sizeof(T), offsetof(T, memory), offsetof(T, mathType))

int main() {
    // The functions tfkd resolves (Api::open).
    SIG(cudnnGetVersion);
    SIG(cudnnGetErrorString);
    SIG(cudnnCreate);
    SIG(cudnnSetStream);
    SIG(cudnnCreateTensorDescriptor);
    SIG(cudnnDestroyTensorDescriptor);
    SIG(cudnnSetTensor4dDescriptor);
    SIG(cudnnCreateFilterDescriptor);
    SIG(cudnnDestroyFilterDescriptor);
    SIG(cudnnSetFilter4dDescriptor);
    SIG(cudnnCreateConvolutionDescriptor);
    SIG(cudnnDestroyConvolutionDescriptor);
    SIG(cudnnSetConvolution2dDescriptor);
    SIG(cudnnSetConvolutionGroupCount);
    SIG(cudnnSetConvolutionMathType);
    SIG(cudnnGetConvolutionForwardWorkspaceSize);
    SIG(cudnnGetConvolutionBackwardDataWorkspaceSize);
    SIG(cudnnGetConvolutionBackwardFilterWorkspaceSize);
    SIG(cudnnFindConvolutionForwardAlgorithmEx);
    SIG(cudnnFindConvolutionBackwardDataAlgorithmEx);
    SIG(cudnnFindConvolutionBackwardFilterAlgorithmEx);
    SIG(cudnnConvolutionForward);
    SIG(cudnnConvolutionBackwardData);
    SIG(cudnnConvolutionBackwardFilter);
    SIG(cudnnDeriveBNTensorDescriptor);
    SIG(cudnnBatchNormalizationForwardTraining);
    SIG(cudnnBatchNormalizationBackward);
    // The getters the test reads descriptors back with.
    SIG(cudnnGetTensorSizeInBytes);
    SIG(cudnnGetTensor4dDescriptor);
    SIG(cudnnGetFilter4dDescriptor);
    SIG(cudnnGetConvolution2dDescriptor);
    SIG(cudnnGetConvolutionGroupCount);
    SIG(cudnnGetConvolutionMathType);
    SIG(cudnnGetConvolution2dForwardOutputDim);

    CONST("TENSOR_NCHW", CUDNN_TENSOR_NCHW);
    CONST("CROSS_CORRELATION", CUDNN_CROSS_CORRELATION);
    CONST("DATA_FLOAT", CUDNN_DATA_FLOAT);
    CONST("DATA_DOUBLE", CUDNN_DATA_DOUBLE);
    CONST("DATA_HALF", CUDNN_DATA_HALF);
    CONST("DATA_BFLOAT16", CUDNN_DATA_BFLOAT16);
    CONST("DEFAULT_MATH", CUDNN_DEFAULT_MATH);
    CONST("TENSOR_OP_MATH", CUDNN_TENSOR_OP_MATH);
    CONST("FMA_MATH", CUDNN_FMA_MATH);
    CONST("BATCHNORM_SPATIAL", CUDNN_BATCHNORM_SPATIAL);
    CONST("DETERMINISTIC", CUDNN_DETERMINISTIC);
    CONST("STATUS_SUCCESS", CUDNN_STATUS_SUCCESS);
    CONST("FWD_ALGO_COUNT", CUDNN_CONVOLUTION_FWD_ALGO_COUNT);
    CONST("BWD_DATA_ALGO_COUNT", CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT);
    CONST("BWD_FILTER_ALGO_COUNT", CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT);

    LAYOUT("fwd", cudnnConvolutionFwdAlgoPerf_t);
    LAYOUT("bwd_data", cudnnConvolutionBwdDataAlgoPerf_t);
    LAYOUT("bwd_filter", cudnnConvolutionBwdFilterAlgoPerf_t);
    return 0;
}
