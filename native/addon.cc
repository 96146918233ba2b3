// fleetcast's native addon. Kept deliberately thin (STYLE.md): one ObjectWrap per OS
// handle (UdpSocket), sdNotify and allocator settings (setMallocMmapThreshold, setMallocArenaMax, mallocTrim)
// and dropCleanFilePages;
// validation, defaults and policy live in TypeScript (src/transport/binding.ts, src/transport/native-transport.ts).
#include <napi.h>
#include "malloc_tune.h"
#ifdef __linux__
#include "sd_notify.h"
#include "udp_socket.h"
#endif

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
#ifdef __linux__
  exports.Set("sdNotify", Napi::Function::New(env, SdNotify, "sdNotify"));
  exports.Set("UdpSocket", UdpSocket::Init(env));
  exports.Set("ifNameToIndex", Napi::Function::New(env, IfNameToIndex, "ifNameToIndex"));
  exports.Set("metaWords", Napi::Number::New(env, UdpSocket::kMetaWords));
  exports.Set("counterCount", Napi::Number::New(env, kCounterCount));
#endif
  exports.Set("setMallocMmapThreshold", Napi::Function::New(env, SetMallocMmapThreshold, "setMallocMmapThreshold"));
  exports.Set("setMallocArenaMax", Napi::Function::New(env, SetMallocArenaMax, "setMallocArenaMax"));
  exports.Set("dropCleanFilePages", Napi::Function::New(env, DropCleanFilePages, "dropCleanFilePages"));
  exports.Set("mallocTrim", Napi::Function::New(env, MallocTrim, "mallocTrim"));
  exports.Set("abiVersion", Napi::Number::New(env, 2));
  return exports;
}

NODE_API_MODULE(fleetcast_native, Init)
