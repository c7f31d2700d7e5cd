// featuretree explorer: the page's state lives in the URL; the server computes everything.
// State: model, image, root (one unit), the set of expanded node paths, the set of removed
// node paths, k, rule, seed mode, the picture view and the nodes whose exemplar grids are
// pinned open. Reloading the URL restores the view.

const VIEW_LABELS = {
  guided: "guided",
  guided_original: "original look",
  heatmap: "heatmap",
  rf_crop: "receptive field",
  rf_box: "box on photo",
};
const $ = (id) => document.getElementById(id);

const state = {
  model: "", image: "", root: null, open: new Set(), removed: new Set(), pinned: new Set(),
  k: 5, rule: "gradient", seed: "sum", view: "heatmap",
};
let info = null;          // /api/info
let analysis = null;      // /api/analysis for the current model and image
const children = new Map(); // "model|image|k|rule|seed|path" -> {status, data|error, promise}
const verifications = new Map(); // same keys -> {status, data|error}: /api/verify of a node's children
window.ftTimings = [];    // click-to-rendered-children durations, read by the benchmark

// ----- small helpers -------------------------------------------------------------------
function el(tag, attrs = {}, ...kids) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids) if (kid !== null && kid !== undefined) node.append(kid);
  return node;
}

function fmt(x) {
  if (x === null || x === undefined) return "";
  const a = Math.abs(x);
  return a !== 0 && (a < 1e-3 || a >= 1e4) ? x.toExponential(2) : x.toPrecision(3);
}

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

// ----- children on demand --------------------------------------------------------------
function childKey(path) { return [state.model, state.image, state.k, state.rule, state.seed, path].join("|"); }

function requestChildren(path) {
  const key = childKey(path);
  let entry = children.get(key);
  if (entry) return entry;
  entry = { status: "loading" };
  entry.promise = api("/api/children", {
    model: state.model, image: state.image, path, k: state.k, rule: state.rule, seed_mode: state.seed,
  }).then((data) => { entry.status = "done"; entry.data = data; },
          (err) => { entry.status = "error"; entry.error = err.message; });
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
    .then(() => { if (childKey(path) === key) fillVerification(path); });
}

let verifyTimer = 0;
function scheduleVerify() {
  // Wait until the node pictures on screen have loaded, so the ablation pass does not slow them down.
  clearTimeout(verifyTimer);
  verifyTimer = setTimeout(() => {
    if ([...document.querySelectorAll(".card .pic img")].some((i) => !i.complete)) { scheduleVerify(); return; }
    for (const node of visibleNodes()) {
      if (state.open.has(node.id) && children.get(childKey(node.id))?.status === "done" && kidsOf(node).length) requestVerify(node.id);
    }
  }, 60);
}

function edgeBadge(check, totalPositive, { what = "this unit", whose = "the parent's", label = "ablation" } = {}) {
  // Measured drop of the parent's objective when this child is zeroed, as a share of the parent's
  // positive total (the same scale as the estimated share on the line above), coloured by agreement.
  const ratio = check.estimate ? check.parent_drop / check.estimate : null;
  const agree = ratio === null ? "na" : ratio >= 0.5 && ratio <= 2 ? "ok" : ratio > 0 ? "off" : "bad";
  const sign = check.parent_drop >= 0 ? "−" : "+";
  const pct = totalPositive > 0 ? (100 * Math.abs(check.parent_drop)) / totalPositive : null;
  const amount = pct === null ? fmt(Math.abs(check.parent_drop)) : `${pct.toFixed(pct < 9.95 ? 1 : 0)}%`;
  const words = { ok: "agrees with", off: "differs from", bad: "contradicts", na: "has no" }[agree];
  return el("span", {
    class: `chip ${agree}`,
    title: `Ablation: zeroing ${what} lowers ${whose} objective by ${fmt(check.parent_drop)} ` +
      `(estimate, gradient × activation: ${fmt(check.estimate)}; measured/estimate ${ratio === null ? "n/a" : ratio.toFixed(2)}, ${words} the estimate) ` +
      `and the root objective by ${fmt(check.root_drop)} of ${fmt(check.root_value)}.`,
  }, `${label} ${sign}${amount}`);
}

function verifySlot(node) {
  const slot = el("div", { class: "verify" });
  if (node.depth === 0) {
    // The root has no edge above it; its row shows what zeroing all its shown children together does.
    const own = verifications.get(childKey(node.id));
    if (state.open.has(node.id) && own?.status === "done" && own.data.all) {
      const count = own.data.children.length;
      slot.append(edgeBadge(own.data.all, own.data.total_positive, {
        what: `all ${count} shown children together`, whose: "this node's", label: `all ${count} zeroed`,
      }));
    }
    return slot;
  }
  const entry = verifications.get(childKey(parentOf(node.id)));
  if (entry?.status === "done") {
    const check = entry.data.children.find((c) => c.id === node.id);
    if (check) slot.append(edgeBadge(check, entry.data.total_positive));
  } else if (entry?.status === "error") {
    slot.append(el("span", { class: "chip na", title: entry.error }, "ablation failed"));
  } else {
    slot.append(el("span", { class: "chip pending", title: "measuring this edge by ablation…" }, "ablation …"));
  }
  return slot;
}

function restText(path, data) {
  const rest = Math.max(0, 1 - data.coverage);
  const v = verifications.get(childKey(path));
  let title = `the shown children cover ${(100 * data.coverage).toFixed(1)}% of this node's positive contribution; ` +
    `the rest (${(100 * rest).toFixed(1)}%) comes from units not shown`;
  if (v?.status === "done" && v.data.all) {
    const all = v.data.all;
    title += `. Zeroing all shown children together lowers the objective by ${fmt(all.parent_drop)} (estimate ${fmt(all.estimate)})`;
  }
  return { text: `${data.children.length} ▾ · rest ${(100 * rest).toFixed(0)}%`, title };
}

function fillVerification(path) {
  // Update the badges in place (no redraw: a hovered picture keeps its zoom).
  for (const cardEl of document.querySelectorAll(".card[data-node]")) {
    const id = cardEl.dataset.node;
    const depth = id.split("/").length - 1;
    if (parentOf(id) === path || (id === path && depth === 0)) cardEl.querySelector(".verify")?.replaceWith(verifySlot({ id, depth }));
    if (id === path) {
      const entry = children.get(childKey(path));
      const badge = cardEl.querySelector(".pic .badge");
      if (badge && entry?.status === "done") Object.assign(badge, restText(path, entry.data));
    }
  }
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
  if (pin) document.querySelector(`figure.exemplars[data-exemplars="${CSS.escape(path)}"]`)?.scrollIntoView({ block: "nearest", inline: "nearest" });
}

function exemplarPanel(node, at, S) {
  const panel = el("figure", { class: "exemplars", "data-exemplars": node.id });
  Object.assign(panel.style, { left: `${at.left + S.cardW + S.gapX / 2}px`, top: `${at.top}px`, width: `${S.gridW}px`, height: `${at.height}px` });
  const img = el("img", { alt: `exemplars of ${node.layer}:${node.unit}: top image patches and their reconstructions` });
  img.addEventListener("error", () => {
    fetch(img.src).then((r) => r.json()).then((b) => panel.replaceChildren(el("div", { class: "note error" }, b.error)), () => {});
  });
  img.addEventListener("load", () => { img.classList.toggle("tiny", img.naturalHeight < img.clientHeight); });
  img.src = exemplarUrl(node);
  panel.append(
    el("figcaption", {},
      el("span", {}, `${node.layer}:${node.unit}`), el("span", { class: "muted" }, " top images | reconstructions"),
      el("button", { type: "button", class: "close", title: "unpin this exemplar grid", "data-action": "unpin", onclick: () => togglePinned(node.id) }, "✕")),
    img);
  return panel;
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
  return { id: state.root, layer, unit, label, probability: cls ? cls.probability : null, depth: 0 };
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

// ----- drawing -------------------------------------------------------------------------
function sizes() {
  const css = getComputedStyle(document.documentElement);
  const wide = window.innerWidth;
  const pic = wide >= 2400 ? 220 : wide >= 1700 ? 160 : 128;
  document.documentElement.style.setProperty("--pic", `${pic}px`);
  const gutter = parseFloat(css.getPropertyValue("--gutter")) || 118;
  const rem = parseFloat(css.fontSize) || 13;
  const cardW = pic + 14;
  const cardH = pic + Math.round(rem * 4.6) + Math.round(rem * 1.35 + 10) + 20;
  const ex = info.exemplars;
  const gridW = ex ? Math.round(((cardH - Math.round(rem * 1.6)) * ex.grid_width) / ex.grid_height) : 0;
  return { pic, gutter, cardW, cardH, gridW, gapX: Math.round(pic * 0.14), rowH: cardH + Math.round(pic * 0.45) };
}

function draw() {
  const canvas = $("canvas");
  hideZoom(); // the cards are rebuilt, so the hovered one is gone
  canvas.replaceChildren();
  writeUrl();
  const root = rootNode();
  if (!analysis) return;
  if (!root) {
    document.body.dataset.busy = "false";
    canvas.append(el("div", { class: "empty" },
      "No root. Pick one of the top-5 classes on the left, or type a unit such as ",
      el("code", {}, `${analysis.chain[analysis.chain.length - 2]?.name || analysis.chain[0].name}:0`), "."));
    status("The root was removed.");
    return;
  }
  const S = sizes();
  // Tidy layout: every leaf gets its own column; a parent sits over the middle of its children.
  // A pinned exemplar grid widens its node, so nothing to its right on any row can overlap it.
  const placed = [];
  let cursor = 0; // px: everything placed so far ends left of this
  const pinned = (node) => state.pinned.has(node.id) && hasExemplars(node);
  (function place(node) {
    const kids = kidsOf(node);
    let x;
    if (!kids.length) x = cursor; else {
      const xs = kids.map(place);
      x = (xs[0] + xs[xs.length - 1]) / 2;
    }
    cursor = Math.max(cursor, x + S.cardW + (pinned(node) ? S.gapX / 2 + S.gridW : 0) + S.gapX);
    placed.push({ node, x });
    return x;
  })(root);
  const depthMax = Math.max(...placed.map((p) => p.node.depth));
  const width = S.gutter + S.gapX + cursor;
  const height = (depthMax + 1) * S.rowH;
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const pos = new Map(placed.map((p) => [p.node.id, {
    left: S.gutter + S.gapX + p.x, top: p.node.depth * S.rowH + 10, height: S.cardH,
  }]));

  const rootIndex = analysis.chain.findIndex((c) => c.name === root.layer);
  for (let d = 0; d <= depthMax; d++) {
    const layer = analysis.chain[rootIndex - d];
    if (!layer) continue;
    const label = el("div", { class: "rowlabel" }, el("strong", {}, layer.name), `${layer.type} · ${layer.shape.join("×")}`);
    label.style.top = `${d * S.rowH + 10}px`;
    canvas.append(label);
  }

  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "edges");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  for (const { node } of placed) {
    const a = pos.get(node.id);
    for (const kid of kidsOf(node)) {
      const b = pos.get(kid.id);
      const x1 = a.left + S.cardW / 2, y1 = a.top + S.cardH, x2 = b.left + S.cardW / 2, y2 = b.top;
      const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
      const my = (y1 + y2) / 2;
      path.setAttribute("d", `M${x1},${y1} C${x1},${my} ${x2},${my} ${x2},${y2}`);
      path.setAttribute("stroke-width", String(Math.max(1.5, Math.min(18, 24 * kid.share))));
      path.setAttribute("data-edge", kid.id);
      const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
      title.textContent = `${kid.id}: score ${fmt(kid.score)}, ${(100 * kid.share).toFixed(1)}% of parent`;
      path.append(title);
      svg.append(path);
    }
  }
  canvas.append(svg);
  for (const { node } of placed) {
    canvas.append(card(node, pos.get(node.id)));
    if (pinned(node)) canvas.append(exemplarPanel(node, pos.get(node.id), S));
  }
  scheduleVerify();

  const busy = visibleNodes().filter((n) => children.get(childKey(n.id))?.status === "loading" && state.open.has(n.id)).length;
  document.body.dataset.busy = String(busy > 0);
  status(busy ? `computing children of ${busy} node${busy > 1 ? "s" : ""}…`
    : `${placed.length} node${placed.length > 1 ? "s" : ""} · root ${root.id}${root.label ? ` (${root.label})` : ""} · click a picture to expand or collapse`);
}

function pictureUrl(path, view = state.view) {
  return `/api/picture.png?${qs({ model: state.model, image: state.image, path, view, rule: state.rule, seed_mode: state.seed })}`;
}

function card(node, at) {
  const open = state.open.has(node.id);
  const entry = open ? children.get(childKey(node.id)) : null;
  const loading = entry?.status === "loading";
  const expandable = analysis.chain.findIndex((c) => c.name === node.layer) > 0;
  const box = el("div", {
    class: `card${node.depth === 0 ? " root" : ""}${open ? " open" : ""}${loading ? " loading" : ""}`,
    "data-node": node.id, "aria-busy": loading ? "true" : null,
  });
  box.style.left = `${at.left}px`;
  box.style.top = `${at.top}px`;
  box.style.height = `${at.height}px`;
  box.append(el("div", { class: "title" }, el("span", { class: "unit", title: node.id }, `${node.layer}:${node.unit}`)));
  const sub = node.depth === 0
    ? (node.label ? `${node.label}${node.probability != null ? ` · p=${node.probability.toFixed(3)}` : ""}` : "root unit")
    : `${(100 * node.share).toFixed(1)}% · score ${fmt(node.score)}${node.label ? " · " + node.label : ""}`;
  box.append(el("div", { class: "sub", title: sub }, sub));
  box.append(verifySlot(node));

  const img = el("img", { alt: `${VIEW_LABELS[state.view]} of ${node.id}`, class: isTiny() ? "tiny" : "", draggable: "false" });
  img.src = pictureUrl(node.id);
  const pic = el("div", {
    class: "pic", role: "button", tabindex: "0",
    title: expandable ? (open ? "collapse" : "expand: compute this node's children") : "first layer of the chain: nothing below",
    onclick: () => toggle(node.id),
    onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); toggle(node.id); } },
    onmouseenter: () => showZoom(img, box), onmouseleave: hideZoom,
  }, img);
  if (open && entry?.status === "done") {
    const rest = restText(node.id, entry.data);
    pic.append(el("span", { class: "badge", title: rest.title }, rest.text));
  }
  box.append(pic);
  if (entry?.status === "error") pic.append(el("div", { class: "note error" }, entry.error));
  else if (entry?.status === "done" && entry.data.leaf_reason) pic.append(el("div", { class: "note" }, entry.data.leaf_reason));
  else if (!expandable) pic.append(el("div", { class: "note" }, "first layer"));

  const buttons = el("div", { class: "buttons" },
    el("button", { type: "button", "data-action": "toggle", disabled: !expandable, onclick: () => toggle(node.id) }, open ? "collapse" : "expand"),
    el("button", { type: "button", "data-action": "reroot", title: "explain this unit: make it the root", disabled: node.depth === 0, onclick: () => reroot(node) }, "root"),
    hasExemplars(node) ? el("button", {
      type: "button", "data-action": "exemplars", "aria-pressed": String(state.pinned.has(node.id)),
      title: "show or hide this unit's exemplars: the image patches that excite it most, beside their reconstructions",
      onclick: () => togglePinned(node.id),
    }, "ex") : null,
    el("button", { type: "button", "data-action": "remove", title: "remove this node", onclick: () => remove(node.id) }, "✕"));
  box.append(buttons);
  return box;
}

// ----- interactions --------------------------------------------------------------------
function toggle(path) {
  const node = visibleNodes().find((n) => n.id === path);
  if (!node || analysis.chain.findIndex((c) => c.name === node.layer) === 0) return;
  if (state.open.has(path)) { state.open.delete(path); draw(); return; }
  state.open.add(path);
  const t0 = performance.now();
  const entry = requestChildren(path);
  draw();
  entry.promise.then(async () => {
    draw();
    ensureOpenLoaded();
    document.querySelector(`.card[data-node="${CSS.escape(path)}"]`)?.scrollIntoView({ block: "nearest", inline: "center" });
    // Time until every child card is drawn with its picture loaded (re-checked each frame,
    // since a redraw may replace the img elements).
    const childImgs = () => [...document.querySelectorAll(".card[data-node] .pic img")]
      .filter((i) => parentOf(i.closest(".card").dataset.node) === path);
    while (state.open.has(path) && !childImgs().every((i) => i.complete)) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const imgs = childImgs();
    window.ftTimings.push({ path, ms: performance.now() - t0, children: imgs.length, loaded: imgs.filter((i) => i.naturalWidth > 0).length });
  });
}

function remove(path) {
  hideZoom();
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
  draw();
  ensureOpenLoaded();
}

function reroot(node) { hideZoom(); setRoot(unitOf(node.id)); }

function showZoom(img, box) {
  const zoom = $("zoom");
  const size = Math.round(Math.min(520, window.innerHeight * 0.62, window.innerWidth * 0.4));
  const r = box.getBoundingClientRect();
  let left = r.right + 12;
  if (left + size > window.innerWidth - 8) left = Math.max(8, r.left - size - 12);
  const top = Math.min(Math.max(8, r.top), window.innerHeight - size - 8);
  Object.assign(zoom.style, { left: `${left}px`, top: `${top}px`, width: `${size}px`, height: `${size}px` });
  const zi = zoom.querySelector("img");
  zi.src = img.src;
  zi.className = isTiny() ? "tiny" : "";
  zoom.hidden = false;
}

function hideZoom() { $("zoom").hidden = true; }

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
    $("canvas").replaceChildren(el("div", { class: "empty" }, err.message));
    return;
  }
  $("photo").className = isTiny() ? "tiny" : "";
  $("photo-caption").textContent = `${analysis.source} · ${analysis.original_size.join("×")} → ${analysis.size.join("×")}`;
  $("exemplar-help").hidden = !(info.exemplars && info.exemplars.model === state.model);
  $("chain").textContent = `layers (input side first): ${analysis.chain.map((c) => c.name).join(", ")}`;
  if (useDefaultRoot || state.root === undefined) {
    state.root = analysis.default_root;
    state.open = new Set([state.root]);
    state.removed = new Set();
    state.pinned = new Set();
  }
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
    else if (e.key === "Escape") hideZoom();
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
  let resizeTimer = 0;
  window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(draw, 120); });
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
