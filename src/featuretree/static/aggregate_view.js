// featuretree's one class-graph renderer: the graphs of `featuretree aggregate` (graph.json), drawn the
// same way in graph.html (which inlines this file after tree_view.js) and in the explorer's class-graph
// mode (served as /static/aggregate_view.js). It builds on the tree renderer: its layout of merged graphs,
// edges, row labels, hover zoom and zoom / pan / fit. Plain script, no dependencies, works from file://.
//
// A graph (graph.json's graphs[i]) has root, label, images (n), layers [{name, channels, units_per_image,
// chance}], nodes [{id, layer, unit, label, depth, images, frequency, mean_share, mean_score, chance,
// p_value}] and edges [{source, target, images, frequency, mean_score, mean_share, stable, chance, p_value}].
// Here an edge is stable when its frequency reaches the threshold control (graph.json's `stable` is the
// same test at settings.stable), so moving the control re-marks the edges without the server.
(function () {
  "use strict";
  const { TreeView, el, fmt, pct, curve, graphLayout } = window.FeatureTreeView;
  const DEFAULT_UNITS = 60; // the default minimum image count shows at most this many units
  const THUMBS = 3; // pictures per card

  // A share as a percentage with up to two significant decimals below 1 % (chance rates are small).
  function rate(x) {
    if (x === null || x === undefined) return "—";
    const p = 100 * x;
    return p === 0 ? "0%" : p < 0.1 ? `${p.toPrecision(1)}%` : p < 1 ? `${p.toFixed(2)}%` : `${p.toFixed(p < 10 ? 1 : 0)}%`;
  }

  // What is drawn at a minimum image count and a stability threshold: units seen in at least `min` images
  // (the root always), edges seen in at least `min` images between drawn units, each marked stable or not.
  function visibleGraph(graph, min, stable) {
    const nodes = graph.nodes.filter((n) => n.depth === 0 || n.images >= min);
    const shown = new Set(nodes.map((n) => n.id));
    const edges = graph.edges
      .filter((e) => e.images >= min && shown.has(e.source) && shown.has(e.target))
      .map((e) => ({ ...e, stable: e.frequency >= stable }));
    return { nodes, edges };
  }

  // The smallest image count at which at most DEFAULT_UNITS units are drawn (1 for small graphs), but never
  // one that empties a level: the most frequent unit of every depth stays.
  function defaultMin(graph) {
    const top = new Map(), count = new Array(graph.images + 2).fill(0);
    for (const n of graph.nodes) {
      top.set(n.depth, Math.max(top.get(n.depth) || 0, n.images));
      if (n.depth > 0) count[Math.min(n.images, graph.images)] += 1;
    }
    const keepsRows = Math.max(1, Math.min(...top.values()));
    let shown = graph.nodes.length; // units drawn at m = 1; each step drops those seen in m - 1 images
    for (let m = 1; m < keepsRows; m++) {
      if (shown <= DEFAULT_UNITS) return m;
      shown -= count[m];
    }
    return keepsRows;
  }

  // The canvas: a TreeView whose cards are class-graph units.
  class ClassGraphCanvas extends TreeView {
    metrics() {
      const base = super.metrics();
      const thumb = Math.round(base.pic * 0.5);
      const cardW = THUMBS * thumb + (THUMBS - 1) * 3 + 14;
      const cardH = Math.round(base.rem * 4.6) + 7 + thumb + 18; // title, two lines, frequency bar, pictures
      return { ...base, thumb, cardW, cardH, gapX: Math.round(base.pic * 0.12), rowH: cardH + Math.round(base.pic * 0.5) };
    }

    rowText(layer) {
      const info = (this.opt.layers || []).find((l) => l.name === layer);
      if (!info) return null;
      // The root's layer has no chance rate: the root is given, not found.
      return layer === this.opt.rootLayer ? `${info.channels} units` : `${info.channels} units · ${fmt(info.units_per_image)} per tree · chance ${rate(info.chance)}`;
    }

    // Draw the visible part of a graph; perLine is picked so that the drawing fits the stage largest.
    drawClass(graph, view, selected) {
      this.hideZoom();
      this.root = graph;
      this.message.hidden = true;
      this.bar.hidden = false;
      const S = (this.S = this.metrics());
      const order = new Map(graph.nodes.map((n, i) => [n.id, i]));
      const options = { weight: (e) => e.images * (e.mean_share || 1e-6), tiebreak: (a, b) => order.get(a.id) - order.get(b.id) };
      // Units per line: from one line per row down to six lines for the longest row; the fewest lines win a tie.
      const counts = new Map();
      for (const n of view.nodes) counts.set(n.depth, (counts.get(n.depth) || 0) + 1);
      const longest = Math.max(1, ...counts.values());
      let best = null;
      for (let per = longest; per >= Math.max(1, Math.ceil(longest / 6)); per = Math.min(per - 1, Math.floor(per / 1.15))) {
        const layout = graphLayout(view.nodes, view.edges, S, { ...options, perLine: per });
        const scale = this.fitScale(layout);
        if (!best || scale > best.scale * 1.02) best = { layout, scale };
      }
      const { pos, rowOf, width, height, tops, band, depthMax } = best.layout;
      this.pos = pos;
      const svg = this.startCanvas(width, height);
      const n = graph.images;
      for (const e of view.edges) {
        const tooltip = `${e.source} → ${e.target}: in ${e.images} of ${n} images (${rate(e.frequency)}), ` +
          `mean share ${pct(e.mean_share)} of the evidence through ${e.source}, mean score ${fmt(e.mean_score)}; ` +
          `a random unit of its layer would be a child of ${e.source} in ${rate(e.chance)} of the trees (p ${fmt(e.p_value)})`;
        const path = this.addEdge(svg, curve(pos.get(e.source), pos.get(e.target), S), `${e.source}>${e.target}`, tooltip, 0, 0.75 + 4.5 * e.frequency);
        path.setAttribute("class", e.stable ? "fa-stable" : "fa-weak");
        path.dataset.stable = String(e.stable);
        path.dataset.images = String(e.images);
      }
      this.canvas.append(svg);
      for (const node of view.nodes) this.canvas.append(this.classCard(graph, node, pos.get(node.id), node.id === selected));
      this.finishDraw(view.nodes.map((u) => ({ node: u, depth: rowOf.get(u.depth) })), depthMax, tops, band);
    }

    classCard(graph, node, at, selected) {
      const S = this.S, n = graph.images, root = node.depth === 0;
      const box = el("div", {
        class: `ft-card fa-card${root ? " root" : ""}${selected ? " fa-selected" : ""}`, "data-unit": node.id, "data-images": String(node.images),
        role: "button", tabindex: "0", "aria-pressed": String(selected),
        title: `${node.id}: click for its statistics and images`,
        onclick: () => this.opt.onSelect(node.id),
        onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); this.opt.onSelect(node.id); } },
      });
      Object.assign(box.style, { left: `${at.left}px`, top: `${at.top}px`, width: `${S.cardW}px`, height: `${at.height}px` });
      box.append(el("div", { class: "ft-title" },
        el("span", { class: "ft-unit", title: node.id }, root && node.label ? node.label : node.id),
        el("span", { class: "fa-freq", title: `in ${node.images} of the ${n} images' trees` }, rate(node.frequency))));
      const bar = el("div", { class: "fa-bar-freq", title: `in ${rate(node.frequency)} of the trees; a random unit of ${node.layer}: ${rate(node.chance)}` });
      const fill = el("span", { class: "fa-fill" });
      fill.style.width = `${100 * node.frequency}%`;
      bar.append(fill);
      if (node.chance != null) {
        const tick = el("span", { class: "fa-chance-tick" });
        tick.style.left = `${Math.min(100, 100 * node.chance)}%`;
        bar.append(tick);
      }
      box.append(bar);
      box.append(el("div", { class: "ft-sub" }, root ? `${node.id} · the root` : `in ${node.images}/${n} images · share ${rate(node.mean_share)}`));
      box.append(el("div", { class: "ft-sub fa-chance", title: "how often a random unit of this layer appears in these trees, and the chance of appearing this often at that rate" },
        root ? `${n} images` : `chance ${rate(node.chance)} · p ${fmt(node.p_value)}`));
      const thumbs = el("div", { class: "fa-thumbs" });
      const items = (this.opt.thumbs ? this.opt.thumbs(graph.root, node) : []).slice(0, THUMBS);
      for (const item of items) {
        const pic = el("div", { class: "fa-thumb", title: `${item.image}: share ${pct(item.share)}` });
        pic.style.width = pic.style.height = `${S.thumb}px`;
        if (item.src) {
          pic.append(el("img", { class: "ft-img", alt: `${node.id} on ${item.image}`, draggable: "false", src: item.src, loading: "lazy" }));
          if (this.opt.zoom !== false) {
            pic.addEventListener("mouseenter", () => this.showZoom(node, pic));
            pic.addEventListener("mouseleave", () => this.hideZoom());
          }
        } else pic.append(el("div", { class: "ft-nopic" }, item.error || "no picture"));
        thumbs.append(pic);
      }
      if (!items.length) thumbs.append(el("div", { class: "fa-none" }, this.opt.noThumbs || "no pictures"));
      box.append(thumbs);
      return box;
    }
  }

  // The whole view: controls (root picker, stability threshold, minimum image count, legend), the canvas and
  // a side panel for the selected unit.
  // options:
  //   state: {root, stable, min, unit} to start from (missing: the first graph, graph.json's stable, automatic min)
  //   onState(state): after every change (the explorer writes it to the URL)
  //   thumbs(root, node) -> [{image, share, src, error}] for the card (up to 3)
  //   images(root, node, offset) -> Promise<{total, items: [{image, share, depth, node, src, error}]}>: the side panel's list
  //   imageActions(root, node, item) -> [elements] beside each listed image (the explorer's "open image tree")
  //   noThumbs: the card's text when thumbs gives none; zoom: hover zoom on the pictures (default true)
  //   caption: a line above the controls (the explorer says which folder and settings)
  class AggregateView {
    constructor(host, data, options = {}) {
      this.data = data;
      this.opt = options;
      const start = options.state || {};
      this.graph = data.graphs.find((g) => g.root === start.root) || data.graphs[0];
      this.state = { root: this.graph ? this.graph.root : null, stable: null, min: null, unit: null };
      this.setStable(start.stable);
      this.state.min = start.min > 0 ? Math.round(start.min) : null;
      host.classList.add("fa-view");
      host.replaceChildren();
      this.host = host;
      this.bar = el("div", { class: "fa-bar", role: "group", "aria-label": "class graph controls" });
      this.stage = el("div", { class: "fa-stage" });
      this.panel = el("aside", { class: "fa-panel", hidden: true, "aria-label": "the selected unit" });
      if (options.caption) host.append(el("div", { class: "fa-caption" }, options.caption));
      host.append(this.bar, el("div", { class: "fa-body" }, this.stage, this.panel));
      this.canvas = new ClassGraphCanvas(this.stage, {
        keys: options.keys !== false, zoom: options.zoom, thumbs: options.thumbs, noThumbs: options.noThumbs,
        onSelect: (unit) => this.select(unit === this.state.unit ? null : unit),
      });
      this.buildControls();
      if (!this.graph) { this.canvas.showMessage("No images were aggregated: graph.json has no graph."); return; }
      this.state.unit = this.graph.nodes.some((n) => n.id === start.unit) ? start.unit : null;
      let width = window.innerWidth, timer = 0;
      window.addEventListener("resize", () => {
        clearTimeout(timer);
        timer = setTimeout(() => { if (window.innerWidth !== width) { width = window.innerWidth; this.draw(); } }, 120);
      });
      this.draw();
      this.showPanel();
    }

    setStable(value) {
      const v = parseFloat(value);
      this.state.stable = v > 0 && v <= 1 ? v : (this.data.settings && this.data.settings.stable) || 0.5;
    }

    min() { return this.state.min ?? defaultMin(this.graph); }

    buildControls() {
      const data = this.data;
      this.rootSelect = el("select", { "data-control": "root", "aria-label": "class graph" },
        ...data.graphs.map((g) => el("option", { value: g.root }, `${g.label ? `${g.label} (${g.root})` : g.root} · ${g.images} image${g.images === 1 ? "" : "s"}`)));
      this.rootSelect.value = this.state.root;
      this.rootSelect.addEventListener("change", () => this.setRoot(this.rootSelect.value));
      const rootField = el("label", { class: "fa-field", hidden: data.graphs.length < 2 }, "class ", this.rootSelect);
      this.stableInput = el("input", { type: "range", min: "0.05", max: "1", step: "0.05", "data-control": "stable", "aria-label": "stability threshold" });
      this.stableText = el("output", { class: "fa-value" });
      this.stableInput.addEventListener("input", () => { this.setStable(this.stableInput.value); this.draw(); this.changed(); });
      this.minInput = el("input", { type: "number", min: "1", step: "1", "data-control": "min", "aria-label": "minimum images" });
      this.minInput.addEventListener("change", () => {
        const m = parseInt(this.minInput.value, 10);
        this.state.min = m >= 1 ? Math.min(m, this.graph.images) : null;
        this.draw();
        this.showPanel();
        this.changed();
      });
      this.count = el("span", { class: "fa-count", role: "status" });
      const line = (cls) => {
        const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
        svg.setAttribute("width", "30"); svg.setAttribute("height", "10"); svg.setAttribute("class", `fa-key ${cls}`);
        const p = document.createElementNS("http://www.w3.org/2000/svg", "path");
        p.setAttribute("d", "M1,5 H29");
        svg.append(p);
        return svg;
      };
      this.legendText = el("span", {});
      const legend = el("span", { class: "fa-legend", title: "edge width: in how many images the edge appears; the bar on each card: in how many " +
        "images the unit appears, the tick: how often a random unit of its layer would" },
        line("fa-stable"), this.legendText, line("fa-weak"), " less often ",
        el("span", { class: "fa-bar-freq fa-key-bar" }, el("span", { class: "fa-fill" }), el("span", { class: "fa-chance-tick" })),
        " images vs chance");
      this.bar.append(rootField,
        el("label", { class: "fa-field", title: "mark edges that appear in at least this share of the images as stable" }, "stable ≥ ", this.stableInput, this.stableText),
        el("label", { class: "fa-field", title: "hide units and edges seen in fewer images" }, "min images ", this.minInput),
        this.count, legend);
    }

    changed() { if (this.opt.onState) this.opt.onState({ ...this.state }); }

    setRoot(root) {
      const graph = this.data.graphs.find((g) => g.root === root);
      if (!graph || graph === this.graph) return;
      this.graph = graph;
      this.state.root = root;
      this.state.min = null; // each class its own automatic count
      if (!graph.nodes.some((n) => n.id === this.state.unit)) this.state.unit = null;
      this.canvas.auto = true;
      this.draw();
      this.showPanel();
      this.changed();
    }

    select(unit) {
      this.canvas.hideZoom();
      this.state.unit = unit;
      for (const card of this.canvas.canvas.querySelectorAll(".fa-card")) {
        const on = card.dataset.unit === unit;
        card.classList.toggle("fa-selected", on);
        card.setAttribute("aria-pressed", String(on));
      }
      this.showPanel();
      this.changed();
      if (unit) this.canvas.reveal([unit]);
    }

    draw() {
      const g = this.graph, min = this.min(), stable = this.state.stable;
      this.rootSelect.value = g.root;
      this.stableInput.value = String(stable);
      this.stableText.textContent = `${Math.round(100 * stable)}%`;
      this.minInput.max = String(g.images);
      this.minInput.value = String(min);
      this.legendText.textContent = ` stable: in ≥ ${Math.round(100 * stable)}% `;
      const view = (this.view = visibleGraph(g, min, stable));
      this.canvas.opt.layers = g.layers;
      this.canvas.opt.rootLayer = (g.nodes.find((n) => n.depth === 0) || {}).layer;
      this.canvas.drawClass(g, view, this.state.unit);
      const stableCount = view.edges.filter((e) => e.stable).length;
      this.count.textContent = `${view.nodes.length} of ${g.nodes.length} units · ${view.edges.length} of ${g.edges.length} edges` +
        `${min > 1 ? ` (seen in ≥ ${min} images)` : ""} · ${stableCount} stable`;
      Object.assign(this.host.dataset, { root: g.root, units: String(view.nodes.length), edges: String(view.edges.length), stableEdges: String(stableCount), min: String(min) });
    }

    showPanel() {
      const g = this.graph, unit = this.state.unit;
      const node = unit && g.nodes.find((n) => n.id === unit);
      this.panel.hidden = !node;
      this.panel.replaceChildren();
      if (!node) { delete this.panel.dataset.unit; return; }
      this.panel.dataset.unit = node.id;
      const n = g.images;
      const close = el("button", { type: "button", class: "fa-close", title: "close", "data-action": "close", onclick: () => this.select(null) }, "✕");
      this.panel.append(el("header", {}, el("strong", {}, node.id), node.label ? el("span", { class: "ft-muted" }, ` ${node.label}`) : null, close));
      const rows = [
        ["images", `${node.images} of ${n} (${rate(node.frequency)})`, "in how many of the images' trees this unit appears"],
        ["mean share", rate(node.mean_share), "its share of the root's positive evidence, averaged over the images that show it"],
        ["mean score", node.mean_score == null ? "—" : fmt(node.mean_score), "its summed contribution to the root, averaged over those images"],
        ["chance", node.chance == null ? "—" : rate(node.chance), `how often a random unit of ${node.layer} appears in these trees`],
        ["p-value", node.p_value == null ? "—" : fmt(node.p_value), "the chance of appearing in at least this many images at the chance rate (binomial)"],
        ["depth", String(node.depth), "its shallowest level below the root"],
      ];
      this.panel.append(el("table", { class: "fa-stats" }, ...rows.map(([k, v, why]) => el("tr", { title: why, "data-stat": k }, el("th", {}, k), el("td", {}, v)))));
      const links = (list, other, word) => {
        if (!list.length) return null;
        return el("div", { class: "fa-links" }, el("span", { class: "ft-muted" }, word), ...list.slice(0, 8).map((e) => el("button", {
          type: "button", class: `fa-link${e.frequency >= this.state.stable ? " stable" : ""}`, "data-unit": e[other],
          title: `in ${e.images} of ${n} images, mean share ${pct(e.mean_share)}`, onclick: () => this.select(e[other]),
        }, `${e[other]} · ${e.images}/${n}`)), list.length > 8 ? el("span", { class: "ft-muted" }, ` +${list.length - 8}`) : null);
      };
      const byImages = (a, b) => b.images - a.images || b.mean_share - a.mean_share;
      this.panel.append(...[
        links(g.edges.filter((e) => e.target === node.id).sort(byImages), "source", "from "),
        links(g.edges.filter((e) => e.source === node.id).sort(byImages), "target", "to "),
      ].filter(Boolean));
      const list = el("ol", { class: "fa-images" });
      const more = el("button", { type: "button", class: "fa-more", "data-action": "more", hidden: true }, "more images");
      const note = el("div", { class: "fa-note ft-muted" });
      this.panel.append(el("h3", {}, "Images where it appears, largest share first"), list, note, more);
      if (!this.opt.images) { note.textContent = "no image list in this page"; return; }
      const load = (offset) => {
        more.hidden = true;
        note.textContent = "loading…";
        this.panel.dataset.loading = "true";
        this.opt.images(g.root, node, offset).then((page) => {
          if (this.state.unit !== node.id || this.graph !== g) return; // another unit was picked meanwhile
          for (const item of page.items) list.append(this.imageItem(g, node, item));
          const shown = list.children.length;
          note.textContent = shown < page.total ? `${shown} of ${page.total} images${page.more ? "" : ` (${page.why || "the rest are not in this page"})`}` : `${page.total} image${page.total === 1 ? "" : "s"}`;
          more.hidden = !(page.more && shown < page.total);
          more.onclick = () => load(shown);
          this.panel.dataset.loading = "false";
        }, (err) => { note.textContent = err.message || String(err); this.panel.dataset.loading = "false"; });
      };
      load(0);
    }

    imageItem(g, node, item) {
      const pic = item.src ? el("img", { alt: `${node.id} on ${item.image}`, src: item.src, loading: "lazy" })
        : el("div", { class: "ft-nopic" }, item.error || "no picture");
      const actions = this.opt.imageActions ? this.opt.imageActions(g.root, node, item) : [];
      return el("li", { class: "fa-image", "data-image": item.image },
        el("div", { class: "fa-image-pic" }, pic),
        el("div", { class: "fa-image-text" },
          el("div", { class: "fa-image-name", title: item.image }, item.image),
          el("div", { class: "ft-muted" }, `share ${pct(item.share)} · depth ${item.depth}`),
          actions.length ? el("div", { class: "fa-image-actions" }, ...actions) : null));
    }
  }

  // graph.html: a header, then the view; the side panel lists each unit's images from the page's own data.
  function renderAggregatePage(root, data, pictures) {
    const units = (pictures && pictures.units) || {};
    const model = data.model || {}, s = data.settings || {};
    const one = data.graphs.length === 1 ? data.graphs[0] : null;
    // --class N roots every tree at N whatever the image shows; --predicted at each image's own top class.
    const fixed = String(s.root || "").startsWith("class:");
    const title = one && one.label
      ? (fixed ? `What drives ${model.spec}'s “${one.label}” across these images?` : `Why does ${model.spec} call these images “${one.label}”?`)
      : `What ${model.spec} relies on, class by class`;
    const head = el("header", { class: "fa-head" },
      el("h1", {}, title),
      el("div", { class: "fa-meta" },
        `${data.images.ok} image${data.images.ok === 1 ? "" : "s"} from ${data.folder}${data.images.skipped ? ` (${data.images.skipped} skipped)` : ""}` +
        ` · root ${s.root} · depth ${s.depth} · k ${s.k} · rule ${s.rule}. Each card is a unit that appears in these images' trees: ` +
        "in how many (n/N), its mean share of the class's evidence, and how often a random unit of its layer would appear (chance). " +
        `Pictures: the unit's ${pictures ? pictures.view : "contribution"} map on the images where its share is largest. ` +
        "Click a card for its statistics and images; wheel or pinch zooms, drag pans, f fits."));
    const host = el("div", { class: "fa-host" });
    root.replaceChildren(el("div", { class: "fa-page" }, head, host));
    const listed = (graphRoot, node) => (units[graphRoot] && units[graphRoot][node.id]) || null;
    return new AggregateView(host, data, {
      zoom: false, // the page's pictures are thumbnails
      noThumbs: pictures ? "no pictures in this page (only the most frequent units have them)" : "no pictures (graph.html written without a model)",
      thumbs: (graphRoot, node) => (listed(graphRoot, node) || []).filter((item) => item.src || item.error).slice(0, THUMBS),
      images: (graphRoot, node) => {
        // Only the first images of each unit have their picture in this page; the rest are listed by name.
        const items = (listed(graphRoot, node) || []).map((item) => (item.src || item.error ? item : { ...item, error: "picture not in this page" }));
        return Promise.resolve({ total: node.images, items, more: false, why: "open the aggregate in `featuretree serve --aggregate DIR` for all of them" });
      },
    });
  }

  Object.assign(window.FeatureTreeView, { AggregateView, renderAggregatePage, visibleGraph, defaultMin, rate });
})();
