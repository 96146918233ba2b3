import type { MemberOptions } from '../agent/agent-types';
import { ServerAccess } from '../net/server-access';
import { loadPublicKey } from '../release/keys';
import type { Logger } from '../util/log';
import { splitHostPort } from './args';

/**
 * What `fleetcast agent` flags say about the member on its LAN, for a release's agent and a
 * stream's alike: the servers (one or several URLs), the group, the interface and multicast
 * address, the storage, the trusted keys and the LAN rate.
 */
export async function memberOptions(f: Record<string, unknown>, log: Logger): Promise<MemberOptions> {
  const mc = splitHostPort(String(f.multicast)) as { host: string; port: number };
  return {
    server: ServerAccess.fromFiles({ url: f.server as string[], token: f.token as string | undefined, tokenFile: f['token-file'] as string | undefined, caFile: f.ca as string | undefined, plainHttp: Boolean(f['plain-http']) }),
    group: String(f.group),
    wideGroup: f['wide-group'] as string | undefined,
    member: f.member as string | undefined,
    interface: String(f.interface),
    multicast: { address: mc.host, port: mc.port },
    storageDir: String(f.storage),
    trustedKeys: await Promise.all((f.trust as string[]).map((p) => loadPublicKey(p))),
    rateBytesPerSec: ((f.rate as number) * 1e6) / 8,
    lossPct: f.loss as number,
    fragmentBytes: f['fragment-bytes'] as number | undefined,
    logger: log,
  };
}
