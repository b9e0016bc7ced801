// WHIP and WHEP from a real browser, through the demo page's panel: Chromium publishes its (fake)
// camera as a stream with one application/sdp POST, a second PeerConnection plays the stream with
// another, and the played video must decode frames. Then "Stop both" DELETEs both sessions.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startNode, launchChromium, pollUntil, explain } from './lib.mjs';

let node, browser;

before(async () => {
  node = await startNode();
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await node?.stop();
});

const errorText = (page) => page.locator('#error').evaluate((el) => (el.classList.contains('show') ? el.textContent : ''));

test('demo page: WHEP viewer first, then WHIP publisher; the viewer decodes video; stop ends both', async () => {
  await explain(node, browser, async () => {
    const { page } = browser;
    await page.goto(`${node.origin}/`);
    await page.locator('#appId').fill(node.appId);
    await page.locator('#appSecret').fill(node.secret);
    await page.locator('#streamName').fill('browser-stream');

    // The viewer comes first: the stream is created and waits for its publisher.
    await page.locator('#whepStart').click();
    await pollUntil(async () => /watching/.test(await page.locator('#streamStatus').textContent()) || await errorText(page),
      { timeoutMs: 15000, what: 'the WHEP viewer to connect' });
    assert.equal(await errorText(page), '', 'no error after WHEP');

    await page.locator('#whipStart').click();
    await pollUntil(async () => /publishing browser-stream/.test(await page.locator('#streamStatus').textContent()) || await errorText(page),
      { timeoutMs: 15000, what: 'the WHIP publisher to connect' });
    assert.equal(await errorText(page), '', 'no error after WHIP');

    const video = page.locator('#whepVideo');
    const q = await pollUntil(async () => {
      const v = await video.evaluate((v) => ({ frames: v.getVideoPlaybackQuality().totalVideoFrames, w: v.videoWidth, time: v.currentTime }));
      return v.frames > 0 && v.w > 0 ? v : null;
    }, { timeoutMs: 15000, intervalMs: 50, what: 'the WHEP video to show decoded frames' })
      .catch(async (e) => { e.message += `\n#log:\n${await page.locator('#log').textContent()}`; throw e; });
    await pollUntil(async () => (await video.evaluate((v) => v.currentTime)) > q.time + 0.5,
      { timeoutMs: 10000, what: 'the WHEP video currentTime to advance by 0.5 s' });

    // The node lists the stream with its publisher and viewer.
    const list = await page.evaluate(async ({ appId, secret }) => {
      const r = await fetch(`/v1/apps/${appId}/streams`, { headers: { Authorization: `Bearer ${secret}` } });
      return r.json();
    }, { appId: node.appId, secret: node.secret });
    const s = list.streams.find((x) => x.id === 'browser-stream');
    assert.ok(s && s.publisher && s.subscribers.length === 1, `streams list: ${JSON.stringify(list)}`);

    await page.locator('#streamStop').click();
    await pollUntil(async () => /idle/.test(await page.locator('#streamStatus').textContent()),
      { timeoutMs: 10000, what: 'the panel to stop' });
    const log = await page.locator('#log').textContent();
    assert.match(log, /DELETE whip session -> 200/, log);
    assert.match(log, /DELETE whep session -> 200/, log);
  });
});
