/**
 * The ids the protocol carries (docs/protocol.md): release ids, and the names of members,
 * groups and devices, rollout ids. One definition for the HTTP bodies, the rollout state, the config
 * checks and the stores, which all test the same rules.
 */

/** A member, group or device name is at most this many characters. */
export const MAX_ID_CHARS = 128;
/** A channel's rollout token (`x-fleetcast-rollout`, `rollout=`; docs/protocol.md section 18). */
export const ROLLOUT_TOKEN_RE = /^[A-Za-z0-9._-]{1,128}$/;
const NAME_RE = /^[A-Za-z0-9._:@-]{1,128}$/;
const RELEASE_ID_RE = /^[0-9a-f]{32}$/;
const ROLLOUT_ID_RE = /^r-[0-9a-f]{12}$/;

/** What a name may be, completing "must be ...". */
export const NAME_RULE = `1–${MAX_ID_CHARS} characters of letters, digits and . _ : @ -`;

/** A member, group or device name: 1–128 letters, digits and . _ : @ - */
export function isName(s: unknown): s is string {
  return typeof s === 'string' && NAME_RE.test(s);
}

/** A release id: the first 16 bytes of SHA-256 of the manifest's body, as 32 lowercase hex characters. */
export function isReleaseId(s: unknown): s is string {
  return typeof s === 'string' && RELEASE_ID_RE.test(s);
}

/** A rollout id: r- and 12 lowercase hex digits. */
export function isRolloutId(s: unknown): s is string {
  return typeof s === 'string' && ROLLOUT_ID_RE.test(s);
}
