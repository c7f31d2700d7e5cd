// The explorer's model panel: what `featuretree check` says about the current model and chain
// (GET /api/check), so a user sees which numbers and pictures can be trusted before reading them.
const { el } = window.FeatureTreeView;

const VERDICT_CLASS = { exact: "ok", approximate: "warn", unavailable: "bad" };

function chainTable(layers) {
  const head = el("tr", {}, ...["layer", "layout", "shape", "cuts", "runs"].map((t) => el("th", {}, t)));
  const rows = layers.map((row) => {
    const cuts = row.cuts === null ? "?" : row.cuts ? "yes" : "no";
    const runs = row.calls > 1 ? `${row.calls}×` : String(row.calls);
    return el(
      "tr", { class: row.cuts === false || row.calls > 1 ? "bad" : "", title: row.bypass || "" },
      // Layouts break only after their underscore: channels_ / first.
      el("td", { class: "name" }, row.name), el("td", {}, (row.layout || "–").replace("_", "_\u200b")),
      el("td", { class: "shape" }, row.shape ? row.shape.join("×") : "–"), el("td", {}, cuts), el("td", {}, runs),
    );
  });
  return el("table", { class: "check-chain" }, el("thead", {}, head), el("tbody", {}, ...rows));
}

// Fill `box` with the check of `model`; `api(path, params)` fetches JSON (errors throw with the server's message).
export async function showModelCheck(box, model, api) {
  box.replaceChildren(el("div", { class: "muted" }, "checking the model…"));
  let check;
  try {
    check = await api("/api/check", { model });
  } catch (err) {
    box.replaceChildren(el("div", { class: "check-line bad" }, `check failed: ${err.message}`));
    return;
  }
  const parts = [];
  const cuts = check.layers.every((r) => r.cuts);
  parts.push(el("div", { class: `check-line ${cuts ? "ok" : "bad"}` },
    cuts ? "✓ the chain cuts the network at every layer" : "✗ evidence bypasses a chain layer: shares and coverage are of a part"));
  for (const p of check.problems) parts.push(el("div", { class: "check-line bad" }, p));
  parts.push(chainTable(check.layers));
  const rules = el("ul", { class: "check-rules" }, ...check.rules.map((r) => el(
    "li", { class: VERDICT_CLASS[r.verdict] || "" }, el("strong", {}, r.rule), ` ${r.verdict}: `, r.reason,
  )));
  parts.push(rules);
  const rf = check.receptive_fields;
  parts.push(el("div", { class: "check-line" }, `receptive fields: ${rf.shared ? "shared across images" : "computed per image"}`));
  if (check.state.length) for (const s of check.state) parts.push(el("div", { class: "check-line warn" }, `state: ${s}`));
  else parts.push(el("div", { class: "check-line ok" }, "state: eval mode, one device, class logits, deterministic"));
  if (check.speed) parts.push(el("div", { class: "check-line muted" }, `speed ${check.speed.text}`));
  box.replaceChildren(...parts);
  box.dataset.model = model;
}
