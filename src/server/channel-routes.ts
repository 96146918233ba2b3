import * as http from 'node:http';
import { isReleaseId } from '../release/manifest';
import { isName, NAME_RULE, ROLLOUT_TOKEN_RE } from '../wire/ids';
import { HELD_KEEPALIVE_MS, MAX_CHANNEL_WAIT_MS, MAX_FOLLOWING_WAIT_MS } from './channel-watch';
import { HttpError } from './http-util';
import { MemberRegistry } from './server-members';

/** What a 1.7 channel poll stood for (section 19), and its end. */
interface Following {
  what: string[];
  end: (at: number) => void;
}

/** GET /v1/channels/{name}: a channel's head, and its long poll (sections 13, 18 and 19). */
export abstract class ChannelRoutes extends MemberRegistry {
  /** Channel long polls held now, a follower's (section 19) and other; and those whose connection closed while held. */
  protected readonly polls = { following: 0, plain: 0, gone: 0 };

  /**
   * A channel's head. With `release` (the one the agent knows) and `waitMs`, a long poll:
   * held while the channel still names that release, at most waitMs (section 13).
   */
  protected async serveChannel(res: http.ServerResponse, name: string, q: URLSearchParams, token: string | null = null): Promise<void> {
    let head = await this.channels.read(name);
    if (!head) throw new HttpError(404, 'NO_CHANNEL', `channel ${name} does not exist on this server`);
    const known = q.get('release');
    const wait = q.get('waitMs');
    const rollout = q.get('rollout');
    const member = q.get('member');
    const group = q.get('group');
    if (known !== null || wait !== null) {
      if (known === null || !isReleaseId(known)) throw new HttpError(400, 'BAD_QUERY', 'release must be a release id (32 hex characters) when waitMs is given');
      if (wait === null || !/^\d{1,9}$/.test(wait)) throw new HttpError(400, 'BAD_QUERY', `waitMs must be a number of milliseconds (at most ${MAX_CHANNEL_WAIT_MS} are held, ${MAX_FOLLOWING_WAIT_MS} for a poll that names its member)`);
      if (rollout !== null && !ROLLOUT_TOKEN_RE.test(rollout)) throw new HttpError(400, 'BAD_QUERY', 'rollout must be the x-fleetcast-rollout value of an earlier answer (1-128 of A-Z a-z 0-9 . _ -)');
      if ((member === null) !== (group === null)) throw new HttpError(400, 'BAD_QUERY', 'member and group go together: the agent\'s member id and LAN group, as in its rollout polls');
      if (member !== null && (!isName(member) || !isName(group))) throw new HttpError(400, 'BAD_QUERY', `member and group must each be ${NAME_RULE}`);
      // 1.7 (section 19): a poll that names its member shows the member follows the channel
      // and is alive, so it need not poll the rollout nor heartbeat for that alone.
      let following: Following | null = null;
      if (member !== null) {
        this.authorize({ release: '', group: '', member }, token);
        following = this.follow(name, known, member, group!);
      }
      // A follower this server notes counts as seen while its poll is held: it may be held longer (section 19).
      const longest = following?.what.includes('rollout') ? MAX_FOLLOWING_WAIT_MS : MAX_CHANNEL_WAIT_MS;
      // 1.6: a rollout token the agent got before ends the hold when the rollout moves (section 18).
      if (head.release === known && Number(wait) > 0 && (rollout === null || rollout === this.rollouts.token(name))) {
        const gone = new AbortController();
        // A follower held for up to a day: probes find one that vanished without closing (HELD_KEEPALIVE_MS).
        const kind = longest === MAX_FOLLOWING_WAIT_MS ? 'following' : 'plain';
        if (kind === 'following') res.socket?.setKeepAlive(true, this.opts.heldKeepaliveMs ?? HELD_KEEPALIVE_MS);
        let answered = false;
        // Only a connection closed before the answer is a client gone (abort's own reason: no DOMException each time).
        res.once('close', () => answered || gone.abort(null));
        this.polls[kind]++;
        try {
          await this.channelWatch.wait(name, known, Math.min(Number(wait), longest), gone.signal, rollout ?? undefined);
        } finally {
          this.polls[kind]--;
          answered = true;
          following?.end(this.now());
        }
        if (gone.signal.aborted) {
          this.polls.gone++;
          return;
        }
        head = await this.channels.read(name);
        if (!head) throw new HttpError(404, 'NO_CHANNEL', `channel ${name} does not exist on this server`);
      } else following?.end(this.now());
      // Tells the agent its wait was honoured, so it need not sleep between polls, and how
      // long it may ask to be held; 1.6: what the channel's rollouts look like now; 1.7:
      // what the poll stood for.
      res.setHeader('x-fleetcast-long-poll', String(longest));
      res.setHeader('x-fleetcast-rollout', this.rollouts.token(name));
      if (following) res.setHeader('x-fleetcast-following', following.what.join(',') || '-');
    }
    if (!(await this.store.get(head.release))) throw new HttpError(503, 'NO_RELEASE', `channel ${name} points at release ${head.release}, which this server cannot load`);
    return this.json(res, 200, head);
  }

  /**
   * 1.7 (docs/protocol.md section 19): channel poll `name` (the agent knows release
   * `known`) names member `member` of LAN group `group`. "rollout": it is noted as
   * following the channel, as a rollout poll would (not with several coordinators, where
   * the channel's owner keeps that); "member": it is a member of `known` here and stays
   * alive while the poll is held. `end` at the answer or when the connection closes.
   */
  protected follow(name: string, known: string, member: string, group: string): Following {
    const now = this.now();
    const what: string[] = [];
    let unfollow: ((at: number) => void) | null = null;
    if (this.notesFollowers()) {
      unfollow = this.rollouts.holdFollowing(name, member, group, now);
      what.push('rollout');
    }
    const key = this.memberKeys.get(`${known}/${member}`);
    const g = key === undefined ? undefined : this.groups.get(key);
    const unhold = g?.holdPoll(member, now, this.idleLoadHeartbeatMs) ?? null;
    if (unhold) what.push('member');
    return {
      what,
      end: (at) => {
        unfollow?.(at);
        unhold?.(at);
      },
    };
  }

  /** Whether this server keeps the channels' followers itself (several coordinators: the channel's owner does). */
  protected notesFollowers(): boolean {
    return true;
  }
}
