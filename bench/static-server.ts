import { createReadStream, statSync } from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';

/**
 * The benchmarks' plain HTTP baseline: serves the files of one directory, honouring
 * a single `Range: bytes=a-b` (python3 -m http.server ignores Range, which would
 * make a "quarter" download fetch the whole file). Usage: static-server DIR PORT
 */
const [dir, port] = process.argv.slice(2);
http
  .createServer((req, res) => {
    const file = path.join(dir, path.basename(decodeURIComponent((req.url ?? '/').split('?')[0])));
    let size: number;
    try {
      size = statSync(file).size;
    } catch {
      res.writeHead(404).end();
      return;
    }
    const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
    const start = m ? Number(m[1]) : 0;
    const end = m && m[2] ? Math.min(size - 1, Number(m[2])) : size - 1;
    res.writeHead(m ? 206 : 200, { 'content-length': end - start + 1, ...(m ? { 'content-range': `bytes ${start}-${end}/${size}` } : {}) });
    createReadStream(file, { start, end, highWaterMark: 256 * 1024 }).pipe(res);
  })
  .listen(Number(port), '0.0.0.0');
