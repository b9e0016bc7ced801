// partytracks' bulk close keeps the session (issue 11, point 3): A pushes camera + mic, B pulls
// both, then both unsubscribe everything (tracks/close stops the BUNDLE-tag transceiver, so
// Chromium drops its transport) and at once A pushes again and B pulls the new tracks on the same
// PartyTracks instances. Chromium's next offer brings a new ICE + DTLS transport; the node must
// move each session onto it: no 410, the same session ids, media decoded again on B.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startNode, launchChromium, serveDir, pollUntil, withTimeout, explain, PAGES } from './lib.mjs';

let node, browser, site;
const responses = [];

before(async () => {
  assert.ok(fs.existsSync(path.join(PAGES, 'partytracks.bundle.js')), 'pages/partytracks.bundle.js missing: run ./install.sh (or npm run bundle)');
  node = await startNode();
  site = await serveDir();
  browser = await launchChromium();
  browser.page.on('response', async (r) => {
    const req = r.request();
    if (!r.url().startsWith(node.origin) || req.method() === 'OPTIONS') return;
    const entry = { method: req.method(), path: new URL(r.url()).pathname.replace(`/v1/apps/${node.appId}`, ''), status: r.status(), body: null };
    responses.push(entry);
    try { entry.body = await r.json(); } catch (e) { entry.body = { notJson: String(e.message) }; }
  });
});

after(async () => {
  await browser?.close();
  await site?.close();
  await node?.stop();
});

// The lines of each SDP in a partytracks history that tell transports and sections apart.
const sdpDigest = (history) => (Array.isArray(history) ? history : []).map((e) => {
  const sdp = e.body?.sessionDescription?.sdp;
  if (!sdp) return null;
  const keep = sdp.split('\r\n').filter((l) => /^(m=|a=(mid|ice-ufrag|setup|group|fingerprint|inactive|sendonly|recvonly|sendrecv))/.test(l));
  return `${e.type} ${e.endpoint.replace(/^.*\/sessions\//, '')} ${e.body.sessionDescription.type}: ${keep.join(' | ')}`;
}).filter(Boolean).join('\n');
const summary = () => responses.map((r) => `${r.method} ${r.path} -> ${r.status} ${r.body?.errorCode ?? ''}`).join('\n');

test('partytracks: close every track, then push and pull again at once on the same sessions', async (t) => {
  await explain(node, browser, async () => {
    const { page } = browser;
    await page.goto(`${site.origin}/pt.html`);
    const cfg = { prefix: node.base, secret: node.secret };
    const stats = () => page.evaluate(() => window.ptStats());
    const fail = async (e) => { e.message += `\nAPI calls:\n${summary()}\nstats: ${JSON.stringify(await stats(), null, 1)}`; throw e; };

    const meta = await withTimeout(page.evaluate((cfg) => window.ptPush(cfg), cfg), 20000, 'A to publish camera + mic').catch(fail);
    await page.evaluate(([cfg, meta]) => window.ptPull(cfg, meta), [cfg, meta]);
    await pollUntil(async () => (await page.evaluate(() => window.ptDecoded())) > 0,
      { timeoutMs: 20000, what: 'B to decode video before the close' }).catch(fail);
    const first = await stats();
    const sidA = first.a.sessionId, sidB = first.b.sessionId;
    const ufrags = { a: await page.evaluate(() => window.ptUfrag('a')), b: await page.evaluate(() => window.ptUfrag('b')) };

    // Bulk close on both sides, then at once the next push and pull on the same instances.
    await page.evaluate(() => { window.ptUnsubscribe('b'); window.ptUnsubscribe('a'); });
    const meta2 = await withTimeout(page.evaluate(() => window.ptRepush()), 20000, 'A to publish again after closing everything').catch(fail);
    assert.equal(meta2.video.sessionId, sidA, 'A keeps its session');
    assert.notEqual(meta2.video.trackName, meta.video.trackName, 'new tracks');
    const before = await page.evaluate(() => window.ptDecoded());
    await page.evaluate((m) => window.ptRepull(m), meta2);
    await pollUntil(async () => (await page.evaluate(() => window.ptDecoded())) > before + 10,
      { timeoutMs: 20000, what: 'B to decode the new video after the bulk close' }).catch(fail);

    const end = await stats();
    assert.equal(end.a.sessionId, sidA, 'partytracks A kept its session (no new session after a 410 or a lost connection)');
    assert.equal(end.b.sessionId, sidB, `partytracks B kept its session; API calls:\n${summary()}\nB's SDPs:\n${sdpDigest(end.b.history)}`);
    assert.deepEqual([...end.a.errors, ...end.b.errors], [], 'no partytracks sessionError$');
    const failed = responses.filter((r) => r.status >= 400 || r.body?.errorCode);
    assert.deepEqual(failed, [], `failed API calls:\n${summary()}`);
    const after = { a: await page.evaluate(() => window.ptUfrag('a')), b: await page.evaluate(() => window.ptUfrag('b')) };
    t.diagnostic(`ICE ufrags before/after the bulk close: A ${ufrags.a} -> ${after.a}, B ${ufrags.b} -> ${after.b}`);
    const g = await node.api('GET', `/sessions/${sidA}`);
    assert.equal(g.status, 200, `GET session A: ${JSON.stringify(g.json)}`);
    const active = g.json.tracks.filter((x) => x.status === 'active').map((x) => x.trackName).sort();
    assert.deepEqual(active, [meta2.audio.trackName, meta2.video.trackName].sort(), `GET session A: ${JSON.stringify(g.json)}`);
    t.diagnostic(`API calls: ${summary().split('\n').join('; ')}`);
    await page.evaluate(() => window.ptEnd());
  });
});
