#pragma once
#include <napi.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <uv.h>

#include <vector>

// One thin class per OS handle (STYLE.md): a UDP socket watched by uv_poll on the
// calling environment's loop. Validation, defaults and policy live in
// src/transport/native-transport.ts.
//
// Receive: recvmmsg into a ring of `slots` slots of `slotBytes` in a slab the JS
// side owns; per slot the meta array holds
//   [len, flags, family, port, addr0, addr1, addr2, addr3]
// flags: bit 0 = truncated; bits 16..31 = GRO segment size (0: one datagram), when
// UDP_GRO coalesced several datagrams of that size (the last may be shorter) into the slot.
// (addr words are the raw address bytes, IPv4 in addr0). One onBatch(count) per
// batch; the slab views are valid only during that callback.
//
// Send: sendBatch(array of Uint8Array, address, port) -> count sent or -errno,
// straight from JS memory with sendmmsg; with GSO on, runs of equal-sized datagrams
// go as one UDP_SEGMENT super-datagram of several iovecs.
class UdpSocket : public Napi::ObjectWrap<UdpSocket> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit UdpSocket(const Napi::CallbackInfo& info);
  ~UdpSocket() override;

  static constexpr int kMetaWords = 8;

 private:
  Napi::Value Bind(const Napi::CallbackInfo& info);
  Napi::Value JoinGroup(const Napi::CallbackInfo& info);
  Napi::Value LeaveGroup(const Napi::CallbackInfo& info);
  Napi::Value SetMulticastInterface(const Napi::CallbackInfo& info);
  Napi::Value SetMulticastTTL(const Napi::CallbackInfo& info);
  Napi::Value SetMulticastLoopback(const Napi::CallbackInfo& info);
  Napi::Value SetTOS(const Napi::CallbackInfo& info);
  Napi::Value SetBufferSize(const Napi::CallbackInfo& info);
  Napi::Value SetPktInfo(const Napi::CallbackInfo& info);
  Napi::Value ProbeGso(const Napi::CallbackInfo& info);
  Napi::Value SetGso(const Napi::CallbackInfo& info);
  Napi::Value SetGro(const Napi::CallbackInfo& info);
  Napi::Value Start(const Napi::CallbackInfo& info);
  Napi::Value WantWritable(const Napi::CallbackInfo& info);
  Napi::Value SendBatch(const Napi::CallbackInfo& info);
  Napi::Value LocalPort(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);

  static void OnPoll(uv_poll_t* handle, int status, int events);
  static void OnClosed(uv_handle_t* handle);
  static void AsyncCleanupHook(napi_async_cleanup_hook_handle handle, void* arg);
  static void OnClosedAfterTeardown(uv_handle_t* handle);
  void ReadAll();
  void UpdatePoll();
  void DoClose();
  bool ParseAddress(Napi::Env env, const std::string& addr, int port, sockaddr_storage* out, socklen_t* len);
  void CallJs(Napi::FunctionReference& fn, size_t argc, const napi_value* argv);

  int fd_ = -1;
  int family_ = AF_INET;
  bool gso_ = false;
  bool pktinfo_ = false;
  bool gro_ = false;
  bool want_writable_ = false;
  bool started_ = false;
  // Set by the env cleanup hook: the environment is going away, so no more N-API
  // calls (the hook is already removed, references are being torn down).
  bool env_gone_ = false;
  uv_poll_t* poll_ = nullptr;
  napi_env env_ = nullptr;
  napi_async_cleanup_hook_handle cleanup_hook_ = nullptr;

  // Receive ring (memory owned by JS; references keep it alive).
  Napi::ObjectReference slab_ref_;
  Napi::ObjectReference meta_ref_;
  Napi::ObjectReference counters_ref_;
  uint8_t* slab_ = nullptr;
  uint32_t* meta_ = nullptr;
  double* counters_ = nullptr;
  size_t slots_ = 0;
  size_t slot_bytes_ = 0;
  std::vector<mmsghdr> rx_msgs_;
  std::vector<iovec> rx_iov_;
  std::vector<sockaddr_storage> rx_addr_;
  std::vector<char> rx_ctrl_;

  Napi::FunctionReference on_batch_;
  Napi::FunctionReference on_writable_;
  Napi::ObjectReference self_;
  napi_async_context async_ctx_ = nullptr;

  // Send scratch, reused across calls.
  std::vector<mmsghdr> tx_msgs_;
  std::vector<iovec> tx_iov_;
  std::vector<char> tx_ctrl_;
  std::string last_addr_;
  int last_port_ = -1;
  sockaddr_storage dest_{};
  socklen_t dest_len_ = 0;
};

// Counter slots in the shared Float64Array.
enum Counter {
  kRxDatagrams = 0,
  kRxBytes,
  kRxTruncated,
  kTxDatagrams,
  kTxBytes,
  kTxErrors,
  kTxEagain,
  kRxBatches,
  kRxSyscalls,
  kTxSyscalls,
  kTxGsoMessages,
  kCounterCount
};

Napi::Value IfNameToIndex(const Napi::CallbackInfo& info);
