// featuretree's one tree renderer: node cards, edges, layout, badges, number formats, the six
// picture views, hover zoom, and zoom / pan / fit. The self-contained HTML export inlines this file
// (export_page.js adds the page around it); the explorer serves it as /static/tree_view.js and adds
// its interactive parts (expand, remove, re-root, exemplar pins, ...) through the options below.
// Plain script, no dependencies, works from file://.
//
// A tree is given as nodes in the tree.json format (docs/tree-schema.md): id, layer, unit, depth,
// label, contrast (a contrastive root's second unit), score, share, expanded, coverage, rest, bypass, total_positive, leaf_reason, verification,
// verification_all, box, children (the shown ones). A host may add view-only fields:
//   loading (children are being computed), error (text), verification_pending, verification_error,
//   verification_all.count (how many children the joint ablation zeroed; else children.length).
(function () {
  "use strict";
  const VIEWS = [
    ["guided", "guided"],
    ["guided_original", "original look"],
    ["heatmap", "heatmap"],
    ["contribution", "contribution"],
    ["rf_crop", "receptive field"],
    ["rf_box", "box on photo"],
  ];
  const VIEW_LABELS = Object.fromEntries(VIEWS);
  // Chosen by the numbers (README, "Is the tree honest?"): it depends on the weights and localises evidence.
  const DEFAULT_VIEW = "contribution";
  const SVG = "http://www.w3.org/2000/svg";
  const MARGIN = 16; // px between the fitted tree and the stage's edges
  const MAX_SCALE = 4;

  function el(tag, attrs, ...kids) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
      else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
    }
    for (const kid of kids) if (kid !== null && kid !== undefined) node.append(kid);
    return node;
  }

  // "layer:unit", or "layer:A−B" for a contrastive root (unit A minus unit B).
  function unitText(node) {
    return node.contrast != null ? `${node.layer}:${node.unit}−${node.contrast}` : `${node.layer}:${node.unit}`;
  }

  // The merged graph of a shown tree (tree.graph in Python, the same definition): each distinct unit
  // once (its id is the last step of its paths), with the tree paths that reach it and their summed
  // scores; one edge per (parent unit, child unit), its score the sum over the tree edges it merges and
  // its share that score over the positive totals of every copy of the parent unit with shown children
  // (a unit's outgoing shares sum to at most 1). kids(node) gives the shown children.
  function mergeGraph(root, kids = (n) => n.children || []) {
    const unitOf = (node) => node.id.split("/").pop();
    const nodes = new Map(), edges = new Map(), totals = new Map();
    let frontier = [root];
    while (frontier.length) { // breadth first, like the Python version: a unit's entry comes from its shallowest copy
      const below = [];
      for (const node of frontier) {
        const id = unitOf(node);
        if (!nodes.has(id)) nodes.set(id, { id, layer: node.layer, unit: node.unit, label: node.label ?? null, depth: node.depth, paths: [], copies: [], score: 0 });
        const entry = nodes.get(id);
        entry.paths.push(node.id);
        entry.copies.push(node);
        entry.score += node.score || 0;
        if (kids(node).length) totals.set(id, (totals.get(id) || 0) + (node.total_positive || 0));
        for (const kid of kids(node)) {
          const key = `${id}\n${unitOf(kid)}`;
          if (!edges.has(key)) edges.set(key, { source: id, target: unitOf(kid), score: 0, paths: 0 });
          const edge = edges.get(key);
          edge.score += kid.score || 0;
          edge.paths += 1;
          below.push(kid);
        }
      }
      frontier = below;
    }
    for (const entry of nodes.values()) if (entry.depth === 0) entry.score = null;
    const order = new Map([...nodes.keys()].map((id, i) => [id, i]));
    const list = [...edges.values()].map((e) => { const total = totals.get(e.source); return { ...e, share: total > 0 ? e.score / total : 0 }; });
    list.sort((a, b) => order.get(a.source) - order.get(b.source) || b.score - a.score);
    return { nodes: [...nodes.values()], edges: list };
  }

  // The share of the root's positive evidence the shown tree accounts for (tree.completeness in Python):
  // a node carries its share of its parent times what the parent carries (1 at the root); per depth
  // and over the shown leaves. null until the root is expanded.
  function completeness(root, kids = (n) => n.children || []) {
    if (!root.expanded || !(root.total_positive > 0)) return null;
    const perDepth = [];
    let leaves = 0;
    (function walk(n, carried) {
      const shown = kids(n);
      if (n.depth > 0) {
        perDepth[n.depth - 1] = (perDepth[n.depth - 1] || 0) + carried;
        if (!shown.length) leaves += carried;
      }
      for (const kid of shown) walk(kid, carried * (kid.share || 0));
    })(root, 1);
    return { leaves, levels: perDepth.filter((v) => v !== undefined) };
  }

  // An edge from the bottom of card a to the top of card b (positions {left, top}), as an SVG path.
  function curve(a, b, S) {
    const x1 = a.left + S.cardW / 2, y1 = a.top + S.cardH, x2 = b.left + S.cardW / 2, y2 = b.top, my = (y1 + y2) / 2;
    return `M${x1},${y1} C${x1},${my} ${x2},${my} ${x2},${y2}`;
  }

  // A graph's layout (the merged graph of a tree, the class graph of an aggregate): one row per depth
  // present, each unit under the mean position of its parents in the rows above (weighted by weight(edge));
  // units without a drawn parent go to the row's right end. A long row is staggered over several lines
  // (unit i on line i mod lines), keeping its left-to-right order while the graph stays about as wide as it
  // is tall; perLine overrides how many units a line holds. Returns each unit's box (pos) and the rows' tops.
  function graphLayout(nodes, edges, S, { weight = (e) => e.score, perLine = null, tiebreak = (a, b) => (b.score || 0) - (a.score || 0) } = {}) {
    const depths = [...new Set(nodes.map((u) => u.depth))].sort((a, b) => a - b);
    const rowOf = new Map(depths.map((d, i) => [d, i]));
    const rows = depths.map(() => []);
    for (const unit of nodes) rows[rowOf.get(unit.depth)].push(unit);
    const incoming = new Map(nodes.map((u) => [u.id, []]));
    for (const e of edges) if (incoming.has(e.target)) incoming.get(e.target).push(e);
    const step = S.cardW + S.gapX, gapY = Math.round(S.pic * 0.1);
    const per = perLine || Math.max(10, Math.ceil(2.5 * Math.sqrt(nodes.length)));
    const lines = rows.map((r) => Math.max(1, Math.ceil(r.length / per)));
    const rowWidth = (r, i) => (r.length - 1) * (step / lines[i]) + S.cardW;
    const width = Math.max(S.cardW, ...rows.map(rowWidth));
    const x = new Map(), line = new Map();
    rows.forEach((row, i) => {
      if (i > 0) {
        const centre = (u) => {
          const ins = incoming.get(u.id).filter((e) => x.has(e.source));
          if (!ins.length) return Infinity;
          const w = ins.reduce((s, e) => s + Math.max(weight(e), 1e-12), 0);
          return ins.reduce((s, e) => s + x.get(e.source) * Math.max(weight(e), 1e-12), 0) / w;
        };
        const key = new Map(row.map((u) => [u.id, centre(u)]));
        row.sort((a, b) => key.get(a.id) - key.get(b.id) || tiebreak(a, b)); // Infinity - Infinity is NaN: the tiebreak decides
      }
      const left = (width - rowWidth(row, i)) / 2;
      row.forEach((u, j) => { x.set(u.id, left + (j * step) / lines[i]); line.set(u.id, j % lines[i]); });
    });
    const depthMax = rows.length - 1;
    const band = lines.map((n) => n * S.cardH + (n - 1) * gapY), tops = [0];
    for (let d = 1; d <= depthMax; d++) tops.push(tops[d - 1] + band[d - 1] + (S.rowH - S.cardH));
    const height = depthMax >= 0 ? tops[depthMax] + band[depthMax] : S.cardH;
    const pos = new Map(nodes.map((u) => [u.id, {
      left: x.get(u.id), top: tops[rowOf.get(u.depth)] + line.get(u.id) * (S.cardH + gapY), width: S.cardW, height: S.cardH,
    }]));
    return { pos, rowOf, rows, width, height, tops, band, depthMax };
  }

  // ----- number formats: the only ones either page uses ------------------------------------
  // A value: three significant digits; exponent notation outside [0.001, 10000).
  function fmt(x) {
    if (x === null || x === undefined || Number.isNaN(x)) return "";
    const a = Math.abs(x);
    return a !== 0 && (a < 1e-3 || a >= 1e4) ? x.toExponential(2) : x.toPrecision(3);
  }
  // A share as a percentage with one decimal (children's shares).
  function pct(share) { return (100 * share).toFixed(1) + "%"; }
  // An ablation drop as a share of the parent's positive total: one decimal below 10 %, else none.
  function dropText(drop, total) {
    if (!(total > 0)) return fmt(Math.abs(drop));
    const p = (100 * Math.abs(drop)) / total;
    return p.toFixed(p < 9.95 ? 1 : 0) + "%";
  }

  // Ablation badge: the measured drop of the parent's objective when the unit (or all shown children)
  // is zeroed, as a share of the parent's positive total (the scale of the estimated share), coloured by
  // how it agrees with the gradient x activation estimate.
  function ablationBadge(check, totalPositive, { what = "this unit", whose = "the parent's", label = "ablation" } = {}) {
    const ratio = check.estimate ? check.parent_drop / check.estimate : null;
    const agree = ratio === null ? "na" : ratio >= 0.5 && ratio <= 2 ? "ok" : ratio > 0 ? "off" : "bad";
    const sign = check.parent_drop >= 0 ? "−" : "+";
    const words = { ok: "agrees with", off: "differs from", bad: "contradicts", na: "has no" }[agree];
    return el("span", {
      class: `ft-badge ${agree}`,
      title: `Ablation: zeroing ${what} lowers ${whose} objective by ${fmt(check.parent_drop)} of ${fmt(check.parent_value)} ` +
        `(estimate, gradient × activation: ${fmt(check.estimate)}; measured/estimate ${ratio === null ? "n/a" : ratio.toFixed(2)}, ${words} the estimate) ` +
        `and the root objective by ${fmt(check.root_drop)} of ${fmt(check.root_value)}.`,
    }, `${label} ${sign}${dropText(check.parent_drop, totalPositive)}`);
  }

  // ----- the renderer ---------------------------------------------------------------------
  // options:
  //   chain: [{name, type, shape}] (row labels), topClasses: [{index, name, probability}] (the root's p)
  //   picture(node, view) -> image URL or null; photo: {src, size: [w, h]} draws rf views from node.box
  //   tiny: pixelated pictures (small inputs); view: the initial view
  //   onPicture(node): click on a picture (default: collapse / expand the shown children)
  //   pictureTitle(node) -> tooltip; buttons(node) -> elements for a row of buttons (reserved when given)
  //   panel(node) -> {src, caption, onClose, explain(src) -> Promise<error text>} for a pinned side panel (e.g.
  //   exemplars); panelAspect: w / h (or a function)
  //   keys: handle f / + / - / 0 / arrows on the document (default true)
  //   compactLeaves: past this many leaves (default 30), stack leaf siblings in columns if that fits the tree larger
  //   cardClass(node) -> extra class names for a card (e.g. the explorer's units selected for an intervention)
  class TreeView {
    constructor(host, options = {}) {
      this.host = host;
      this.opt = { keys: true, view: DEFAULT_VIEW, chain: [], topClasses: [], ...options };
      this.view = this.opt.view;
      this.collapsed = new Set();
      this.root = null;
      this.pos = new Map();
      this.s = 1; this.tx = 0; this.ty = 0;
      this.auto = true; // keep the tree fitted until the user zooms or pans
      this.size = { width: 0, height: 0 };
      host.classList.add("ft-tree");
      host.replaceChildren();
      this.canvas = el("div", { class: "ft-canvas" });
      this.rows = el("div", { class: "ft-rows", "aria-hidden": "true" });
      this.message = el("div", { class: "ft-message", hidden: true });
      this.scaleText = el("span", { class: "ft-scale", title: "zoom level" }, "100%");
      const act = (name, label, title, fn) => el("button", { type: "button", "data-action": name, title, onclick: fn }, label);
      this.bar = el("div", { class: "ft-zoombar", role: "group", "aria-label": "zoom" },
        act("zoom-out", "−", "zoom out (-)", () => this.zoomBy(1 / 1.25)),
        this.scaleText,
        act("zoom-in", "+", "zoom in (+)", () => this.zoomBy(1.25)),
        act("fit", "Fit", "fit the whole tree on screen (f); wheel or pinch zooms, drag pans, 0 = 100%", () => this.fit()));
      host.append(this.canvas, this.rows, this.message, this.bar);
      this.zoom = el("div", { class: "ft-zoom", hidden: true });
      document.body.append(this.zoom);
      this._bindGestures();
      if (this.opt.keys) this._bindKeys();
      if (window.ResizeObserver) {
        this._resize = new ResizeObserver((entries) => {
          // The stage's size, kept here so that drawing never has to force a layout to read it.
          const box = entries[entries.length - 1].contentRect;
          this._dims = { W: box.width, H: box.height };
          if (!this.root) return;
          if (this.auto) this.fit(); else this.apply();
        });
        this._resize.observe(host);
      }
    }

    setView(view) { this.view = view; if (this.root) this.draw(this.root); }

    // A message instead of a tree (no root, an error); the zoom state is kept.
    showMessage(...kids) {
      this.hideZoom();
      this.root = null;
      this.canvas.replaceChildren();
      this.rows.replaceChildren();
      this.message.replaceChildren(...kids);
      this.message.hidden = false;
      this.bar.hidden = true;
    }

    metrics() {
      const wide = window.innerWidth;
      if (!this._rem || this._remFor !== wide) { // the font size follows the window width only (a media query)
        this._rem = parseFloat(getComputedStyle(this.host).fontSize) || 13;
        this._remFor = wide;
      }
      const rem = this._rem;
      const pic = wide >= 2400 ? 220 : wide >= 1700 ? 160 : 128;
      this.host.style.setProperty("--ft-pic", `${pic}px`);
      const buttons = this.opt.buttons ? Math.round(rem * 1.35 + 10) : 0;
      const cardW = pic + 14;
      const cardH = pic + Math.round(rem * 5.9) + buttons + 20; // title, score, badges, class effects, picture
      const aspect = (typeof this.opt.panelAspect === "function" ? this.opt.panelAspect() : this.opt.panelAspect) || 1;
      return {
        pic, rem, cardW, cardH, gapX: Math.round(pic * 0.14), rowH: cardH + Math.round(pic * 0.45),
        gutter: Math.round(rem * 9), panelW: Math.round((cardH - Math.round(rem * 1.6)) * aspect),
      };
    }

    kids(node) { return this.collapsed.has(node.id) ? [] : node.children || []; }

    // Tidy layout: every leaf gets its own column, a parent sits over the middle of its shown children;
    // a pinned side panel widens its node, so nothing to its right on any row can overlap it.
    // With compact, each group of leaf siblings is stacked in a column under its parent instead.
    layout(root, S, compact) {
      const indent = Math.round(S.cardW * 0.25), gapY = Math.round(S.pic * 0.1);
      const placed = [];
      let cursor = 0;
      const panelOf = (node) => (this.opt.panel ? this.opt.panel(node) : null);
      const place = (node, depth, parent) => {
        const kids = this.kids(node);
        const panel = panelOf(node);
        let x;
        if (compact && kids.length > 1 && kids.every((c) => !this.kids(c).length)) {
          x = cursor;
          let right = x + S.cardW + (panel ? S.gapX / 2 + S.panelW : 0);
          kids.forEach((kid, i) => {
            const kidPanel = panelOf(kid);
            placed.push({ node: kid, depth: depth + 1, parent: node, x: x + indent, stack: i, panel: kidPanel });
            right = Math.max(right, x + indent + S.cardW + (kidPanel ? S.gapX / 2 + S.panelW : 0));
          });
          cursor = Math.max(cursor, right + S.gapX);
        } else {
          if (!kids.length) x = cursor; else {
            const xs = kids.map((c) => place(c, depth + 1, node));
            x = (xs[0] + xs[xs.length - 1]) / 2;
          }
          cursor = Math.max(cursor, x + S.cardW + (panel ? S.gapX / 2 + S.panelW : 0) + S.gapX);
        }
        placed.push({ node, depth, parent, x, stack: null, panel });
        return x;
      };
      place(root, 0, null);
      // Row tops: a row is as tall as its tallest stack.
      const depthMax = Math.max(...placed.map((p) => p.depth));
      const band = new Array(depthMax + 1).fill(S.cardH);
      for (const p of placed) if (p.stack !== null) band[p.depth] = Math.max(band[p.depth], (p.stack + 1) * S.cardH + p.stack * gapY);
      const tops = [0];
      for (let d = 1; d <= depthMax; d++) tops.push(tops[d - 1] + band[d - 1] + (S.rowH - S.cardH));
      for (const p of placed) p.top = tops[p.depth] + (p.stack === null ? 0 : p.stack * (S.cardH + gapY));
      placed.sort((a, b) => a.depth - b.depth || a.x - b.x || a.top - b.top);
      return { placed, width: Math.max(S.cardW, cursor - S.gapX), height: tops[depthMax] + band[depthMax], depthMax, tops, band, indent };
    }

    // Tree or merged graph (each distinct unit once, with all its incoming edges).
    setGraph(on) { this.graph = Boolean(on); this.auto = true; if (this.root) this.draw(this.root); }

    draw(root) {
      this.hideZoom(); // the cards are rebuilt, so the hovered one is gone
      this.root = root;
      this.message.hidden = true;
      this.bar.hidden = false;
      const S = (this.S = this.metrics());
      this.host.dataset.mode = this.graph ? "graph" : "tree";
      if (this.graph) { this.drawGraph(root, S); return; }
      // Trees with many leaves (more than opt.compactLeaves) stack leaf siblings when that shows the whole
      // tree larger on this screen (a 156-node tree: about four times larger than side by side).
      let leaves = 0;
      (function count(n, self) { const kids = self.kids(n); if (!kids.length) leaves++; kids.forEach((c) => count(c, self)); })(root, this);
      let layout = this.layout(root, S, false);
      if (leaves > (this.opt.compactLeaves ?? 30)) {
        const compact = this.layout(root, S, true);
        if (this.fitScale(compact) > this.fitScale(layout)) layout = compact;
      }
      const { placed, width, height, depthMax, tops, band, indent } = layout;
      this.parents = new Map(placed.map((p) => [p.node.id, p.parent]));
      this.pos = new Map(placed.map((p) => [p.node.id, { left: p.x, top: p.top, width: S.cardW, height: S.cardH, stacked: p.stack !== null }]));
      const svg = this.startCanvas(width, height);
      for (const { node } of placed) {
        const a = this.pos.get(node.id);
        for (const kid of this.kids(node)) {
          const b = this.pos.get(kid.id);
          let d;
          if (b.stacked) {
            // Stacked leaves: a spine down the column's left side, a branch into each card.
            const xs = a.left + indent / 2, y1 = a.top + S.cardH, yb = b.top + S.cardH / 2, r = Math.min(indent / 2, 12);
            d = `M${xs},${y1} V${yb - r} Q${xs},${yb} ${xs + r},${yb} H${b.left}`;
          } else d = curve(a, b, S);
          this.addEdge(svg, d, kid.id, `${kid.id}: score ${fmt(kid.score)}, ${pct(kid.share || 0)} of the parent's positive total`, kid.share || 0);
        }
      }
      this.canvas.append(svg);
      for (const p of placed) {
        const at = this.pos.get(p.node.id);
        this.canvas.append(this.card(p.node, at, p.parent));
        if (p.panel) this.canvas.append(this.panelFor(p.node, p.panel, at, S));
      }
      this.finishDraw(placed, depthMax, tops, band);
    }

    // An empty canvas of the drawing's size, and the SVG layer its edges go into (appended by the caller
    // after the edges, before the cards).
    startCanvas(width, height) {
      this.size = { width, height };
      this.canvas.replaceChildren();
      this.canvas.style.width = `${width}px`;
      this.canvas.style.height = `${height}px`;
      const svg = document.createElementNS(SVG, "svg");
      svg.setAttribute("class", "ft-edges");
      svg.setAttribute("width", width);
      svg.setAttribute("height", height);
      this.edges = [];
      return svg;
    }

    // One edge: its path, a tooltip, and a width proportional to its share (or the given one, in px at 100%;
    // set in apply()). Returns the path element.
    addEdge(svg, d, id, tooltip, share, width = null) {
      const path = document.createElementNS(SVG, "path");
      path.setAttribute("d", d);
      path.setAttribute("data-edge", id);
      const title = document.createElementNS(SVG, "title");
      title.textContent = tooltip;
      path.append(title);
      svg.append(path);
      this.edges.push([path, width ?? Math.max(1.5, Math.min(18, 24 * Math.max(0, share)))]);
      return path;
    }

    // Row labels, then the view: fitted while the user has not zoomed or panned.
    finishDraw(placed, depthMax, tops, band) {
      this.drawRowLabels(placed, depthMax, tops, band);
      this._lastEdgeScale = null;
      if (this.auto) this.fit(); else this.apply();
    }

    // Row labels live outside the zoomed canvas, so they stay readable at any zoom.
    drawRowLabels(placed, depthMax, tops, band) {
      const byName = new Map((this.opt.chain || []).map((c) => [c.name, c]));
      this.rowLabels = [];
      this.rows.replaceChildren();
      for (let d = 0; d <= depthMax; d++) {
        const first = placed.find((p) => p.depth === d);
        if (!first) continue;
        const layer = first.node.layer;
        const text = this.rowText(layer, byName.get(layer));
        const label = el("div", { class: "ft-rowlabel", "data-row": String(d), title: layer },
          el("strong", {}, layer), text ? el("span", {}, text) : null);
        this.rows.append(label);
        this.rowLabels.push([label, tops[d], band[d]]);
      }
    }

    // The second line of a row's label: the layer's type and shape (a host's subclass may say more).
    rowText(layer, info) { return info && info.shape ? `${info.type} · ${info.shape.join("×")}` : null; }

    // The merged graph: one row per layer, units ordered under the mean position of their parents
    // (weighted by edge score), edges as wide as their share; a unit reached by several parents is a hub.
    drawGraph(root, S) {
      const graph = (this.graphModel = mergeGraph(root, (n) => this.kids(n)));
      const incoming = new Map(graph.nodes.map((u) => [u.id, []]));
      for (const e of graph.edges) incoming.get(e.target).push(e);
      const { pos, rowOf, width, height, tops, band, depthMax } = graphLayout(graph.nodes, graph.edges, S);
      this.pos = pos;
      const svg = this.startCanvas(width, height);
      for (const e of graph.edges) {
        const tooltip = `${e.source} → ${e.target}: score ${fmt(e.score)} over ${e.paths} path${e.paths > 1 ? "s" : ""}, ` +
          `${pct(e.share)} of the evidence through ${e.source}`;
        this.addEdge(svg, curve(this.pos.get(e.source), this.pos.get(e.target), S), `${e.source}>${e.target}`, tooltip, e.share);
      }
      this.canvas.append(svg);
      for (const unit of graph.nodes) this.canvas.append(this.graphCard(unit, incoming.get(unit.id).length, this.pos.get(unit.id)));
      this.finishDraw(graph.nodes.map((u) => ({ node: u, depth: rowOf.get(u.depth) })), depthMax, tops, band);
    }

    // A unit's card in the graph: its picture is that of its strongest path (pictures are path-conditioned).
    graphCard(unit, parents, at) {
      const strongest = unit.copies.reduce((best, n) => ((n.score || 0) > (best.score || 0) ? n : best), unit.copies[0]);
      const hub = parents > 1;
      const extra = this.opt.cardClass ? this.opt.cardClass(strongest) : "";
      const box = el("div", {
        class: `ft-card${unit.depth === 0 ? " root" : ""}${hub ? " hub" : ""}${extra ? " " + extra : ""}`, "data-node": strongest.id, "data-unit": unit.id,
      });
      Object.assign(box.style, { left: `${at.left}px`, top: `${at.top}px`, height: `${at.height}px` });
      box.append(el("div", { class: "ft-title" }, el("span", { class: "ft-unit", title: unit.id }, unitText(strongest))));
      const sub = unit.depth === 0 ? this.subText(strongest)
        : `score ${fmt(unit.score)} · ${unit.paths.length} path${unit.paths.length > 1 ? "s" : ""}${unit.label ? " · " + unit.label : ""}`;
      box.append(el("div", { class: "ft-sub", title: `${sub}: the summed contribution to the root over every shown path through this unit` }, sub));
      const row = el("div", { class: "ft-verify" });
      if (hub) row.append(el("span", { class: "ft-badge hub", title: `${parents} shown parents feed on this unit` }, `hub · ${parents} parents`));
      box.append(row);
      const pic = el("div", {
        class: "ft-pic", title: `picture of its strongest path, ${strongest.id}`,
        onmouseenter: () => this.showZoom(strongest, pic), onmouseleave: () => this.hideZoom(),
      });
      const src = this.opt.picture ? this.opt.picture(strongest, this.view) : null;
      if (src) pic.append(el("img", { class: `ft-img${this.opt.tiny ? " tiny" : ""}`, alt: `${VIEW_LABELS[this.view] || this.view} of ${strongest.id}`, draggable: "false", src }));
      else if ((this.view === "rf_crop" || this.view === "rf_box") && strongest.box && this.opt.photo && this.opt.photo.src) {
        pic.append(this.boxView(strongest, this.view === "rf_crop", this.S.pic));
      } else pic.append(el("div", { class: "ft-nopic" }, "no picture"));
      box.append(pic);
      if (this.opt.buttons) {
        // The host's buttons act on the strongest path; removing one path of a merged unit would not remove the unit.
        const buttons = (this.opt.buttons(strongest) || []).filter((b) => b && b.dataset.action !== "remove");
        box.append(el("div", { class: "ft-buttons" }, ...buttons));
      }
      return box;
    }

    // Update the badge rows and picture overlays in place (no redraw: a hovered picture keeps its zoom).
    refresh(root) {
      if (this.graph) { this.draw(root); return; } // graph cards carry no per-edge badges to update
      this.root = root;
      const nodes = new Map();
      const parents = new Map();
      (function walk(n, parent) { nodes.set(n.id, n); parents.set(n.id, parent); for (const c of n.children || []) walk(c, n); })(root, null);
      for (const cardEl of this.canvas.querySelectorAll(".ft-card[data-node]")) {
        const node = nodes.get(cardEl.dataset.node);
        if (!node) continue;
        cardEl.querySelector(".ft-verify").replaceWith(this.verifyRow(node, parents.get(node.id)));
        cardEl.querySelector(".ft-effect")?.replaceWith(this.effectRow(node));
        const old = cardEl.querySelector(".ft-rest");
        const rest = this.restBadge(node);
        if (old && rest) old.replaceWith(rest);
      }
    }

    // Show a card as waiting for its children without redrawing the tree; false if it is not drawn.
    markLoading(id) {
      const cardEl = [...this.canvas.querySelectorAll(".ft-card[data-node]")].find((e) => e.dataset.node === id);
      if (!cardEl) return false;
      cardEl.classList.add("loading", "open");
      cardEl.setAttribute("aria-busy", "true");
      return true;
    }

    card(node, at, parent) {
      const kids = this.kids(node);
      const collapsed = this.collapsed.has(node.id) && (node.children || []).length > 0;
      const open = kids.length > 0 || Boolean(node.loading);
      const extra = this.opt.cardClass ? this.opt.cardClass(node) : "";
      const box = el("div", {
        class: `ft-card${node.depth === 0 ? " root" : ""}${open ? " open" : ""}${node.loading ? " loading" : ""}${collapsed ? " collapsed" : ""}${extra ? " " + extra : ""}`,
        "data-node": node.id, "aria-busy": node.loading ? "true" : null,
      });
      Object.assign(box.style, { left: `${at.left}px`, top: `${at.top}px`, height: `${at.height}px` });
      box.append(el("div", { class: "ft-title" }, el("span", { class: "ft-unit", title: node.id }, unitText(node))));
      const sub = this.subText(node);
      const share = node.depth === 0 || node.share === null || node.share === undefined ? null : pct(node.share);
      box.append(el("div", { class: "ft-sub", title: share ? `${share} · ${sub}` : sub },
        share ? el("span", { class: "ft-share" }, share) : null, share ? ` · ${sub}` : sub));
      box.append(this.verifyRow(node, parent));
      box.append(this.effectRow(node));
      box.append(this.picture(node, kids, collapsed));
      if (this.opt.buttons) box.append(el("div", { class: "ft-buttons" }, ...(this.opt.buttons(node) || [])));
      return box;
    }

    subText(node) {
      if (node.depth === 0) {
        const cls = node.label ? (this.opt.topClasses || []).find((c) => c.index === node.unit && c.name === node.label) : null;
        if (node.contrast != null) return `${node.label || "contrast"} · why the first rather than the second`;
        return node.label ? `${node.label}${cls ? ` · p=${cls.probability.toFixed(3)}` : ""}` : "root unit";
      }
      return `score ${fmt(node.score)}${node.label ? " · " + node.label : ""}`;
    }

    verifyRow(node, parent) {
      const row = el("div", { class: "ft-verify" });
      if (node.depth === 0) {
        // The root has no edge above it; its row shows what zeroing its shown children together does.
        const all = node.verification_all;
        if (all && (node.children || []).length) {
          const count = all.count || node.children.length;
          row.append(ablationBadge(all, node.total_positive, { what: `all ${count} shown children together`, whose: "this node's", label: `all ${count} zeroed` }));
        }
      } else if (node.verification) {
        row.append(ablationBadge(node.verification, parent ? parent.total_positive : null));
      } else if (node.verification_error) {
        row.append(el("span", { class: "ft-badge na", title: node.verification_error }, "ablation failed"));
      } else if (node.verification_pending) {
        row.append(el("span", { class: "ft-badge pending", title: "measuring this edge by ablation…" }, "ablation …"));
      }
      return row;
    }

    // What the unit does, in words: the classes whose logits fall most when it is zeroed on this image
    // (measured with its siblings' verification); at the root, the same for all shown children together.
    effectRow(node) {
      const check = node.depth === 0 ? node.verification_all : node.verification;
      const classes = (check && check.classes) || [];
      const row = el("div", { class: "ft-effect" });
      if (!classes.length) return row;
      const who = node.depth === 0 ? "zeroing the shown children together" : "zeroing this unit";
      // The relative drop of each class's probability (its ranking is that of the logit drops).
      // (A saturated class, p near 1, can lose much logit and little probability: "<1%".)
      const rel = (c) => { const d = 1 - c.probability_after / c.probability; return d < 0.005 ? "<1%" : `${(100 * d).toFixed(0)}%`; };
      row.title = `${who} on this image lowers ` + classes.map((c) => `${c.name} ${rel(c)} (logit ${fmt(c.logit)} → ${fmt(c.logit - c.drop)}, ` +
        `p ${pct(c.probability)} → ${pct(c.probability_after)})`).join("; ") + ": the classes whose logits fall most";
      row.append(el("span", { class: "ft-muted" }, "lowers "), classes.map((c) => `${c.name.split(",")[0]} ${rel(c)}`).join(", "));
      return row;
    }

    restBadge(node) {
      const kids = this.kids(node);
      if (!kids.length || node.coverage === null || node.coverage === undefined) return null;
      const rest = node.rest ? node.rest.share : Math.max(0, 1 - node.coverage);
      let title = `the shown children cover ${(100 * node.coverage).toFixed(1)}% of this node's positive contribution; ` +
        `the rest (${(100 * rest).toFixed(1)}%) comes from units not shown`;
      if (node.rest) title += ` (score ${fmt(node.rest.score)} of ${fmt(node.total_positive)}; negative contributors sum to ${fmt(node.rest.negative)})`;
      const all = node.verification_all;
      if (all) title += `. Zeroing all shown children together lowers the objective by ${fmt(all.parent_drop)} (estimate ${fmt(all.estimate)})`;
      const b = node.bypass;
      if (!b) return el("span", { class: "ft-rest", title }, `${kids.length} ▾ · rest ${(100 * rest).toFixed(0)}%`);
      // The chain does not cut here: shares and coverage are fractions of the part that passes the child layer.
      title = `${(100 * b.share).toFixed(1)}% of this node's first-order evidence goes around ${b.layer} ` +
        `(from ${b.source}, through ${b.kind}); the shares and the rest below are fractions of the other part. ` + title;
      return el("span", { class: "ft-rest bypass", title }, `${kids.length} ▾ · rest ${(100 * rest).toFixed(0)}% · around ${(100 * b.share).toFixed(0)}%`);
    }

    picture(node, kids, collapsed) {
      const view = this.view;
      const toggle = () => {
        if (this.opt.onPicture) { this.opt.onPicture(node); return; }
        if (!(node.children || []).length) return;
        if (this.collapsed.has(node.id)) this.collapsed.delete(node.id); else this.collapsed.add(node.id);
        this.draw(this.root);
      };
      const title = this.opt.pictureTitle ? this.opt.pictureTitle(node)
        : (node.children || []).length ? (collapsed ? "show the children" : "hide the children") : null;
      const pic = el("div", {
        class: "ft-pic", role: "button", tabindex: "0", title,
        onclick: toggle,
        onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); toggle(); } },
        onmouseenter: () => this.showZoom(node, pic), onmouseleave: () => this.hideZoom(),
      });
      const src = this.opt.picture ? this.opt.picture(node, view) : null;
      if (src) {
        pic.append(el("img", { class: `ft-img${this.opt.tiny ? " tiny" : ""}`, alt: `${VIEW_LABELS[view] || view} of ${node.id}`, draggable: "false", src }));
      } else if ((view === "rf_crop" || view === "rf_box") && node.box && this.opt.photo && this.opt.photo.src) {
        pic.append(this.boxView(node, view === "rf_crop", this.S.pic));
      } else {
        const why = view === "contribution" && this.unmappable(node.layer) ? "no map: no positions at this layer or below" : "no picture";
        pic.append(el("div", { class: "ft-nopic" }, why));
      }
      if (collapsed) pic.append(el("span", { class: "ft-rest" }, `+${node.children.length} hidden`));
      else {
        const rest = this.restBadge(node);
        if (rest) pic.append(rest);
      }
      const first = this.opt.chain && this.opt.chain.length && this.opt.chain[0].name === node.layer;
      if (node.error) pic.append(el("div", { class: "ft-note error" }, node.error));
      else if (node.leaf_reason && !kids.length) pic.append(el("div", { class: "ft-note" }, node.leaf_reason));
      else if (first && !kids.length) pic.append(el("div", { class: "ft-note" }, "first layer"));
      return pic;
    }

    // Whether a layer has no contribution map: a vector (a one-axis shape) with a vector or nothing below it.
    unmappable(layer) {
      const chain = this.opt.chain || [];
      const vector = (i) => i >= 0 && (chain[i].shape || []).length === 1;
      const i = chain.findIndex((c) => c.name === layer);
      return vector(i) && (i === 0 || vector(i - 1));
    }

    // Receptive-field views drawn from the photo and node.box: a zoomed crop, or the photo with the box.
    boxView(node, crop, size) {
      const [w, h] = this.opt.photo.size;
      const [l, t, r, b] = node.box;
      const wrap = el("div", { class: "ft-boxview", title: `receptive field ${l},${t} to ${r},${b}` });
      const img = el("img", { alt: `${crop ? "receptive field" : "box on photo"} of ${node.id}`, draggable: "false", src: this.opt.photo.src });
      if (this.opt.tiny) img.classList.add("tiny");
      if (crop) {
        const scale = size / Math.max(r - l, b - t, 1);
        img.style.cssText = `width:${w * scale}px;height:${h * scale}px;left:${-l * scale}px;top:${-t * scale}px`;
        wrap.append(img);
      } else {
        const scale = size / Math.max(w, h);
        const dx = (size - w * scale) / 2, dy = (size - h * scale) / 2;
        img.style.cssText = `width:${w * scale}px;height:${h * scale}px;left:${dx}px;top:${dy}px`;
        const frame = el("div", { class: "ft-frame" });
        frame.style.cssText = `left:${dx + l * scale}px;top:${dy + t * scale}px;width:${(r - l) * scale}px;height:${(b - t) * scale}px`;
        wrap.append(img, frame);
      }
      return wrap;
    }

    panelFor(node, panel, at, S) {
      const fig = el("figure", { class: "ft-pinned", "data-exemplars": node.id });
      Object.assign(fig.style, { left: `${at.left + S.cardW + S.gapX / 2}px`, top: `${at.top}px`, width: `${S.panelW}px`, height: `${at.height}px` });
      const img = el("img", { alt: panel.alt || `exemplars of ${node.layer}:${node.unit}`, draggable: "false" });
      img.addEventListener("error", async () => {
        // The host may know why (the explorer's server answers with a one-line JSON error).
        const why = panel.explain ? await panel.explain(img.src).catch(() => null) : null;
        fig.replaceChildren(el("div", { class: "ft-note error" }, why || "could not load this picture"));
      });
      img.addEventListener("load", () => { img.classList.toggle("tiny", img.naturalHeight < img.clientHeight); });
      img.src = panel.src;
      fig.append(
        el("figcaption", {},
          el("span", {}, `${node.layer}:${node.unit}`), el("span", { class: "ft-muted" }, " " + (panel.caption || "top images | reconstructions")),
          panel.onClose ? el("button", { type: "button", class: "ft-close", title: "unpin", "data-action": "unpin", onclick: panel.onClose }, "✕") : null),
        img);
      return fig;
    }

    // ----- hover zoom ----------------------------------------------------------------------
    showZoom(node, pic) {
      const zoom = this.zoom;
      const size = Math.round(Math.min(520, window.innerHeight * 0.62, window.innerWidth * 0.4));
      const r = pic.closest(".ft-card").getBoundingClientRect();
      if (size < 1.5 * r.width) return; // zoomed in far enough already
      let left = r.right + 12;
      if (left + size > window.innerWidth - 8) left = Math.max(8, r.left - size - 12);
      const top = Math.min(Math.max(8, r.top), window.innerHeight - size - 8);
      Object.assign(zoom.style, { left: `${left}px`, top: `${top}px`, width: `${size}px`, height: `${size}px` });
      const img = pic.querySelector("img.ft-img");
      if (img) zoom.replaceChildren(el("img", { class: this.opt.tiny ? "tiny" : "", alt: img.alt, src: img.src }));
      else if (pic.querySelector(".ft-boxview")) zoom.replaceChildren(this.boxView(node, this.view === "rf_crop", size - 8));
      else return;
      zoom.hidden = false;
    }

    hideZoom() { this.zoom.hidden = true; }

    // ----- zoom, pan, fit --------------------------------------------------------------------
    viewport() {
      if (!this._dims) this._dims = { W: this.host.clientWidth, H: this.host.clientHeight };
      if (!this._barH && !this.bar.hidden) this._barH = this.bar.offsetHeight;
      const { W, H } = this._dims;
      const left = this.S ? this.S.gutter : 0; // the row labels' strip
      // The zoom buttons sit in the bottom-right corner: a fitted tree stays above them.
      const bar = this.bar.hidden ? 0 : (this._barH || 0) + 10;
      return { W, H, left, w: Math.max(40, W - left - 2 * MARGIN), h: Math.max(40, H - 2 * MARGIN - bar) };
    }

    fitScale(size = this.size) {
      const v = this.viewport();
      return Math.min(1, v.w / size.width, v.h / size.height);
    }

    fit() {
      this.auto = true;
      const v = this.viewport();
      this.s = this.fitScale();
      this.tx = v.left + MARGIN + Math.max(0, (v.w - this.size.width * this.s) / 2);
      this.ty = MARGIN;
      this.apply();
    }

    setTransform(s, tx, ty) {
      this.auto = false;
      this.s = s; this.tx = tx; this.ty = ty;
      this.apply();
    }

    zoomAt(factor, cx, cy) {
      const min = Math.min(0.5 * this.fitScale(), 0.25);
      const s = Math.min(MAX_SCALE, Math.max(min, this.s * factor));
      this.setTransform(s, cx - ((cx - this.tx) * s) / this.s, cy - ((cy - this.ty) * s) / this.s);
    }

    zoomBy(factor) {
      const v = this.viewport();
      this.zoomAt(factor, v.left + (v.W - v.left) / 2, v.H / 2);
    }

    // Pan (and zoom out if needed) so that the given nodes' cards are all on screen.
    reveal(ids) {
      const boxes = ids.map((id) => this.pos.get(id)).filter(Boolean);
      if (!boxes.length || this.auto) return;
      const x0 = Math.min(...boxes.map((b) => b.left)), y0 = Math.min(...boxes.map((b) => b.top));
      const x1 = Math.max(...boxes.map((b) => b.left + b.width)), y1 = Math.max(...boxes.map((b) => b.top + b.height));
      const v = this.viewport();
      const s = Math.min(this.s, v.w / (x1 - x0), v.h / (y1 - y0));
      const lo = { x: v.left + MARGIN, y: MARGIN }, hi = { x: v.W - MARGIN, y: MARGIN + v.h };
      let tx = this.tx, ty = this.ty;
      if (s !== this.s) { // zoom out around the boxes' centre
        const cx = this.tx + ((x0 + x1) / 2) * this.s, cy = this.ty + ((y0 + y1) / 2) * this.s;
        tx = cx - ((cx - this.tx) * s) / this.s;
        ty = cy - ((cy - this.ty) * s) / this.s;
      }
      if (tx + x0 * s < lo.x) tx = lo.x - x0 * s; else if (tx + x1 * s > hi.x) tx = hi.x - x1 * s;
      if (ty + y0 * s < lo.y) ty = lo.y - y0 * s; else if (ty + y1 * s > hi.y) ty = hi.y - y1 * s;
      if (s !== this.s || tx !== this.tx || ty !== this.ty) this.setTransform(s, tx, ty);
    }

    apply() {
      // Keep some of the tree on screen whatever the pan.
      const v = this.viewport();
      const keep = 60;
      const w = this.size.width * this.s, h = this.size.height * this.s;
      this.tx = Math.min(v.W - keep, Math.max(keep - w, this.tx));
      this.ty = Math.min(v.H - keep, Math.max(keep - h, this.ty));
      this.canvas.style.transform = `translate(${this.tx}px, ${this.ty}px) scale(${this.s})`;
      this.host.dataset.scale = this.s.toFixed(4);
      this.host.dataset.fitted = String(this.auto);
      this.scaleText.textContent = `${Math.round(100 * this.s)}%`;
      if (this._lastEdgeScale !== this.s) {
        // Edge widths in screen pixels: proportional to the share, never thinner than one pixel, and
        // past 150 % no longer growing with the zoom.
        const k = Math.min(this.s, 1.5);
        for (const [path, w] of this.edges || []) path.style.strokeWidth = `${Math.max(1, w * k)}px`;
        this._lastEdgeScale = this.s;
      }
      if (!this.S) return;
      const line = this.S.rem * 1.25;
      const shown = [];
      for (const [label, top, band] of this.rowLabels || []) {
        const y = this.ty + top * this.s, hgt = band * this.s;
        label.hidden = y > v.H || y + Math.max(line, hgt) < 0;
        if (label.hidden) continue;
        label.style.maxHeight = `${Math.max(line, hgt)}px`;
        label.classList.toggle("short", hgt < 2.6 * line);
        shown.push([label, y, hgt]);
      }
      // Each label stays at the top of the stage while its row is partly scrolled off above (its height,
      // which costs a layout to read, is needed only then).
      const above = shown.filter(([, y]) => y < 0).map(([label]) => [label, label.offsetHeight]);
      for (const [label, y, hgt] of shown) {
        const h = y < 0 ? above.find(([l]) => l === label)[1] : 0;
        label.style.top = `${y < 0 ? Math.min(0, y + hgt - h) : y}px`;
      }
    }

    _bindGestures() {
      const host = this.host;
      const interactive = (t) => t.closest("button, a, input, select, textarea, label");
      host.addEventListener("wheel", (e) => {
        e.preventDefault();
        const r = host.getBoundingClientRect();
        const unit = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? host.clientHeight : 1;
        const dx = e.deltaX * unit, dy = e.deltaY * unit;
        if (!e.ctrlKey && (e.shiftKey || Math.abs(dx) > Math.abs(dy))) {
          // A horizontal trackpad swipe or shift + wheel pans sideways.
          this.setTransform(this.s, this.tx - (e.shiftKey && !dx ? dy : dx), this.ty);
          return;
        }
        // Wheel, or a pinch (which the browser sends as ctrl + wheel): zoom around the pointer.
        this.zoomAt(Math.exp(-dy * (e.ctrlKey ? 0.01 : 0.0015)), e.clientX - r.left, e.clientY - r.top);
      }, { passive: false });

      const pointers = new Map();
      let drag = null, pinch = null;
      host.addEventListener("pointerdown", (e) => {
        if ((e.pointerType === "mouse" && e.button !== 0) || interactive(e.target)) return;
        pointers.set(e.pointerId, { x: e.clientX, y: e.clientY });
        if (pointers.size === 1) drag = { id: e.pointerId, x: e.clientX, y: e.clientY, tx: this.tx, ty: this.ty, moved: false };
        else if (pointers.size === 2) {
          const [a, b] = [...pointers.values()];
          pinch = { d: Math.hypot(a.x - b.x, a.y - b.y) || 1, mx: (a.x + b.x) / 2, my: (a.y + b.y) / 2 };
          drag = null;
        }
      });
      host.addEventListener("pointermove", (e) => {
        if (!pointers.has(e.pointerId)) return;
        pointers.set(e.pointerId, { x: e.clientX, y: e.clientY });
        if (pinch && pointers.size === 2) {
          const [a, b] = [...pointers.values()];
          const d = Math.hypot(a.x - b.x, a.y - b.y) || 1, mx = (a.x + b.x) / 2, my = (a.y + b.y) / 2;
          const r = host.getBoundingClientRect();
          this.setTransform(this.s, this.tx + mx - pinch.mx, this.ty + my - pinch.my);
          this.zoomAt(d / pinch.d, mx - r.left, my - r.top);
          pinch = { d, mx, my };
        } else if (drag && drag.id === e.pointerId) {
          const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
          if (!drag.moved && Math.hypot(dx, dy) < 5) return;
          if (!drag.moved) {
            drag.moved = true;
            this.hideZoom();
            host.setPointerCapture(e.pointerId);
            host.classList.add("ft-panning");
          }
          this.setTransform(this.s, drag.tx + dx, drag.ty + dy);
        }
      });
      const end = (e) => {
        if (!pointers.has(e.pointerId)) return;
        pointers.delete(e.pointerId);
        if (pointers.size < 2) pinch = null;
        if (drag && drag.id === e.pointerId) {
          if (drag.moved) {
            // A drag is not a click on whatever it started on.
            const swallow = (c) => { c.stopPropagation(); c.preventDefault(); };
            window.addEventListener("click", swallow, { capture: true, once: true });
            setTimeout(() => window.removeEventListener("click", swallow, { capture: true }), 0);
          }
          host.classList.remove("ft-panning");
          drag = null;
        }
      };
      host.addEventListener("pointerup", end);
      host.addEventListener("pointercancel", end);
    }

    _bindKeys() {
      document.addEventListener("keydown", (e) => {
        // Not while hidden: a page may keep a second view in the DOM (the explorer's class graph).
        if (e.ctrlKey || e.metaKey || e.altKey || !this.root || !this.host.getClientRects().length) return;
        if (e.target.closest && e.target.closest("input, select, textarea")) return;
        const step = 80;
        const act = {
          f: () => this.fit(),
          "+": () => this.zoomBy(1.25), "=": () => this.zoomBy(1.25),
          "-": () => this.zoomBy(1 / 1.25), "0": () => this.zoomBy(1 / this.s),
          ArrowLeft: () => this.setTransform(this.s, this.tx + step, this.ty),
          ArrowRight: () => this.setTransform(this.s, this.tx - step, this.ty),
          ArrowUp: () => this.setTransform(this.s, this.tx, this.ty + step),
          ArrowDown: () => this.setTransform(this.s, this.tx, this.ty - step),
          Escape: () => this.hideZoom(),
        }[e.key];
        if (!act) return;
        e.preventDefault();
        act();
      });
    }
  }

  window.FeatureTreeView = Object.assign(window.FeatureTreeView || {}, {
    TreeView, VIEWS, VIEW_LABELS, DEFAULT_VIEW, el, fmt, pct, ablationBadge, mergeGraph, completeness, curve, graphLayout,
  });
})();
