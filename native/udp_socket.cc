// Batched UDP for fleetcast. Techniques borrowed, with thanks:
// - recvmmsg/sendmmsg batching and UDP GSO via a UDP_SEGMENT cmsg over several
//   iovecs: quinn-udp (quinn-rs/quinn, quinn-udp/src/unix.rs).
// - a per-batch callback into JS reading a preallocated buffer through a shared
//   counters view: udx-native (holepunchto/udx-native).
// - uv_poll on the environment's own loop + MakeCallback + env cleanup hooks, so
//   the socket works in worker threads: serialport/bindings-cpp's poller.
#include "udp_socket.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/udp.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <string>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

namespace {

constexpr size_t kMaxSendBatch = 1024;
constexpr size_t kMaxGsoSegments = 64;
constexpr size_t kMaxGsoBytes = 65000;
constexpr int kMaxReadRounds = 16;
constexpr size_t kCtrlBytes = 64;

Napi::Error ErrnoError(Napi::Env env, const char* syscall, int err) {
  std::string msg = std::string(syscall) + " " + uv_err_name(-err) + ": " + strerror(err);
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, uv_err_name(-err)));
  e.Set("errno", Napi::Number::New(env, -err));
  e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

template <typename T>
T* TypedData(Napi::Value v, size_t* length) {
  auto ta = v.As<Napi::TypedArray>();
  *length = ta.ElementLength();
  auto ab = ta.ArrayBuffer();
  return reinterpret_cast<T*>(static_cast<uint8_t*>(ab.Data()) + ta.ByteOffset());
}

}  // namespace

Napi::Function UdpSocket::Init(Napi::Env env) {
  return DefineClass(env, "UdpSocket",
                     {
                         InstanceMethod("bind", &UdpSocket::Bind),
                         InstanceMethod("joinGroup", &UdpSocket::JoinGroup),
                         InstanceMethod("leaveGroup", &UdpSocket::LeaveGroup),
                         InstanceMethod("setMulticastInterface", &UdpSocket::SetMulticastInterface),
                         InstanceMethod("setMulticastTTL", &UdpSocket::SetMulticastTTL),
                         InstanceMethod("setMulticastLoopback", &UdpSocket::SetMulticastLoopback),
                         InstanceMethod("setTOS", &UdpSocket::SetTOS),
                         InstanceMethod("setBufferSize", &UdpSocket::SetBufferSize),
                         InstanceMethod("setPktInfo", &UdpSocket::SetPktInfo),
                         InstanceMethod("probeGso", &UdpSocket::ProbeGso),
                         InstanceMethod("setGso", &UdpSocket::SetGso),
                         InstanceMethod("setGro", &UdpSocket::SetGro),
                         InstanceMethod("start", &UdpSocket::Start),
                         InstanceMethod("wantWritable", &UdpSocket::WantWritable),
                         InstanceMethod("sendBatch", &UdpSocket::SendBatch),
                         InstanceMethod("localPort", &UdpSocket::LocalPort),
                         InstanceMethod("close", &UdpSocket::Close),
                     });
}

// new UdpSocket(family, slab, slots, slotBytes, meta, counters, onBatch, onWritable)
UdpSocket::UdpSocket(const Napi::CallbackInfo& info) : Napi::ObjectWrap<UdpSocket>(info) {
  Napi::Env env = info.Env();
  env_ = env;
  if (info.Length() < 8 || !info[0].IsNumber() || !info[1].IsTypedArray() || !info[2].IsNumber() || !info[3].IsNumber() ||
      !info[4].IsTypedArray() || !info[5].IsTypedArray() || !info[6].IsFunction() || !info[7].IsFunction()) {
    Napi::TypeError::New(env, "UdpSocket(family, slab, slots, slotBytes, meta, counters, onBatch, onWritable)").ThrowAsJavaScriptException();
    return;
  }
  int fam = info[0].As<Napi::Number>().Int32Value();
  family_ = fam == 6 ? AF_INET6 : AF_INET;
  size_t slab_len = 0, meta_len = 0, counters_len = 0;
  slab_ = TypedData<uint8_t>(info[1], &slab_len);
  slots_ = info[2].As<Napi::Number>().Uint32Value();
  slot_bytes_ = info[3].As<Napi::Number>().Uint32Value();
  meta_ = TypedData<uint32_t>(info[4], &meta_len);
  counters_ = TypedData<double>(info[5], &counters_len);
  if (info[1].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array || info[4].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array ||
      info[5].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
    Napi::TypeError::New(env, "slab must be Uint8Array, meta Uint32Array, counters Float64Array").ThrowAsJavaScriptException();
    return;
  }
  if (slots_ == 0 || slot_bytes_ == 0 || slab_len < slots_ * slot_bytes_ || meta_len < slots_ * kMetaWords || counters_len < kCounterCount) {
    Napi::RangeError::New(env, "slab, meta or counters too small for slots x slotBytes").ThrowAsJavaScriptException();
    return;
  }
  slab_ref_ = Napi::Persistent(info[1].As<Napi::Object>());
  meta_ref_ = Napi::Persistent(info[4].As<Napi::Object>());
  counters_ref_ = Napi::Persistent(info[5].As<Napi::Object>());
  on_batch_ = Napi::Persistent(info[6].As<Napi::Function>());
  on_writable_ = Napi::Persistent(info[7].As<Napi::Function>());

  fd_ = socket(family_, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd_ < 0) {
    ErrnoError(env, "socket", errno).ThrowAsJavaScriptException();
    return;
  }
  rx_msgs_.resize(slots_);
  rx_iov_.resize(slots_);
  rx_addr_.resize(slots_);
  rx_ctrl_.resize(slots_ * kCtrlBytes);
  for (size_t i = 0; i < slots_; i++) {
    rx_iov_[i].iov_base = slab_ + i * slot_bytes_;
    rx_iov_[i].iov_len = slot_bytes_;
  }
  napi_value resource_name;
  napi_create_string_utf8(env, "fleetcast:UdpSocket", NAPI_AUTO_LENGTH, &resource_name);
  napi_async_init(env, nullptr, resource_name, &async_ctx_);
  // Async cleanup (N-API 8): closing a uv handle finishes on a later loop turn, and
  // the environment (a worker's, say) must not unload this library before it does.
  napi_add_async_cleanup_hook(env, AsyncCleanupHook, this, &cleanup_hook_);
}

UdpSocket::~UdpSocket() {
  DoClose();
  if (!env_gone_) {
    if (cleanup_hook_) napi_remove_async_cleanup_hook(cleanup_hook_);
    if (async_ctx_) napi_async_destroy(env_, async_ctx_);
  }
}

// The environment (a worker thread, or the main one at exit) is being torn down
// while the socket is open: close the OS handles and tell Node we are done only
// once libuv has finished closing the poll handle. No other N-API calls after this.
void UdpSocket::AsyncCleanupHook(napi_async_cleanup_hook_handle handle, void* arg) {
  auto* self = static_cast<UdpSocket*>(arg);
  self->env_gone_ = true;
  self->started_ = false;  // the self reference dies with the environment
  self->cleanup_hook_ = nullptr;
  if (self->poll_) {
    uv_poll_t* p = self->poll_;
    self->poll_ = nullptr;
    uv_poll_stop(p);
    p->data = handle;
    uv_close(reinterpret_cast<uv_handle_t*>(p), OnClosedAfterTeardown);
  } else {
    napi_remove_async_cleanup_hook(handle);
  }
  if (self->fd_ >= 0) {
    ::close(self->fd_);
    self->fd_ = -1;
  }
}

void UdpSocket::OnClosedAfterTeardown(uv_handle_t* handle) {
  auto hook = static_cast<napi_async_cleanup_hook_handle>(handle->data);
  delete reinterpret_cast<uv_poll_t*>(handle);
  napi_remove_async_cleanup_hook(hook);
}

void UdpSocket::OnClosed(uv_handle_t* handle) { delete reinterpret_cast<uv_poll_t*>(handle); }

void UdpSocket::DoClose() {
  if (poll_) {
    poll_->data = nullptr;
    uv_poll_stop(poll_);
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), OnClosed);
    poll_ = nullptr;
  }
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  if (started_) {
    started_ = false;
    if (!self_.IsEmpty()) self_.Unref();
  }
}

bool UdpSocket::ParseAddress(Napi::Env env, const std::string& addr, int port, sockaddr_storage* out, socklen_t* len) {
  memset(out, 0, sizeof(*out));
  if (family_ == AF_INET) {
    auto* sa = reinterpret_cast<sockaddr_in*>(out);
    sa->sin_family = AF_INET;
    sa->sin_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET, addr.c_str(), &sa->sin_addr) != 1) {
      Napi::TypeError::New(env, "not an IPv4 address: " + addr).ThrowAsJavaScriptException();
      return false;
    }
    *len = sizeof(sockaddr_in);
  } else {
    auto* sa = reinterpret_cast<sockaddr_in6*>(out);
    sa->sin6_family = AF_INET6;
    sa->sin6_port = htons(static_cast<uint16_t>(port));
    std::string a = addr;
    size_t pct = a.find('%');
    if (pct != std::string::npos) {
      sa->sin6_scope_id = if_nametoindex(a.substr(pct + 1).c_str());
      a = a.substr(0, pct);
    }
    if (inet_pton(AF_INET6, a.c_str(), &sa->sin6_addr) != 1) {
      Napi::TypeError::New(env, "not an IPv6 address: " + addr).ThrowAsJavaScriptException();
      return false;
    }
    *len = sizeof(sockaddr_in6);
  }
  return true;
}

// bind(address, port, reuseAddr)
Napi::Value UdpSocket::Bind(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string addr = info[0].As<Napi::String>().Utf8Value();
  int port = info[1].As<Napi::Number>().Int32Value();
  bool reuse = info[2].ToBoolean();
  int one = 1;
  if (reuse && setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0) {
    ErrnoError(env, "setsockopt(SO_REUSEADDR)", errno).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (family_ == AF_INET6) setsockopt(fd_, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  sockaddr_storage ss;
  socklen_t len;
  if (!ParseAddress(env, addr, port, &ss, &len)) return env.Undefined();
  if (::bind(fd_, reinterpret_cast<sockaddr*>(&ss), len) < 0) {
    ErrnoError(env, "bind", errno).ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

static Napi::Value Membership(UdpSocket* self, const Napi::CallbackInfo& info, int fd, int family, bool join) {
  Napi::Env env = info.Env();
  std::string group = info[0].As<Napi::String>().Utf8Value();
  unsigned ifindex = info[1].As<Napi::Number>().Uint32Value();
  (void)self;
  if (family == AF_INET) {
    ip_mreqn m;
    memset(&m, 0, sizeof(m));
    if (inet_pton(AF_INET, group.c_str(), &m.imr_multiaddr) != 1) {
      Napi::TypeError::New(env, "not an IPv4 group: " + group).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (info.Length() > 2 && info[2].IsString()) {
      std::string ifaddr = info[2].As<Napi::String>().Utf8Value();
      inet_pton(AF_INET, ifaddr.c_str(), &m.imr_address);
    }
    m.imr_ifindex = static_cast<int>(ifindex);
    if (setsockopt(fd, IPPROTO_IP, join ? IP_ADD_MEMBERSHIP : IP_DROP_MEMBERSHIP, &m, sizeof(m)) < 0) {
      ErrnoError(env, join ? "setsockopt(IP_ADD_MEMBERSHIP)" : "setsockopt(IP_DROP_MEMBERSHIP)", errno).ThrowAsJavaScriptException();
    }
  } else {
    ipv6_mreq m;
    memset(&m, 0, sizeof(m));
    if (inet_pton(AF_INET6, group.c_str(), &m.ipv6mr_multiaddr) != 1) {
      Napi::TypeError::New(env, "not an IPv6 group: " + group).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    m.ipv6mr_interface = ifindex;
    if (setsockopt(fd, IPPROTO_IPV6, join ? IPV6_JOIN_GROUP : IPV6_LEAVE_GROUP, &m, sizeof(m)) < 0) {
      ErrnoError(env, join ? "setsockopt(IPV6_JOIN_GROUP)" : "setsockopt(IPV6_LEAVE_GROUP)", errno).ThrowAsJavaScriptException();
    }
  }
  return env.Undefined();
}

// joinGroup(group, ifindex[, ifaddr])
Napi::Value UdpSocket::JoinGroup(const Napi::CallbackInfo& info) { return Membership(this, info, fd_, family_, true); }
Napi::Value UdpSocket::LeaveGroup(const Napi::CallbackInfo& info) { return Membership(this, info, fd_, family_, false); }

// setMulticastInterface(ifindex[, ifaddr])
Napi::Value UdpSocket::SetMulticastInterface(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  unsigned ifindex = info[0].As<Napi::Number>().Uint32Value();
  int rc;
  if (family_ == AF_INET) {
    ip_mreqn m;
    memset(&m, 0, sizeof(m));
    m.imr_ifindex = static_cast<int>(ifindex);
    if (info.Length() > 1 && info[1].IsString()) inet_pton(AF_INET, info[1].As<Napi::String>().Utf8Value().c_str(), &m.imr_address);
    rc = setsockopt(fd_, IPPROTO_IP, IP_MULTICAST_IF, &m, sizeof(m));
  } else {
    rc = setsockopt(fd_, IPPROTO_IPV6, IPV6_MULTICAST_IF, &ifindex, sizeof(ifindex));
  }
  if (rc < 0) ErrnoError(env, "setsockopt(MULTICAST_IF)", errno).ThrowAsJavaScriptException();
  return env.Undefined();
}

static Napi::Value SetIntOpt(const Napi::CallbackInfo& info, int fd, int level, int name, const char* what, int value) {
  Napi::Env env = info.Env();
  if (setsockopt(fd, level, name, &value, sizeof(value)) < 0) ErrnoError(env, what, errno).ThrowAsJavaScriptException();
  return env.Undefined();
}

Napi::Value UdpSocket::SetMulticastTTL(const Napi::CallbackInfo& info) {
  int v = info[0].As<Napi::Number>().Int32Value();
  if (family_ == AF_INET) return SetIntOpt(info, fd_, IPPROTO_IP, IP_MULTICAST_TTL, "setsockopt(IP_MULTICAST_TTL)", v);
  return SetIntOpt(info, fd_, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, "setsockopt(IPV6_MULTICAST_HOPS)", v);
}

Napi::Value UdpSocket::SetMulticastLoopback(const Napi::CallbackInfo& info) {
  int v = info[0].ToBoolean() ? 1 : 0;
  if (family_ == AF_INET) return SetIntOpt(info, fd_, IPPROTO_IP, IP_MULTICAST_LOOP, "setsockopt(IP_MULTICAST_LOOP)", v);
  return SetIntOpt(info, fd_, IPPROTO_IPV6, IPV6_MULTICAST_LOOP, "setsockopt(IPV6_MULTICAST_LOOP)", v);
}

Napi::Value UdpSocket::SetTOS(const Napi::CallbackInfo& info) {
  int v = info[0].As<Napi::Number>().Int32Value();
  if (family_ == AF_INET) return SetIntOpt(info, fd_, IPPROTO_IP, IP_TOS, "setsockopt(IP_TOS)", v);
  return SetIntOpt(info, fd_, IPPROTO_IPV6, IPV6_TCLASS, "setsockopt(IPV6_TCLASS)", v);
}

// setBufferSize("recv"|"send", bytes, force) -> effective size (as getsockopt reports it)
Napi::Value UdpSocket::SetBufferSize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bool recv = info[0].As<Napi::String>().Utf8Value() == "recv";
  int bytes = info[1].As<Napi::Number>().Int32Value();
  bool force = info[2].ToBoolean();
  int name = recv ? SO_RCVBUF : SO_SNDBUF;
  bool forced = false;
  if (force) forced = setsockopt(fd_, SOL_SOCKET, recv ? SO_RCVBUFFORCE : SO_SNDBUFFORCE, &bytes, sizeof(bytes)) == 0;
  if (!forced && setsockopt(fd_, SOL_SOCKET, name, &bytes, sizeof(bytes)) < 0) {
    ErrnoError(env, recv ? "setsockopt(SO_RCVBUF)" : "setsockopt(SO_SNDBUF)", errno).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int got = 0;
  socklen_t len = sizeof(got);
  getsockopt(fd_, SOL_SOCKET, name, &got, &len);
  Napi::Object r = Napi::Object::New(env);
  r.Set("bytes", Napi::Number::New(env, got));
  r.Set("forced", Napi::Boolean::New(env, forced));
  return r;
}

Napi::Value UdpSocket::SetPktInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int v = info[0].ToBoolean() ? 1 : 0;
  int rc = family_ == AF_INET ? setsockopt(fd_, IPPROTO_IP, IP_PKTINFO, &v, sizeof(v)) : setsockopt(fd_, IPPROTO_IPV6, IPV6_RECVPKTINFO, &v, sizeof(v));
  pktinfo_ = rc == 0 && v;
  return Napi::Boolean::New(env, rc == 0);
}

// probeGso() -> whether the kernel knows UDP_SEGMENT (Linux >= 4.18).
Napi::Value UdpSocket::ProbeGso(const Napi::CallbackInfo& info) {
  int v = 0;
  socklen_t len = sizeof(v);
  return Napi::Boolean::New(info.Env(), getsockopt(fd_, SOL_UDP, UDP_SEGMENT, &v, &len) == 0);
}

Napi::Value UdpSocket::SetGso(const Napi::CallbackInfo& info) {
  gso_ = info[0].ToBoolean();
  return info.Env().Undefined();
}

// setGro(on) -> whether the kernel took UDP_GRO. The caller must size slots for
// 64 KiB coalesced reads first, or a coalesced read would be truncated.
Napi::Value UdpSocket::SetGro(const Napi::CallbackInfo& info) {
  int v = info[0].ToBoolean() ? 1 : 0;
  bool ok = slot_bytes_ >= 65536 && setsockopt(fd_, SOL_UDP, UDP_GRO, &v, sizeof(v)) == 0;
  gro_ = ok && v;
  return Napi::Boolean::New(info.Env(), ok);
}

Napi::Value UdpSocket::LocalPort(const Napi::CallbackInfo& info) {
  sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  if (getsockname(fd_, reinterpret_cast<sockaddr*>(&ss), &len) < 0) return Napi::Number::New(info.Env(), -errno);
  int port = ss.ss_family == AF_INET ? ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port) : ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  return Napi::Number::New(info.Env(), port);
}

void UdpSocket::UpdatePoll() {
  if (!poll_) return;
  int events = UV_READABLE | (want_writable_ ? UV_WRITABLE : 0);
  uv_poll_start(poll_, events, OnPoll);
}

// start(): begin watching the socket on this environment's loop.
Napi::Value UdpSocket::Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (started_ || fd_ < 0) return env.Undefined();
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
    Napi::Error::New(env, "no event loop").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  poll_ = new uv_poll_t;
  int rc = uv_poll_init_socket(loop, poll_, fd_);
  if (rc < 0) {
    delete poll_;
    poll_ = nullptr;
    ErrnoError(env, "uv_poll_init", -rc).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  poll_->data = this;
  started_ = true;
  if (self_.IsEmpty()) self_ = Napi::Weak(info.This().As<Napi::Object>());
  self_.Ref();  // alive while watching, even if JS drops it
  UpdatePoll();
  return env.Undefined();
}

Napi::Value UdpSocket::WantWritable(const Napi::CallbackInfo& info) {
  want_writable_ = info[0].ToBoolean();
  UpdatePoll();
  return info.Env().Undefined();
}

void UdpSocket::CallJs(Napi::FunctionReference& fn, size_t argc, const napi_value* argv) {
  Napi::Env env(env_);
  Napi::HandleScope scope(env);
  napi_value result;
  napi_status st = napi_make_callback(env_, async_ctx_, self_.Value(), fn.Value(), argc, argv, &result);
  if (st == napi_pending_exception) {
    napi_value err;
    napi_get_and_clear_last_exception(env_, &err);
    napi_fatal_exception(env_, err);
  }
}

void UdpSocket::OnPoll(uv_poll_t* handle, int status, int events) {
  auto* self = static_cast<UdpSocket*>(handle->data);
  if (!self || self->fd_ < 0) return;
  if (status < 0) return;
  if (events & UV_READABLE) self->ReadAll();
  if (self->fd_ >= 0 && (events & UV_WRITABLE) && self->want_writable_) {
    self->want_writable_ = false;
    self->UpdatePoll();
    self->CallJs(self->on_writable_, 0, nullptr);
  }
}

void UdpSocket::ReadAll() {
  for (int round = 0; round < kMaxReadRounds && fd_ >= 0; round++) {
    for (size_t i = 0; i < slots_; i++) {
      msghdr& h = rx_msgs_[i].msg_hdr;
      h.msg_name = &rx_addr_[i];
      h.msg_namelen = sizeof(sockaddr_storage);
      h.msg_iov = &rx_iov_[i];
      h.msg_iovlen = 1;
      bool ctrl = pktinfo_ || gro_;
      h.msg_control = ctrl ? &rx_ctrl_[i * kCtrlBytes] : nullptr;
      h.msg_controllen = ctrl ? kCtrlBytes : 0;
      h.msg_flags = 0;
      rx_msgs_[i].msg_len = 0;
    }
    int n = recvmmsg(fd_, rx_msgs_.data(), static_cast<unsigned>(slots_), MSG_DONTWAIT, nullptr);
    counters_[kRxSyscalls]++;
    if (n <= 0) return;  // EAGAIN (drained) or an error the next poll retries
    for (int i = 0; i < n; i++) {
      uint32_t* m = meta_ + i * kMetaWords;
      const msghdr& h = rx_msgs_[i].msg_hdr;
      uint32_t len = rx_msgs_[i].msg_len;
      bool trunc = (h.msg_flags & MSG_TRUNC) != 0;
      uint32_t seg = 0;
      if (gro_) {
        for (cmsghdr* c = CMSG_FIRSTHDR(const_cast<msghdr*>(&h)); c != nullptr; c = CMSG_NXTHDR(const_cast<msghdr*>(&h), c)) {
          if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
            int gs = 0;
            memcpy(&gs, CMSG_DATA(c), sizeof(gs));
            seg = static_cast<uint32_t>(gs) & 0xffff;
          }
        }
      }
      m[0] = std::min<uint32_t>(len, static_cast<uint32_t>(slot_bytes_));
      m[1] = (trunc ? 1 : 0) | (seg < len ? seg << 16 : 0);
      const sockaddr_storage& ss = rx_addr_[i];
      if (ss.ss_family == AF_INET) {
        const auto* sa = reinterpret_cast<const sockaddr_in*>(&ss);
        m[2] = 4;
        m[3] = ntohs(sa->sin_port);
        memcpy(&m[4], &sa->sin_addr, 4);
        m[5] = m[6] = m[7] = 0;
      } else {
        const auto* sa = reinterpret_cast<const sockaddr_in6*>(&ss);
        m[2] = 6;
        m[3] = ntohs(sa->sin6_port);
        memcpy(&m[4], &sa->sin6_addr, 16);
      }
      counters_[kRxDatagrams]++;
      counters_[kRxBytes] += len;
      if (trunc) counters_[kRxTruncated]++;
    }
    counters_[kRxBatches]++;
    {
      Napi::HandleScope scope{Napi::Env(env_)};
      napi_value arg;
      napi_create_uint32(env_, static_cast<uint32_t>(n), &arg);
      CallJs(on_batch_, 1, &arg);
    }
    if (static_cast<size_t>(n) < slots_) return;  // drained
  }
}

// sendBatch(datagrams: Uint8Array[], address, port) -> datagrams sent, or -errno
Napi::Value UdpSocket::SendBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (fd_ < 0) return Napi::Number::New(env, -EBADF);
  if (info.Length() < 3 || !info[0].IsArray() || !info[1].IsString() || !info[2].IsNumber()) {
    Napi::TypeError::New(env, "sendBatch(datagrams, address, port)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array arr = info[0].As<Napi::Array>();
  std::string addr = info[1].As<Napi::String>().Utf8Value();
  int port = info[2].As<Napi::Number>().Int32Value();
  if (addr != last_addr_ || port != last_port_) {
    if (!ParseAddress(env, addr, port, &dest_, &dest_len_)) return env.Undefined();
    last_addr_ = addr;
    last_port_ = port;
  }
  size_t n = std::min<size_t>(arr.Length(), kMaxSendBatch);
  if (n == 0) return Napi::Number::New(env, 0);
  tx_iov_.resize(n);
  tx_msgs_.resize(n);
  tx_ctrl_.resize(n * CMSG_SPACE(sizeof(uint16_t)));
  std::vector<uint32_t> per_msg;  // datagrams in each message
  per_msg.reserve(n);
  double bytes_total = 0;
  for (size_t i = 0; i < n; i++) {
    Napi::Value v = arr.Get(static_cast<uint32_t>(i));
    if (!v.IsTypedArray()) {
      Napi::TypeError::New(env, "datagrams must be Uint8Arrays").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    size_t len = 0;
    uint8_t* p = TypedData<uint8_t>(v, &len);
    tx_iov_[i].iov_base = p;
    tx_iov_[i].iov_len = len;
  }
  size_t m = 0;
  for (size_t i = 0; i < n;) {
    size_t seg = tx_iov_[i].iov_len;
    size_t k = 1;
    if (gso_ && seg > 0) {
      // A run of equal-sized datagrams (the last of the run may be shorter) goes as one
      // super-datagram the kernel segments: UDP_SEGMENT, as quinn-udp does.
      size_t total = seg;
      while (i + k < n && k < kMaxGsoSegments && total + tx_iov_[i + k].iov_len <= kMaxGsoBytes) {
        size_t l = tx_iov_[i + k].iov_len;
        if (l > seg) break;
        total += l;
        k++;
        if (l < seg) break;
      }
    }
    msghdr& h = tx_msgs_[m].msg_hdr;
    memset(&h, 0, sizeof(h));
    h.msg_name = &dest_;
    h.msg_namelen = dest_len_;
    h.msg_iov = &tx_iov_[i];
    h.msg_iovlen = k;
    if (k > 1) {
      char* ctrl = &tx_ctrl_[m * CMSG_SPACE(sizeof(uint16_t))];
      memset(ctrl, 0, CMSG_SPACE(sizeof(uint16_t)));
      h.msg_control = ctrl;
      h.msg_controllen = CMSG_SPACE(sizeof(uint16_t));
      cmsghdr* c = CMSG_FIRSTHDR(&h);
      c->cmsg_level = SOL_UDP;
      c->cmsg_type = UDP_SEGMENT;
      c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
      uint16_t gs = static_cast<uint16_t>(seg);
      memcpy(CMSG_DATA(c), &gs, sizeof(gs));
    }
    per_msg.push_back(static_cast<uint32_t>(k));
    m++;
    i += k;
  }
  int r = sendmmsg(fd_, tx_msgs_.data(), static_cast<unsigned>(m), MSG_DONTWAIT);
  counters_[kTxSyscalls]++;
  if (r < 0) {
    int err = errno;
    if (err == EAGAIN || err == EWOULDBLOCK) {
      counters_[kTxEagain]++;
      return Napi::Number::New(env, 0);
    }
    counters_[kTxErrors]++;
    return Napi::Number::New(env, -err);
  }
  size_t sent = 0;
  for (int j = 0; j < r; j++) {
    sent += per_msg[j];
    if (per_msg[j] > 1) counters_[kTxGsoMessages]++;
    for (uint32_t q = 0; q < tx_msgs_[j].msg_hdr.msg_iovlen; q++) bytes_total += tx_msgs_[j].msg_hdr.msg_iov[q].iov_len;
  }
  if (static_cast<size_t>(r) < m) counters_[kTxEagain]++;
  counters_[kTxDatagrams] += static_cast<double>(sent);
  counters_[kTxBytes] += bytes_total;
  return Napi::Number::New(env, static_cast<double>(sent));
}

Napi::Value UdpSocket::Close(const Napi::CallbackInfo& info) {
  DoClose();
  return info.Env().Undefined();
}

Napi::Value IfNameToIndex(const Napi::CallbackInfo& info) {
  std::string name = info[0].As<Napi::String>().Utf8Value();
  return Napi::Number::New(info.Env(), if_nametoindex(name.c_str()));
}
