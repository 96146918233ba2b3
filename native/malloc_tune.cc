#include "malloc_tune.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

Napi::Value SetMallocMmapThreshold(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) {
    Napi::TypeError::New(env, "setMallocMmapThreshold(bytes: number)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
#if defined(__GLIBC__)
  int64_t bytes = info[0].As<Napi::Number>().Int64Value();
  // glibc caps the threshold at HEAP_MAX_SIZE / 2 (32 MiB on 64-bit) and refuses more.
  bool ok = bytes > 0 && bytes <= (int64_t(1) << 25) && mallopt(M_MMAP_THRESHOLD, static_cast<int>(bytes)) == 1;
  return Napi::Boolean::New(env, ok);
#else
  return Napi::Boolean::New(env, false);
#endif
}
