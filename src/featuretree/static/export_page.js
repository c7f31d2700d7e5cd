// The page of the self-contained HTML export around the shared tree renderer (tree_view.js):
// header (photo, top-5, settings, picture views), the zoomable tree, and the exemplar grids.
(function () {
  "use strict";
  const { TreeView, VIEWS, DEFAULT_VIEW, el } = window.FeatureTreeView;

  function renderPage(root, tree, images) {
    root.replaceChildren();
    const page = el("div", { class: "ft-page" });
    root.append(page);
    const head = el("header", { class: "ft-head" });
    if (images.photo) head.append(el("img", { class: "photo", alt: "model input", src: images.photo }));
    const info = el("div", { class: "ft-info" });
    const sides = (tree.root.label || "").split(" − "); // a contrastive root's label is "A − B"
    const question = tree.root.contrast != null && sides.length === 2 ? `Why “${sides[0]}” rather than “${sides[1]}”?`
      : tree.root.label ? `Why “${tree.root.label}”?` : `What drives ${tree.root.id}?`;
    info.append(el("h1", {}, `${question} ${tree.model.name} on ${tree.image.source}`));
    const table = el("table", { class: "top5" });
    for (const c of tree.top_classes) {
      const bar = el("span", { class: "bar" });
      bar.style.width = Math.max(2, Math.round(120 * c.probability)) + "px";
      table.append(el("tr", {}, el("td", {}, `${c.index}`), el("td", {}, c.name), el("td", {}, bar, " " + (100 * c.probability).toFixed(1) + "%")));
    }
    info.append(table);
    const s = tree.settings;
    info.append(el("div", { class: "meta" },
      `root ${tree.root.id}${tree.root.label ? " (" + tree.root.label + ")" : ""} · k=${s.k} · depth=${s.depth} · rule=${s.rule} · seed=${s.seed_mode}. ` +
      "Score = gradient × activation of the unit, conditioned on the path from the root; share = score / parent's total positive contribution. " +
      "Click a picture to hide or show its children; hover to enlarge. Wheel or pinch zooms, drag pans, f fits the tree, 0 is 100%."));
    const complete = tree.completeness;
    if (complete) {
      info.append(el("div", { class: "meta", "data-completeness": complete.leaves.toFixed(6) },
        `The shown leaves carry ${(100 * complete.leaves).toFixed(0)}% of the root's positive evidence ` +
        `(per level: ${complete.levels.map((c) => (100 * c).toFixed(0) + "%").join(", ")}).` +
        (s.coverage ? ` Children: the fewest of the top ${s.k} that reach ${(100 * s.coverage).toFixed(0)}% of their parent's evidence.` : "")));
    }
    const controls = el("div", { class: "controls", role: "group", "aria-label": "node picture" });
    info.append(controls);
    head.append(info);
    page.append(head);
    const stage = el("div", { class: "ft-stage" });
    page.append(stage);

    // Exemplar grids (explorer export with a database): pinned beside a card with its 'ex' button,
    // and all of them, one per unit, below the tree.
    const pinned = new Set();
    const all = (function walk(n) { return [n, ...(n.children || []).flatMap(walk)]; })(tree.root);
    const gridOf = (node) => (node.images && node.images.exemplars && images[node.images.exemplars]) || null;
    const hasGrids = all.some(gridOf);
    let aspect = 1;
    // The views this tree has pictures of (the receptive-field ones are drawn from the photo and the boxes);
    // the default one if it is among them (a tree saved before it existed has none of it).
    const available = VIEWS.map(([key]) => key).filter((key) =>
      all.some((n) => n.images && images[n.images[key]]) || (key.startsWith("rf_") && images.photo && tree.root.box));
    const view = new TreeView(stage, {
      view: available.includes(DEFAULT_VIEW) || !available.length ? DEFAULT_VIEW : available[0],
      chain: tree.model.chain,
      topClasses: tree.top_classes,
      photo: images.photo ? { src: images.photo, size: tree.image.size } : null,
      tiny: tree.image.size[0] < 100,
      picture: (node, v) => (node.images && images[node.images[v]]) || null,
      buttons: hasGrids ? (node) => gridOf(node) ? [el("button", {
        type: "button", "data-action": "exemplars", "aria-pressed": String(pinned.has(node.id)),
        title: "show or hide this unit's exemplars beside it: the image patches that excite it most | their reconstructions",
        onclick: () => { if (pinned.has(node.id)) pinned.delete(node.id); else pinned.add(node.id); view.draw(tree.root); view.reveal([node.id]); },
      }, "ex")] : [] : null,
      panel: (node) => pinned.has(node.id) && gridOf(node)
        ? { src: gridOf(node), onClose: () => { pinned.delete(node.id); view.draw(tree.root); } } : null,
      panelAspect: () => aspect,
    });
    for (const [key, label] of VIEWS) {
      if (!available.includes(key)) continue;
      controls.append(el("button", {
        type: "button", "data-view": key, "aria-pressed": String(key === view.view),
        onclick: (e) => { for (const b of controls.children) b.setAttribute("aria-pressed", String(b === e.currentTarget)); view.setView(key); },
      }, label));
    }

    // Tree or merged graph: each distinct unit once, with all of its incoming edges (hubs stand out).
    const shape = el("div", { class: "controls", role: "group", "aria-label": "tree or graph" });
    for (const [mode, label, title] of [["tree", "tree", "one card per path"], ["graph", "graph", "one card per unit, with all its incoming edges"]]) {
      shape.append(el("button", {
        type: "button", "data-mode": mode, "aria-pressed": String(mode === "tree"), title,
        onclick: (e) => { for (const b of shape.children) b.setAttribute("aria-pressed", String(b === e.currentTarget)); view.setGraph(mode === "graph"); },
      }, label));
    }
    info.append(shape);

    if (hasGrids) {
      const gallery = el("section", { class: "ft-exemplars", id: "ft-exemplars" },
        el("h2", {}, "Unit exemplars: the image patches that excite each unit most, beside their guided-backprop reconstructions"));
      const seen = new Set();
      for (const node of all) {
        const name = node.images && node.images.exemplars;
        if (!gridOf(node) || seen.has(name)) continue;
        seen.add(name);
        const img = el("img", { alt: `exemplars of ${node.layer}:${node.unit}`, src: images[name] });
        if (seen.size === 1) img.addEventListener("load", () => { aspect = img.naturalWidth / img.naturalHeight || 1; });
        gallery.append(el("figure", { id: "ft-ex-" + seen.size }, img,
          el("figcaption", {}, `${node.layer}:${node.unit}${node.label ? " (" + node.label + ")" : ""}: top images | reconstructions`)));
      }
      root.append(gallery);
      // The wheel zooms the tree, so the grids below it get a link of their own.
      info.append(el("a", { class: "ft-to-exemplars", href: "#ft-exemplars" }, `↓ exemplars of ${seen.size} units`));
    }
    view.draw(tree.root);
    return view;
  }

  window.FeatureTreeView.renderPage = renderPage;
})();
