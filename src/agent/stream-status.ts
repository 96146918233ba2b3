import { MetricsRegistry, processMetrics } from '../util/metrics';
import type { StreamAgent } from './stream-agent';

/** The p-th percentile (0–100) of `xs`, nearest rank; null when empty. */
export function percentile(xs: readonly number[], p: number): number | null {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

const started = Date.now();

/**
 * A stream agent's `fleetcast status` answer: the release agent's fields (status in
 * cli/ops.ts reads them; `release` is null) and `stream`: position, publish-to-delivery
 * latency, gaps and the sink's buffer.
 */
export function streamStatus(a: StreamAgent) {
  const d = a.delivery;
  const ans = a.lastAnswer;
  const lat = d?.latenciesMs ?? [];
  return {
    uptimeSeconds: Math.round((Date.now() - started) / 1000),
    state: d ? 'streaming' : 'starting',
    member: a.member || null,
    group: a.group,
    wideGroup: a.wideGroup ?? null,
    role: a.core?.role ?? 'member',
    server: a.serverUrl,
    channel: null,
    release: null,
    members: (ans?.members ?? []).filter((m) => m.id !== a.member).map((m) => ({ id: m.id, group: m.group, verifiedUnits: m.verifiedUnits, complete: false })),
    rates: { wanBytesPerSec: 0, lanBytesPerSec: 0, sentBytesPerSec: 0, limitBytesPerSec: null },
    peers: a.core?.peersSeen(Date.now()) ?? [],
    /** The pace learned to each other group's gateway we copy to, as a release agent's status has it. */
    crossPaths: a.core?.crossPaths() ?? [],
    transport: a.stats.transport ? { kind: a.stats.transport, features: [] } : null,
    hook: null,
    lastErrors: [],
    stream: d
      ? {
          name: a.streamName,
          nextUnit: d.next,
          publishedUnits: ans?.nextUnit ?? null,
          firstRetainedUnit: ans?.firstUnit ?? null,
          ended: ans?.ended ?? false,
          sinkKind: d.sink.kind,
          sinkBytes: d.sink.bytes,
          bufferBytes: d.pendingBytes(),
          bufferMaxBytes: d.bufferMax,
          latencyMsP50: percentile(lat, 50),
          latencyMsP99: percentile(lat, 99),
          gaps: d.gaps,
          gapUnits: d.gapUnits,
          wanBytes: a.stats.wanBytes,
          lanBytes: a.stats.lanBytes,
          nacksSent: a.stats.nacksSent,
          /** Of those, echoes: a NACK asked again once because nothing of its unit came within its echo delay (protocol.md section 5). */
          nackEchoes: a.core?.nackEchoes ?? 0,
          unitsRejected: a.stats.unitsRejected,
          /** Where batches came from (docs/protocol.md, "Batches on the LAN"); polling: this member long-polls the server. */
          batches: a.follower ? { ...a.follower.counts, polling: !a.follower.passive } : null,
          /** LAN datagrams for units whose batch was not here yet (stream-ahead.ts): held, handled once it came, dropped. */
          ahead: a.core ? { ...a.core.aheadBuf.counts, bytes: a.core.aheadBuf.heldBytes } : null,
          /** Datagrams from before the group key, and copies from a sender not heard yet (held-datagrams.ts): held, handled once they could be. */
          held: a.core ? { ...a.core.held.counts } : null,
          /** Datagrams dropped, by reason (what did not parse, verify or fit). */
          drops: { ...a.stats.drops },
        }
      : null,
  };
}

/** Prometheus text for a stream agent (`metrics: HOST:PORT`). */
export function streamMetrics(a: StreamAgent): string {
  const s = streamStatus(a).stream;
  const r = new MetricsRegistry('fleetcast_stream');
  const l = { stream: a.streamName };
  if (s) {
    r.gauge('next_unit', 'the next unit to deliver to the sink', [[l, s.nextUnit]]);
    r.counter('delivered_bytes_total', 'bytes delivered to the sink', [[l, s.sinkBytes]]);
    r.gauge('buffer_bytes', 'verified bytes on disk waiting for the sink', [[l, s.bufferBytes]]);
    r.gauge('latency_ms', 'publish-to-delivery latency of recent units (the batch signing time to the sink write)', [
      [{ ...l, quantile: '0.5' }, s.latencyMsP50 ?? NaN],
      [{ ...l, quantile: '0.99' }, s.latencyMsP99 ?? NaN],
    ]);
    r.counter('gaps_total', 'runs of units not delivered (retention, or skipped past the buffer cap)', [[l, s.gaps]]);
    r.counter('gap_units_total', 'units not delivered', [[l, s.gapUnits]]);
    r.counter('wan_bytes_total', 'unit bytes downloaded from the server', [[l, s.wanBytes]]);
    r.counter('lan_bytes_total', 'unit bytes taken from LAN peers', [[l, s.lanBytes]]);
    r.counter('nacks_sent_total', 'NACK packets sent, echoes included', [[l, s.nacksSent]]);
    r.counter('nack_echoes_total', 'NACKs asked again once, nothing of their unit having come within the echo delay (a lost NACK or repair)', [[l, s.nackEchoes]]);
    r.counter('units_rejected_total', 'units that failed their signed hash', [[l, s.unitsRejected]]);
    if (s.batches) {
      const b = s.batches;
      r.counter('batches_total', 'batches taken, by where from (the server, or a LAN peer\'s BATCH packet)', [[{ ...l, from: 'server' }, b.fromServer], [{ ...l, from: 'lan' }, b.fromLan]]);
      r.counter('batches_relayed_total', 'batches this member multicast on its LAN', [[l, b.relayed]]);
      r.counter('batches_sent_across_total', 'batches this member also sent to the other sites\' gateways (a wide-area group)', [[l, b.across ?? 0]]);
      r.counter('batch_packets_forwarded_total', 'BATCH packets from another site\'s member that this gateway multicast on its LAN', [[l, b.forwarded ?? 0]]);
      r.counter('batch_packets_refused_total', 'BATCH packets that did not parse, verify or chain', [[l, b.refused]]);
      r.counter('batch_packets_limited_total', 'BATCH packets dropped unchecked, past the signature checks allowed a second', [[l, b.limited]]);
      r.counter('batch_fallbacks_total', 'times the LAN did not bring a batch the server showed and this member polled the server again', [[l, b.fallbacks]]);
      r.gauge('batch_polling', '1 while this member long-polls the server for batches, 0 while a LAN peer relays them', [[l, b.polling ? 1 : 0]]);
    }
    if (s.ahead) {
      const h = s.ahead;
      r.counter('ahead_datagrams_total', 'LAN copies of units whose batch was not verified yet: held, handled once it was, or dropped (expired, over the byte cap, too far ahead)', [
        [{ ...l, outcome: 'held' }, h.held],
        [{ ...l, outcome: 'handled' }, h.replayed],
        [{ ...l, outcome: 'expired' }, h.expired],
        [{ ...l, outcome: 'full' }, h.full],
        [{ ...l, outcome: 'too_far' }, h.tooFar],
      ]);
      r.gauge('ahead_bytes', 'bytes of those copies held now', [[l, h.bytes]]);
    }
    if (s.held) {
      r.counter('held_datagrams_total', 'datagrams from before the group key and copies from a sender not heard yet: held, and handled once they could be (the rest are in drops_total)', [
        [{ ...l, outcome: 'held' }, s.held.held],
        [{ ...l, outcome: 'handled' }, s.held.replayed],
      ]);
    }
    r.counter('drops_total', 'datagrams dropped, by reason', Object.entries(s.drops).map(([reason, n]) => [{ ...l, reason }, n]));
  }
  return r.text() + processMetrics('fleetcast');
}
