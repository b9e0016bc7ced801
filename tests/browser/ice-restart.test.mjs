// An ICE restart mid-call keeps media flowing with the same tracks (issue 11, point 3): raw Calls
// API page, A pushes camera + mic, B pulls both; then B and then A call pc.restartIce() and send
// the new offer with tracks/new (no tracks). The node answers with new credentials, both
// connections stay up, B keeps decoding video, and both sessions list the same active tracks.
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

test('ICE restart of subscriber then publisher: same tracks, media keeps flowing', async (t) => {
  await explain(node, browser, async () => {
    const { page } = browser;
    await page.goto(`${site.origin}/raw.html`);
    const cfg = { base: node.base, secret: node.secret };
    const stats = () => page.evaluate(() => window.stats());

    const pub = await withTimeout(page.evaluate((cfg) => window.publish(cfg), cfg), 30000, 'publish');
    const pull = await withTimeout(page.evaluate(([cfg, remote]) => window.pull(cfg, remote),
      [cfg, pub.tracks.map((x) => ({ sessionId: pub.sessionId, trackName: x.trackName }))]), 30000, 'pull');
    await pollUntil(async () => (await stats()).sub?.video.framesDecoded > 0, { timeoutMs: 15000, what: 'B decodes video' });
    const listed = async () => {
      const out = {};
      for (const sid of [pub.sessionId, pull.sessionId]) {
        const g = await node.api('GET', `/sessions/${sid}`);
        assert.equal(g.status, 200, `GET session ${sid}: ${JSON.stringify(g.json)}`);
        out[sid] = g.json.tracks.map((x) => `${x.trackName} ${x.mid} ${x.status}`).sort();
      }
      return out;
    };
    const tracksBefore = await listed();

    for (const which of ['sub', 'pub']) {
      const r = await withTimeout(page.evaluate(([cfg, w]) => window.restartIce(cfg, w), [cfg, which]), 15000, `${which} ICE restart`);
      assert.equal(r.status, 200, `${which}: tracks/new with the restart offer`);
      assert.notEqual(r.after.local, r.before.local, `${which}: the browser took new credentials`);
      assert.notEqual(r.after.remote, r.before.remote, `${which}: the node answered with new credentials`);
      const from = (await stats()).sub.video.framesDecoded;
      await pollUntil(async () => {
        const s = await stats();
        return s.sub.connectionState === 'connected' && s.pub.connectionState === 'connected' && s.sub.video.framesDecoded > from + 15;
      }, { timeoutMs: 10000, what: `B to keep decoding video after the ${which} ICE restart` })
        .catch(async (e) => { e.message += `\nstats: ${JSON.stringify(await stats(), null, 1)}`; throw e; });
      t.diagnostic(`${which}: ufrags ${JSON.stringify(r.before)} -> ${JSON.stringify(r.after)}`);
    }
    assert.deepEqual(await listed(), tracksBefore, 'the same tracks, still active');
    await page.evaluate(() => window.closeAll());
  });
});
