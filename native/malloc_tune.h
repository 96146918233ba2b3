#pragma once
#include <napi.h>

// setMallocMmapThreshold(bytes: number): boolean — mallopt(M_MMAP_THRESHOLD, bytes)
// under glibc: allocations of at least `bytes` (unit buffers, receive rings) get
// mappings of their own, given back to the kernel when freed. Setting it also turns
// off glibc's sliding threshold, which otherwise moves such buffers onto the heap,
// where freed ones stay resident (issue 16). false where there is no glibc or the
// value was refused. Policy (whether, how much) is the caller's, in TypeScript.
Napi::Value SetMallocMmapThreshold(const Napi::CallbackInfo& info);
