// sd_notify(3) without libsystemd: one datagram to the AF_UNIX socket the caller
// names (systemd's $NOTIFY_SOCKET). A leading '@' names an abstract socket (Linux), as in
// systemd's own sd_notify implementation.
#include "sd_notify.h"

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <string>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

Napi::Value SdNotify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsString()) {
    Napi::TypeError::New(env, "sdNotify(socket: string, state: string)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  // The socket comes from JS (process.env.NOTIFY_SOCKET there): worker threads have
  // their own copy of the environment, which getenv(3) would not see.
  std::string socket_path = info[0].As<Napi::String>().Utf8Value();
  std::string state = info[1].As<Napi::String>().Utf8Value();
  const char* path = socket_path.c_str();
  if (path[0] == '\0') return Napi::Number::New(env, 0);

  size_t len = std::strlen(path);
  sockaddr_un addr;
  std::memset(&addr, 0, sizeof(addr));
  addr.sun_family = AF_UNIX;
  if (path[0] != '/' && path[0] != '@') return Napi::Number::New(env, -EAFNOSUPPORT);
  if (len >= sizeof(addr.sun_path)) return Napi::Number::New(env, -ENAMETOOLONG);
  std::memcpy(addr.sun_path, path, len);
  if (path[0] == '@') addr.sun_path[0] = '\0';
  socklen_t addrlen = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len);
  if (path[0] == '/') addrlen += 1;  // include the terminating NUL for path sockets

  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Napi::Number::New(env, -errno);
  ssize_t n = sendto(fd, state.data(), state.size(), MSG_NOSIGNAL,
                     reinterpret_cast<sockaddr*>(&addr), addrlen);
  int err = errno;
  close(fd);
  if (n < 0) return Napi::Number::New(env, -err);
  return Napi::Number::New(env, 1);
}
