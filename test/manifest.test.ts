import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { decryptUnit, encryptUnit } from '../src/release/content-crypto';
import { parseManifest, signManifest, ManifestBody, validateBody } from '../src/release/manifest';
import { FleetcastError } from '../src/util/errors';
import { ed25519 } from './helpers/keys';

const hex = (s: string) => createHash('sha256').update(s).digest('hex');
const body: ManifestBody = { v: 1, name: 'fw.img', size: 10000, unitSize: 4096, sha256: hex('all'), units: [hex('a'), hex('b'), hex('c')], created: '2026-01-01T00:00:00.000Z' };

test('a signed manifest parses with the trusted key and keeps its id', (t) => {
  const k = ed25519();
  const m = signManifest(body, k.privateKey);
  const p = parseManifest(m.raw, [k.publicKey]);
  t.is(p.id, m.id);
  t.regex(p.id, /^[0-9a-f]{32}$/);
  t.is(p.unitCount, 3);
  t.deepEqual(p.units, body.units);
});

test('a manifest signed by another key is refused as untrusted', (t) => {
  const signer = ed25519();
  const other = ed25519();
  const m = signManifest(body, signer.privateKey);
  const e = t.throws(() => parseManifest(m.raw, [other.publicKey]), { instanceOf: FleetcastError });
  t.is(e!.code, 'UNTRUSTED_KEY');
  t.regex(e!.message, /not among the 1 trusted key/);
});

test('an altered body fails the signature check', (t) => {
  const k = ed25519();
  const m = signManifest(body, k.privateKey);
  const outer = JSON.parse(m.raw.toString());
  const b = JSON.parse(Buffer.from(outer.body, 'base64').toString());
  b.size = 10001;
  outer.body = Buffer.from(JSON.stringify(b)).toString('base64');
  const e = t.throws(() => parseManifest(Buffer.from(JSON.stringify(outer)), [k.publicKey]), { instanceOf: FleetcastError });
  t.is(e!.code, 'BAD_SIGNATURE');
});

test('a signature copied from another manifest does not verify', (t) => {
  const k = ed25519();
  const a = JSON.parse(signManifest(body, k.privateKey).raw.toString());
  const b = JSON.parse(signManifest({ ...body, name: 'other.img' }, k.privateKey).raw.toString());
  a.sig = b.sig;
  t.throws(() => parseManifest(Buffer.from(JSON.stringify(a)), [k.publicKey]), { message: /signature does not verify/ });
});

test('body validation names the field', (t) => {
  const k = ed25519();
  t.throws(() => signManifest({ ...body, units: body.units.slice(0, 2) }, k.privateKey), { message: /units lists 2 hashes, size and unitSize need 3/ });
  t.throws(() => signManifest({ ...body, name: '../etc/passwd' }, k.privateKey), { message: /name/ });
  t.throws(() => signManifest({ ...body, unitSize: 100 }, k.privateKey), { message: /unitSize/ });
});

test('content encryption: units decrypt with their key and index only; a tampered unit or another key fails; the manifest fields must agree', (t) => {
  const key = randomBytes(32);
  const plain = randomBytes(1000);
  const ct = encryptUnit(key, 3, plain);
  t.is(ct.length, 1016);
  t.deepEqual(decryptUnit(key, 3, ct), plain);
  t.throws(() => decryptUnit(key, 4, ct), { message: /does not decrypt/ }, 'the index is the nonce');
  t.throws(() => decryptUnit(randomBytes(32), 3, ct), { message: /does not decrypt/ });
  const bad = Buffer.from(ct);
  bad[10] ^= 1;
  t.throws(() => decryptUnit(key, 3, bad), { message: /does not decrypt/ });
  const body = { v: 1, name: 'x.bin', size: 1016, unitSize: 4096, sha256: 'a'.repeat(64), units: ['b'.repeat(64)], created: '2026-01-01T00:00:00Z', enc: 'aes-256-gcm', plainSize: 1000, plainSha256: 'c'.repeat(64) };
  t.notThrows(() => validateBody(body));
  t.throws(() => validateBody({ ...body, plainSize: 999 }), { message: /plainSize does not match/ });
  t.throws(() => validateBody({ ...body, enc: 'rot13' }), { message: /enc must be/ });
});
