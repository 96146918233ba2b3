import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { createHash, randomBytes } from 'node:crypto';

/*
 * HTTP helpers of the origin server: TLS suites, the bearer and Basic token forms, the
 * server's secret, byte ranges, and the error type the routes throw.
 */

/**
 * TLS 1.2 suites with forward secrecy (ECDHE) and AEAD (GCM, ChaCha20-Poly1305) only:
 * no RSA key exchange, CBC, SHA-1, CCM8 or ARIA (issue 13, sslscan). TLS 1.3 suites are
 * all forward-secret AEAD. After Mozilla's "intermediate" server configuration.
 */
export const TLS_CIPHERS = [
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':');

/** The password of an HTTP Basic `authorization` header (the user name is ignored), as a match-like [_, token]. */
export function basicPassword(h: string | undefined): [string, string] | null {
  const m = /^Basic ([A-Za-z0-9+/]{1,1400}={0,2})$/.exec(h ?? '');
  if (!m) return null;
  const text = Buffer.from(m[1], 'base64').toString('utf8');
  const pw = text.slice(text.indexOf(':') + 1);
  return text.includes(':') && /^[\x21-\x7e]{1,512}$/.test(pw) ? [h!, pw] : null;
}

export function tokenDigest(token: string): string {
  return createHash('sha256').update(token).digest('base64');
}

/** 32 random bytes kept in `<store>/secret` (mode 0600), made on first start. */
export async function loadOrCreateSecret(file: string): Promise<Buffer> {
  try {
    const b = await fs.readFile(file);
    if (b.length === 32) return b;
  } catch {
    /* first start */
  }
  const s = randomBytes(32);
  await fs.mkdir(path.dirname(file), { recursive: true });
  await fs.writeFile(file + '.tmp', s, { mode: 0o600 });
  await fs.rename(file + '.tmp', file);
  return s;
}

/**
 * One byte range of a `len`-byte representation (RFC 9110 §14.1.2): `a-b`, `a-`, or a
 * suffix `-n` (the last n bytes). Null when it is malformed or unsatisfiable (416).
 */
export function parseRange(header: string, len: number): { start: number; end: number } | null {
  const r = /^bytes=(\d{0,15})-(\d{0,15})$/.exec(header);
  if (!r || (r[1] === '' && r[2] === '')) return null;
  if (r[1] === '') {
    const n = Number(r[2]);
    if (n === 0 || len === 0) return null;
    return { start: Math.max(0, len - n), end: len - 1 };
  }
  const start = Number(r[1]);
  if (start >= len) return null;
  if (r[2] === '') return { start, end: len - 1 };
  const end = Number(r[2]);
  if (end < start) return null;
  return { start, end: Math.min(len - 1, end) };
}

export class HttpError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}
