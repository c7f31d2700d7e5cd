// featuretree explorer: the page's state lives in the URL; the server computes everything.
// State: model, image, root (one unit), the set of expanded node paths, the set of removed
// node paths, k, rule, seed mode, the picture view and the nodes whose exemplar grids are
// pinned open. Reloading the URL restores the view.
//
// The tree itself (cards, edges, badges, number formats, zoom / pan / fit) is drawn by the shared
// renderer /static/tree_view.js, the same file the HTML export inlines; this file adds the
// explorer's parts: fetching children on demand, expand, remove, re-root, exemplar pins, upload.

import { showModelCheck } from "./model_panel.js";

const { TreeView, VIEW_LABELS, el } = window.FeatureTreeView;
const $ = (id) => document.getElementById(id);

const state = {
  model: "", image: "", root: null, open: new Set(), removed: new Set(), pinned: new Set(),
  k: 5, rule: "gradient", seed: "sum", view: "heatmap",
};
let info = null;          // /api/info
let analysis = null;      // /api/analysis for the current model and image
let tree = null;          // the TreeView drawing the stage
const children = new Map(); // "model|image|k|rule|seed|path" -> {status, data|error, promise}
const verifications = new Map(); // same keys -> {status, data|error}: /api/verify of a node's children
const pictures = new Map(); // "model|image|rule|seed|view|path" -> data URI from /api/expand (most recent last)
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
  state.rule = info.rules.includes(q.get("rule")) ? q.get("rule") : "gradient";
  state.seed = info.seed_modes.includes(q.get("seed")) ? q.get("seed") : "sum";
  state.view = info.views.includes(q.get("view")) ? q.get("view") : "heatmap";
  return !q.has("open") && !q.has("root");
}

function viewParams() {
  return {
    model: state.model, image: state.image, root: state.root ?? "",
    k: state.k, rule: state.rule, seed: state.seed, view: state.view,
    open: [...state.open], removed: [...state.removed], ex: [...state.pinned],
  };
}

function writeUrl() {
  const url = `${location.pathname}?${qs(viewParams())}`;
  if (url !== location.pathname + location.search) history.replaceState(null, "", url);
  const exportParams = {
    model: state.model, image: state.image, root: state.root, k: state.k, rule: state.rule, seed_mode: state.seed,
    open: [...state.open], removed: [...state.removed],
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
function childKey(path) { return [state.model, state.image, state.k, state.rule, state.seed, path].join("|"); }
function pictureKey(path, view = state.view) { return [state.model, state.image, state.rule, state.seed, view, path].join("|"); }

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
    model: state.model, image: state.image, path, k: state.k, rule: state.rule, seed_mode: state.seed, view,
  }).then((data) => {
    entry.received = performance.now();
    for (const c of data.children) { keepPicture(keyOf(c.id), c.picture); delete c.picture; }
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
  api("/api/verify", { model: state.model, image: state.image, path, k: state.k, rule: state.rule, seed_mode: state.seed })
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
function hasExemplars(node) {
  const ex = info.exemplars;
  return Boolean(ex && ex.model === state.model && ex.layers.includes(node.layer));
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
function rootNode() {
  if (!state.root) return null;
  const cls = analysis.top_classes.find((c) => c.unit === state.root);
  const [layer, unit] = [state.root.slice(0, state.root.lastIndexOf(":")), +state.root.split(":").pop()];
  const label = layer === analysis.logits_layer ? (cls ? cls.name : `class ${unit}`) : null;
  return { id: state.root, layer, unit, label, score: null, share: null, depth: 0 };
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
  if (!analysis) return;
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
  status(busy ? `computing children of ${busy} node${busy > 1 ? "s" : ""}…`
    : `${count} node${count > 1 ? "s" : ""} · root ${root.id}${root.label ? ` (${root.label})` : ""} · click a picture to expand or collapse · wheel zooms, drag pans, f fits`);
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
  state.open = new Set([unit]);
  state.removed = new Set();
  state.pinned = new Set();
  renderTop5();
  tree.auto = true; // a new tree opens fitted
  draw();
  ensureOpenLoaded();
}

function reroot(node) { tree.hideZoom(); setRoot(unitOf(node.id)); }

// ----- panel ---------------------------------------------------------------------------
function renderTop5() {
  const list = $("top5");
  list.replaceChildren(...analysis.top_classes.map((c) => el("li", {},
    el("button", {
      type: "button", "aria-pressed": String(c.unit === state.root), disabled: !c.unit,
      title: c.unit ? `explain ${c.unit}` : "", onclick: () => c.unit && setRoot(c.unit),
    },
    el("span", { class: "name" }, c.name), el("span", { class: "muted" }, `${(100 * c.probability).toFixed(1)}%`),
    (() => { const b = el("span", { class: "bar" }); b.style.width = `${Math.max(1, 100 * c.probability)}%`; return b; })()))));
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
    state.view = "heatmap";
    for (const b of $("views").children) b.setAttribute("aria-pressed", String(b.dataset.view === state.view));
  }
  if (useDefaultRoot || state.root === undefined) {
    state.root = analysis.default_root;
    state.open = new Set([state.root]);
    state.removed = new Set();
    state.pinned = new Set();
  }
  tree.auto = true;
  renderTop5();
  renderGallery();
  draw();
  ensureOpenLoaded();
}

function setImage(image) {
  state.image = image;
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
    picture: (node, view) => pictures.get(pictureKey(node.id, view)) || pictureUrl(node.id, view),
    onPicture: (node) => toggle(node.id),
    pictureTitle: (node) => isExpandable(node)
      ? (state.open.has(node.id) ? "collapse" : "expand: compute this node's children") : "first layer of the chain: nothing below",
    buttons: cardButtons,
    panel: (node) => state.pinned.has(node.id) && hasExemplars(node)
      ? {
        src: exemplarUrl(node), alt: `exemplars of ${node.layer}:${node.unit}: top image patches and their reconstructions`,
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
  await loadAnalysis(fresh);
  document.body.dataset.ready = "true";
}

main();
