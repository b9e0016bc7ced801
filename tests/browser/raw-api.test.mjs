// Raw Calls API from a page on another origin (CORS): session A pushes the fake camera + mic,
// session B (separate RTCPeerConnection, same page) pulls both; media must be decoded on B.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startNode, launchChromium, serveDir, pollUntil, withTimeout, explain } from './lib.mjs';

let node, browser, site;

before(async () => {
  node = await startNode();
  site = await serveDir();
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await site?.close();
  await node?.stop();
});

test('raw API: push camera + mic, pull both in another session, media decoded', async (t) => {
  await explain(node, browser, async () => {
    const { page } = browser;
    await page.goto(`${site.origin}/raw.html`);
    assert.notEqual(new URL(site.origin).port, new URL(node.origin).port, 'page and node must be different origins');
    const cfg = { base: node.base, secret: node.secret };

    // cross-origin error responses are readable by the page (CORS headers on errors too)
    const bad = await page.evaluate((cfg) => window.rawCall({ ...cfg, secret: 'wrong' }, 'POST', '/sessions/new'), cfg);
    assert.equal(bad.status, 401, `wrong bearer from another origin: ${JSON.stringify(bad)}`);
    assert.match(bad.error, /errorCode=unauthorized/, `wrong bearer from another origin: ${JSON.stringify(bad)}`);

    const pub = await withTimeout(page.evaluate((cfg) => window.publish(cfg), cfg), 30000, 'publish (getUserMedia, sessions/new, tracks/new, connected)');
    assert.equal(pub.createStatus, 201, 'sessions/new answers 201 Created');
    assert.match(pub.sessionId, /^[0-9a-f]{32}$/, 'session id is 32 lowercase hex characters');
    assert.deepEqual(pub.tracks.map((x) => x.kind).sort(), ['audio', 'video']);

    // the publisher really sends before we pull (so the pull does not race the first packets)
    await pollUntil(async () => {
      const s = await page.evaluate(() => window.stats());
      return s.pub.video.packetsSent > 0 && s.pub.audio.packetsSent > 0;
    }, { timeoutMs: 10000, what: 'publisher outbound packets' });

    const pull = await withTimeout(page.evaluate(([cfg, remote]) => window.pull(cfg, remote),
      [cfg, pub.tracks.map((x) => ({ sessionId: pub.sessionId, trackName: x.trackName }))]), 30000, 'pull (sessions/new, tracks/new, renegotiate)');
    assert.notEqual(pull.sessionId, pub.sessionId);

    const s = await pollUntil(async () => {
      const s = await page.evaluate(() => window.stats());
      return s.sub.video.framesDecoded > 0 && s.sub.audio.packetsReceived > 0 && s.sub.timing.firstDecodedMs !== undefined ? s : null;
    }, { timeoutMs: 15000, intervalMs: 100, what: 'pulled video framesDecoded > 0 and audio packetsReceived > 0 on session B' })
      .catch(async (e) => {
        const s = await page.evaluate(() => window.stats());
        e.message += `\nstats: ${JSON.stringify(s, null, 1)}`;
        throw e;
      });
    const tm = s.sub.timing;
    const line = `pull request -> first decoded frame: ${tm.firstDecodedMs} ms (getStats, 10 ms polling); ` +
      `requestVideoFrameCallback: ${tm.firstFrameCallbackMs ?? 'n/a'} ms; tracks/new answered at ${tm.tracksNewMs} ms, renegotiate at ${tm.renegotiateMs} ms; ` +
      `codecs ${s.sub.video.codec} + ${s.sub.audio.codec}; pair ${s.sub.pair?.local} -> ${s.sub.pair?.remote}`;
    t.diagnostic(line);

    // a little more media must keep flowing (not just one frame)
    const later = await pollUntil(async () => {
      const x = await page.evaluate(() => window.stats());
      return x.sub.video.framesDecoded >= s.sub.video.framesDecoded + 10 ? x : null;
    }, { timeoutMs: 10000, what: 'at least 10 more decoded frames' });
    assert.ok(later.sub.audio.packetsReceived > s.sub.audio.packetsReceived, 'audio packets keep arriving');

    // the node lists both sessions' tracks as active
    for (const [sid, n] of [[pub.sessionId, 2], [pull.sessionId, 2]]) {
      const g = await node.api('GET', `/sessions/${sid}`);
      assert.equal(g.status, 200, `GET session ${sid}: ${JSON.stringify(g.json)}`);
      const active = (g.json.tracks || []).filter((x) => x.status === 'active');
      assert.equal(active.length, n, `GET session ${sid} lists ${n} active tracks: ${JSON.stringify(g.json)}`);
    }
    await page.evaluate(() => window.closeAll());
  });
});
