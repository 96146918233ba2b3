#!/usr/bin/env node
'use strict';
let main;
try {
  ({ main } = require('../dist/src/cli/main.js'));
} catch (err) {
  if (err && err.code === 'MODULE_NOT_FOUND' && /dist[\\/]src[\\/]cli[\\/]main\.js/.test(err.message)) {
    process.stderr.write('fleetcast: not built yet; run `npm install` (or `npm run build`) in the fleetcast directory first\n');
    process.exit(70);
  }
  throw err;
}
// The agent's memory settings (issue 16; the reasons are in memory-tuning.ts).
if (process.argv[2] === 'agent') require('../dist/src/util/memory-tuning.js').tuneAgentMemory();
main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
    // Agents and servers close their handles; anything left (keep-alive sockets) must not hold the exit.
    setTimeout(() => process.exit(code), 200).unref();
  },
  (err) => {
    process.stderr.write(`fleetcast: internal error: ${err && err.stack ? err.stack : err}\n`);
    process.exit(70);
  },
);
