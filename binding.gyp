{
  "targets": [
    {
      "target_name": "fleetcast_native",
      "sources": ["native/addon.cc", "native/malloc_tune.cc", "native/sd_notify.cc", "native/udp_socket.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra"],
      "conditions": [["OS!='linux'", {"sources!": ["native/sd_notify.cc", "native/udp_socket.cc"]}]]
    }
  ]
}
