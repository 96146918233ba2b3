import * as path from 'node:path';

/** What this build is: the package version and the Node.js it runs on (`fleetcast version`, fleetcast_build_info). */
export interface BuildInfo {
  version: string;
  node: string;
}

let cached: BuildInfo | null = null;

export function buildInfo(): BuildInfo {
  if (!cached) {
    // dist/src/util/ → the package root.
    const pkg = require(path.join(__dirname, '..', '..', '..', 'package.json')) as { version: string };
    cached = { version: pkg.version, node: process.versions.node };
  }
  return cached;
}
