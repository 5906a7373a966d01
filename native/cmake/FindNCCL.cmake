# FindNCCL
# --------
# Finds NCCL from a system install (libnccl-dev), a CUDA toolkit folder, or NVIDIA's `nvidia-nccl-cu13` /
# `nvidia-nccl-cu12` Python wheel (which ships only the versioned soname libnccl.so.2).
#
# Search order:
#   1. NCCL_ROOT (CMake cache/normal variable, then environment variable)
#   2. the `nvidia` Python package's folders (<site-packages>/nvidia/nccl)
#   3. CUDAToolkit_ROOT / CUDA_PATH / CUDA_HOME, /usr/local/cuda, /usr (standard system paths)
#
# Result variables:
#   NCCL_FOUND, NCCL_INCLUDE_DIR, NCCL_LIBRARY, NCCL_LIBRARY_DIRS, NCCL_VERSION (e.g. 2.30.7)
# Imported target:
#   NCCL::nccl

include(FindPackageHandleStandardArgs)

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

set(_nccl_hints "")
if(NCCL_ROOT)
  list(APPEND _nccl_hints "${NCCL_ROOT}")
endif()
if(DEFINED ENV{NCCL_ROOT} AND NOT "$ENV{NCCL_ROOT}" STREQUAL "")
  list(APPEND _nccl_hints "$ENV{NCCL_ROOT}")
endif()
foreach(_d IN LISTS _TPKIT_NVIDIA_PY_DIRS)
  list(APPEND _nccl_hints "${_d}/nccl")
endforeach()
if(CUDAToolkit_ROOT)
  list(APPEND _nccl_hints "${CUDAToolkit_ROOT}")
endif()
foreach(_v CUDA_PATH CUDA_HOME CUDAToolkit_ROOT)
  if(DEFINED ENV{${_v}} AND NOT "$ENV{${_v}}" STREQUAL "")
    list(APPEND _nccl_hints "$ENV{${_v}}")
  endif()
endforeach()
list(APPEND _nccl_hints /usr/local/cuda /usr)

find_path(NCCL_INCLUDE_DIR NAMES nccl.h
  HINTS ${_nccl_hints}
  PATH_SUFFIXES include targets/x86_64-linux/include targets/sbsa-linux/include)
find_library(NCCL_LIBRARY NAMES nccl libnccl.so.2 NAMES_PER_DIR
  HINTS ${_nccl_hints}
  PATH_SUFFIXES lib lib64 lib/x86_64-linux-gnu targets/x86_64-linux/lib targets/sbsa-linux/lib)

if(NCCL_INCLUDE_DIR AND EXISTS "${NCCL_INCLUDE_DIR}/nccl.h")
  file(STRINGS "${NCCL_INCLUDE_DIR}/nccl.h" _nccl_ver REGEX "^#define NCCL_(MAJOR|MINOR|PATCH) +[0-9]+")
  foreach(_part MAJOR MINOR PATCH)
    string(REGEX MATCH "NCCL_${_part} +([0-9]+)" _m "${_nccl_ver}")
    set(NCCL_VERSION_${_part} "${CMAKE_MATCH_1}")
  endforeach()
  if(NOT NCCL_VERSION_MAJOR STREQUAL "")
    set(NCCL_VERSION "${NCCL_VERSION_MAJOR}.${NCCL_VERSION_MINOR}.${NCCL_VERSION_PATCH}")
  endif()
endif()

find_package_handle_standard_args(NCCL
  REQUIRED_VARS NCCL_LIBRARY NCCL_INCLUDE_DIR
  VERSION_VAR NCCL_VERSION)

if(NCCL_FOUND)
  get_filename_component(NCCL_LIBRARY_DIRS "${NCCL_LIBRARY}" DIRECTORY)
  if(NOT TARGET NCCL::nccl)
    add_library(NCCL::nccl UNKNOWN IMPORTED)
    set_target_properties(NCCL::nccl PROPERTIES
      IMPORTED_LOCATION "${NCCL_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${NCCL_INCLUDE_DIR}")
  endif()
endif()

mark_as_advanced(NCCL_INCLUDE_DIR NCCL_LIBRARY)
