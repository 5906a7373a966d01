{
  "targets": [
    {
      "target_name": "tpkit_core",
      "sources": [
        "native/core/addon.cc",
        "native/core/async_work.cc",
        "native/core/attention.cc",
        "native/core/blas.cc",
        "native/core/gloo_comm.cc",
        "native/core/js_store.cc",
        "native/core/kernels.cc",
        "native/core/shm_comm.cc"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "/usr/include/x86_64-linux-gnu/openblas-pthread",
        "/usr/include/openblas"
      ],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags_cc": ["-std=c++17", "-O3", "-fexceptions", "-Wno-unused-parameter"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "libraries": ["-lgloo", "-lopenblas", "-lpthread"]
    }
  ]
}
