// Simulcast across two nodes of a cluster, as it stands: layers are not relayed one by one yet,
// so a subscriber on node B gets ONE layer of a simulcast publication on node A, the best one
// flowing at A (here f, 1280 wide), whatever its preferredRid; tracks/update of its preferredRid
// is refused with update_track_error; when the publisher turns f off, A's relay moves to h and
// the subscriber on B keeps decoding.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startNode, launchChromium, serveDir, pollUntil, withTimeout, freeUdpPort, randomHex, tail,
} from './lib.mjs';

const appId = randomHex(16);
const secret = randomHex(16);
const clusterSecret = randomHex(16);
const adminToken = randomHex(16);

let A, B, browser, site;

async function explainAll(fn) {
  try {
    return await fn();
  } catch (e) {
    const extra = [];
    if (browser?.logs?.length) extra.push(`--- page console (last 30) ---\n${browser.logs.slice(-30).join('\n')}`);
    for (const [name, n] of [['A', A], ['B', B]]) {
      if (n) extra.push(`--- node ${name} stderr (last 30 lines) ---\n${tail(n.stderr(), 30)}`);
    }
    e.message = `${e.message}\n${extra.join('\n')}`;
    throw e;
  }
}

before(async () => {
  const common = (region, gossipPort) => [
    '--region', region, '--gossip', `127.0.0.1:${gossipPort}`, '--relay', '127.0.0.1:0',
    '--cluster-secret', clusterSecret,
  ];
  const [gossipA, gossipB] = [await freeUdpPort(), await freeUdpPort()];
  A = await startNode({ appId, secret, adminToken, extraArgs: [...common('eu', gossipA), '--node-id', `a-eu-${randomHex(4)}`] });
  B = await startNode({
    appId, secret, adminToken,
    extraArgs: [...common('us', gossipB), '--node-id', `b-us-${randomHex(4)}`, '--seed', A.gossip],
  });
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

test('simulcast across nodes: one layer (the best flowing) reaches the other node, and follows the fallback', async (t) => {
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

    const remote = { sessionId: pub.sessionId, trackName: pub.trackName };
    const b = await withTimeout(page.evaluate(([c, r]) => window.pull(c, 'b', r, { preferredRid: 'h', ridNotAvailable: 'asciibetical' }), [cfgB, remote]), 30000, 'pull on B');
    assert.equal(b.sessionId.slice(0, 8), B.tag, 'the subscriber is on B');
    assert.deepEqual(b.item.simulcast, { preferredRid: 'h', priorityOrdering: 'none', ridNotAvailable: 'asciibetical' }, 'echoed');

    const onF = await pollUntil(async () => {
      const s = await stats(page, 'b');
      return s.sub.framesDecoded > 10 && s.sub.frameWidth === 1280 ? s : null;
    }, { timeoutMs: 30000, intervalMs: 200, what: 'B decodes the best layer, 1280 wide' })
      .catch(async (e) => { e.message += `\nstats: ${JSON.stringify(await stats(page, 'b'))}`; throw e; });

    const upd = await page.evaluate(([c]) => window.update(c, 'b', { preferredRid: 'q' }), [cfgB]);
    assert.equal(upd.tracks[0].errorCode, 'update_track_error', `tracks/update on B: ${JSON.stringify(upd)}`);

    await page.evaluate(() => window.setActive('f', false));
    const fallback = await pollUntil(async () => {
      const s = await stats(page, 'b');
      return s.sub.frameWidth > 0 && s.sub.frameWidth < 1280 && s.sub.framesDecoded >= onF.sub.framesDecoded + 30 ? s : null;
    }, { timeoutMs: 30000, intervalMs: 200, what: 'B keeps decoding from a lower layer once f stops' })
      .catch(async (e) => { e.message += `\nstats: ${JSON.stringify(await stats(page, 'b'))}`; throw e; });
    t.diagnostic(`B: f ${onF.sub.frameWidth} -> ${fallback.sub.frameWidth}, framesDecoded ${fallback.sub.framesDecoded}`);
    await page.evaluate(() => window.closeAll());
  });
});
