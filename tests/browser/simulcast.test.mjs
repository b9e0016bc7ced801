// Simulcast end to end on one node: Chromium publishes its 1280x720 fake camera with three
// encodings (rids q, h, f); a subscriber pulls with preferredRid "h", moves to "q" with
// tracks/update (decoded frameWidth drops) and back (it rises); another pulls "f" with
// ridNotAvailable "asciibetical", the publisher turns f off (setParameters active:false) and that
// subscriber keeps decoding video (from h). Both subscribers are on the publisher's node; the
// same across nodes is simulcast-cluster.test.mjs.
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

const stats = (page, name) => page.evaluate((n) => window.stats(n), name);

async function metrics() {
  const text = await (await withTimeout(fetch(`${node.origin}/metrics`), 10000, 'GET /metrics')).text();
  const m = {};
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    m[line.slice(0, i)] = Number(line.slice(i + 1));
  }
  return m;
}

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

async function currentRid(sessionId) {
  const g = await node.api('GET', `/sessions/${sessionId}`);
  assert.equal(g.status, 200, JSON.stringify(g.json));
  return g.json.tracks[0]?.simulcast?.currentRid;
}

test('simulcast: preferredRid, tracks/update down and up, fallback when the top layer stops', async (t) => {
  await explain(node, browser, async () => {
    const { page } = browser;
    await page.goto(`${site.origin}/simulcast.html`);
    const cfg = { base: node.base, secret: node.secret };
    const pub = await withTimeout(page.evaluate((c) => window.publish(c), cfg), 30000, 'publish with three encodings');
    assert.ok(pub.offerHasSimulcast, 'Chromium offers a=simulcast:send');
    // Chromium starts its encodings as its bandwidth estimate allows: wait for all three.
    await pollUntil(async () => {
      const s = await stats(page, 'none');
      return ['q', 'h', 'f'].every((r) => s.pub[r]?.packetsSent > 0) ? s : null;
    }, { timeoutMs: 30000, intervalMs: 200, what: 'the publisher sends rids q, h and f' });

    // Pull with preferredRid h: the request is echoed, the half-size layer decodes.
    const remote = { sessionId: pub.sessionId, trackName: pub.trackName };
    const a = await withTimeout(page.evaluate(([c, r]) => window.pull(c, 'a', r, { preferredRid: 'h' }), [cfg, remote]), 30000, 'pull a');
    assert.deepEqual(a.item.simulcast, { preferredRid: 'h', priorityOrdering: 'none', ridNotAvailable: 'none' });
    const onH = await decodesWidth(page, 'a', (w) => w > 0 && w < 1280, 'a decodes layer h');
    assert.equal(await currentRid(a.sessionId), 'h', 'GET session shows currentRid h');

    // Down to q: the decoded width drops.
    await page.evaluate(([c]) => window.update(c, 'a', { preferredRid: 'q' }), [cfg]);
    const onQ = await decodesWidth(page, 'a', (w) => w > 0 && w < onH.sub.frameWidth, 'a decodes a smaller layer after tracks/update to q');
    assert.equal(await currentRid(a.sessionId), 'q');
    // And back up to h: it rises again.
    await page.evaluate(([c]) => window.update(c, 'a', { preferredRid: 'h' }), [cfg]);
    const back = await decodesWidth(page, 'a', (w) => w > onQ.sub.frameWidth, 'a decodes a larger layer after tracks/update back to h');
    t.diagnostic(`decoded widths: h ${onH.sub.frameWidth}, q ${onQ.sub.frameWidth}, h again ${back.sub.frameWidth}`);

    // The top layer, with fallback: decodes f, then the publisher turns f off.
    const b = await withTimeout(page.evaluate(([c, r]) => window.pull(c, 'b', r, { preferredRid: 'f', ridNotAvailable: 'asciibetical' }), [cfg, remote]), 30000, 'pull b');
    assert.equal(b.item.simulcast.ridNotAvailable, 'asciibetical');
    const onF = await decodesWidth(page, 'b', (w) => w > back.sub.frameWidth, 'b decodes layer f');
    assert.equal(await currentRid(b.sessionId), 'f');
    await page.evaluate(() => window.setActive('f', false));
    const fallback = await decodesWidth(page, 'b', (w) => w > 0 && w < onF.sub.frameWidth, 'b keeps decoding video from a lower layer once f stops');
    assert.equal(await currentRid(b.sessionId), 'h', 'the next layer in ASCII order');
    const more = await pollUntil(async () => {
      const s = await stats(page, 'b');
      return s.sub.framesDecoded >= fallback.sub.framesDecoded + 30 ? s : null;
    }, { timeoutMs: 15000, intervalMs: 200, what: 'b keeps decoding (framesDecoded grows)' });
    t.diagnostic(`fallback: f ${onF.sub.frameWidth} -> ${more.sub.frameWidth}, framesDecoded ${more.sub.framesDecoded}`);

    // Chromium's layers never looked like bad input: no layer restarted, no frame refused.
    const ev = (e) => `trackmesh_simulcast_events_total{event="${e}"}`;
    const drop = (r) => `trackmesh_packets_dropped_total{reason="${r}"}`;
    const m = await pollUntil(async () => {
      const m = await metrics();
      return m[ev('switch')] >= 5 ? m : null;
    }, { timeoutMs: 15000, intervalMs: 500, what: 'the metrics count the 5 layer switches (published every 5 s)' })
      .catch(async (e) => {
        const m = await metrics();
        e.message += `\n${JSON.stringify(Object.fromEntries(Object.entries(m).filter(([k]) => /simulcast/.test(k))))}`;
        throw e;
      });
    for (const key of [ev('ssrc_change'), ev('time_jump'), drop('simulcast_unknown_rid'), drop('simulcast_too_many_layers')]) {
      assert.equal(m[key] ?? 0, 0, `${key}: ${m[key]}`);
    }
    await page.evaluate(() => window.closeAll());
  });
});
