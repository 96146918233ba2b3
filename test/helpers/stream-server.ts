import type { ExecutionContext } from 'ava';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { generateKeyPair } from '../../src/release/keys';
import { FleetcastServer } from '../../src/server/server';
import { tmpdir } from './fleet';

/** A release key pair and an empty store in a temp dir, served by an in-process server (plain HTTP), stopped at the end. */
export async function startStreamServer(t: ExecutionContext) {
  const dir = await tmpdir(t);
  const { keyPath, pubPath } = await generateKeyPair(path.join(dir, 'keys'));
  const store = path.join(dir, 'store');
  await fs.mkdir(store);
  const server = new FleetcastServer({ storeDir: store, host: '127.0.0.1', port: 0 });
  const { url } = await server.start();
  t.teardown(() => server.stop());
  return { dir, keyPath, pubPath, store, server, url };
}
