// Builds the console's bundle into ../dist: app.js and app.css (Leaflet's CSS and images
// inlined), and index.html. The output depends only on the sources and the locked packages,
// so .ci/run can check the committed bundle against a fresh build.
import * as esbuild from 'esbuild';
import { copyFileSync, mkdirSync, rmSync } from 'node:fs';

const out = new URL('../dist/', import.meta.url).pathname;
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
await esbuild.build({
  entryPoints: { app: 'src/main.js' },
  bundle: true,
  minify: true,
  format: 'iife',
  target: ['es2020'],
  outdir: out,
  legalComments: 'linked',
  loader: { '.png': 'dataurl', '.svg': 'dataurl', '.json': 'json' },
  logLevel: 'warning',
});
copyFileSync('index.html', out + 'index.html');
