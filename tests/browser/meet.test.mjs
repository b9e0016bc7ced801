// The meeting view at /meet: three people join the same room, each publishes, and each sees the
// other two (their names and decoded video) as they arrive; someone in another room is not seen.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startNode, launchChromium, pollUntil, explain, screenshotsOnFailure, OUT } from './lib.mjs';

let node, browser;

before(async () => {
  node = await startNode();
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await node?.stop();
});

async function join(page, name, room) {
  await page.goto(`${node.origin}/meet`);
  await page.locator('#appId').fill(node.appId);
  await page.locator('#appSecret').fill(node.secret);
  await page.locator('#name').fill(name);
  await page.locator('#room').fill(room);
  await page.locator('#join').click();
  await pollUntil(async () => {
    const err = await page.locator('#error').evaluate((el) => (el.classList.contains('show') ? el.textContent : ''));
    if (err) throw new Error(`${name}: error shown on join: ${err}`);
    return /in room/.test(await page.locator('#meetStatus').textContent());
  }, { timeoutMs: 15000, what: `${name} to join room ${room}` });
}

/** The names shown on `page` whose video has decoded frames. */
const seen = (page) => page.evaluate(() => [...document.querySelectorAll('.participant')]
  .filter((c) => { const v = c.querySelector('video'); return v && v.getVideoPlaybackQuality().totalVideoFrames > 0; })
  .map((c) => c.dataset.name).sort());

test('meet: three participants of one room see each other', async () => {
  await screenshotsOnFailure(browser, 'meet', () => explain(node, browser, async () => {
    const names = ['ada', 'grace', 'linus'];
    const pages = [browser.page, await browser.ctx.newPage(), await browser.ctx.newPage()];
    // one by one, so later ones arrive while the earlier ones are in the room
    for (const [i, page] of pages.entries()) await join(page, names[i], 'standup');
    const elsewhere = await browser.ctx.newPage();
    await join(elsewhere, 'mallory', 'other room');
    for (const [i, page] of pages.entries()) {
      const want = names.filter((n) => n !== names[i]);
      await pollUntil(async () => JSON.stringify(await seen(page)) === JSON.stringify(want),
        { timeoutMs: 20000, intervalMs: 200, what: `${names[i]} to see ${want.join(' and ')} with video` })
        .catch(async (e) => { e.message += `\n${names[i]} sees: ${JSON.stringify(await seen(page))}`; throw e; });
    }
    fs.mkdirSync(OUT, { recursive: true });
    await pages[0].screenshot({ path: path.join(OUT, 'meet.png'), fullPage: true });
    for (const page of pages) {
      const shown = await page.evaluate(() => [...document.querySelectorAll('.participant')].map((c) => c.dataset.name));
      assert.ok(!shown.includes('mallory'), `someone in another room is not shown: ${shown}`);
    }
    // one leaves: the others drop their tile
    await pages[2].locator('#leave').click();
    for (const [i, page] of pages.slice(0, 2).entries()) {
      const want = names.slice(0, 2).filter((n) => n !== names[i]);
      await pollUntil(async () => JSON.stringify(await page.evaluate(() => [...document.querySelectorAll('.participant')].map((c) => c.dataset.name).sort())) === JSON.stringify(want),
        { timeoutMs: 10000, what: `${names[i]} to see linus leave` });
    }
  }));
});
