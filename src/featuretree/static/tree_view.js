// Renders a featuretree tree.json (version 1) as rows of node cards, root at the top.
// Used by the self-contained HTML export; no dependencies, works from file://.
(function () {
  "use strict";
  const VIEWS = [
    ["guided", "guided backprop"],
    ["guided_original", "original look"],
    ["heatmap", "heatmap"],
    ["rf_crop", "receptive field"],
    ["rf_box", "box on photo"],
  ];
  const CARD = 168, GAP = 14, ROW = 262, LEFT = 34;

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fmt(x, digits) {
    if (x === null || x === undefined) return "";
    const a = Math.abs(x);
    if (a !== 0 && (a < 1e-3 || a >= 1e4)) return x.toExponential(2);
    return x.toFixed(digits === undefined ? 3 : digits);
  }

  function render(root, tree, images) {
    let view = "heatmap"; // the most discriminative view; guided images of deep nodes look alike
    const collapsed = new Set();
    root.innerHTML = "";
    const head = el("header", { class: "ft-head" });
    const photo = el("img", { class: "photo", alt: "model input" });
    photo.src = images["photo"] || "";
    head.appendChild(photo);
    const info = el("div");
    const top = tree.top_classes[0];
    info.appendChild(el("h1", {}, `Why ${top ? "“" + top.name + "”" : "this"}? ${tree.model.name} on ${tree.image.source}`));
    const table = el("table", { class: "top5" });
    for (const c of tree.top_classes) {
      const tr = el("tr");
      tr.appendChild(el("td", {}, `${c.index}`));
      tr.appendChild(el("td", {}, c.name));
      const td = el("td");
      const bar = el("span", { class: "bar" });
      bar.style.width = Math.max(2, Math.round(120 * c.probability)) + "px";
      td.appendChild(bar);
      td.appendChild(document.createTextNode(" " + (100 * c.probability).toFixed(1) + "%"));
      tr.appendChild(td);
      table.appendChild(tr);
    }
    info.appendChild(table);
    const s = tree.settings;
    info.appendChild(el("div", { class: "meta" },
      `root ${tree.root.id}${tree.root.label ? " (" + tree.root.label + ")" : ""} · k=${s.k} · depth=${s.depth} · rule=${s.rule} · seed=${s.seed_mode}. ` +
      "Score = gradient × activation of the unit, conditioned on the path from the root; share = score / parent's total positive contribution. Click a picture to collapse or expand; hover to zoom."));
    const controls = el("div", { class: "controls" });
    for (const [key, label] of VIEWS) {
      const b = el("button", { type: "button", "aria-pressed": String(key === view), "data-view": key }, label);
      b.addEventListener("click", () => { view = key; for (const x of controls.children) x.setAttribute("aria-pressed", String(x === b)); draw(); });
      controls.appendChild(b);
    }
    info.appendChild(controls);
    head.appendChild(info);
    root.appendChild(head);
    const stage = el("div", { class: "ft-stage" });
    root.appendChild(stage);
    const parents = new Map();
    (function link(node) { for (const c of node.children) { parents.set(c.id, node); link(c); } })(tree.root);
    // Exemplar grids (explorer export with a database): one figure per unit, below the tree.
    const exemplarIds = new Map();
    const gallery = el("section", { class: "ft-exemplars" });
    for (const node of (function all(n) { return [n, ...n.children.flatMap(all)]; })(tree.root)) {
      const name = node.images && node.images.exemplars;
      if (!name || !images[name] || exemplarIds.has(name)) continue;
      const id = "ft-ex-" + exemplarIds.size;
      exemplarIds.set(name, id);
      const fig = el("figure", { id });
      const img = el("img", { alt: `exemplars of ${node.layer}:${node.unit}` });
      img.src = images[name];
      fig.appendChild(img);
      fig.appendChild(el("figcaption", {}, `${node.layer}:${node.unit}${node.label ? " (" + node.label + ")" : ""}: top images | reconstructions`));
      gallery.appendChild(fig);
    }
    if (exemplarIds.size) {
      gallery.prepend(el("h2", {}, "Unit exemplars: the image patches that excite each unit most, beside their guided-backprop reconstructions"));
      root.appendChild(gallery);
    }

    function visible(node) { return collapsed.has(node.id) ? [] : node.children; }

    function layout() {
      const placed = [];
      let cursor = 0;
      (function place(node, depth) {
        const kids = visible(node);
        let x;
        if (!kids.length) { x = cursor; cursor += 1; }
        else { const xs = kids.map((c) => place(c, depth + 1)); x = (xs[0] + xs[xs.length - 1]) / 2; }
        placed.push({ node, depth, x });
        return x;
      })(tree.root, 0);
      return { placed, width: Math.max(1, cursor) };
    }

    function draw() {
      stage.innerHTML = "";
      const { placed, width } = layout();
      const depthMax = Math.max(...placed.map((p) => p.depth));
      const canvas = el("div", { class: "ft-canvas" });
      const W = LEFT + width * (CARD + GAP) + GAP, H = (depthMax + 1) * ROW;
      canvas.style.width = W + "px";
      canvas.style.height = H + "px";
      const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
      svg.setAttribute("width", W);
      svg.setAttribute("height", H);
      canvas.appendChild(svg);
      const pos = new Map();
      for (const p of placed) pos.set(p.node.id, { left: LEFT + GAP + p.x * (CARD + GAP), top: p.depth * ROW + 6 });
      const rows = new Map();
      for (const p of placed) rows.set(p.depth, p.node.layer);
      for (const [d, layer] of rows) {
        const lab = el("div", { class: "ft-row-label" }, layer);
        lab.style.top = d * ROW + 10 + "px";
        canvas.appendChild(lab);
      }
      for (const p of placed) {
        const a = pos.get(p.node.id);
        for (const c of visible(p.node)) {
          const b = pos.get(c.id);
          const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
          const x1 = a.left + CARD / 2, y1 = a.top + 236, x2 = b.left + CARD / 2, y2 = b.top;
          path.setAttribute("d", `M${x1},${y1} C${x1},${(y1 + y2) / 2} ${x2},${(y1 + y2) / 2} ${x2},${y2}`);
          path.setAttribute("fill", "none");
          path.setAttribute("stroke", "#d9480f");
          path.setAttribute("stroke-opacity", "0.55");
          path.setAttribute("stroke-width", String(Math.max(1, Math.min(14, 28 * Math.max(0, c.share || 0)))));
          svg.appendChild(path);
        }
      }
      for (const p of placed) canvas.appendChild(card(p.node, pos.get(p.node.id)));
      stage.appendChild(canvas);
      if (first) {
        // Start with the root in view: centre it horizontally.
        const rootAt = pos.get(tree.root.id);
        stage.scrollLeft = Math.max(0, rootAt.left + CARD / 2 - stage.clientWidth / 2);
        first = false;
      }
    }
    let first = true;

    function card(node, at) {
      const box = el("div", { class: "ft-card" + (collapsed.has(node.id) ? " collapsed" : ""), "data-node": node.id });
      box.style.left = at.left + "px";
      box.style.top = at.top + "px";
      const title = el("div", { class: "title" });
      title.appendChild(el("span", { class: "unit", title: node.id }, `${node.layer}:${node.unit}`));
      if (node.share !== null && node.share !== undefined) title.appendChild(el("span", {}, (100 * node.share).toFixed(1) + "%"));
      box.appendChild(title);
      box.appendChild(el("div", { class: "label" }, node.label || " "));
      const stats = node.score === null || node.score === undefined
        ? `activation ${fmt(node.activation_sum)}`
        : `score ${fmt(node.score)} · max act ${fmt(node.activation_max, 1)}`;
      box.appendChild(el("div", { class: "stats", title: `score ${node.score}, activation sum ${node.activation_sum}, max ${node.activation_max}` }, stats));
      const exemplars = node.images && exemplarIds.get(node.images.exemplars);
      // The root has no edge above it: it shows its shown children zeroed together instead.
      const joint = !node.verification && node.verification_all && node.children.length ? node.verification_all : null;
      if (node.verification || joint || exemplars) {
        const line = el("div", { class: "ft-line" });
        if (node.verification) line.appendChild(badge(node.verification, parents.get(node.id)));
        if (joint) {
          const n = node.children.length;
          line.appendChild(badge(joint, node, { label: `all ${n} zeroed`, what: `all ${n} shown children together`, whose: "this node's" }));
        }
        if (exemplars) line.appendChild(el("a", { class: "ft-exlink", href: "#" + exemplars, title: "this unit's exemplars: top image patches | reconstructions (below the tree)" }, "ex ↓"));
        box.appendChild(line);
      }
      const src = images[node.images[view]];
      if (!src && (view === "rf_crop" || view === "rf_box") && node.box && images.photo) {
        box.appendChild(boxView(node, view === "rf_crop"));
      } else if (src) {
        const img = el("img", { class: "view", alt: `${view} of ${node.id}`, loading: "lazy" });
        img.src = src;
        img.addEventListener("click", () => {
          if (!node.children.length) return;
          if (collapsed.has(node.id)) collapsed.delete(node.id); else collapsed.add(node.id);
          draw();
        });
        box.appendChild(img);
      }
      if (node.children.length && collapsed.has(node.id)) box.appendChild(el("div", { class: "toggle" }, `+${node.children.length} hidden`));
      else if (node.expanded && node.coverage !== null) {
        const rest = node.rest ? ` · rest ${(100 * node.rest.share).toFixed(0)}%` : "";
        const tip = node.rest ? `not shown: ${fmt(node.rest.score)} of the positive total ${fmt(node.total_positive)}; negative contributors sum to ${fmt(node.rest.negative)}` : "";
        box.appendChild(el("div", { class: "stats", title: tip }, `children ${(100 * node.coverage).toFixed(0)}%${rest}`));
      }
      else if (node.leaf_reason) box.appendChild(el("div", { class: "leaf" }, node.leaf_reason));
      return box;
    }

    // Ablation badge: the measured drop of the parent's objective when this unit is zeroed, as a
    // share of the parent's positive total (the scale of the estimated share), coloured by agreement
    // with the gradient x activation estimate.
    function badge(v, parent, { label = "ablation", what = "this unit", whose = "parent" } = {}) {
      const total = parent && parent.total_positive > 0 ? parent.total_positive : null;
      const agree = v.estimate ? v.parent_drop / v.estimate : null;
      const cls = agree === null ? "" : agree >= 0.5 && agree <= 2 ? " ok" : agree > 0 ? " off" : " bad";
      const sign = v.parent_drop >= 0 ? "−" : "+";
      const pct = total === null ? null : (100 * Math.abs(v.parent_drop)) / total;
      const text = label + " " + sign + (pct === null ? fmt(Math.abs(v.parent_drop)) : pct.toFixed(pct < 9.95 ? 1 : 0) + "%");
      return el("div", {
        class: "ft-badge" + cls,
        title: `zeroing ${what}: ${whose} objective drops ${fmt(v.parent_drop)} of ${fmt(v.parent_value)}, ` +
          `root objective drops ${fmt(v.root_drop)} of ${fmt(v.root_value)}; gradient × activation estimated ${fmt(v.estimate)}`,
      }, text);
    }

    // Receptive-field views drawn from the photo: a zoomed crop, or the photo with the box on it.
    function boxView(node, crop) {
      const size = tree.image.size[0], view = 154;
      const [l, t, r, b] = node.box;
      const wrap = el("div", { class: "view boxview", title: `receptive field ${l},${t} to ${r},${b}` });
      wrap.style.cssText = `position:relative;width:${view}px;height:${view}px;overflow:hidden;margin-top:4px;border-radius:4px;background:#808080`;
      const img = el("img", { alt: `receptive field of ${node.id}` });
      img.src = images.photo;
      if (crop) {
        const scale = view / Math.max(r - l, b - t, 1);
        img.style.cssText = `position:absolute;max-width:none;width:${size * scale}px;left:${-l * scale}px;top:${-t * scale}px`;
        wrap.appendChild(img);
      } else {
        const scale = view / size;
        img.style.cssText = "position:absolute;left:0;top:0;width:100%;height:100%";
        wrap.appendChild(img);
        const frame = el("div");
        frame.style.cssText = `position:absolute;border:2px solid #ffd600;left:${l * scale}px;top:${t * scale}px;width:${(r - l) * scale}px;height:${(b - t) * scale}px;box-sizing:border-box`;
        wrap.appendChild(frame);
      }
      return wrap;
    }

    draw();
  }

  window.FeatureTreeView = { render };
})();
