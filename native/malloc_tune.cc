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

#ifdef __linux__
#include <sys/mman.h>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#endif

Napi::Value DropCleanFilePages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
#ifdef __linux__
  FILE* f = fopen("/proc/self/smaps", "re");
  if (!f) return Napi::Number::New(env, -1);
  // Each mapping is a header line ("start-end perms offset dev inode path") followed by
  // "Key: value" lines, Anonymous among them. A mapping is advised when its Anonymous
  // line is read, so only what the kernel reported as holding no private page is.
  char line[8192];
  uint64_t start = 0, end = 0;
  bool candidate = false;
  double advised = 0;
  while (fgets(line, sizeof line, f)) {
    uint64_t s, e;
    char perms[8];
    unsigned long long offset;
    char dev[16];
    unsigned long inode;
    int pathAt = 0;
    if (sscanf(line, "%" SCNx64 "-%" SCNx64 " %7s %llx %15s %lu %n", &s, &e, perms, &offset, dev, &inode, &pathAt) == 6 && pathAt > 0) {
      start = s;
      end = e;
      candidate = inode != 0 && perms[1] != 'w' && line[pathAt] == '/';
    } else if (strncmp(line, "Anonymous:", 10) == 0) {
      if (candidate && strtoull(line + 10, nullptr, 10) == 0 && end > start &&
          madvise(reinterpret_cast<void*>(start), end - start, MADV_DONTNEED) == 0) {
        advised += double(end - start);
      }
      candidate = false;
    }
  }
  fclose(f);
  return Napi::Number::New(env, advised);
#else
  return Napi::Number::New(env, 0);
#endif
}
