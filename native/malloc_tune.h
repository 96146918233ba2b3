#pragma once
#include <napi.h>

// setMallocMmapThreshold(bytes: number): boolean — mallopt(M_MMAP_THRESHOLD, bytes)
// under glibc: allocations of at least `bytes` (unit buffers, receive rings) get
// mappings of their own, given back to the kernel when freed. Setting it also turns
// off glibc's sliding threshold, which otherwise moves such buffers onto the heap,
// where freed ones stay resident (issue 16). false where there is no glibc or the
// value was refused. Policy (whether, how much) is the caller's, in TypeScript.
Napi::Value SetMallocMmapThreshold(const Napi::CallbackInfo& info);

// setMallocArenaMax(arenas: number): boolean — mallopt(M_ARENA_MAX, arenas) under glibc.
// Threads that allocate (libuv's pool, V8's platform workers) otherwise get malloc arenas
// of their own, each holding freed memory resident (issue 16). Call it before those
// threads first allocate. false where there is no glibc or the value was refused.
Napi::Value SetMallocArenaMax(const Napi::CallbackInfo& info);

// mallocTrim(): boolean — malloc_trim(0) under glibc: gives the kernel back the free
// pages of every arena. true when some memory was released.
Napi::Value MallocTrim(const Napi::CallbackInfo& info);

// dropCleanFilePages(): number — on Linux, madvise(MADV_DONTNEED) over every read-only,
// file-backed mapping of this process whose smaps entry shows no Anonymous (private,
// copied-on-write) pages: their resident pages leave the process's resident set, and any
// page used again faults back in from the page cache. Writable mappings and those holding
// private copies (relocated data, RELRO) are never touched. Returns the bytes of the
// mappings advised (their length, not what was resident); -1 when smaps cannot be read.
// When and how often is the caller's policy (memory-tuning.ts).
Napi::Value DropCleanFilePages(const Napi::CallbackInfo& info);
