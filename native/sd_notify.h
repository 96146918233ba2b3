#pragma once
#include <napi.h>

// sdNotify(socket: string, state: string): number — sends `state` to the
// AF_UNIX datagram socket `socket` ($NOTIFY_SOCKET; '@' = abstract).
// Returns 1 when sent, 0 when socket is empty, -errno on failure.
// Hot-path style: never throws for socket errors, only for bad arguments.
Napi::Value SdNotify(const Napi::CallbackInfo& info);
