// Drives the web console in headless Chromium (Debian's, through playwright-core) and
// prints what a user sees, as JSON. Usage:
//   node console_check.js BASE_URL TOKEN CATALOG ITEM_ID SCREENSHOT_PNG
const { chromium } = require('playwright-core');
const [base, token, catalog, item, screenshot] = process.argv.slice(2);

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
           '--disable-component-update', '--disable-sync', '--no-first-run',
           '--disable-default-apps', '--disable-dev-shm-usage'],
  });
  const seen = {};
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    const console_errors = [];
    page.on('pageerror', (e) => console_errors.push(String(e)));
    await page.goto(base + '/console/');
    await page.waitForFunction(() => document.getElementById('error').textContent !== '');
    seen.without_token = await page.textContent('#error');

    await page.fill('#token', token);
    await page.click('#connect');
    await page.waitForSelector(`nav button[data-catalog="${catalog}"]`);
    await page.waitForSelector('#versions tbody tr');
    seen.catalogs = await page.$$eval('nav button', (bs) => bs.map((b) => b.dataset.catalog));
    seen.title = await page.textContent('#title');
    seen.versions = await page.$$eval('#versions tbody tr', (rs) => rs.map((r) =>
      Array.from(r.cells).map((c) => c.textContent)));
    seen.chart_points = await page.$$eval('#chart circle', (cs) => cs.length);

    await page.fill('#item', item);
    await page.click('#search button');
    await page.waitForSelector('#neighbours tbody tr');
    seen.query = await page.textContent('#query');
    seen.neighbours = await page.$$eval('#neighbours tbody tr', (rs) => rs.map((r) => ({
      item_id: r.cells[2].textContent, text: r.cells[3].textContent })));
    await page.screenshot({ path: screenshot, fullPage: true });

    const next = seen.neighbours[0].item_id;  // browse on: a neighbour's own neighbours
    await page.click('#neighbours tbody tr:first-child a.item');
    await page.waitForFunction((id) => document.getElementById('query').textContent.includes(
      'nearest to ' + id + ':'), next);
    seen.browsed_query = await page.textContent('#query');
    seen.page_errors = console_errors;
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(seen));
})().catch((error) => { console.error(String(error)); process.exit(1); });
