import { randomInt } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as net from 'node:net';

/** Listens on 127.0.0.1:`port` (0: any) and closes at once: the port it bound, or the listen error. */
function bindOnce(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(port, '127.0.0.1', () => {
      const bound = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(bound));
    });
  });
}

/** A TCP port on 127.0.0.1 that was free a moment ago (for a service a test or bench starts). */
export function freePort(): Promise<number> {
  return bindOnce(0);
}

/**
 * A TCP port on 127.0.0.1 below the kernel's ephemeral range, free a moment ago: for a
 * server a test stops and starts again on the same port. An ephemeral one (listen on 0)
 * can be taken while the server is down by any outgoing connection's local end, and the
 * restart then fails with EADDRINUSE (rollout-e2e, CI of 2026-12-02); ports below the range
 * are only ever bound on purpose.
 */
export async function restartablePort(): Promise<number> {
  const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || 32768;
  for (let i = 0; i < 200; i++) {
    const port = await bindOnce(randomInt(Math.min(10000, low - 1), low)).catch(() => null);
    if (port !== null) return port;
  }
  throw new Error(`no free TCP port on 127.0.0.1 below ${low}`);
}
