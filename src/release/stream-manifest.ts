import { createHash, createPublicKey, KeyObject, sign, verify } from 'node:crypto';
import { ExitCode, FleetcastError } from '../util/errors';
import {
  badBatch,
  BatchEnvelope,
  batchBytes,
  bodyAfter,
  encodeBatchEnvelope,
  envelopeFromObject,
  parseBatchEnvelope,
  STREAM_SIGN_CONTEXT,
  StreamBatch,
  StreamBatchBody,
  validateBatchBody,
} from '../wire/stream';
import { rawPublicKey } from './keys';

/**
 * Signing and verifying stream batches, and the chain rule between them (docs/protocol.md,
 * "Streams (1.4)"). The format is in src/wire/stream.ts, re-exported here.
 */
export * from '../wire/stream';

function signedBytes(body: Buffer): Buffer {
  return Buffer.concat([Buffer.from(STREAM_SIGN_CONTEXT, 'ascii'), body]);
}

export function signBatch(body: StreamBatchBody, privateKey: KeyObject): StreamBatch {
  validateBatchBody(body);
  const bodyBytes = Buffer.from(JSON.stringify(body), 'utf8');
  const sig = sign(null, signedBytes(bodyBytes), privateKey);
  const key = rawPublicKey(createPublicKey(privateKey));
  return finish(body, bodyBytes, encodeBatchEnvelope({ body: bodyBytes, key, sig }));
}

function finish(body: StreamBatchBody, bodyBytes: Buffer, raw: Buffer): StreamBatch {
  return { ...body, hash: createHash('sha256').update(bodyBytes).digest('hex'), raw };
}

function verifyEnvelope(e: BatchEnvelope, trusted: readonly KeyObject[], raw: Buffer): StreamBatch {
  const signer = trusted.find((k) => rawPublicKey(k).equals(e.key));
  if (!signer) {
    throw new FleetcastError('UNTRUSTED_KEY', `stream batch is signed by key ${e.key.toString('hex').slice(0, 16)}…, which is not among the ${trusted.length} trusted key(s)`, ExitCode.DATAERR);
  }
  if (!verify(null, signedBytes(e.body), signer, e.sig)) {
    throw new FleetcastError('BAD_SIGNATURE', 'stream batch signature does not verify: the batch was altered or signed by another key', ExitCode.DATAERR);
  }
  let body: unknown;
  try {
    body = JSON.parse(e.body.toString('utf8'));
  } catch {
    badBatch('signed body is not JSON');
  }
  return finish(validateBatchBody(body), e.body, raw);
}

/** Parse and verify a batch file from untrusted bytes (BAD_BATCH, UNTRUSTED_KEY, BAD_SIGNATURE; exit 65). */
export function parseBatch(raw: Uint8Array, trusted: readonly KeyObject[]): StreamBatch {
  return verifyEnvelope(parseBatchEnvelope(raw), trusted, Buffer.from(raw));
}

/** The same for a batch inside an HTTP answer (an already parsed JSON object). */
export function batchFromObject(o: unknown, trusted: readonly KeyObject[]): StreamBatch {
  const e = envelopeFromObject(o);
  return verifyEnvelope(e, trusted, encodeBatchEnvelope(e));
}

/**
 * A batch in compact form (docs/protocol.md, "Compact batches") after `prev`, which the
 * receiver verified: its body rebuilt from prev and the compact fields, signed by prev's
 * key, verified as any batch. The result, `raw` included, is the batch file's.
 */
export function batchFromCompact(prev: StreamBatch, o: unknown, trusted: readonly KeyObject[]): StreamBatch {
  const { bytes, sig } = bodyAfter(prev, o);
  const e: BatchEnvelope = { body: bytes, key: parseBatchEnvelope(prev.raw).key, sig };
  return verifyEnvelope(e, trusted, encodeBatchEnvelope(e));
}

/**
 * A batch's body without checking its signature: for the server, which serves the store's
 * files as they are (receivers verify), and looks inside only to find units.
 */
export function peekBatch(raw: Uint8Array): StreamBatch {
  return peekBatchFile(raw).batch;
}

/** peekBatch, with the envelope it parsed (the server's compact batches need its key and signature). */
export function peekBatchFile(raw: Uint8Array): { batch: StreamBatch; e: BatchEnvelope } {
  const e = parseBatchEnvelope(raw);
  let body: unknown;
  try {
    body = JSON.parse(e.body.toString('utf8'));
  } catch {
    badBatch('body is not JSON');
  }
  return { batch: finish(validateBatchBody(body), e.body, Buffer.from(raw)), e };
}

/** The public key a batch names (integrity checks on the server, which trusts the store). */
export function batchSignerKey(raw: Uint8Array): KeyObject {
  const e = parseBatchEnvelope(raw);
  return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: e.key.toString('base64url') }, format: 'jwk' });
}

/**
 * The chain rule: `next` may follow `prev` only when it is the same stream (name, id,
 * unit size), its index is prev's + 1, its `prev` is prev's hash, its first unit and byte
 * offset continue prev's, and prev was not final. Throws BAD_CHAIN (exit 65) naming the break.
 */
export function checkChain(prev: StreamBatch, next: StreamBatchBody & { hash?: string }): void {
  const broken = (m: string): never => {
    throw new FleetcastError('BAD_CHAIN', `stream ${prev.stream}: batch ${next.batch} does not follow batch ${prev.batch}: ${m}`, ExitCode.DATAERR);
  };
  if (next.stream !== prev.stream || next.id !== prev.id) broken(`it belongs to stream ${next.stream} (id ${next.id}), not ${prev.stream} (id ${prev.id})`);
  if (prev.final) broken('the stream ended with that batch');
  if (next.batch !== prev.batch + 1) broken(`its index is ${next.batch}, expected ${prev.batch + 1}`);
  if (next.prev !== prev.hash) broken(`its prev ${next.prev.slice(0, 16)}… is not that batch's hash ${prev.hash.slice(0, 16)}… (history was rewritten or reordered)`);
  if (next.unitSize !== prev.unitSize) broken(`its unitSize ${next.unitSize} differs from ${prev.unitSize}`);
  if (next.first !== prev.first + prev.count) broken(`its first unit is ${next.first}, expected ${prev.first + prev.count}`);
  if (next.offset !== prev.offset + batchBytes(prev)) broken(`its offset is ${next.offset}, expected ${prev.offset + batchBytes(prev)}`);
}

/** The SHA-256 of a unit's bytes, hex. */
export function unitHash(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}
