// Measurement, not a test: node CPU with one Chromium publisher (fake camera 640x480 VP8 + Opus)
// and N subscribers (str0m peers from the `fanout` example, which do not decode, so the
// node's CPU is not competing with N video decoders on this 2-core machine).
//
//   cargo build --release --bins && cargo build --release -p trackmesh-tests --example fanout
//   TRACKMESH_BIN=../../target/release/trackmesh node measure-fanout.mjs [SUBSCRIBERS] [SECONDS]
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { startNode, launchChromium, serveDir, pollUntil, HERE } from './lib.mjs';

const n = process.argv[2] || '10';
const seconds = process.argv[3] || '20';
const example = process.env.FANOUT_BIN || path.join(HERE, '../../target/release/examples/fanout');

const node = await startNode({ extraArgs: [] });
const site = await serveDir();
const browser = await launchChromium();
try {
  const { page } = browser;
  await page.goto(`${site.origin}/raw.html`);
  const pub = await page.evaluate((cfg) => window.publish(cfg), { base: node.base, secret: node.secret });
  await pollUntil(async () => (await page.evaluate(() => window.stats())).pub.video.packetsSent > 0,
    { timeoutMs: 10000, what: 'publisher sending' });
  const tracks = pub.tracks.map((t) => t.trackName).join(',');
  const r = spawnSync(example, [node.base, node.secret, pub.sessionId, tracks, n, seconds, String(node.proc.pid)],
    { encoding: 'utf8', timeout: (Number(seconds) + 60) * 1000 });
  if (r.status !== 0) throw new Error(`fanout failed (${r.status}): ${r.stderr}`);
  const s = await page.evaluate(() => window.stats());
  console.log(r.stdout.trim());
  console.log(`publisher: ${s.pub.video.codec} ${s.pub.video.frameWidth ?? ''}x${s.pub.video.frameHeight ?? ''}`);
} finally {
  await browser.close();
  await site.close();
  await node.stop();
}
