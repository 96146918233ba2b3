import { Logger } from '../util/log';
import { ControlClient, ControlError, SplitMapResponse } from './control-client';

/**
 * The agent's heartbeats (docs/protocol.md, join/heartbeat): `join` on start and after
 * the server forgot us, then one heartbeat per interval. The server picks the interval by
 * phase (fast while the group transfers, slow when all is done): every answer may change it.
 */
export class Heartbeats {
  ms = 1000;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;

  constructor(
    private readonly client: ControlClient,
    private readonly log: Logger,
    /** What this member tells the server each time. */
    private readonly body: () => Record<string, unknown>,
    /** The server's answer: the split map. */
    private readonly answer: (map: SplitMapResponse) => void,
  ) {}

  async beat(join = false): Promise<SplitMapResponse | null> {
    if (this.stopped) return null;
    const map = await this.client.post<SplitMapResponse>(join ? '/v1/join' : '/v1/heartbeat', this.body());
    const every = Math.min(60_000, Math.max(50, Number(map.heartbeatMs) || 1000));
    if (every !== this.ms) {
      this.ms = every;
      if (this.timer && !this.stopped) this.start();
    }
    this.answer(map);
    return map;
  }

  start(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = setInterval(() => {
      this.beat().catch((err) => {
        // The server forgot us, or remembers that we left: join again.
        if (err instanceof ControlError && err.code === 'NOT_JOINED') return this.beat(true).catch(() => undefined);
        this.log.debug(`heartbeat: ${(err as Error).message}`);
      });
    }, this.ms);
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}
