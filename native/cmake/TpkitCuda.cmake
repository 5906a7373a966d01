# The optional CUDA addon, tpkit_cuda.node (included at the end of CMakeLists.txt).
#
# Built only when the CUDA toolkit (nvcc, via check_language/enable_language), cuBLAS/cuBLASLt and NCCL are all
# found; otherwise one STATUS line says what was missing and the CPU build goes on. The core addon never links
# CUDA: this is a second shared object, loaded lazily by lib/native/cuda.ts.
#
# Knobs (cmake-js: `npx cmake-js compile --CDNAME=VALUE`, or the environment):
#   CUBLAS_ROOT / NCCL_ROOT        where cuBLAS / NCCL live (cache or environment variables; see FindCUBLAS.cmake,
#                                  FindNCCL.cmake for the other places searched)
#   CMAKE_CUDA_ARCHITECTURES       default "80;90" (A100, H100); the CUDAARCHS environment variable also works
#   TPKIT_CUDA=OFF                 never build the CUDA addon
#
# Cache entries read by test/cuda.test.ts: TPKIT_CUDA_BUILT (ON/OFF), TPKIT_CUDA_SKIP_REASON.

option(TPKIT_CUDA "Build the CUDA addon (tpkit_cuda.node) when CUDA, cuBLAS and NCCL are found" ON)

set(_tpkit_cuda_missing "")
if(NOT TPKIT_CUDA)
  list(APPEND _tpkit_cuda_missing "nothing (disabled with -DTPKIT_CUDA=OFF)")
else()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT DEFINED ENV{CUDAARCHS})
      set(CMAKE_CUDA_ARCHITECTURES "80;90" CACHE STRING "GPU architectures of tpkit's CUDA kernels")
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit QUIET)
    if(NOT CUDAToolkit_FOUND)
      list(APPEND _tpkit_cuda_missing "the CUDA runtime of the toolkit of ${CMAKE_CUDA_COMPILER}")
    endif()
  else()
    list(APPEND _tpkit_cuda_missing "the CUDA toolkit (nvcc: install it, put it on PATH or set CUDACXX)")
  endif()

  find_package(CUBLAS QUIET)
  if(NOT CUBLAS_FOUND)
    list(APPEND _tpkit_cuda_missing "cuBLAS (set CUBLAS_ROOT to a folder with include/cublas_v2.h and lib/libcublas.so*, e.g. the nvidia/cu13 folder of the nvidia-cublas wheel)")
  elseif(CUDAToolkit_FOUND AND NOT CUBLAS_VERSION_MAJOR STREQUAL "" AND NOT CUBLAS_VERSION_MAJOR EQUAL CUDAToolkit_VERSION_MAJOR)
    list(APPEND _tpkit_cuda_missing "a cuBLAS for CUDA ${CUDAToolkit_VERSION_MAJOR} (found cuBLAS ${CUBLAS_VERSION} at ${CUBLAS_LIBRARY})")
  endif()
  find_package(NCCL QUIET)
  if(NOT NCCL_FOUND)
    list(APPEND _tpkit_cuda_missing "NCCL (set NCCL_ROOT to a folder with include/nccl.h and lib/libnccl.so*, e.g. the nvidia/nccl folder of the nvidia-nccl-cu13 wheel)")
  elseif(NOT NCCL_VERSION STREQUAL "" AND NCCL_VERSION VERSION_LESS "2.18")
    # ncclCommSplit (2.18), non-blocking init / ncclCommFinalize (2.14), ncclGetLastError (2.13).
    list(APPEND _tpkit_cuda_missing "an NCCL >= 2.18 (found NCCL ${NCCL_VERSION} at ${NCCL_LIBRARY})")
  endif()
endif()

if(_tpkit_cuda_missing)
  list(JOIN _tpkit_cuda_missing "; " _tpkit_cuda_reason)
  message(STATUS "tpkit: skipping the CUDA addon (tpkit_cuda.node), missing: ${_tpkit_cuda_reason}")
  set(TPKIT_CUDA_BUILT OFF CACHE INTERNAL "whether tpkit_cuda.node is built")
  set(TPKIT_CUDA_SKIP_REASON "missing: ${_tpkit_cuda_reason}" CACHE INTERNAL "why tpkit_cuda.node is not built")
  return()
endif()

set(TPKIT_CUDA_SOURCES
  native/cuda/addon.cc
  native/cuda/cuda_error.cc
  native/cuda/device_buffer.cc
  native/cuda/device_context.cc
  native/cuda/event_poller.cc
  native/cuda/gemm.cc
  native/cuda/kernels.cu
  native/cuda/nccl_comm.cc
  native/cuda/ops.cc
  native/cuda/pinned_pool.cc
  native/cuda/runtime.cc
  native/core/async_work.cc  # LambdaWorker / MakeTpkitError / argument guards (no OpenBLAS or Gloo in it)
)

# ncclAlltoAll is recent (the NCCL 2.27 wheels lack it); without it all-to-all is a group of ncclSend/ncclRecv.
# Compile-only probe (no link), redone at every configure so that a different NCCL_ROOT is noticed.
include(CheckCXXSourceCompiles)
set(_tpkit_saved_try_type "${CMAKE_TRY_COMPILE_TARGET_TYPE}")
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)
set(CMAKE_REQUIRED_INCLUDES ${NCCL_INCLUDE_DIR} ${CUDAToolkit_INCLUDE_DIRS})
set(CMAKE_REQUIRED_QUIET ON)
unset(TPKIT_NCCL_HAS_ALLTOALL CACHE)
check_cxx_source_compiles("#include <nccl.h>\nint main() { return ncclAlltoAll != nullptr ? 0 : 1; }" TPKIT_NCCL_HAS_ALLTOALL)
unset(CMAKE_REQUIRED_INCLUDES)
unset(CMAKE_REQUIRED_QUIET)
set(CMAKE_TRY_COMPILE_TARGET_TYPE "${_tpkit_saved_try_type}")

set(_tpkit_cuda_rpath ${CUBLAS_LIBRARY_DIRS} ${NCCL_LIBRARY_DIRS})
list(REMOVE_DUPLICATES _tpkit_cuda_rpath)

add_library(tpkit_cuda SHARED ${TPKIT_CUDA_SOURCES} ${CMAKE_JS_SRC})
set_target_properties(tpkit_cuda PROPERTIES
  PREFIX ""
  SUFFIX ".node"
  CUDA_STANDARD 17
  CUDA_STANDARD_REQUIRED ON
  CUDA_RUNTIME_LIBRARY Static
  CXX_VISIBILITY_PRESET hidden
  CUDA_VISIBILITY_PRESET hidden
  VISIBILITY_INLINES_HIDDEN ON
  # cuBLAS and NCCL load from where they were found, without LD_LIBRARY_PATH.
  BUILD_RPATH "${_tpkit_cuda_rpath}"
  INSTALL_RPATH "${_tpkit_cuda_rpath}")
# cuBLAS / NCCL headers first: a toolkit that ships its own cublas_v2.h must not shadow the library we link.
target_include_directories(tpkit_cuda PRIVATE
  ${CUBLAS_INCLUDE_DIR} ${NCCL_INCLUDE_DIR} ${CMAKE_JS_INC} ${NODE_ADDON_API_DIR} ${CUDAToolkit_INCLUDE_DIRS})
target_compile_definitions(tpkit_cuda PRIVATE
  $<$<COMPILE_LANGUAGE:CXX>:NAPI_VERSION=8 NODE_ADDON_API_CPP_EXCEPTIONS NODE_ADDON_API_CPP_EXCEPTIONS_ALL NODE_ADDON_API_DISABLE_DEPRECATED>)
if(TPKIT_NCCL_HAS_ALLTOALL)
  target_compile_definitions(tpkit_cuda PRIVATE TPKIT_NCCL_HAS_ALLTOALL=1)
endif()
target_compile_options(tpkit_cuda PRIVATE
  $<$<COMPILE_LANGUAGE:CXX>:-O3 -Wall -Wextra -Wno-unused-parameter>
  $<$<COMPILE_LANGUAGE:CUDA>:-O3>)
# Static cudart, with its symbols kept private to this addon (no clash with another library's cudart).
target_link_libraries(tpkit_cuda PRIVATE ${CMAKE_JS_LIB} CUBLAS::cublas CUBLAS::cublasLt NCCL::nccl CUDA::cudart_static)
target_link_options(tpkit_cuda PRIVATE "LINKER:--exclude-libs,ALL")

set(TPKIT_CUDA_BUILT ON CACHE INTERNAL "whether tpkit_cuda.node is built")
set(TPKIT_CUDA_SKIP_REASON "" CACHE INTERNAL "why tpkit_cuda.node is not built")
message(STATUS "tpkit: building the CUDA addon (tpkit_cuda.node): CUDA ${CUDAToolkit_VERSION}, "
               "cuBLAS ${CUBLAS_VERSION} (${CUBLAS_LIBRARY}), NCCL ${NCCL_VERSION} (${NCCL_LIBRARY}), "
               "architectures ${CMAKE_CUDA_ARCHITECTURES}, ncclAlltoAll ${TPKIT_NCCL_HAS_ALLTOALL}")
