// Simulcast across two nodes of a cluster: Chromium publishes q/h/f on node A; B pulls from A the
// layers its subscribers use, each relayed on its own with its rid, and selects for them: one
// pulls with preferredRid
// "h" (decoded width below 1280), moves to "q" with tracks/update on B (smaller); another pulls
// "f" with ridNotAvailable "asciibetical" (1280 wide), the publisher turns f off and that one
// keeps decoding from h.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  launchChromium, serveDir, pollUntil, withTimeout, randomHex, startTwoNodeCluster, explainNodes,
} from './lib.mjs';

const appId = randomHex(16);
const secret = randomHex(16);
const adminToken = randomHex(16);

let A, B, browser, site;

const explainAll = (fn) => explainNodes({ A, B }, browser, fn);

before(async () => {
  ({ A, B } = await startTwoNodeCluster({ appId, secret, adminToken }));
  site = await serveDir();
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await site?.close();
  await B?.stop();
  await A?.stop();
});

const stats = (page, name) => page.evaluate((n) => window.stats(n), name);

/** Waits until subscriber `name` decodes frames of a width accepted by `ok`, and 10 more after. */
async function decodesWidth(page, name, ok, what) {
  const first = await pollUntil(async () => {
    const s = await stats(page, name);
    return s.sub.framesDecoded > 0 && ok(s.sub.frameWidth) ? s : null;
  }, { timeoutMs: 30000, intervalMs: 200, what }).catch(async (e) => {
    e.message += `\nstats: ${JSON.stringify(await stats(page, name))}`;
    throw e;
  });
  return pollUntil(async () => {
    const s = await stats(page, name);
    return s.sub.framesDecoded >= first.sub.framesDecoded + 10 && ok(s.sub.frameWidth) ? s : null;
  }, { timeoutMs: 15000, intervalMs: 200, what: `${what}, 10 more frames` });
}

async function currentRid(n, sessionId) {
  const g = await n.api('GET', `/sessions/${sessionId}`);
  assert.equal(g.status, 200, JSON.stringify(g.json));
  return g.json.tracks[0]?.simulcast?.currentRid;
}

test('simulcast across nodes: layers chosen and switched on the other node, fallback when f stops', async (t) => {
  await explainAll(async () => {
    for (const n of [A, B]) {
      await pollUntil(async () => {
        const r = await n.admin('/admin/cluster');
        return r.status === 200 && (r.json.members || []).filter((m) => m.live).length === 2 ? r : null;
      }, { timeoutMs: 15000, intervalMs: 100, what: `node ${n.node} lists both members live` });
    }
    const { page } = browser;
    await page.goto(`${site.origin}/simulcast.html`);
    const cfgA = { base: A.base, secret };
    const cfgB = { base: B.base, secret };
    const pub = await withTimeout(page.evaluate((c) => window.publish(c), cfgA), 30000, 'publish on A');
    await pollUntil(async () => {
      const s = await stats(page, 'none');
      return ['q', 'h', 'f'].every((r) => s.pub[r]?.packetsSent > 0) ? s : null;
    }, { timeoutMs: 30000, intervalMs: 200, what: 'the publisher sends rids q, h and f' });

    // Every layer crosses the relay with its rid; B selects for its own subscribers.
    const remote = { sessionId: pub.sessionId, trackName: pub.trackName };
    const a = await withTimeout(page.evaluate(([c, r]) => window.pull(c, 'a', r, { preferredRid: 'h' }), [cfgB, remote]), 30000, 'pull a on B');
    assert.equal(a.sessionId.slice(0, 8), B.tag, 'the subscriber is on B');
    assert.deepEqual(a.item.simulcast, { preferredRid: 'h', priorityOrdering: 'none', ridNotAvailable: 'none' }, 'echoed');
    const onH = await decodesWidth(page, 'a', (w) => w > 0 && w < 1280, 'a on B decodes layer h');
    assert.equal(await currentRid(B, a.sessionId), 'h');
    const upd = await page.evaluate(([c]) => window.update(c, 'a', { preferredRid: 'q' }), [cfgB]);
    assert.equal(upd.tracks[0].errorCode, undefined, `tracks/update on B: ${JSON.stringify(upd)}`);
    const onQ = await decodesWidth(page, 'a', (w) => w > 0 && w < onH.sub.frameWidth, 'a on B decodes a smaller layer after tracks/update to q');
    assert.equal(await currentRid(B, a.sessionId), 'q');

    const b = await withTimeout(page.evaluate(([c, r]) => window.pull(c, 'b', r, { preferredRid: 'f', ridNotAvailable: 'asciibetical' }), [cfgB, remote]), 30000, 'pull b on B');
    const onF = await decodesWidth(page, 'b', (w) => w === 1280, 'b on B decodes layer f, 1280 wide');
    await page.evaluate(() => window.setActive('f', false));
    const fallback = await decodesWidth(page, 'b', (w) => w > 0 && w < 1280, 'b on B keeps decoding from a lower layer once f stops');
    assert.equal(await currentRid(B, b.sessionId), 'h', 'the next layer in ASCII order');
    t.diagnostic(`B: a h ${onH.sub.frameWidth} -> q ${onQ.sub.frameWidth}; b f ${onF.sub.frameWidth} -> ${fallback.sub.frameWidth}`);
    await page.evaluate(() => window.closeAll());
  });
});
