import test from 'ava';
import { createLogger } from '../src/util/log';
import { runCli } from './helpers/fleet';

test('under systemd (journald) lines carry <N> priorities and no timestamps; elsewhere plain text', (t) => {
  const lines: string[] = [];
  const j = createLogger({ journald: true, level: 'debug', write: (l) => lines.push(l) });
  j.error('e');
  j.warn('w');
  j.info('i');
  j.child('hook').debug('d');
  t.deepEqual(lines, ['<3>e', '<4>w', '<6>i', '<7>hook: d']);
  lines.length = 0;
  const p = createLogger({ journald: false, level: 'info', write: (l) => lines.push(l) });
  p.warn('w');
  p.info('i');
  p.debug('hidden');
  t.deepEqual(lines, ['warn: w', 'i']);
});

test('setLevel changes the level of a logger and its children (SIGHUP reload)', (t) => {
  const lines: string[] = [];
  const l = createLogger({ journald: false, level: 'warn', write: (x) => lines.push(x) });
  const c = l.child('c');
  c.info('before');
  l.setLevel('debug');
  c.debug('after');
  t.deepEqual(lines, ['debug: c: after']);
});

test('under systemd a fatal error is logged at priority err (<3>); on a terminal without it', async (t) => {
  const r = await runCli(['server', '--plain-http', '--store', '/tmp', '--heartbeat-ms', '1'], { env: { JOURNAL_STREAM: '8:1234' } });
  t.is(r.code, 64);
  t.regex(r.stderr, /^<3>fleetcast server: error: server: --heartbeat-ms must be from 50 to 60000, not 1\n<3>Run 'fleetcast server --help'/);
  const plain = await runCli(['server', '--plain-http', '--store', '/tmp', '--heartbeat-ms', '1'], { env: { JOURNAL_STREAM: '' } });
  t.regex(plain.stderr, /^fleetcast server: error: /);
});
