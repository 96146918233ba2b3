import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import { ExitCode, FleetcastError } from '../util/errors';
import { DATA_HEADER_BYTES } from '../wire/packet';

/** Resolve `--interface`: a name from os.networkInterfaces(), or an address. */
export function resolveInterface(spec: string, family: 4 | 6): { name: string | null; address: string } {
  const ifs = os.networkInterfaces();
  const fam = family === 4 ? 'IPv4' : 'IPv6';
  if (ifs[spec]) {
    const a = ifs[spec]!.find((x) => x.family === fam);
    if (!a) throw new FleetcastError('NO_ADDR', `interface ${spec} has no ${fam} address`, ExitCode.CONFIG);
    return { name: spec, address: family === 6 && a.address.startsWith('fe80') ? `${a.address}%${spec}` : a.address };
  }
  for (const [name, list] of Object.entries(ifs)) {
    if (list?.some((x) => x.address === spec)) return { name, address: spec };
  }
  const names = Object.keys(ifs).join(', ');
  throw new FleetcastError('NO_IFACE', `--interface ${spec}: no interface has that name or address (interfaces: ${names})`, ExitCode.CONFIG);
}

/** The interface's MTU from /sys/class/net, or 1500 when it is unknown or below IPv4's 576. */
export async function readMtu(name: string | null): Promise<number> {
  if (!name) return 1500;
  try {
    const n = Number((await fs.readFile(`/sys/class/net/${name}/mtu`, 'utf8')).trim());
    return Number.isFinite(n) && n >= 576 ? n : 1500;
  } catch {
    return 1500;
  }
}

/** Fragment payload for a link MTU: one datagram, no IP fragmentation, capped at 9000-byte frames. */
export function fragmentBytesForMtu(mtu: number, ipv6: boolean): number {
  const frame = Math.min(mtu, 9000);
  return frame - (ipv6 ? 40 : 20) - 8 - DATA_HEADER_BYTES;
}
