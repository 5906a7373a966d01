# The CPU backend's system libraries (Debian/Ubuntu packages), shared by the addon build (CMakeLists.txt) and
# the raw benchmark peers (bench/native). Fails with one message naming the package to install.
# Sets OpenBLAS_INCLUDE_DIRS / OpenBLAS_LIBRARIES, TPKIT_CBLAS_INCLUDE (the folder of cblas.h) and the
# imported target `gloo`.
find_package(OpenBLAS CONFIG QUIET)
if(NOT OpenBLAS_FOUND)
  message(FATAL_ERROR "tpkit: OpenBLAS not found. Install it with: sudo apt-get install libopenblas-dev")
endif()
find_package(Gloo CONFIG QUIET)
if(NOT TARGET gloo)
  message(FATAL_ERROR "tpkit: Gloo not found. Install it with: sudo apt-get install libgloo-dev")
endif()
find_path(TPKIT_CBLAS_INCLUDE cblas.h HINTS ${OpenBLAS_INCLUDE_DIRS} PATH_SUFFIXES openblas openblas-pthread)
