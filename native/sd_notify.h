#pragma once
#include <napi.h>

// sdNotify(state: string): number — sends `state` to $NOTIFY_SOCKET.
// Returns 1 when sent, 0 when NOTIFY_SOCKET is unset, -errno on failure.
// Hot-path style: never throws for socket errors, only for bad arguments.
Napi::Value SdNotify(const Napi::CallbackInfo& info);
