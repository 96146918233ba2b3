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

Napi::Value SetMallocArenaMax(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) {
    Napi::TypeError::New(env, "setMallocArenaMax(arenas: number)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
#if defined(__GLIBC__)
  int64_t arenas = info[0].As<Napi::Number>().Int64Value();
  bool ok = arenas >= 1 && arenas <= 1024 && mallopt(M_ARENA_MAX, static_cast<int>(arenas)) == 1;
  return Napi::Boolean::New(env, ok);
#else
  return Napi::Boolean::New(env, false);
#endif
}

Napi::Value MallocTrim(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
#if defined(__GLIBC__)
  // pad 0: keep nothing spare at the top of the heap. Since glibc 2.8 it also returns
  // the whole free pages inside every arena (madvise(MADV_DONTNEED)), not only the top.
  return Napi::Boolean::New(env, malloc_trim(0) == 1);
#else
  return Napi::Boolean::New(env, false);
#endif
}
