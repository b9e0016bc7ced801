// The `whip-whep` npm client (WHIPClient/WHEPClient), as broadcasters' web tools use it, against a
// two-node cluster: it publishes on node A (region eu) with WHIP and plays on node C (region us)
// with WHEP; C pulls the stream from A over the relay. Video frames must be decoded on C, the
// client's trickle PATCH must be answered 204, and its DELETEs (stop) 200.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  HERE, startNode, launchChromium, serveDir, pollUntil, randomHex, tail,
} from './lib.mjs';

const appId = randomHex(16);
const secret = randomHex(16);
const clusterSecret = randomHex(16);

let A, C, browser, site;

before(async () => {
  const common = (region, gossip) => [
    '--region', region, '--gossip', `127.0.0.1:${gossip}`, '--relay', '127.0.0.1:0',
    '--cluster-secret', clusterSecret,
  ];
  A = await startNode({ appId, secret, extraArgs: (g) => [...common('eu', g), '--node-id', `a-${randomHex(4)}`] });
  C = await startNode({
    appId, secret,
    extraArgs: (g) => [...common('us', g), '--node-id', `c-${randomHex(4)}`, '--seed', A.gossip],
  });
  // Served from tests/browser/ so the page can import /node_modules/whip-whep/*.js as is.
  site = await serveDir(HERE);
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await site?.close();
  await C?.stop();
  await A?.stop();
});

test('whip-whep client: publish on node A, play on node C, trickle PATCH and DELETE', async () => {
  const page = await browser.ctx.newPage();
  const stream = `show-${randomHex(4)}`;
  const whip = `${A.origin}/v1/apps/${appId}/whip/${stream}`;
  const whep = `${C.origin}/v1/apps/${appId}/whep/${stream}`;
  try {
    await page.goto(`${site.origin}/pages/whip-whep.html`);
    await page.waitForFunction(() => window.ready === true, null, { timeout: 10000 });
    await page.evaluate(([u, t]) => window.publish(u, t), [whip, secret]);
    // C learns the publisher through gossip; a WHEP viewer that comes first waits for it anyway.
    await page.evaluate(([u, t]) => window.view(u, t), [whep, secret]);
    const seen = await pollUntil(async () => {
      const d = await page.evaluate(() => window.decoded());
      return d.framesDecoded >= 30 && d.painted >= 10 ? d : null;
    }, { timeoutMs: 30000, intervalMs: 250, what: 'video frames decoded on node C' });
    assert.ok(seen.width > 0, `the played video has a size: ${JSON.stringify(seen)}`);

    // GET streams on C names A as the publisher's node.
    const listed = await C.api('GET', '/streams');
    const s = (listed.json.streams || []).find((x) => x.id === stream);
    assert.equal(s?.publisher?.node, A.node, `C's streams list: ${JSON.stringify(listed.json)}`);

    await page.evaluate(() => window.stopAll());
    const reqs = await page.evaluate(() => window.requests());
    const patches = reqs.filter((r) => r.method === 'PATCH');
    assert.ok(patches.length > 0, `the client trickled with PATCH: ${JSON.stringify(reqs)}`);
    for (const p of patches) assert.equal(p.status, 204, `PATCH answered 204: ${JSON.stringify(p)}`);
    const deletes = reqs.filter((r) => r.method === 'DELETE');
    assert.equal(deletes.length, 2, `one DELETE per client: ${JSON.stringify(reqs)}`);
    for (const d of deletes) assert.equal(d.status, 200, `DELETE answered 200: ${JSON.stringify(d)}`);

    // The publisher is gone from A.
    await pollUntil(async () => {
      const r = await A.api('GET', '/streams');
      const x = (r.json.streams || []).find((y) => y.id === stream);
      return !x?.publisher ? true : null;
    }, { timeoutMs: 10000, intervalMs: 200, what: "the publisher gone from A's streams after DELETE" });
  } catch (e) {
    e.message += `\n--- A stderr ---\n${tail(A.stderr(), 30)}\n--- C stderr ---\n${tail(C.stderr(), 30)}`;
    if (browser?.logs?.length) e.message += `\n--- page console ---\n${browser.logs.slice(-30).join('\n')}`;
    throw e;
  } finally {
    await page.close();
  }
});
