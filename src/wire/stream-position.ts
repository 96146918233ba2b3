/**
 * Where a stream receiver's sink is: `fleetcast stream fetch --state FILE` and an agent's
 * `<storage>/streams/<name>/position` keep this one JSON shape (docs/protocol.md section 15).
 */
export interface StreamPosition {
  v: 1;
  stream: string;
  id: string;
  /** The next unit to deliver. */
  nextUnit: number;
  /** Bytes delivered to the sink when nextUnit was reached. */
  sinkBytes: number;
  /** The last verified batch (its file bytes) at or before nextUnit's. */
  batch: string;
}

/** A position file's text, or null when it is not one. The batch in it is verified when used. */
export function parsePositionText(raw: string): StreamPosition | null {
  try {
    const s = JSON.parse(raw) as StreamPosition;
    if (typeof s !== 'object' || s === null || s.v !== 1 || typeof s.stream !== 'string' || typeof s.id !== 'string' || !/^[0-9a-f]{32}$/.test(s.id) || typeof s.batch !== 'string') return null;
    if (!Number.isSafeInteger(s.nextUnit) || s.nextUnit < 0 || !Number.isSafeInteger(s.sinkBytes) || s.sinkBytes < 0) return null;
    return s;
  } catch {
    return null;
  }
}
