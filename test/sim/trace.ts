import { createHash, Hash } from 'node:crypto';
import { Network } from './network';

/**
 * A digest of everything a network did (every send, delivery, loss and drop on
 * every link, with its simulated time and size): two runs with equal digests
 * moved the same packets at the same instants. Keeps a hash and a count, not
 * the events, so it costs no memory on long runs.
 */
export class TraceDigest {
  private readonly hash: Hash = createHash('sha256');
  events = 0;

  constructor(net: Network) {
    net.tracer = (now, link, event, bytes) => {
      this.events++;
      this.hash.update(`${now} ${link} ${event} ${bytes}\n`);
    };
  }

  digest(): string {
    return this.hash.copy().digest('hex');
  }
}
