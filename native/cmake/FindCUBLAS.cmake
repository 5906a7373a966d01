# FindCUBLAS
# ----------
# Finds cuBLAS and cuBLASLt from a CUDA toolkit or from NVIDIA's `nvidia-cublas` Python wheel (which ships
# only versioned sonames such as libcublas.so.13, so plain `find_library(NAMES cublas)` misses it).
#
# Search order:
#   1. CUBLAS_ROOT (CMake cache/normal variable, then environment variable)
#   2. the `nvidia` Python package's folders (<site-packages>/nvidia/{cu13,cu12,cublas})
#   3. CUDAToolkit_ROOT / CUDA_PATH / CUDA_HOME, /usr/local/cuda, /usr (standard system paths)
#
# Result variables:
#   CUBLAS_FOUND, CUBLAS_INCLUDE_DIR, CUBLAS_LIBRARY, CUBLASLT_LIBRARY, CUBLAS_LIBRARY_DIRS,
#   CUBLAS_VERSION (e.g. 13.1.1), CUBLAS_VERSION_MAJOR
# Imported targets:
#   CUBLAS::cublas, CUBLAS::cublasLt

include(FindPackageHandleStandardArgs)

# The `nvidia` namespace package's folders, asked from python3 once per configure (failure is fine: no wheels).
if(NOT DEFINED _TPKIT_NVIDIA_PY_DIRS)
  set(_tpkit_nv_dirs "")
  find_program(_TPKIT_PYTHON3 NAMES python3 python)
  if(_TPKIT_PYTHON3)
    execute_process(
      COMMAND "${_TPKIT_PYTHON3}" -c "import nvidia, os; print(';'.join(os.path.abspath(p) for p in nvidia.__path__))"
      OUTPUT_VARIABLE _tpkit_nv_out ERROR_QUIET RESULT_VARIABLE _tpkit_nv_rc OUTPUT_STRIP_TRAILING_WHITESPACE)
    if(_tpkit_nv_rc EQUAL 0)
      set(_tpkit_nv_dirs "${_tpkit_nv_out}")
    endif()
  endif()
  set(_TPKIT_NVIDIA_PY_DIRS "${_tpkit_nv_dirs}")
endif()

set(_cublas_hints "")
if(CUBLAS_ROOT)
  list(APPEND _cublas_hints "${CUBLAS_ROOT}")
endif()
if(DEFINED ENV{CUBLAS_ROOT} AND NOT "$ENV{CUBLAS_ROOT}" STREQUAL "")
  list(APPEND _cublas_hints "$ENV{CUBLAS_ROOT}")
endif()
foreach(_d IN LISTS _TPKIT_NVIDIA_PY_DIRS)
  list(APPEND _cublas_hints "${_d}/cu13" "${_d}/cu12" "${_d}/cublas")
endforeach()
foreach(_v CUDAToolkit_ROOT)
  if(${_v})
    list(APPEND _cublas_hints "${${_v}}")
  endif()
endforeach()
foreach(_v CUDA_PATH CUDA_HOME CUDAToolkit_ROOT)
  if(DEFINED ENV{${_v}} AND NOT "$ENV{${_v}}" STREQUAL "")
    list(APPEND _cublas_hints "$ENV{${_v}}")
  endif()
endforeach()
if(CUDAToolkit_LIBRARY_ROOT)
  list(APPEND _cublas_hints "${CUDAToolkit_LIBRARY_ROOT}")
endif()
list(APPEND _cublas_hints /usr/local/cuda /usr)

find_path(CUBLAS_INCLUDE_DIR NAMES cublas_v2.h
  HINTS ${_cublas_hints} ${CUDAToolkit_INCLUDE_DIRS}
  PATH_SUFFIXES include targets/x86_64-linux/include targets/sbsa-linux/include)
find_library(CUBLAS_LIBRARY NAMES cublas libcublas.so.13 libcublas.so.12 NAMES_PER_DIR
  HINTS ${_cublas_hints}
  PATH_SUFFIXES lib lib64 lib/x86_64-linux-gnu targets/x86_64-linux/lib targets/sbsa-linux/lib)
find_library(CUBLASLT_LIBRARY NAMES cublasLt libcublasLt.so.13 libcublasLt.so.12 NAMES_PER_DIR
  HINTS ${_cublas_hints}
  PATH_SUFFIXES lib lib64 lib/x86_64-linux-gnu targets/x86_64-linux/lib targets/sbsa-linux/lib)

if(CUBLAS_INCLUDE_DIR AND EXISTS "${CUBLAS_INCLUDE_DIR}/cublas_api.h")
  file(STRINGS "${CUBLAS_INCLUDE_DIR}/cublas_api.h" _cublas_ver REGEX "^#define CUBLAS_VER_(MAJOR|MINOR|PATCH) +[0-9]+")
  foreach(_part MAJOR MINOR PATCH)
    string(REGEX MATCH "CUBLAS_VER_${_part} +([0-9]+)" _m "${_cublas_ver}")
    set(CUBLAS_VERSION_${_part} "${CMAKE_MATCH_1}")
  endforeach()
  if(NOT CUBLAS_VERSION_MAJOR STREQUAL "")
    set(CUBLAS_VERSION "${CUBLAS_VERSION_MAJOR}.${CUBLAS_VERSION_MINOR}.${CUBLAS_VERSION_PATCH}")
  endif()
endif()

find_package_handle_standard_args(CUBLAS
  REQUIRED_VARS CUBLAS_LIBRARY CUBLASLT_LIBRARY CUBLAS_INCLUDE_DIR
  VERSION_VAR CUBLAS_VERSION)

if(CUBLAS_FOUND)
  get_filename_component(_cublas_dir "${CUBLAS_LIBRARY}" DIRECTORY)
  get_filename_component(_cublaslt_dir "${CUBLASLT_LIBRARY}" DIRECTORY)
  set(CUBLAS_LIBRARY_DIRS "${_cublas_dir}")
  list(APPEND CUBLAS_LIBRARY_DIRS "${_cublaslt_dir}")
  list(REMOVE_DUPLICATES CUBLAS_LIBRARY_DIRS)
  if(NOT TARGET CUBLAS::cublasLt)
    add_library(CUBLAS::cublasLt UNKNOWN IMPORTED)
    set_target_properties(CUBLAS::cublasLt PROPERTIES
      IMPORTED_LOCATION "${CUBLASLT_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${CUBLAS_INCLUDE_DIR}")
  endif()
  if(NOT TARGET CUBLAS::cublas)
    add_library(CUBLAS::cublas UNKNOWN IMPORTED)
    set_target_properties(CUBLAS::cublas PROPERTIES
      IMPORTED_LOCATION "${CUBLAS_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${CUBLAS_INCLUDE_DIR}"
      INTERFACE_LINK_LIBRARIES CUBLAS::cublasLt)
  endif()
endif()

mark_as_advanced(CUBLAS_INCLUDE_DIR CUBLAS_LIBRARY CUBLASLT_LIBRARY)
