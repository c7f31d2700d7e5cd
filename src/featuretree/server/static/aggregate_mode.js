// The explorer's class-graph mode (`featuretree serve --aggregate DIR`): the shared class-graph renderer
// (/static/aggregate_view.js, the file graph.html inlines) fed by the server. Each card's pictures and the
// side panel's images are the unit's maps on those images, computed on demand with the aggregate's model;
// each listed image opens as an image tree rooted at the graph's root, with the path to the unit expanded.

const { AggregateView, el } = window.FeatureTreeView;
const PAGE = 12; // images per page in the side panel

// The explorer URL of an image tree: the aggregated image, the graph's root, every node above the unit's
// strongest copy expanded (so the unit is drawn), built with the aggregate's k, rule and seed.
export function imageTreeUrl(qs, model, settings, root, item) {
  const steps = item.node.split("/");
  const open = steps.slice(0, Math.max(1, steps.length - 1)).map((_, i) => steps.slice(0, i + 1).join("/"));
  return `/?${qs({
    model, image: `aggregate:${item.image}`, root, open, k: settings.k, rule: settings.rule, seed: settings.seed_mode, focus: item.node,
  })}`;
}

// Draw the class graphs into host; state {root, unit, stable, min} from the URL, onState(state) after each change.
export async function showAggregate(host, api, qs, state, onState) {
  const data = await api("/api/aggregate/graph");
  const settings = data.graph.settings;
  const picture = (root, unit, image) => `/api/aggregate/picture.jpg?${qs({ root, unit, image })}`;
  const g = data.graph;
  return new AggregateView(host, g, {
    caption: `${g.images.ok} image${g.images.ok === 1 ? "" : "s"} aggregated from ${g.folder}${g.images.skipped ? ` (${g.images.skipped} skipped)` : ""}` +
      ` with ${data.model} · root ${settings.root} · depth ${settings.depth} · k ${settings.k} · rule ${settings.rule}` +
      ` · pictures: the unit's contribution map on each image`,
    state,
    onState,
    noThumbs: "no images",
    thumbs: (root, node) => ((data.thumbs[root] || {})[node.id] || []).map((t) => ({ ...t, src: picture(root, node.id, t.image) })),
    images: (root, node, offset) => api("/api/aggregate/images", { root, unit: node.id, offset, limit: PAGE })
      .then((page) => ({ total: page.total, more: true, items: page.images.map((row) => ({ ...row, src: row.picture })) })),
    imageActions: (root, node, item) => [
      el("a", {
        class: "button", "data-action": "open-tree", href: imageTreeUrl(qs, data.model, settings, root, item),
        title: `explain ${item.image} as an image tree rooted at ${root}, expanded down to ${node.id}`,
      }, "open image tree"),
    ],
  });
}
