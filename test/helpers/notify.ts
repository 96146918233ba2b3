import { spawn } from 'node:child_process';
import type { ExecutionContext } from 'ava';

export interface FakeSystemd {
  socket: string;
  /** Every datagram received so far, in order. */
  messages(): string[];
  /** Resolves once a message matching `re` has arrived (rejects after `ms`). */
  waitFor(re: RegExp, ms?: number): Promise<string>;
}

/**
 * A stand-in for systemd's notify socket: python3 binds a unix datagram socket and
 * prints each datagram as a JSON line. Stopped when the test ends.
 */
export async function fakeSystemd(t: ExecutionContext, socket: string): Promise<FakeSystemd> {
  const py = spawn(
    'python3',
    [
      '-c',
      `
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("ready", flush=True)
while True:
    print(json.dumps(s.recv(65536).decode()), flush=True)
`,
      socket,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  t.teardown(() => {
    py.kill('SIGKILL');
  });
  const msgs: string[] = [];
  const waiters: (() => void)[] = [];
  let buf = '';
  await new Promise<void>((resolve, reject) => {
    py.on('error', reject);
    py.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      const lines = buf.split('\n');
      buf = lines.pop()!;
      for (const l of lines) {
        if (l === 'ready') resolve();
        else msgs.push(JSON.parse(l) as string);
      }
      for (const w of waiters.splice(0)) w();
    });
  });
  const waitFor = (re: RegExp, ms = 30_000) =>
    new Promise<string>((resolve, reject) => {
      const deadline = Date.now() + ms;
      const check = () => {
        const m = msgs.find((x) => re.test(x));
        if (m) return resolve(m);
        if (Date.now() > deadline) return reject(new Error(`no notify message matching ${re} within ${ms} ms; got ${JSON.stringify(msgs)}`));
        waiters.push(check);
        setTimeout(() => {
          const i = waiters.indexOf(check);
          if (i >= 0) waiters.splice(i, 1);
          check();
        }, 200);
      };
      check();
    });
  return { socket, messages: () => msgs.slice(), waitFor };
}
