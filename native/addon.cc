// fleetcast's native addon. Kept deliberately thin (STYLE.md): one function per OS
// concern; validation, defaults and policy live in TypeScript (src/native/binding.ts).
#include <napi.h>
#ifdef __linux__
#include "sd_notify.h"
#endif

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
#ifdef __linux__
  exports.Set("sdNotify", Napi::Function::New(env, SdNotify, "sdNotify"));
#endif
  exports.Set("abiVersion", Napi::Number::New(env, 1));
  return exports;
}

NODE_API_MODULE(fleetcast_native, Init)
