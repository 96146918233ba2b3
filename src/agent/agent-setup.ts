import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Manifest, parseManifest } from '../release/manifest';
import { decryptFile } from '../release/content-crypto';
import { ExitCode, FleetcastError } from '../util/errors';
import { ControlClient, ControlError } from './control-client';
import type { AgentOptions } from './agent-types';
import { createTransport } from '../transport/binding';
import { DEFAULT_MAX_DATAGRAM_BYTES, Transport } from '../transport/transport';
import { Logger } from '../util/log';
import { DATA_HEADER_BYTES } from '../wire/packet';
import { isName } from '../wire/ids';
import { AGENT_DEFAULTS } from './core/defaults';

/** The member id kept in `<storage>/member-id`, or null before the first run (or if it is not a valid name). */
export async function readMemberId(storageDir: string): Promise<string | null> {
  try {
    const id = (await fs.readFile(path.join(storageDir, 'member-id'), 'utf8')).trim();
    return isName(id) ? id : null;
  } catch {
    return null; // the first run makes it
  }
}

/** The member id kept in `<storage>/member-id` (made on the first run). */
export async function persistentMemberId(storageDir: string): Promise<string> {
  const file = path.join(storageDir, 'member-id');
  const kept = await readMemberId(storageDir);
  if (kept) return kept;
  const host = os.hostname().replace(/[^A-Za-z0-9.-]/g, '').slice(0, 48) || 'agent';
  const id = `${host}-${randomBytes(4).toString('hex')}`;
  await fs.writeFile(file, id + '\n');
  return id;
}

/** The release's manifest, from storage or else the server, checked against the trusted keys. */
export async function loadManifest(o: AgentOptions, client: ControlClient): Promise<Manifest> {
  const local = path.join(o.storageDir, o.releaseId, 'manifest');
  let raw: Buffer | null = null;
  try {
    raw = await fs.readFile(local);
  } catch {
    /* not fetched yet */
  }
  if (!raw) {
    try {
      raw = await client.getManifest(o.releaseId);
    } catch (err) {
      if (err instanceof ControlError && err.status === 404) {
        throw new FleetcastError('NO_RELEASE', `server ${o.server.url} does not have release ${o.releaseId}`, ExitCode.DATAERR);
      }
      throw err;
    }
  }
  const m = parseManifest(raw, o.trustedKeys);
  if (m.id !== o.releaseId) {
    throw new FleetcastError('WRONG_RELEASE', `the server sent manifest ${m.id} when asked for ${o.releaseId}`, ExitCode.DATAERR);
  }
  return m;
}

/**
 * The agent's two transports: the LAN group's multicast, and the cross-group unicast
 * socket (copies to other groups' gateways, forwarded NACKs, their repairs) of the same
 * kind, so both get sendmmsg, stats and loss injection. `opts.transport` (tests) makes
 * the LAN one only.
 */
export async function openTransports(o: AgentOptions, interfaceAddress: string, fragmentBytes: number, random: () => number, log: Logger): Promise<{ lan: Transport; cross: Transport }> {
  // Room for our own grid's DATA packets, whatever --fragment-bytes says.
  const maxDatagramBytes = Math.max(DEFAULT_MAX_DATAGRAM_BYTES, fragmentBytes + DATA_HEADER_BYTES);
  const lan = (o.transport ?? createTransport)({
    group: o.multicast.address,
    port: o.multicast.port,
    interfaceAddress,
    loopback: true,
    maxDatagramBytes,
    lossPct: o.lossPct ?? 0,
    random,
  });
  await lan.open();
  const ti = lan.info;
  log.info(
    `transport ${ti.kind}${ti.features.length ? ` (${ti.features.join(', ')})` : ''}, receive buffer ${ti.recvBufferBytes} bytes` +
      `${ti.fallbackReason ? `; not native because ${ti.fallbackReason}` : ''}; fragments of ${fragmentBytes} bytes`,
  );
  // Copies from every member of every other site land here in bursts while our event
  // loop may be busy with the LAN: a default-sized buffer overflows, and the senders'
  // pacers would read that as congestion.
  const cross = createTransport({
    group: '',
    port: 0,
    unicast: true,
    interfaceAddress,
    recvBufferBytes: AGENT_DEFAULTS.unicastRecvBufferBytes,
    sendBufferBytes: AGENT_DEFAULTS.unicastSendBufferBytes,
    maxDatagramBytes,
    // A small ring (16 slots of one datagram, ~150 KiB resident): cross-group traffic is
    // paced to the sites' uplinks, and the kernel buffer above absorbs its bursts.
    gro: false,
    ringSlots: 16,
    lossPct: o.crossLossPct ?? 0,
    random,
  });
  try {
    await cross.open();
  } catch (err) {
    await lan.close();
    throw err;
  }
  return { lan, cross };
}

/** The ciphertext verified: get the release key from the server and write the plaintext next to it. */
export async function decryptRelease(client: ControlClient, m: Manifest, storageDir: string, ciphertextPath: string, log: Logger): Promise<string> {
  const key = await client.getContentKey(m.id);
  const out = path.join(storageDir, m.id, m.name);
  await decryptFile(key, m, ciphertextPath, out);
  log.info(`decrypted ${m.name}; plaintext SHA-256 matches the manifest`);
  return out;
}
