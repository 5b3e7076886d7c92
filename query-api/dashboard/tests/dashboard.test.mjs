// The dashboard in a real headless Chromium, against a running query API that serves the demo's
// Wikipedia edits (deploy/test-dashboard.sh sets all of it up).
//
// It waits until the read models have caught up, then checks that what the page shows is what
// the API answers: the distinct series (every plotted estimate and the range's total), the first
// bar of two top projections, one membership lookup, and the freshness panel. It saves a
// screenshot of the page to SCREENSHOT.
//
// Environment: QUERY_API_URL (e.g. http://127.0.0.1:48083), API_KEY (the wiki tenant's key),
// SCREENSHOT (PNG path), KNOWN_EDITOR (a key the data holds, to look up), CHROMIUM (default
// /usr/bin/chromium).
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const base = required("QUERY_API_URL");
const key = required("API_KEY");
const screenshot = required("SCREENSHOT");
const editor = required("KNOWN_EDITOR");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const CATCH_UP_TIMEOUT_MS = 120000;
const UI_TIMEOUT_MS = 20000;

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`dashboard test: set ${name}`);
    process.exit(2);
  }
  return value;
}

function log(message) {
  console.error(`dashboard test: ${message}`);
}

async function api(path) {
  const answer = await fetch(base + path, { headers: { Authorization: `Bearer ${key}` } });
  const body = await answer.json();
  assert.equal(answer.status, 200, `${path}: ${JSON.stringify(body)}`);
  return body;
}

// Until every partition is served, known and folded to its end, with events in it.
async function waitForCatchUp() {
  const deadline = Date.now() + CATCH_UP_TIMEOUT_MS;
  for (;;) {
    const list = await api("/v1/projections");
    const folded = list.partitions.reduce((sum, p) => sum + p.next_offset, 0);
    const caughtUp =
      list.complete && list.partitions.length > 0 && folded > 0 &&
      list.partitions.every((p) => p.lag === 0);
    if (caughtUp) return list;
    if (Date.now() > deadline) throw new Error(`read models did not catch up: ${JSON.stringify(list)}`);
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

const list = await waitForCatchUp();
log(`read models caught up: ${list.partitions.map((p) => p.next_offset).join("+")} records`);

const userDataDir = mkdtempSync(join(tmpdir(), "dashboard-chromium-"));
// A fresh profile for this run only.
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
  viewport: { width: 1200, height: 1400 },
});
const pageErrors = [];
try {
  const page = await context.newPage();
  page.on("pageerror", (error) => pageErrors.push(error.message));
  page.on("console", (message) => {
    // A failed request is logged by the browser; the test's own checks judge the answers.
    if (message.type() === "error" && !message.text().startsWith("Failed to load resource")) {
      pageErrors.push(message.text());
    }
  });
  page.setDefaultTimeout(UI_TIMEOUT_MS);

  // The page itself needs no key.
  const served = await page.goto(base + "/");
  assert.equal(served.status(), 200);
  assert.match(served.headers()["content-type"], /^text\/html/);

  await page.fill("#api-key", key);
  await page.click("#key-use");
  await page.waitForSelector("#projection option[value=editors]", { state: "attached" });
  assert.equal(await page.evaluate(() => sessionStorage.getItem("queryApi.key")), key);

  // Distinct: every plotted estimate and the total match a direct series call over the window
  // the page shows.
  await page.selectOption("#projection", "editors");
  await page.waitForSelector("#distinct-chart[data-projection=editors][data-points]");
  const shown = await page.evaluate(() => ({
    window: document.getElementById("window").textContent,
    estimates: JSON.parse(document.getElementById("distinct-chart").dataset.estimates),
    total: Number(document.getElementById("distinct-total").dataset.estimate),
    totalText: document.getElementById("distinct-total").textContent,
    canvases: document.querySelectorAll("#distinct-chart canvas, #returning-chart canvas").length,
  }));
  const [, from, to, step] = shown.window.match(/^(\S+ \S+) UTC to (\S+ \S+) UTC, steps of (\d+) h$/);
  const range = `from=${from.replace(" ", "T")}:00Z&to=${to.replace(" ", "T")}:00Z`;
  const series = await api(`/v1/projections/editors/series?${range}&step=${step}h&k=1`);
  assert.deepEqual(shown.estimates, series.points.map((p) => p.distinct.estimate));
  assert.equal(shown.total, series.total.distinct.estimate);
  assert.equal(shown.canvases, 2, "the series and the new/returning charts are drawn");
  assert.ok(series.total.events > 0, "the window holds the data");
  log(`editors: ${series.points.length} steps of ${step} h (${range}); page total ` +
    `${shown.totalText} = API ${series.total.distinct.estimate} from ${series.total.events} ` +
    `values; every step's estimate equal`);

  // Freshness, always visible.
  assert.equal(await page.textContent("#f-complete"), "yes");
  assert.equal(await page.textContent("#f-lag"), "0 records");
  assert.equal(await page.textContent("#f-missing"), "none");
  const latest = Math.max(...list.partitions.map((p) => p.last_event_ms));
  const latestText = new Date(latest).toISOString().replace("T", " ").replace(/:\d\d\.\d{3}Z$/, " UTC");
  assert.equal(await page.textContent("#f-last-event"), latestText);

  // Top: the first bar is the API's first item over the same window.
  for (const name of ["top_pages", "top_channels"]) {
    await page.selectOption("#projection", name);
    await page.waitForSelector(`#top-bars[data-projection=${name}] li[data-item]`);
    const first = await page.evaluate(() => {
      const bar = document.querySelector("#top-bars li[data-item]");
      return {
        label: bar.querySelector(".bar-label").textContent,
        estimate: Number(bar.dataset.estimate),
        window: document.getElementById("window").textContent,
      };
    });
    const [, topFrom, topTo] = first.window.match(/^(\S+ \S+) UTC to (\S+ \S+) UTC/);
    const top = await api(
      `/v1/projections/${name}/top?k=10&from=${topFrom.replace(" ", "T")}:00Z&to=${topTo.replace(" ", "T")}:00Z`,
    );
    assert.equal(first.label, top.items[0].item);
    assert.equal(first.estimate, top.items[0].estimate);
    const note = await page.textContent("#top-chart-note");
    if (note) log(`${name}: ${note}`);
    log(`${name}: first bar "${first.label}" ${first.estimate} = API first item ` +
      `"${top.items[0].item}" ${top.items[0].estimate}`);
  }

  // Membership: a key that is in the data, and one that is not.
  await page.selectOption("#projection", "known_editors");
  for (const item of [editor, "no-such-editor-zz-0000"]) {
    await page.fill("#lookup-item", item);
    await page.click("#lookup-form button");
    await page.waitForFunction(
      (wanted) => document.getElementById("lookup-verdict")?.textContent.startsWith(`"${wanted}"`),
      item,
    );
    const verdict = await page.getAttribute("#lookup-verdict", "data-maybe-present");
    const [, lookupFrom, lookupTo] = (await page.textContent("#window")).match(/^(\S+ \S+) UTC to (\S+ \S+) UTC/);
    const answer = await api(
      `/v1/projections/known_editors/contains?item=${encodeURIComponent(item)}` +
        `&from=${lookupFrom.replace(" ", "T")}:00Z&to=${lookupTo.replace(" ", "T")}:00Z`,
    );
    assert.equal(verdict, String(answer.maybe_present));
    if (item === editor) assert.equal(verdict, "true", "a folded key is always maybe present");
    assert.match(await page.textContent("#lookup-rates"), /false-positive rate: estimated/);
    log(`known_editors: "${item}" maybe_present=${verdict} = API ${answer.maybe_present} ` +
      `(estimated false-positive rate ${answer.estimated_false_positive_rate})`);
  }
  assert.equal(
    await page.getAttribute("#lookup-verdict", "data-maybe-present"),
    "false",
    "a key never sent cannot be present with this filter's rate",
  );

  // The screenshot shows the distinct view.
  await page.selectOption("#projection", "editors");
  await page.waitForSelector("#distinct-chart[data-projection=editors][data-points]");
  await page.screenshot({ path: screenshot, fullPage: true });
  log(`screenshot saved to ${screenshot}`);

  assert.deepEqual(pageErrors, [], "the page logged no error");
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
log("passed");
