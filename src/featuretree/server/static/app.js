// featuretree explorer: the page's state lives in the URL; the server computes everything.
// State: model, image, root (one unit), the set of expanded node paths, the set of removed
// node paths, k, rule, seed mode, the picture view and the nodes whose exemplar grids are
// pinned open. Reloading the URL restores the view. With `serve --aggregate DIR` the page has a second
// mode, the class graph (agg=ROOT, unit, stable, min in the URL; see aggregate_mode.js).
//
// The tree itself (cards, edges, badges, number formats, zoom / pan / fit) is drawn by the shared
// renderer /static/tree_view.js, the same file the HTML export inlines; this file adds the
// explorer's parts: fetching children on demand, expand, remove, re-root, exemplar pins, upload.

import { showModelCheck } from "./model_panel.js";
import { showAggregate } from "./aggregate_mode.js";

const { TreeView, VIEW_LABELS, DEFAULT_VIEW, el, completeness } = window.FeatureTreeView; // DEFAULT_VIEW: chosen by the numbers (README)
const $ = (id) => document.getElementById(id);

const state = {
  model: "", image: "", root: null, open: new Set(), removed: new Set(), pinned: new Set(),
  k: 5, rule: "gradient", seed: "sum", view: DEFAULT_VIEW,
};
let info = null;          // /api/info
let analysis = null;      // /api/analysis for the current model and image
let tree = null;          // the TreeView drawing the stage
const children = new Map(); // "model|image|k|rule|seed|path" -> {status, data|error, promise}
const verifications = new Map(); // same keys -> {status, data|error}: /api/verify of a node's children
const pictures = new Map(); // "model|image|rule|seed|view|path" -> data URI from /api/expand (most recent last)
const rootLabels = new Map(); // "model|image|root" -> the server's label of a root outside the top 5
const MAX_PICTURES = 400;   // beyond this the oldest are dropped (their URL is fetched again if shown)
window.ftTimings = [];    // click-to-rendered-children durations, read by the benchmark

// ----- small helpers -------------------------------------------------------------------
function qs(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (Array.isArray(v)) for (const item of v) q.append(k, item);
    else if (v !== null && v !== undefined) q.set(k, v);
  }
  return q.toString();
}

async function api(path, params) {
  const res = await fetch(params ? `${path}?${qs(params)}` : path);
  const body = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
  if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
  return body;
}

let toastTimer = 0;
function toast(message) {
  const t = $("toast");
  t.textContent = message;
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, 6000);
}

function status(text) { $("status").textContent = text; }

const unitOf = (path) => path.split("/").pop();
const parentOf = (path) => path.split("/").slice(0, -1).join("/");
const isTiny = () => analysis && analysis.size[0] < 100;
const isExpandable = (node) => analysis.chain.findIndex((c) => c.name === node.layer) > 0;

// ----- URL <-> state -------------------------------------------------------------------
function readUrl() {
  const q = new URLSearchParams(location.search);
  state.model = q.get("model") || info.default_model;
  state.image = q.get("image") || info.default_image;
  state.root = q.has("root") ? (q.get("root") || null) : undefined; // undefined: use the default root
  state.open = new Set(q.getAll("open"));
  state.removed = new Set(q.getAll("removed"));
  state.pinned = new Set(q.getAll("ex"));
  state.k = Math.min(64, Math.max(1, parseInt(q.get("k") || "5", 10) || 5));
  const coverage = parseFloat(q.get("coverage"));
  state.coverage = coverage > 0 && coverage <= 1 ? coverage : null; // null: the top k, whatever they cover
  state.rule = info.rules.includes(q.get("rule")) ? q.get("rule") : "gradient";
  state.seed = info.seed_modes.includes(q.get("seed")) ? q.get("seed") : "sum";
  state.view = info.views.includes(q.get("view")) ? q.get("view") : DEFAULT_VIEW;
  state.graph = q.get("graph") === "1";
  state.intervene = new Set(q.getAll("iv")); // units (LAYER:CH) selected for the intervention panel
  const scale = parseFloat(q.get("scale"));
  state.scale = Number.isFinite(scale) ? scale : 0;
  state.focus = q.get("focus"); // a node to mark (an image tree opened from the class graph)
  // The class graph is the first thing a server with an aggregate shows, unless the URL asks for an image tree.
  state.mode = info.aggregate && (q.has("agg") || !q.toString()) ? "aggregate" : "tree";
  const min = parseInt(q.get("min"), 10);
  state.agg = { root: q.get("agg") || null, unit: q.get("unit"), stable: q.get("stable"), min: min >= 1 ? min : null };
  return !q.has("open") && !q.has("root");
}

function viewParams() {
  return {
    model: state.model, image: state.image, root: state.root ?? "",
    k: state.k, coverage: state.coverage, rule: state.rule, seed: state.seed, view: state.view, graph: state.graph ? "1" : null,
    iv: [...state.intervene], scale: state.intervene.size && state.scale !== 0 ? state.scale : null,
    open: [...state.open], removed: [...state.removed], ex: [...state.pinned], focus: state.focus,
  };
}

function aggregateParams() {
  const a = state.agg;
  return { agg: a.root || "", unit: a.unit, stable: a.stable, min: a.min };
}

function writeUrl() {
  const url = `${location.pathname}?${qs(state.mode === "aggregate" ? aggregateParams() : viewParams())}`;
  if (url !== location.pathname + location.search) history.replaceState(null, "", url);
  if (state.mode === "aggregate") return;
  const exportParams = {
    model: state.model, image: state.image, root: state.root, k: state.k, coverage: state.coverage, rule: state.rule,
    seed_mode: state.seed, open: [...state.open], removed: [...state.removed],
  };
  for (const fmtName of ["json", "html"]) {
    const a = $(`export-${fmtName}`);
    if (state.root) {
      a.href = `/api/export?${qs({ ...exportParams, format: fmtName })}`;
      a.removeAttribute("aria-disabled");
    } else {
      a.removeAttribute("href");
      a.setAttribute("aria-disabled", "true");
    }
  }
}

// ----- children on demand, with their pictures (one batched call) ----------------------
function childKey(path) { return [state.model, state.image, state.k, state.coverage, state.rule, state.seed, path].join("|"); }
function pictureKey(path, view = state.view) { return [state.model, state.image, state.rule, state.seed, view, path].join("|"); }

// A vector layer (the logits) has no positions: its contribution map is the layer below's, unless that is a
// vector too (or there is none); then the card says so instead.
function vectorLayer(name) {
  const chain = analysis?.chain || [];
  const i = chain.findIndex((c) => c.name === name);
  return i >= 0 && chain[i].layout === "vector" && (i === 0 || chain[i - 1].layout === "vector");
}

function pictureUrl(path, view = state.view) {
  return `/api/picture.png?${qs({ model: state.model, image: state.image, path, view, rule: state.rule, seed_mode: state.seed })}`;
}

function keepPicture(key, uri) {
  pictures.delete(key);
  pictures.set(key, uri);
  while (pictures.size > MAX_PICTURES) pictures.delete(pictures.keys().next().value);
}

function requestChildren(path) {
  const key = childKey(path);
  let entry = children.get(key);
  if (entry) return entry;
  entry = { status: "loading" };
  const view = state.view;
  const keyOf = (id) => pictureKey(id, view); // the state as it was when asked
  entry.promise = api("/api/expand", {
    model: state.model, image: state.image, path, k: state.k, coverage: state.coverage, rule: state.rule, seed_mode: state.seed, view,
  }).then((data) => {
    entry.received = performance.now();
    for (const c of data.children) { if (c.picture) keepPicture(keyOf(c.id), c.picture); delete c.picture; }
    entry.status = "done";
    entry.data = data;
  }, (err) => { entry.status = "error"; entry.error = err.message; });
  children.set(key, entry);
  return entry;
}

// ----- edge verification (ablation), requested once a node's children are drawn ---------
function requestVerify(path) {
  const key = childKey(path);
  if (verifications.has(key)) return;
  const entry = { status: "loading" };
  verifications.set(key, entry);
  api("/api/verify", { model: state.model, image: state.image, path, k: state.k, coverage: state.coverage, rule: state.rule, seed_mode: state.seed })
    .then((data) => { entry.status = "done"; entry.data = data; },
          (err) => { entry.status = "error"; entry.error = err.message; })
    .then(() => { if (childKey(path) === key && analysis && rootNode()) tree.refresh(viewTree()); });
}

let verifyTimer = 0;
function scheduleVerify() {
  // Wait until the node pictures on screen have loaded, so the ablation pass does not slow them down.
  clearTimeout(verifyTimer);
  verifyTimer = setTimeout(() => {
    if ([...document.querySelectorAll(".ft-card .ft-pic img")].some((i) => !i.complete)) { scheduleVerify(); return; }
    for (const node of visibleNodes()) {
      if (state.open.has(node.id) && children.get(childKey(node.id))?.status === "done" && kidsOf(node).length) requestVerify(node.id);
    }
  }, 60);
}

// ----- exemplar grids (server started with --db) ---------------------------------------
// "top images | reconstructions · predicted: Egyptian cat 9/16, tabby 4/16", once the server has counted.
const exemplarClassCounts = new Map(); // "model|layer:unit" -> the server's answer, or null while asked
function exemplarCaption(node) {
  const key = `${state.model}|${node.layer}:${node.unit}`;
  if (!exemplarClassCounts.has(key)) {
    exemplarClassCounts.set(key, null);
    api("/api/exemplar-classes", { model: state.model, layer: node.layer, unit: node.unit })
      .then((body) => { exemplarClassCounts.set(key, body); draw(); })
      .catch(() => {});
  }
  const counts = exemplarClassCounts.get(key);
  const base = "top images | reconstructions";
  if (!counts || !counts.of) return base;
  return `${base} · predicted: ${counts.classes.map((c) => `${c.name.split(",")[0]} ${c.count}/${counts.of}`).join(", ")}`;
}

function hasExemplars(node) {
  const ex = info.exemplars;
  // A contrastive root is two units: neither one's exemplars are its own.
  return Boolean(ex && ex.model === state.model && ex.layers.includes(node.layer) && node.contrast == null);
}

function exemplarUrl(node) {
  return `/api/exemplars.png?${qs({ model: state.model, layer: node.layer, unit: node.unit })}`;
}

function togglePinned(path) {
  const pin = !state.pinned.has(path);
  if (pin) state.pinned.add(path); else state.pinned.delete(path);
  draw();
  if (pin) tree.reveal([path]);
}

function ensureOpenLoaded() {
  // Fetch children of every expanded node that is visible; redraw as each arrives.
  let started = false;
  for (const node of visibleNodes()) {
    if (state.open.has(node.id) && !children.has(childKey(node.id))) {
      const entry = requestChildren(node.id);
      started = true;
      entry.promise.then(() => { draw(); ensureOpenLoaded(); });
    }
  }
  if (started) draw(); // show the loading state
}

// ----- the visible tree ----------------------------------------------------------------
// A root is "LAYER:N", or "LAYER:A-LAYER:B" for a contrast (A minus B, one layer).
function parseRoot(text) {
  const contrast = text.match(/^(.+):(\d+)-(.+):(\d+)$/);
  if (contrast && contrast[1] === contrast[3]) return { layer: contrast[1], unit: +contrast[2], contrast: +contrast[4] };
  return { layer: text.slice(0, text.lastIndexOf(":")), unit: +text.split(":").pop(), contrast: null };
}

// The root's label ("Egyptian cat", "Egyptian cat − tabby") from the top-5 classes, else asked of
// the server once per root (classes outside the top 5) and drawn again when it answers.
function rootLabel(root, layer, units) {
  if (layer !== analysis.logits_layer) return null;
  const names = units.map((u) => analysis.top_classes.find((c) => c.index === u)?.name);
  if (names.every(Boolean)) return names.join(" − ");
  const key = `${state.model}|${state.image}|${root}`;
  if (!rootLabels.has(key)) {
    rootLabels.set(key, null);
    api("/api/node", { model: state.model, image: state.image, path: root, rule: state.rule, seed_mode: state.seed })
      .then((node) => { rootLabels.set(key, node.label); if (state.root === root) draw(); })
      .catch(() => {});
  }
  return rootLabels.get(key) || units.map((u) => `class ${u}`).join(" − ");
}

function rootNode() {
  if (!state.root) return null;
  const { layer, unit, contrast } = parseRoot(state.root);
  const label = rootLabel(state.root, layer, contrast === null ? [unit] : [unit, contrast]);
  return { id: state.root, layer, unit, contrast, label, score: null, share: null, depth: 0 };
}

function kidsOf(node) {
  if (!state.open.has(node.id)) return [];
  const entry = children.get(childKey(node.id));
  if (!entry || entry.status !== "done") return [];
  return entry.data.children
    .filter((c) => !state.removed.has(c.id))
    .map((c) => ({ ...c, depth: node.depth + 1 }));
}

function visibleNodes() {
  const out = [];
  const root = rootNode();
  (function walk(n) { if (!n) return; out.push(n); kidsOf(n).forEach(walk); })(root);
  return out;
}

// The visible tree as tree.json-style nodes for the renderer (docs/tree-schema.md), plus its view-only
// fields: loading, error, verification_pending / verification_error.
function viewTree() {
  return (function build(base) {
    const node = { ...base, children: [] };
    const entry = state.open.has(node.id) ? children.get(childKey(node.id)) : null;
    node.loading = entry?.status === "loading";
    if (entry?.status === "error") node.error = entry.error;
    if (entry?.status !== "done") return node;
    const d = entry.data;
    Object.assign(node, {
      expanded: true, coverage: d.coverage, total_positive: d.total_positive, total_negative: d.total_negative,
      rest: d.rest, leaf_reason: d.leaf_reason, bypass: d.bypass,
    });
    node.children = kidsOf(node).map(build);
    const v = verifications.get(childKey(node.id));
    for (const kid of node.children) {
      if (v?.status === "done") kid.verification = v.data.children.find((c) => c.id === kid.id) || null;
      else if (v?.status === "error") kid.verification_error = v.error;
      else kid.verification_pending = true;
    }
    // The joint ablation zeroes the node's top-k children: count those it describes.
    if (v?.status === "done" && v.data.all) node.verification_all = { ...v.data.all, count: v.data.children.length };
    return node;
  })(rootNode());
}

// ----- drawing -------------------------------------------------------------------------
function draw() {
  writeUrl();
  if (!analysis || state.mode === "aggregate") return;
  const root = rootNode();
  if (!root) {
    document.body.dataset.busy = "false";
    tree.showMessage("No root. Pick one of the top-5 classes on the left, or type a unit such as ",
      el("code", {}, `${analysis.chain[analysis.chain.length - 2]?.name || analysis.chain[0].name}:0`), ".");
    status("The root was removed.");
    return;
  }
  Object.assign(tree.opt, { chain: analysis.chain, topClasses: analysis.top_classes, tiny: isTiny() });
  tree.view = state.view;
  const model = viewTree();
  tree.draw(model);
  scheduleVerify();

  let count = 0;
  (function walk(n) { count++; n.children.forEach(walk); })(model);
  const busy = visibleNodes().filter((n) => children.get(childKey(n.id))?.status === "loading" && state.open.has(n.id)).length;
  document.body.dataset.busy = String(busy > 0);
  const complete = completeness(model);
  const carried = complete ? ` · the shown leaves carry ${(100 * complete.leaves).toFixed(0)}% of the root's positive evidence` : "";
  const units = state.graph ? ` (${tree.graphModel.nodes.length} distinct units)` : "";
  status(busy ? `computing children of ${busy} node${busy > 1 ? "s" : ""}…`
    : `${count} node${count > 1 ? "s" : ""}${units} · root ${root.id}${root.label ? ` (${root.label})` : ""}${carried} · click a picture to expand or collapse · wheel zooms, drag pans, f fits`);
  $("status").dataset.completeness = complete ? complete.leaves.toFixed(6) : "";
}

function cardButtons(node) {
  return [
    el("button", { type: "button", "data-action": "toggle", disabled: !isExpandable(node), onclick: () => toggle(node.id) },
      state.open.has(node.id) ? "collapse" : "expand"),
    el("button", { type: "button", "data-action": "reroot", title: "explain this unit: make it the root", disabled: node.depth === 0, onclick: () => reroot(node) }, "root"),
    hasExemplars(node) ? el("button", {
      type: "button", "data-action": "exemplars", "aria-pressed": String(state.pinned.has(node.id)),
      title: "show or hide this unit's exemplars: the image patches that excite it most, beside their reconstructions",
      onclick: () => togglePinned(node.id),
    }, "ex") : null,
    node.contrast == null ? el("button", {
      type: "button", "data-action": "intervene", "aria-pressed": String(state.intervene.has(unitOf(node.id))),
      title: "select this unit for the intervention panel: zero or scale it and see the prediction change",
      onclick: () => toggleIntervene(unitOf(node.id)),
    }, "±") : null,
    el("button", { type: "button", "data-action": "remove", title: "remove this node", onclick: () => remove(node.id) }, "✕"),
  ];
}

// ----- interactions --------------------------------------------------------------------
function toggle(path) {
  const node = visibleNodes().find((n) => n.id === path);
  if (!node || !isExpandable(node)) return;
  if (state.open.has(path)) { state.open.delete(path); draw(); return; }
  state.open.add(path);
  const t0 = performance.now();
  const entry = requestChildren(path);
  // Mark the card as loading in place; the whole tree is drawn once, when the children arrive.
  writeUrl();
  if (entry.status === "loading" && tree.markLoading(path)) {
    document.body.dataset.busy = "true";
    status("computing children…");
  } else draw();
  entry.promise.then(async () => {
    draw();
    ensureOpenLoaded();
    tree.reveal([path, ...kidsOf(node).map((c) => c.id)]);
    const drawn = performance.now();
    // Time until every child card is drawn with its picture decoded (re-checked each frame,
    // since a redraw may replace the img elements).
    const childImgs = () => [...document.querySelectorAll(".ft-card[data-node] .ft-pic img")]
      .filter((i) => parentOf(i.closest(".ft-card").dataset.node) === path);
    while (state.open.has(path) && !childImgs().every((i) => i.complete)) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    const imgs = childImgs();
    const ms = performance.now() - t0;
    // Stricter: also decoded, and the next frame started (what a user sees).
    await Promise.all(imgs.map((i) => i.decode().catch(() => {})));
    await new Promise((resolve) => requestAnimationFrame(resolve));
    window.ftTimings.push({
      path, ms, painted: performance.now() - t0, received: entry.received - t0, drawn: drawn - t0,
      children: imgs.length, loaded: imgs.filter((i) => i.naturalWidth > 0).length,
    });
  });
}

function remove(path) {
  tree.hideZoom();
  if (path === state.root) {
    state.root = null;
    state.open.clear();
    state.removed.clear();
  } else {
    state.removed.add(path);
    for (const p of [...state.open]) if (p === path || p.startsWith(path + "/")) state.open.delete(p);
    for (const p of [...state.pinned]) if (p === path || p.startsWith(path + "/")) state.pinned.delete(p);
  }
  draw();
}

function setRoot(unit) {
  state.root = unit;
  state.focus = null;
  state.open = new Set([unit]);
  state.removed = new Set();
  state.pinned = new Set();
  renderTop5();
  tree.auto = true; // a new tree opens fitted
  draw();
  renderIntervention(); // the same units, measured against the new root objective
  ensureOpenLoaded();
}

function reroot(node) { tree.hideZoom(); setRoot(unitOf(node.id)); }

// ----- interventions: zero or scale the selected units, see the prediction change ---------
let interveneTimer = 0;
let interveneSeq = 0;

function toggleIntervene(unit) {
  if (state.intervene.has(unit)) state.intervene.delete(unit); else state.intervene.add(unit);
  draw();
  renderIntervention();
}

function renderIntervention() {
  const panel = $("intervene");
  panel.hidden = state.intervene.size === 0;
  $("iv-units").replaceChildren(...[...state.intervene].map((u) => el("li", { "data-unit": u }, el("code", {}, u),
    el("button", { type: "button", title: `leave ${u} as it is`, onclick: () => toggleIntervene(u) }, "✕"))));
  $("iv-scale").value = state.scale;
  clearTimeout(interveneTimer);
  interveneSeq++; // an answer to an older selection is dropped
  if (!state.intervene.size || !analysis) { $("iv-result").replaceChildren(); panel.dataset.busy = "false"; return; }
  panel.dataset.busy = "true";
  interveneTimer = setTimeout(runIntervention, 120); // one request after a burst of clicks
}

async function runIntervention() {
  const seq = interveneSeq;
  const body = { model: state.model, image: state.image, units: [...state.intervene], scale: state.scale, root: state.root || null };
  try {
    const res = await fetch("/api/intervene", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    const data = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
    if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
    if (seq === interveneSeq) showIntervention(data);
  } catch (err) {
    if (seq === interveneSeq) $("iv-result").replaceChildren(el("div", { class: "error" }, err.message));
  } finally {
    if (seq === interveneSeq) $("intervene").dataset.busy = "false";
  }
}

function showIntervention(r) {
  const p = (x) => `${(100 * x).toFixed(1)}%`;
  const change = (before, after) => {
    const d = after - before;
    return el("td", { class: `num ${d < 0 ? "down" : d > 0 ? "up" : ""}` }, `${d >= 0 ? "+" : "−"}${(100 * Math.abs(d)).toFixed(1)}`);
  };
  const rows = r.top_before.map((c, i) => {
    const after = r.top_before_after[i];
    return el("tr", { "data-class": String(c.index) },
      el("td", { class: "name" }, c.name), el("td", { class: "num" }, p(c.probability)), el("td", { class: "num" }, p(after.probability)),
      change(c.probability, after.probability));
  });
  const known = new Set(r.top_before.map((c) => c.index));
  for (const c of r.top_after.filter((c) => !known.has(c.index))) {
    rows.push(el("tr", { "data-class": String(c.index), class: "new" },
      el("td", { class: "name" }, `${c.name} (new in the top 5)`), el("td", { class: "num" }, "—"), el("td", { class: "num" }, p(c.probability)), el("td", {})));
  }
  const head = el("tr", {}, el("td", {}, "class"), el("td", { class: "num" }, "before"), el("td", { class: "num" }, "after"), el("td", { class: "num" }, "Δ pts"));
  const rel = r.root_before !== 0 ? ` (${((100 * (r.root_after - r.root_before)) / Math.abs(r.root_before)).toFixed(1)}%)` : "";
  const what = r.scale === 0 ? "zeroed" : `× ${r.scale}`;
  $("iv-result").replaceChildren(
    el("div", { class: "muted" }, `${r.units.length} unit${r.units.length > 1 ? "s" : ""} ${what}, in one forward pass:`),
    r.top_before.length ? el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)) : null,
    el("div", { class: "root-line", "data-root-before": String(r.root_before), "data-root-after": String(r.root_after) },
      `root ${r.root}: ${r.root_before.toPrecision(4)} → ${r.root_after.toPrecision(4)}${rel}`));
}

// ----- panel ---------------------------------------------------------------------------
function renderTop5() {
  const list = $("top5");
  const top = analysis.top_classes[0];
  list.replaceChildren(...analysis.top_classes.map((c, i) => {
    // "vs": a contrastive root, why the top class rather than this one (top logit minus this logit).
    const contrast = top && top.unit && c.unit && i > 0 ? `${top.unit}-${c.unit}` : null;
    return el("li", {},
      el("button", {
        type: "button", "aria-pressed": String(c.unit === state.root), disabled: !c.unit,
        title: c.unit ? `explain ${c.unit}` : "", onclick: () => c.unit && setRoot(c.unit),
      },
      el("span", { class: "name" }, c.name), el("span", { class: "muted" }, `${(100 * c.probability).toFixed(1)}%`),
      (() => { const b = el("span", { class: "bar" }); b.style.width = `${Math.max(1, 100 * c.probability)}%`; return b; })()),
      contrast ? el("button", {
        type: "button", class: "vs", "aria-pressed": String(contrast === state.root), "data-contrast": contrast,
        title: `why “${top.name}” rather than “${c.name}”: explain logit ${top.index} minus logit ${c.index}`,
        onclick: () => setRoot(contrast),
      }, "vs") : null);
  }));
}

function renderGallery() {
  const g = $("gallery");
  g.replaceChildren(...info.samples.map((s) => el("button", {
    type: "button", title: s.name, "aria-pressed": String(s.name === state.image), "data-sample": s.name,
    onclick: () => setImage(s.name),
  }, el("img", { src: s.thumbnail, alt: s.name }))));
}

async function loadAnalysis(useDefaultRoot) {
  status("running the model…");
  $("photo").src = `/api/photo.png?${qs({ model: state.model, image: state.image })}`;
  try {
    analysis = await api("/api/analysis", { model: state.model, image: state.image });
  } catch (err) {
    toast(err.message);
    status(err.message);
    analysis = null;
    tree.showMessage(err.message);
    return;
  }
  $("photo").className = isTiny() ? "tiny" : "";
  $("photo-caption").textContent = `${analysis.source} · ${analysis.original_size.join("×")} → ${analysis.size.join("×")}`;
  $("exemplar-help").hidden = !(info.exemplars && info.exemplars.model === state.model);
  $("chain").textContent = `layers (input side first): ${analysis.chain.map((c) => c.name).join(", ")}`;
  if ($("model-check").dataset.model !== state.model) showModelCheck($("model-check"), state.model, api);
  // Views this model cannot draw (guided backprop where it has no meaning) are disabled, with the reason.
  const missing = analysis.unavailable_views || {};
  for (const b of $("views").children) {
    b.disabled = b.dataset.view in missing;
    b.title = missing[b.dataset.view] || "";
  }
  // The guided rule needs guided backprop too.
  for (const o of $("rule").options) o.disabled = o.value === "guided" && "guided" in missing;
  if (state.rule === "guided" && "guided" in missing) { state.rule = "gradient"; $("rule").value = "gradient"; }
  if (state.view in missing) {
    state.view = DEFAULT_VIEW;
    for (const b of $("views").children) b.setAttribute("aria-pressed", String(b.dataset.view === state.view));
  }
  if (useDefaultRoot || state.root === undefined) {
    state.root = analysis.default_root;
    state.open = new Set([state.root]);
    state.removed = new Set();
    state.pinned = new Set();
    state.intervene = new Set(); // units of another image's tree (or another model's layers)
  }
  tree.auto = true;
  renderTop5();
  renderGallery();
  draw();
  renderIntervention();
  ensureOpenLoaded();
}

function setImage(image) {
  state.image = image;
  state.focus = null;
  state.root = undefined;
  loadAnalysis(true);
}

async function upload(file) {
  if (!file) return;
  if (file.size > info.max_upload_bytes) {
    toast(`${file.name} is ${(file.size / 2 ** 20).toFixed(1)} MB, over the server's limit of ${(info.max_upload_bytes / 2 ** 20).toFixed(0)} MB`);
    return;
  }
  status(`uploading ${file.name}…`);
  const form = new FormData();
  form.append("file", file);
  try {
    const res = await fetch("/api/images", { method: "POST", body: form });
    const body = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
    if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
    setImage(body.image);
  } catch (err) {
    toast(err.message);
    status(err.message);
  }
}

async function submitRoot(event) {
  event.preventDefault();
  const text = $("root-input").value.trim();
  if (!text) return;
  document.body.dataset.busy = "true"; // until the new root is drawn (draw() recomputes it)
  try {
    const node = await api("/api/node", { model: state.model, image: state.image, path: text, rule: state.rule, seed_mode: state.seed });
    setRoot(node.id);
  } catch (err) {
    document.body.dataset.busy = "false";
    toast(err.message);
  }
}

function setupControls() {
  tree = new TreeView($("stage"), {
    view: state.view,
    picture: (node, view) => (view === "contribution" && vectorLayer(node.layer)) ? null
      : pictures.get(pictureKey(node.id, view)) || pictureUrl(node.id, view),
    onPicture: (node) => toggle(node.id),
    pictureTitle: (node) => isExpandable(node)
      ? (state.open.has(node.id) ? "collapse" : "expand: compute this node's children") : "first layer of the chain: nothing below",
    buttons: cardButtons,
    cardClass: (node) => [node.contrast == null && state.intervene.has(unitOf(node.id)) ? "ft-marked" : "", node.id === state.focus ? "ft-focus" : ""]
      .filter(Boolean).join(" "),
    panel: (node) => state.pinned.has(node.id) && hasExemplars(node)
      ? {
        src: exemplarUrl(node), alt: `exemplars of ${node.layer}:${node.unit}: top image patches and their reconstructions`,
        caption: exemplarCaption(node),
        onClose: () => togglePinned(node.id),
        explain: (src) => fetch(src).then((r) => r.json()).then((body) => body.error), // the server's one-line error
      }
      : null,
    panelAspect: () => (info.exemplars ? info.exemplars.grid_width / info.exemplars.grid_height : 1),
  });
  $("model").replaceChildren(...info.models.map((m) => el("option", { value: m }, m)));
  $("model").value = state.model;
  $("model").addEventListener("change", () => { state.model = $("model").value; state.root = undefined; loadAnalysis(true); });
  $("rule").replaceChildren(...info.rules.map((r) => el("option", { value: r }, r)));
  $("rule").value = state.rule;
  $("rule").addEventListener("change", () => { state.rule = $("rule").value; draw(); ensureOpenLoaded(); });
  $("seed").replaceChildren(...info.seed_modes.map((r) => el("option", { value: r }, r)));
  $("seed").value = state.seed;
  $("seed").addEventListener("change", () => { state.seed = $("seed").value; draw(); ensureOpenLoaded(); });
  $("k").value = state.k;
  $("k").addEventListener("change", () => {
    const k = parseInt($("k").value, 10);
    if (!(k >= 1 && k <= 64)) { toast("k must be a whole number from 1 to 64"); $("k").value = state.k; return; }
    state.k = k;
    draw();
    ensureOpenLoaded();
  });
  const shape = $("shape");
  const showShape = () => { for (const b of shape.children) b.setAttribute("aria-pressed", String((b.dataset.mode === "graph") === state.graph)); };
  showShape();
  tree.graph = state.graph;
  for (const b of shape.children) {
    b.addEventListener("click", () => { state.graph = b.dataset.mode === "graph"; showShape(); tree.setGraph(state.graph); draw(); });
  }
  $("iv-scale").addEventListener("change", () => {
    const scale = parseFloat($("iv-scale").value);
    if (!Number.isFinite(scale)) { toast("scale is a number: 0 zeroes the units, 2 doubles them"); $("iv-scale").value = state.scale; return; }
    state.scale = scale;
    writeUrl();
    renderIntervention();
  });
  $("iv-reset").addEventListener("click", () => { state.intervene = new Set(); state.scale = 0; draw(); renderIntervention(); });
  $("coverage").value = state.coverage ?? "";
  $("coverage").addEventListener("change", () => {
    const text = $("coverage").value.trim();
    const f = text === "" ? null : parseFloat(text);
    if (f !== null && !(f > 0 && f <= 1)) { toast("coverage is a share from 0 to 1 (e.g. 0.5), or empty for the top k"); $("coverage").value = state.coverage ?? ""; return; }
    state.coverage = f;
    draw();
    ensureOpenLoaded();
  });
  const views = $("views");
  views.replaceChildren(...info.views.map((v) => el("button", {
    type: "button", "data-view": v, "aria-pressed": String(v === state.view),
    onclick: () => { state.view = v; for (const b of views.children) b.setAttribute("aria-pressed", String(b.dataset.view === v)); draw(); },
  }, VIEW_LABELS[v] || v)));
  $("root-form").addEventListener("submit", submitRoot);
  $("file").addEventListener("change", () => upload($("file").files[0]));
  $("toggle-panel").addEventListener("click", () => document.body.classList.toggle("nopanel"));

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.target.closest("input, select, textarea")) return;
    if (e.key === "h") document.body.classList.toggle("nopanel");
    else if (e.key === "b") document.body.classList.toggle("nobuttons");
  });
  let dragDepth = 0;
  const hasFiles = (e) => [...(e.dataTransfer?.types || [])].includes("Files");
  window.addEventListener("dragenter", (e) => { if (hasFiles(e)) { dragDepth++; $("drop").hidden = false; } });
  window.addEventListener("dragleave", () => { dragDepth = Math.max(0, dragDepth - 1); if (!dragDepth) $("drop").hidden = true; });
  window.addEventListener("dragover", (e) => { if (hasFiles(e)) e.preventDefault(); });
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    dragDepth = 0;
    $("drop").hidden = true;
    upload(e.dataTransfer?.files?.[0]);
  });
  // Picture sizes follow the window width (the stage's own size changes only refit).
  let resizeTimer = 0;
  let lastWidth = window.innerWidth;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => { if (window.innerWidth !== lastWidth) { lastWidth = window.innerWidth; draw(); } }, 120);
  });
}

// ----- the class-graph mode (serve --aggregate DIR) --------------------------------------
let aggregateView = null;
async function setMode(mode) {
  state.mode = mode;
  document.body.classList.toggle("agg-mode", mode === "aggregate");
  $("agg").hidden = mode !== "aggregate";
  for (const b of $("mode").children) b.setAttribute("aria-pressed", String(b.dataset.mode === mode));
  writeUrl();
  if (mode === "aggregate") {
    if (!aggregateView) {
      try {
        aggregateView = await showAggregate($("agg"), api, qs, state.agg, (s) => { state.agg = s; writeUrl(); });
        state.agg = { ...aggregateView.state };
        writeUrl();
      } catch (err) {
        toast(err.message);
        $("agg").replaceChildren(el("div", { class: "status" }, err.message));
      }
    }
  } else if (!analysis) {
    await loadAnalysis(state.root === undefined);
  } else draw();
}

async function main() {
  try {
    info = await api("/api/info");
  } catch (err) {
    status(`cannot reach the server: ${err.message}`);
    return;
  }
  const fresh = readUrl();
  if (!info.models.includes(state.model)) { toast(`unknown model ${state.model}; using ${info.default_model}`); state.model = info.default_model; }
  setupControls();
  $("mode").hidden = !info.aggregate;
  for (const b of $("mode").children) b.addEventListener("click", () => setMode(b.dataset.mode));
  if (state.mode === "aggregate") await setMode("aggregate");
  else {
    document.body.classList.remove("agg-mode");
    await loadAnalysis(fresh);
  }
  document.body.dataset.ready = "true";
}

main();
