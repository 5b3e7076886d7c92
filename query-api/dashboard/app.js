// The dashboard page: reads the tenant's projections from the query API with the key the user
// pasted, and draws the selected one over a range, refreshed every few seconds while the tab is
// visible. Plain browser JavaScript; the only library is uPlot (window.uPlot).
"use strict";

const POLL_MS = 5000;
const KEY_STORAGE = "queryApi.key";
const PROJECTION_STORAGE = "queryApi.projection";
const HOUR_MS = 3600000;
const DAY_MS = 24 * HOUR_MS;
// Steps a chart aims for at most, and the most the API accepts.
const TARGET_STEPS = 200;
const MAX_STEPS = 2000;
const TOP_K = 10;
const STEP_CANDIDATES_MS = [
  60000, 5 * 60000, 15 * 60000, HOUR_MS, 3 * HOUR_MS, 6 * HOUR_MS, 12 * HOUR_MS, DAY_MS,
  7 * DAY_MS,
];

const $ = (id) => document.getElementById(id);

const state = {
  key: sessionStorage.getItem(KEY_STORAGE) || "",
  projections: [],
  // Bumped on every change of selection, so that an answer to an older selection is dropped.
  generation: 0,
  timer: null,
  inFlight: false,
  charts: {},
  lookupItem: null,
  // End of the tenant's data for the selected projection, when the partitions' latest event
  // (shared by every tenant) lies after it; found once per selection.
  tenantEndMs: null,
};

// ---------- API ----------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, params) {
  const query = params ? "?" + new URLSearchParams(params).toString() : "";
  const answer = await fetch(path + query, {
    headers: { Authorization: "Bearer " + state.key },
    cache: "no-store",
  });
  const body = await answer.json().catch(() => null);
  if (!answer.ok) {
    const error = body && body.error;
    throw new ApiError(
      answer.status,
      error ? error.code : "http_" + answer.status,
      error ? error.message : "the query API answered " + answer.status,
    );
  }
  return body;
}

// ---------- formatting ----------

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const decimal = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });

function number(value) {
  return Math.abs(value) >= 100 ? integer.format(value) : decimal.format(value);
}

function utc(ms) {
  if (ms === null || ms === undefined) return "none";
  return new Date(ms).toISOString().replace("T", " ").replace(/:\d\d\.\d{3}Z$/, " UTC");
}

function stepText(ms) {
  if (ms % DAY_MS === 0) return ms / DAY_MS + " d";
  if (ms % HOUR_MS === 0) return ms / HOUR_MS + " h";
  return ms / 60000 + " min";
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").classList.toggle("error", Boolean(isError));
}

// ---------- range ----------

// The latest event time any partition has folded, or null when none has one.
function latestEventMs(freshness) {
  const times = freshness.partitions.map((p) => p.last_event_ms).filter((t) => t !== null);
  return times.length ? Math.max(...times) : null;
}

// The smallest step that is a whole number of buckets and cuts the span into few enough steps.
function chooseStep(spanMs, bucketMs) {
  const candidates = STEP_CANDIDATES_MS.filter((s) => s >= bucketMs && s % bucketMs === 0);
  if (!candidates.includes(bucketMs)) candidates.unshift(bucketMs);
  const fitting = candidates.find((s) => spanMs / s <= TARGET_STEPS);
  if (fitting) return fitting;
  const largest = candidates[candidates.length - 1];
  if (spanMs / largest <= MAX_STEPS) return largest;
  throw new Error("the range is too long for one chart: choose a shorter one");
}

function parseUtcInput(value) {
  if (!value) return null;
  const ms = Date.parse(value + "Z");
  return Number.isNaN(ms) ? null : ms;
}

// The window to ask for: [from, to) in epoch ms, aligned outwards to whole steps (which are whole
// buckets, so every bucket that overlaps the range counts), and the step.
function currentWindow(projection, listFreshness) {
  const bucketMs = projection.bucket_ms || HOUR_MS;
  let from;
  let to;
  if ($("range").value === "custom") {
    from = parseUtcInput($("from").value);
    to = parseUtcInput($("to").value);
    if (from === null || to === null) throw new Error("enter both ends of the custom range");
    if (from >= to) throw new Error("the custom range must start before it ends");
  } else {
    const span = Number($("range").value);
    if ($("anchor").value === "now") {
      to = Date.now();
    } else {
      const latest = latestEventMs(listFreshness);
      to = state.tenantEndMs ?? (latest === null ? Date.now() : latest + 1);
    }
    from = to - span;
  }
  const step = chooseStep(to - from, bucketMs);
  from = Math.floor(from / step) * step;
  to = Math.ceil(to / step) * step;
  if (to === from) to = from + step;
  return { from, to, step };
}

// For a range anchored at the latest event: when the tenant has no event in the range, the end of
// its last day with events in the year before (partitions carry every tenant's events, so their
// latest event can lie past this tenant's data).
async function findTenantEnd(projection, latestMs) {
  const to = Math.ceil(latestMs / DAY_MS) * DAY_MS;
  const answer = await api(`/v1/projections/${projection.name}/series`, {
    from: to - 366 * DAY_MS, to, step: "1d", k: 1,
  });
  const last = answer.points.filter((p) => p.events > 0).pop();
  return last ? last.end : null;
}

// ---------- charts ----------

function chartWidth(element) {
  return Math.max(320, element.clientWidth || element.parentElement.clientWidth || 800);
}

function utcDate(seconds) {
  return uPlot.tzDate(new Date(seconds * 1000), "Etc/UTC");
}

function makeChart(id, series, bands) {
  const element = $(id);
  element.replaceChildren();
  const chart = new uPlot(
    {
      width: chartWidth(element),
      height: 260,
      tzDate: utcDate,
      series: [{ label: "step start (UTC)" }, ...series],
      bands: bands || [],
      axes: [{}, { size: 70 }],
      scales: { y: { range: (_u, _min, max) => [0, max > 0 ? max * 1.08 : 1] } },
      legend: { live: true },
    },
    [[]].concat(series.map(() => [])),
    element,
  );
  state.charts[id] = chart;
  return chart;
}

// Forgets what the views show, so nothing of an older selection stays on screen.
function clearViews() {
  $("top-bars").replaceChildren();
  delete $("top-bars").dataset.projection;
  $("top-chart-note").textContent = "";
  for (const id of ["distinct-chart", "returning-chart", "top-chart"]) {
    $(id).replaceChildren();
    delete $(id).dataset.projection;
    delete $(id).dataset.points;
    delete $(id).dataset.estimates;
  }
  for (const id of ["distinct-total", "distinct-total-bounds", "distinct-events", "top-events", "top-error"]) {
    $(id).textContent = "";
  }
}

function destroyCharts() {
  for (const chart of Object.values(state.charts)) chart.destroy();
  state.charts = {};
}

window.addEventListener("resize", () => {
  for (const [id, chart] of Object.entries(state.charts)) {
    chart.setSize({ width: chartWidth($(id)), height: 260 });
  }
});

function starts(points) {
  return points.map((p) => p.start / 1000);
}

// ---------- views ----------

function showView(kind) {
  for (const view of ["distinct", "top", "membership"]) {
    $(view + "-view").hidden = view !== kind;
  }
}

function renderDistinct(answer) {
  const points = answer.points;
  const chart =
    state.charts["distinct-chart"] ||
    makeChart(
      "distinct-chart",
      [
        { label: "estimate", stroke: "#2a6fdb", width: 2, value: (_u, v) => (v == null ? "-" : number(v)) },
        { label: "lower bound", stroke: "rgba(42,111,219,0.35)", value: (_u, v) => (v == null ? "-" : number(v)) },
        { label: "upper bound", stroke: "rgba(42,111,219,0.35)", value: (_u, v) => (v == null ? "-" : number(v)) },
      ],
      [{ series: [3, 2], fill: "rgba(42,111,219,0.15)" }],
    );
  const estimates = points.map((p) => p.distinct.estimate);
  chart.setData([
    starts(points),
    estimates,
    points.map((p) => p.distinct.lower_bound),
    points.map((p) => p.distinct.upper_bound),
  ]);
  const element = $("distinct-chart");
  element.dataset.projection = answer.projection;
  element.dataset.points = String(points.length);
  element.dataset.estimates = JSON.stringify(estimates);

  const returning =
    state.charts["returning-chart"] ||
    makeChart("returning-chart", [
      { label: "new", stroke: "#1b9e77", width: 2, value: (_u, v) => (v == null ? "-" : number(v)) },
      { label: "returning", stroke: "#d95f02", width: 2, value: (_u, v) => (v == null ? "-" : number(v)) },
    ]);
  returning.setData([
    starts(points),
    points.map((p) => (p.new ? p.new.estimate : null)),
    points.map((p) => (p.returning ? p.returning.estimate : null)),
  ]);

  const total = answer.total.distinct;
  $("distinct-total").textContent = number(total.estimate);
  $("distinct-total").dataset.estimate = String(total.estimate);
  $("distinct-total-bounds").textContent = `${number(total.lower_bound)} to ${number(total.upper_bound)}`;
  $("distinct-events").textContent = integer.format(answer.total.events);
  $("distinct-confidence").textContent = (total.confidence * 100).toFixed(1) + "%";
}

function renderTop(name, top, series) {
  const items = top.items;
  const scale = Math.max(1, ...items.map((i) => i.upper_bound));
  const bars = items.map((item) => {
    const row = document.createElement("li");
    row.dataset.item = item.item;
    row.dataset.estimate = String(item.estimate);
    const label = document.createElement("span");
    label.className = "bar-label";
    label.textContent = item.item;
    label.title = item.item;
    const track = document.createElement("span");
    track.className = "bar-track";
    const lower = document.createElement("span");
    lower.className = "bar-lower";
    lower.style.width = (100 * item.lower_bound) / scale + "%";
    const range = document.createElement("span");
    range.className = "bar-range";
    range.style.left = (100 * item.lower_bound) / scale + "%";
    range.style.width = (100 * (item.upper_bound - item.lower_bound)) / scale + "%";
    track.append(lower, range);
    const count = document.createElement("span");
    count.className = "bar-count";
    count.textContent =
      item.lower_bound === item.upper_bound
        ? `${integer.format(item.estimate)} (exact)`
        : `${integer.format(item.estimate)} (${integer.format(item.lower_bound)} to ${integer.format(item.upper_bound)})`;
    if (item.guaranteed) count.title = "guaranteed heavy hitter";
    row.append(label, track, count);
    return row;
  });
  $("top-bars").replaceChildren(...bars);
  $("top-bars").dataset.projection = name;
  if (!items.length) {
    const empty = document.createElement("li");
    empty.className = "muted";
    empty.textContent = "no values in this range";
    $("top-bars").replaceChildren(empty);
  }
  $("top-events").textContent = integer.format(top.events);
  $("top-error").textContent = integer.format(top.maximum_error);

  if (series instanceof Error) {
    $("top-chart-note").textContent = "values per step unavailable: " + series.message;
    return;
  }
  $("top-chart-note").textContent = "";
  const chart =
    state.charts["top-chart"] ||
    makeChart("top-chart", [{ label: "values", stroke: "#2a6fdb", width: 2 }]);
  chart.setData([starts(series.points), series.points.map((p) => p.events)]);
}

function renderLookup(answer) {
  const result = $("lookup-result");
  result.replaceChildren();
  const verdict = document.createElement("p");
  verdict.id = "lookup-verdict";
  verdict.dataset.maybePresent = String(answer.maybe_present);
  const word = document.createElement("span");
  word.className = answer.maybe_present ? "present" : "absent";
  word.textContent = answer.maybe_present ? "maybe present" : "not present";
  verdict.append(`"${answer.item}": `, word);
  verdict.append(
    answer.maybe_present
      ? " (seen in the range, or a false positive)"
      : " (certain: it was not folded in the range)",
  );
  const rates = document.createElement("p");
  rates.id = "lookup-rates";
  const configured = answer.configured_false_positive_rate;
  rates.textContent =
    `false-positive rate: estimated ${answer.estimated_false_positive_rate.toExponential(2)}` +
    (configured === null ? "" : `, configured ${configured}`) +
    (answer.over_capacity ? "; the filter holds more values than it was sized for" : "") +
    `; ${integer.format(answer.events)} values in the range`;
  result.append(verdict, rates);
}

function renderFreshness(freshness) {
  $("freshness").hidden = false;
  const complete = $("f-complete");
  complete.textContent = freshness.complete ? "yes" : "no (answer is partial)";
  complete.classList.toggle("bad", !freshness.complete);
  $("f-lag").textContent = integer.format(freshness.max_lag) + " records";
  $("f-lag").classList.toggle("bad", freshness.max_lag > 0);
  $("f-last-event").textContent = utc(latestEventMs(freshness));
  $("f-lost").textContent = integer.format(freshness.lost_records);
  $("f-lost").classList.toggle("bad", freshness.lost_records > 0);
  const missing = freshness.missing_partitions || [];
  $("f-missing").textContent = missing.length ? missing.join(", ") : "none";
  $("f-missing").classList.toggle("bad", missing.length > 0);
  const unreachable = freshness.nodes_unreachable || [];
  $("f-unreachable").textContent = unreachable.length ? unreachable.join(", ") : "none";
  $("f-unreachable").classList.toggle("bad", unreachable.length > 0);
  $("f-updated").textContent = new Date().toISOString().slice(11, 19) + " UTC";
}

// ---------- refresh loop ----------

function fillProjections(projections) {
  const select = $("projection");
  const wanted = select.value || sessionStorage.getItem(PROJECTION_STORAGE);
  const names = projections.map((p) => p.name).join("\n");
  if (names !== state.projections.map((p) => p.name).join("\n")) {
    select.replaceChildren(
      ...projections.map((p) => {
        const option = document.createElement("option");
        option.value = p.name;
        option.textContent = `${p.name} (${p.kind})`;
        return option;
      }),
    );
  }
  state.projections = projections;
  if (projections.some((p) => p.name === wanted)) select.value = wanted;
}

async function refresh() {
  if (!state.key || state.inFlight) return;
  state.inFlight = true;
  const generation = state.generation;
  try {
    const list = await api("/v1/projections");
    if (generation !== state.generation) return;
    fillProjections(list.projections);
    $("controls").hidden = false;
    const projection = state.projections.find((p) => p.name === $("projection").value);
    if (!projection) {
      setStatus("this tenant's projector nodes serve no projection", true);
      renderFreshness(list);
      return;
    }
    $("projection-kind").textContent = `${projection.kind}, buckets of ${stepText(projection.bucket_ms)}`;
    const shown = currentWindow(projection, list);
    $("window").textContent = `${utc(shown.from)} to ${utc(shown.to)}, steps of ${stepText(shown.step)}`;
    const range = { from: shown.from, to: shown.to };
    const series = { ...range, step: shown.step / 60000 + "m" };
    showView(projection.kind);

    let freshness = list;
    if (projection.kind === "distinct") {
      const answer = await api(`/v1/projections/${projection.name}/series`, { ...series, k: 1 });
      if (answer.total.events === 0 && (await anchorAtTenantEnd(projection, list))) {
        return refreshSoon(0);
      }
      if (generation !== state.generation) return;
      renderDistinct(answer);
      freshness = answer.freshness;
    } else if (projection.kind === "top") {
      const [top, steps] = await Promise.all([
        api(`/v1/projections/${projection.name}/top`, { ...range, k: TOP_K }),
        // The bars do not depend on the per-step chart: show them even when it fails.
        api(`/v1/projections/${projection.name}/series`, { ...series, k: 1 }).catch((e) => e),
      ]);
      if (top.events === 0 && (await anchorAtTenantEnd(projection, list))) {
        return refreshSoon(0);
      }
      if (generation !== state.generation) return;
      renderTop(projection.name, top, steps);
      freshness = top.freshness;
    } else if (projection.kind === "membership" && state.lookupItem !== null) {
      const answer = await api(`/v1/projections/${projection.name}/contains`, {
        ...range, item: state.lookupItem,
      });
      if (generation !== state.generation) return;
      renderLookup(answer);
      freshness = answer.freshness;
    }
    renderFreshness(freshness);
    setStatus("");
  } catch (error) {
    if (generation !== state.generation) return;
    if (error instanceof ApiError && error.status === 401) {
      setStatus(`the key was refused (${error.code}): paste a valid API key`, true);
      stopPolling();
      return;
    }
    setStatus(error.message, true);
  } finally {
    state.inFlight = false;
  }
  refreshSoon(POLL_MS);
}

// Anchors the range at the tenant's own last event when it differs from the partitions' latest
// event; true when the anchor changed and the view must be asked again.
async function anchorAtTenantEnd(projection, list) {
  if ($("range").value === "custom" || $("anchor").value !== "data") return false;
  if (state.tenantEndMs !== null) return false;
  const latest = latestEventMs(list);
  if (latest === null) return false;
  const end = await findTenantEnd(projection, latest);
  if (end === null || end >= latest) return false;
  state.tenantEndMs = end;
  state.inFlight = false;
  return true;
}

function refreshSoon(delayMs) {
  clearTimeout(state.timer);
  state.timer = null;
  if (document.hidden || !state.key) return;
  state.timer = setTimeout(refresh, delayMs);
}

function stopPolling() {
  clearTimeout(state.timer);
  state.timer = null;
}

// A new selection: drop the charts and answers of the old one and ask again now.
function selectionChanged() {
  state.generation += 1;
  state.inFlight = false;
  state.tenantEndMs = null;
  state.lookupItem = null;
  $("lookup-result").replaceChildren();
  destroyCharts();
  clearViews();
  sessionStorage.setItem(PROJECTION_STORAGE, $("projection").value);
  refreshSoon(0);
}

// ---------- wiring ----------

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) {
    setStatus("paste an API key first", true);
    return;
  }
  state.key = key;
  sessionStorage.setItem(KEY_STORAGE, key);
  $("api-key").value = "";
  $("api-key").placeholder = "key in use (paste another to switch)";
  state.projections = [];
  $("projection").replaceChildren();
  selectionChanged();
});

$("key-forget").addEventListener("click", () => {
  state.key = "";
  sessionStorage.removeItem(KEY_STORAGE);
  stopPolling();
  state.generation += 1;
  destroyCharts();
  $("controls").hidden = true;
  $("freshness").hidden = true;
  showView(null);
  $("api-key").placeholder = "paste the tenant's API key";
  setStatus("key forgotten");
});

$("projection").addEventListener("change", selectionChanged);
$("anchor").addEventListener("change", selectionChanged);
$("range").addEventListener("change", () => {
  const custom = $("range").value === "custom";
  $("custom-range").hidden = !custom;
  $("anchor").parentElement.hidden = custom;
  if (custom && !$("from").value) {
    // Start the custom range from the window shown so far.
    const shown = $("window").textContent.match(/^(\S+ \S+) UTC to (\S+ \S+) UTC/);
    if (shown) {
      $("from").value = shown[1].replace(" ", "T");
      $("to").value = shown[2].replace(" ", "T");
    }
  }
  selectionChanged();
});
$("from").addEventListener("change", selectionChanged);
$("to").addEventListener("change", selectionChanged);

$("lookup-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const item = $("lookup-item").value;
  if (!item) {
    setStatus("enter a value to look up", true);
    return;
  }
  state.lookupItem = item;
  state.generation += 1;
  state.inFlight = false;
  refreshSoon(0);
});

document.addEventListener("visibilitychange", () => {
  if (document.hidden) stopPolling();
  else refreshSoon(0);
});

if (state.key) {
  $("api-key").placeholder = "key in use (paste another to switch)";
  refreshSoon(0);
} else {
  setStatus("paste an API key to see the tenant's read models");
}
