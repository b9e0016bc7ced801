// The README's "first five minutes", as a newcomer goes through it: open the node's page, enter the
// app id and secret, Publish, open the share link in a second tab and see the video there; then
// close the publisher's tab, and the viewer says "publisher left" within 2 s (the bound).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startNode, launchChromium, pollUntil, explain, screenshotsOnFailure } from './lib.mjs';

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

/** The decoded-frame count of the first pulled video on `page`, or 0. */
const framesOn = (page) => page.evaluate(() => {
  const v = document.querySelector('#remoteVideos video');
  return v ? v.getVideoPlaybackQuality().totalVideoFrames : 0;
});

test('first five minutes: publish, open the share link in a second tab, see it; the viewer is told when the publisher leaves', async (t) => {
  await screenshotsOnFailure(browser, 'first-five-minutes', () => explain(node, browser, async () => {
    const publisher = browser.page;
    await publisher.goto(`${node.origin}/`);
    // "Enter the printed app id and secret"
    await publisher.locator('#appId').fill(node.appId);
    await publisher.locator('#appSecret').fill(node.secret);
    // "click Publish"
    await publisher.locator('#publish').click();
    await pollUntil(async () => /connected/.test(await publisher.locator('#pubStatus').textContent()) || await errorText(publisher),
      { timeoutMs: 15000, what: 'publish to connect (#pubStatus "connected")' });
    assert.equal(await errorText(publisher), '', 'no error shown after publish');
    const pubSession = (await publisher.locator('#pubSession').textContent()).trim();
    const link = await publisher.locator('#shareLink').getAttribute('href');
    assert.equal(link, `${node.origin}/#watch=${pubSession}`, 'the share link names the session in the fragment');
    // the publisher sees its own live stats
    await pollUntil(async () => /kbps.*RTT \d+ ms.*loss/.test(await publisher.locator('#pubTracks li[data-kind="video"] .stats').textContent()),
      { timeoutMs: 10000, what: "the publisher's video stats (bitrate, RTT, loss)" });

    // "watch in a new tab" opens exactly the share link
    const [opened] = await Promise.all([browser.ctx.waitForEvent('page'), publisher.locator('#watchNewTab').click()]);
    await opened.waitForLoadState('domcontentloaded');
    assert.equal(opened.url(), link, '"watch in a new tab" opens the share link');
    await opened.close();

    // "open the share link in a second tab": the id and secret come from this origin's storage
    const viewer = await browser.ctx.newPage();
    await viewer.goto(link);
    const frames = await pollUntil(async () => {
      const err = await errorText(viewer);
      if (err) throw new Error(`error shown on the viewer: ${err}`);
      const n = await framesOn(viewer);
      return n > 0 ? n : null;
    }, { timeoutMs: 15000, intervalMs: 100, what: 'the viewer tab to decode video frames' });
    t.diagnostic(`viewer decoded ${frames} frames`);
    await pollUntil(async () => /\d+ kbps · \d+ fps/.test(await viewer.locator('#remoteVideos .card[data-kind="video"] .stats').textContent()),
      { timeoutMs: 10000, what: "the viewer's stats of the pulled video (bitrate, frame rate)" });
    assert.equal(await viewer.locator('#remoteVideos .card.publisher-left').count(), 0, 'no "publisher left" while it publishes');

    // the publisher closes its tab, as a person would (unload handlers run)
    const closed = Date.now();
    await publisher.close({ runBeforeUnload: true });
    const leftAfter = await pollUntil(async () => {
      const n = await viewer.locator('#remoteVideos .card.publisher-left').count();
      return n > 0 ? Date.now() - closed : null;
    }, { timeoutMs: 5000, intervalMs: 50, what: 'the viewer to show "publisher left"' });
    t.diagnostic(`"publisher left" shown ${leftAfter} ms after the publisher's tab closed`);
    assert.ok(leftAfter <= 2000, `"publisher left" within 2 s of the tab closing (took ${leftAfter} ms)`);
    const card = viewer.locator('#remoteVideos .card.publisher-left').first();
    assert.match(await card.locator('.left').textContent(), /publisher left/);
    // and the page offers to close the pull
    assert.equal(await card.locator('button.close').textContent(), 'close pull');
    const before = await viewer.locator('#remoteVideos .card').count();
    await card.locator('button.close').click();
    await pollUntil(async () => (await viewer.locator('#remoteVideos .card').count()) === before - 1,
      { timeoutMs: 10000, what: 'the left pull to be closed' });
    assert.equal(await errorText(viewer), '', 'closing a pull whose publisher left shows no error');
  }));
});
