// partytracks 0.0.54 (bundled with esbuild) against the node, cross-origin with a full-URL prefix:
// PartyTracks A pushes camera + mic, PartyTracks B pulls both; media must be decoded on B;
// then B and A unsubscribe, which sends tracks/close, and the node must answer and mark the tracks inactive.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startNode, launchChromium, serveDir, pollUntil, withTimeout, explain, PAGES } from './lib.mjs';

let node, browser, site;
const responses = [];   // every non-preflight API response the page got: {method, path, status, body}; body is null until read

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

const summary = () => responses.map((r) => `${r.method} ${r.path} -> ${r.status} ${r.body?.errorCode ?? ''}`).join('\n');

test('partytracks: push camera + mic, pull both, close both', async (t) => {
  await explain(node, browser, async () => {
    const { page } = browser;
    await page.goto(`${site.origin}/pt.html`);
    const cfg = { prefix: node.base, secret: node.secret };

    const meta = await withTimeout(page.evaluate((cfg) => window.ptPush(cfg), cfg), 20000,
      'partytracks A to publish camera + mic metadata (needs answer applied, ICE + DTLS up, bytesSent > 0)')
      .catch(async (e) => { e.message += `\nAPI calls:\n${summary()}\nstats: ${JSON.stringify(await page.evaluate(() => window.ptStats()))}`; throw e; });
    assert.match(meta.video.sessionId, /^[0-9a-f]{32}$/);
    assert.equal(meta.video.sessionId, meta.audio.sessionId);
    assert.notEqual(meta.video.trackName, meta.audio.trackName);

    await page.evaluate(([cfg, meta]) => window.ptPull(cfg, meta), [cfg, meta]);
    const s = await pollUntil(async () => {
      const s = await page.evaluate(() => window.ptStats());
      return s.b?.video.framesDecoded > 0 && s.b?.audio.packetsReceived > 0 && s.b.firstDecodedMs !== undefined ? s : null;
    }, { timeoutMs: 20000, what: 'partytracks B: video framesDecoded > 0 and audio packetsReceived > 0' })
      .catch(async (e) => { e.message += `\nAPI calls:\n${summary()}\nstats: ${JSON.stringify(await page.evaluate(() => window.ptStats()), null, 1)}`; throw e; });
    t.diagnostic(`partytracks: B.pull() -> first decoded frame ${s.b.firstDecodedMs} ms (includes B's sessions/new); track events at ${JSON.stringify(s.b.got)} ms`);
    const sidA = s.a.sessionId, sidB = s.b.sessionId;
    assert.equal(sidA, meta.video.sessionId);
    assert.ok(sidB && sidB !== sidA, 'B has its own session');

    // no API call so far failed
    const failed = responses.filter((r) => r.status >= 400 || r.body?.errorCode);
    assert.deepEqual(failed, [], `failed API calls:\n${summary()}`);

    // Close, as partytracks apps do it (PUT tracks/close, force:false, with an offer):
    // (1) B stops pulling the track on its last m-line. The other pulled track must keep flowing and the session
    //     must stay, with the closed track inactive and the other one active. (Not the first m-line: when the
    //     offer rejects the BUNDLE-tag m-line, Chromium drops the whole transport, whatever the SFU answers.)
    const closesOf = (sid) => responses.filter((r) => r.method === 'PUT' && r.path === `/sessions/${sid}/tracks/close`);
    const checkCloses = (who, sid) => {
      for (const c of closesOf(sid)) {
        assert.equal(c.status, 200, `tracks/close on ${who}: ${JSON.stringify(c.body)}`);
        assert.equal(c.body.errorCode, undefined, `tracks/close on ${who}: ${JSON.stringify(c.body)}`);
        assert.equal(c.body.sessionDescription?.type, 'answer', `tracks/close on ${who} answers the client's offer`);
        for (const item of c.body.tracks || []) assert.equal(item.errorCode, undefined, `close item on ${who}: ${JSON.stringify(item)}`);
      }
    };
    const closing = s.b.transceivers[s.b.transceivers.length - 1];   // the one that is closed
    const keep = closing.kind === 'video' ? 'audio' : 'video';
    const keptMid = s.b.transceivers.find((x) => x.kind === keep).mid;
    await page.evaluate((k) => window.ptUnsubOne(k), closing.kind);
    await pollUntil(() => closesOf(sidB).length > 0 && closesOf(sidB).every((c) => c.body), { timeoutMs: 10000, what: `partytracks B to send tracks/close for its ${closing.kind} pull (got: ${summary()})` });
    checkCloses('B', sidB);
    const counter = (x) => (keep === 'video' ? x.b.video.framesDecoded : x.b.audio.packetsReceived) || 0;
    const before = counter(await page.evaluate(() => window.ptStats()));
    await pollUntil(async () => {
      const x = await page.evaluate(() => window.ptStats());
      return x.b.connectionState === 'connected' && counter(x) > before + 10;
    }, { timeoutMs: 5000, what: `B's ${keep} (mid ${keptMid}) to keep flowing after closing its ${closing.kind} pull (mid ${closing.mid})` })
      .catch(async (e) => {
        const x = await page.evaluate(() => window.ptStats());
        e.message += `\nB connectionState=${x.b.connectionState}, ${keep} counter ${before} -> ${counter(x)}; GET B: ${JSON.stringify((await node.api('GET', `/sessions/${sidB}`)).json)}`;
        throw e;
      });
    const gB = await node.api('GET', `/sessions/${sidB}`);
    assert.equal(gB.status, 200, `GET session B after a partial close: ${JSON.stringify(gB.json)}`);
    const byMid = Object.fromEntries((gB.json.tracks || []).map((x) => [x.mid, x.status]));
    assert.deepEqual(byMid, { [closing.mid]: 'inactive', [keptMid]: 'active' }, `GET session B: ${JSON.stringify(gB.json)}`);

    // (2) A stops both pushes: one tracks/close listing both mids (partytracks stops only the first transceiver).
    //     The node answers; afterwards the session lists both tracks inactive, or is gone (410 session_error)
    //     if the client tore its transport down.
    await page.evaluate(() => window.ptUnsubscribe('a'));
    await pollUntil(() => closesOf(sidA).length > 0 && closesOf(sidA).every((c) => c.body), { timeoutMs: 10000, what: `partytracks A to send tracks/close (got: ${summary()})` });
    checkCloses('A', sidA);
    const closedMids = closesOf(sidA).flatMap((c) => (c.body.tracks || []).map((x) => x.mid));
    assert.deepEqual(closedMids.sort(), s.a.transceivers.map((x) => x.mid).sort(), 'the close answer lists every mid of the body');
    const gA = await pollUntil(async () => {
      const g = await node.api('GET', `/sessions/${sidA}`);
      if (g.status === 410 && g.json.errorCode === 'session_error') return g;
      return g.status === 200 && g.json.tracks?.length === 2 && g.json.tracks.every((x) => x.status === 'inactive') ? g : null;
    }, { timeoutMs: 5000, what: `GET session A to list both tracks inactive (or 410 session_error): last ${JSON.stringify((await node.api('GET', `/sessions/${sidA}`)).json)}` });
    t.diagnostic(`partytracks: after A's close, GET session A -> ${gA.status} ${JSON.stringify(gA.json)}`);

    const end = await page.evaluate(() => window.ptStats());
    assert.deepEqual([...end.a.errors, ...end.b.errors], [], 'no partytracks sessionError$');
    const failedLater = responses.filter((r) => r.status >= 400 || r.body?.errorCode);
    assert.deepEqual(failedLater, [], `failed API calls:\n${summary()}`);
    t.diagnostic(`partytracks API calls: ${summary().split("\n").join("; ")}`);
    await page.evaluate(() => window.ptEnd());
  });
});
