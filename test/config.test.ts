import test from 'ava';
import { spawnSync } from './helpers/sync';
import { promises as fs, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { ConfigError, parseArgs, resolveFlags } from '../src/cli/args';
import { agent, server } from '../src/cli/commands';
import { parseConfig } from '../src/config/config';
import { runCli, tmpdir } from './helpers/fleet';
import { rootTest } from './helpers/netns';
import { generateKeyPair } from '../src/release/keys';

const GOOD = [
  'server: https://127.0.0.1:7600',
  'group: lab',
  'interface: lo',
  'multicast: 239.1.2.3:7700',
  'storage: /var/lib/fleetcast',
  'trust: [/etc/fleetcast/server.pub]',
  'channel: stable',
  'rate: 100',
  '',
].join('\n');

/** Load `text` as an agent config and resolve it; returns the ConfigError thrown. */
function configError(t: import('ava').ExecutionContext, text: string): ConfigError {
  const e = t.throws(() => resolveFlags(agent.spec, {}, parseConfig(text, 'agent.yaml', agent.spec)));
  t.true(e instanceof ConfigError, `not a ConfigError: ${e?.message}`);
  t.is((e as ConfigError).exitCode, 78);
  return e as ConfigError;
}

test('several coordinators: server takes a YAML list, a comma string, or --server given again', (t) => {
  const yaml = resolveFlags(agent.spec, {}, parseConfig(GOOD.replace('server: https://127.0.0.1:7600', 'server: [https://a.example:7600, https://b.example:7600]'), 'agent.yaml', agent.spec));
  t.deepEqual(yaml.server, ['https://a.example:7600', 'https://b.example:7600']);
  const cli = parseArgs(agent.spec, ['--server', 'https://a.example:7600', '--server=https://b.example:7600,https://c.example:7600']);
  t.deepEqual(cli.flags.server, ['https://a.example:7600', 'https://b.example:7600', 'https://c.example:7600']);
  const bad = configError(t, GOOD.replace('server: https://127.0.0.1:7600', 'server: [https://a.example:7600, ftp://b]'));
  t.regex(bad.message, /server/);
});

test('a valid agent config resolves; keys use _ for -, lists take a sequence or a comma string', (t) => {
  const f = resolveFlags(agent.spec, {}, parseConfig(GOOD + 'fragment_bytes: 1432\non_complete: /usr/bin/install-ab "$FLEETCAST_FILE"\n', 'agent.yaml', agent.spec));
  t.deepEqual(f.server, ['https://127.0.0.1:7600'], 'server is a list: one coordinator, or several');
  t.deepEqual(f.trust, ['/etc/fleetcast/server.pub']);
  t.is(f['fragment-bytes'], 1432);
  t.is(f.rate, 100);
  t.is(f.keep, 2, 'defaults fill what the file leaves out');
  t.is(f['on-complete'], '/usr/bin/install-ab "$FLEETCAST_FILE"');
  const g = resolveFlags(agent.spec, {}, parseConfig(GOOD.replace('trust: [/etc/fleetcast/server.pub]', 'trust: a.pub, b.pub'), 'agent.yaml', agent.spec));
  t.deepEqual(g.trust, ['a.pub', 'b.pub']);
});

test('flags given on the command line override the file', (t) => {
  const f = resolveFlags(agent.spec, { rate: 7, group: 'other' }, parseConfig(GOOD, 'agent.yaml', agent.spec));
  t.is(f.rate, 7);
  t.is(f.group, 'other');
  t.is(f.channel, 'stable');
});

test('bad YAML names the line and column of the syntax error', (t) => {
  const e = configError(t, 'server: http://x\ngroup: lab\n  rate: 5\n');
  t.is(e.message, 'agent.yaml:2:8: YAML syntax: Nested mappings are not allowed in compact mappings');
  const tab = configError(t, 'server: "unterminated\n');
  t.regex(tab.message, /^agent\.yaml:\d+:\d+: YAML syntax: /);
});

test('a wrong type names the key, its line and column, and what was found', (t) => {
  t.is(configError(t, GOOD.replace('rate: 100', 'rate: fast')).message, 'agent.yaml:8:7: rate must be a number, not the string "fast"');
  t.is(configError(t, GOOD + 'once: yes please\n').message, 'agent.yaml:9:7: once must be true or false, not the string "yes please"');
  t.is(configError(t, GOOD.replace('group: lab', 'group: {a: 1}')).message, 'agent.yaml:2:8: group must be a string, not a mapping');
  t.is(configError(t, GOOD.replace('trust: [/etc/fleetcast/server.pub]', 'trust: [a.pub, 3]')).message, 'agent.yaml:6:16: trust must be a list of strings; one entry is number 3');
});

test('an unknown key is an error with a "did you mean" when one is close', (t) => {
  t.is(configError(t, GOOD + 'rat: 5\n').message, 'agent.yaml:9:1: unknown key rat (did you mean rate?)');
  t.is(configError(t, GOOD + 'fragment-bytes: 1432\n').message, 'agent.yaml:9:1: unknown key fragment-bytes (did you mean fragment_bytes?)');
  t.is(configError(t, GOOD + 'zzzzzzzz: 1\n').message, 'agent.yaml:9:1: unknown key zzzzzzzz');
  t.is(configError(t, GOOD + 'config: other.yaml\n').message, 'agent.yaml:9:1: unknown key config', '--config is not a key of its own file');
});

test('a missing required key names the file, the mapping it belongs in, and the flag that could give it', (t) => {
  t.is(configError(t, GOOD.replace('interface: lo\n', '')).message, 'agent.yaml:1:1: missing required key interface (or give --interface)');
  t.is(configError(t, GOOD.replace('channel: stable\n', '')).message, 'agent.yaml:1:1: release or channel is required: which release to fetch');
  t.is(configError(t, '# nothing here\n').message, 'agent.yaml:1:1: missing required key server (or give --server)');
});

test('an out-of-range or malformed value names the key, line and column', (t) => {
  t.is(configError(t, GOOD.replace('rate: 100', 'rate: 0')).message, 'agent.yaml:8:7: rate must be more than 0 and at most 100000, not 0');
  t.is(configError(t, GOOD + 'keep: 0\n').message, 'agent.yaml:9:7: keep must be from 1 to 1000, not 0');
  t.is(configError(t, GOOD + 'fragment_bytes: 100.5\n').message, 'agent.yaml:9:17: fragment_bytes must be an integer, not 100.5');
  t.is(configError(t, GOOD.replace('239.1.2.3:7700', '10.1.2.3:7700')).message, 'agent.yaml:4:12: multicast 10.1.2.3 is not a multicast address (224.0.0.0/4 or ff00::/8)');
  t.is(configError(t, GOOD + 'log_level: loud\n').message, 'agent.yaml:9:12: log_level must be one of error, warn, info, debug, not "loud"');
  t.is(configError(t, GOOD + 'release: 0123456789abcdef0123456789abcdef\n').message, 'agent.yaml:7:10: channel and release are both set: follow a channel or stay on one release, not both');
});

test('duplicate keys and a top level that is not a mapping are errors too', (t) => {
  t.regex(configError(t, GOOD + 'rate: 5\n').message, /^agent\.yaml:9:1: YAML syntax: Map keys must be unique/);
  t.is(configError(t, '- a\n- b\n').message, 'agent.yaml:1:1: expected a mapping of keys (key: value lines)');
});

test('the server config has its own keys', (t) => {
  const f = resolveFlags(server.spec, {}, parseConfig('store: /var/lib/fleetcast\nlisten: 0.0.0.0:7600\nmetrics: 127.0.0.1:9600\nplain_http: true\n', 'server.yaml', server.spec));
  t.is(f.listen, '0.0.0.0:7600');
  t.is(f['heartbeat-ms'], 1000);
  const e = t.throws(() => resolveFlags(server.spec, {}, parseConfig('store: s\nlisten: nowhere\nplain_http: true\n', 'server.yaml', server.spec)));
  t.is(e?.message, 'server.yaml:2:9: listen must be HOST:PORT (or [IPv6]:PORT), not "nowhere"');
});

test('fleetcast config check exits 0 for a valid file and 78 with the location for a bad one', async (t) => {
  const dir = await tmpdir(t);
  const good = path.join(dir, 'agent.yaml');
  // config check also reads the files a config names: these exist.
  const { pubPath } = await generateKeyPair(path.join(dir, 'keys'));
  await fs.writeFile(good, GOOD.replace('/etc/fleetcast/server.pub', pubPath).replace('/var/lib/fleetcast', path.join(dir, 'storage')));
  let r = await runCli(['config', 'check', good]);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /valid agent config/);
  const bad = path.join(dir, 'agent-bad.yaml');
  await fs.writeFile(bad, (await fs.readFile(good, 'utf8')) + 'rat: 5\n');
  r = await runCli(['config', 'check', bad]);
  t.is(r.code, 78);
  t.regex(r.stderr, /agent-bad\.yaml:9:1: unknown key rat \(did you mean rate\?\)/);
  r = await runCli(['config', 'check', path.join(dir, 'missing-agent.yaml')]);
  t.is(r.code, 66, 'a missing file is missing input');
  t.regex(r.stderr, /cannot read config file: no such file/);
  r = await runCli(['config', 'check', path.join(dir, 'x.yaml')]);
  t.is(r.code, 64, 'no way to tell agent from server: a usage error');
  const srv = path.join(dir, 'fleet.yaml');
  await fs.writeFile(srv, `store: ${dir}\nplain_http: true\n`);
  r = await runCli(['config', 'check', srv, '--kind', 'server']);
  t.is(r.code, 0, r.stderr);
});

test('the agent and server refuse a bad config file with exit 78 and no stack trace', async (t) => {
  const dir = await tmpdir(t);
  const bad = path.join(dir, 'agent.yaml');
  await fs.writeFile(bad, GOOD.replace('rate: 100', 'rate: -1'));
  let r = await runCli(['agent', '--config', bad]);
  t.is(r.code, 78);
  t.regex(r.stderr, /agent\.yaml:8:7: rate must be more than 0/);
  t.notRegex(r.stderr, /at .*\.js:\d+/);
  const srv = path.join(dir, 'server.yaml');
  await fs.writeFile(srv, 'store: /tmp\nheartbeat_ms: 10\n');
  r = await runCli(['server', '--config', srv]);
  t.is(r.code, 78);
  t.regex(r.stderr, /server\.yaml:2:15: heartbeat_ms must be from 50 to 60000, not 10/);
});

test('the example configs shipped in systemd/ are valid', async (t) => {
  for (const [file, spec] of [
    ['agent.yaml.example', agent.spec],
    ['server.yaml.example', server.spec],
  ] as const) {
    const name = path.join(__dirname, '..', '..', 'systemd', file);
    t.notThrows(() => resolveFlags(spec, {}, parseConfig(readFileSync(name, 'utf8'), name, spec)), file);
  }
});

// Issue 14: config check said "valid" for the unedited example, whose files do not exist.
test('config check reads what the config names: missing trust, token and CA files and a missing interface are each named with their line', async (t) => {
  const dir = await tmpdir(t);
  const file = path.join(dir, 'agent.yaml');
  const example = readFileSync(path.join(__dirname, '..', '..', 'systemd', 'agent.yaml.example'), 'utf8');
  await fs.writeFile(file, example.replace('# ca: /etc/fleetcast/ca.pem', `ca: ${dir}/no-ca.pem`).replace('interface: eth0', 'interface: nosuch0').replace(/\/etc\/fleetcast\//g, `${dir}/`).replace('/var/lib/fleetcast', path.join(dir, 'storage')));
  const r = await runCli(['config', 'check', file]);
  t.is(r.code, 78, r.stdout);
  t.regex(r.stderr, /agent\.yaml:\d+:\d+: token_file: the token: .*\/token does not exist/);
  t.regex(r.stderr, /agent\.yaml:\d+:\d+: ca: the CA certificate: .*no-ca\.pem does not exist/);
  t.regex(r.stderr, /agent\.yaml:\d+:\d+: trust: .*server\.pub does not exist/);
  t.regex(r.stderr, /agent\.yaml:\d+:\d+: interface: nosuch0: no interface has that name/);
  t.regex(r.stdout, /note: storage: .* does not exist yet/);
  t.notRegex(r.stderr, /at .*\.js:\d+/);

  // A CA that is not a certificate, a token file that holds no token.
  await fs.writeFile(path.join(dir, 'no-ca.pem'), 'hello\n');
  await fs.writeFile(path.join(dir, 'token'), 'short\n');
  const r2 = await runCli(['config', 'check', file]);
  t.regex(r2.stderr, /ca: .*no-ca\.pem is not a PEM certificate/);
  t.regex(r2.stderr, /token_file: .*token does not hold a token/);
});

test('config check on a server config: a certificate and key that do not belong together, a missing store without create', async (t) => {
  if (spawnSync('openssl', ['version']).status !== 0) return t.fail('openssl is needed to make test certificates');
  const dir = await tmpdir(t);
  for (const n of ['a', 'b']) t.is(spawnSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${n}.key`, '-out', `${n}.pem`, '-days', '1', '-subj', `/CN=${n}`], { cwd: dir }).status, 0);
  const file = path.join(dir, 'server.yaml');
  await fs.writeFile(file, `store: ${dir}/store\ntls_cert: ${dir}/a.pem\ntls_key: ${dir}/b.key\n`);
  const r = await runCli(['config', 'check', file]);
  t.is(r.code, 78);
  t.regex(r.stderr, /server\.yaml:3:10: tls_key: the key .*b\.key does not belong to the certificate .*a\.pem/);
  t.regex(r.stderr, /server\.yaml:1:8: store: .*store does not exist/);
  await fs.writeFile(file, `store: ${dir}/store\ncreate: true\ntls_cert: ${dir}/a.pem\ntls_key: ${dir}/a.key\n`);
  const ok = await runCli(['config', 'check', file]);
  t.is(ok.code, 0, ok.stderr);
  t.regex(ok.stdout, /note: store: .* does not exist yet; create: true makes it at start/);
});

rootTest('config check --as USER: a file the service user cannot read is found, exit 77', async (t) => {
  const dir = await tmpdir(t);
  await fs.chmod(dir, 0o755);
  const { pubPath } = await generateKeyPair(path.join(dir, 'keys'));
  await fs.chmod(path.join(dir, 'keys'), 0o755);
  const token = path.join(dir, 'token');
  await fs.writeFile(token, 'a-token-of-enough-length-123\n', { mode: 0o600 });
  const file = path.join(dir, 'agent.yaml');
  await fs.writeFile(file, GOOD.replace('/etc/fleetcast/server.pub', pubPath).replace('/var/lib/fleetcast', path.join(dir, 'storage')).replace('https://', 'http://') + `plain_http: true\ntoken_file: ${token}\n`, { mode: 0o644 });
  const asRoot = await runCli(['config', 'check', file]);
  t.is(asRoot.code, 0, asRoot.stderr);
  const asNobody = await runCli(['config', 'check', file, '--as', 'nobody']);
  t.is(asNobody.code, 77, asNobody.stderr);
  t.regex(asNobody.stderr, /token_file: the token: .*token is not readable by uid 65534 \(permission denied\)/);
  // Readable through a group, as the units read /etc/fleetcast (SupplementaryGroups=).
  await fs.chmod(token, 0o640);
  await fs.chown(token, 0, 65534);
  const viaGroup = await runCli(['config', 'check', file, '--as', 'nobody:nogroup']);
  t.is(viaGroup.code, 0, viaGroup.stderr);
  const unknown = await runCli(['config', 'check', file, '--as', 'no-such-user-here']);
  t.is(unknown.code, 64);
});
