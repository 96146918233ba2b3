/**
 * Copy trees of bounded degree for wide-area groups (docs/protocol.md section 17).
 *
 * The LAN groups of a wide-area group that have a gateway form a ring, sorted by group
 * name. A unit fetched by a member of the group at ring position `o` (its origin) travels
 * down a k-ary tree laid over the ring rotated to start at `o`: tree index i is ring
 * position (o + i) mod S, and index i sends to indices k*i+1 .. k*i+k (those below S).
 * Every index but 0 has exactly one parent (floor((i-1)/k)), so each group gets every
 * unit exactly once, and no sender has more than k destinations per unit.
 *
 * Borrowed: the implicit k-ary heap numbering of a tree (a node's children computed from
 * its index, no tree stored) as in NICE's and Overcast's bounded-degree overlays; the
 * rotation by origin spreads the interior (forwarding) role over the groups, each group
 * interior in about 1/k of the trees, after SplitStream's goal of one tree per source
 * with the forwarding load spread (Castro et al., SOSP 2003), so uplinks stay balanced.
 * Pure: both the server and the agent compute the same positions from the same ring.
 */

/** Largest degree a server may ask for (a bound, not a tuning knob: answers stay small). */
export const MAX_COPY_TREE_DEGREE = 64;
/** The degree the server uses unless configured (`copy_tree_degree`). */
export const DEFAULT_COPY_TREE_DEGREE = 4;
/** Ring positions are carried in a DATA header's u16 as position + 1 (0: no tree). */
export const MAX_COPY_TREE_GROUPS = 0xffff;

/** The ring: distinct group names in ascending order of their UTF-16 code units (JS string order). */
export function copyTreeRing(groups: Iterable<string>): string[] {
  return [...new Set(groups)].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

/**
 * Ring positions that `at` sends a unit of origin `origin` to, in a ring of `size`
 * groups, degree `k`. Empty for a leaf, and for bad input (out of range, k < 1).
 */
export function copyTreeChildren(size: number, k: number, origin: number, at: number): number[] {
  if (!(size > 1 && k >= 1 && origin >= 0 && origin < size && at >= 0 && at < size)) return [];
  const i = (at - origin + size) % size;
  const out: number[] = [];
  for (let j = 1; j <= k; j++) {
    const c = k * i + j;
    if (c >= size) break;
    out.push((origin + c) % size);
  }
  return out;
}

/** Ring position of the parent of `at` in origin `origin`'s tree, or -1 for the origin itself. */
export function copyTreeParent(size: number, k: number, origin: number, at: number): number {
  if (!(size > 0 && k >= 1 && origin >= 0 && origin < size && at >= 0 && at < size)) return -1;
  const i = (at - origin + size) % size;
  return i === 0 ? -1 : (origin + Math.floor((i - 1) / k)) % size;
}

/**
 * Every ring position `at` may send copies to, over all origins (its own children and
 * what it forwards for others): a gateway announces itself to these, so they take its
 * forwarded copies. At most size - 1 positions; O(size) work (per origin, at most k).
 */
export function copyTreeTargets(size: number, k: number, at: number): number[] {
  const out = new Set<number>();
  for (let o = 0; o < size; o++) for (const c of copyTreeChildren(size, k, o, at)) out.add(c);
  return [...out].sort((a, b) => a - b);
}
