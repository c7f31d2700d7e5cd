"""The ``featuretree`` command line."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from .core.errors import FeatureTreeError, OptionError, UnitError
from .loading import ModelSpec, load_explainer, model_options
from .rules import rule_names, rules_help

PROG = "featuretree"
# Rules are checked where they are used (one-line errors); the usage line lists the registered ones.
_RULES_METAVAR = "{" + ",".join(rule_names()) + "}"


def _whole_number(text: str) -> int:
    """An integer; ranges are checked where the value is used, with a message naming the fix."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _fraction(text: str) -> float:
    """A number; the range is checked where the value is used, with a message naming the fix."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _port(text: str) -> int:
    port = _whole_number(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535 (0 picks a free one), got {port}")
    return port


def _add_photo_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "photo", nargs="?", help="image file (jpg, png, webp, bmp, tiff...); default: the bundled sample photo 'chelsea' (a cat)"
    )


def _photo_path(args: argparse.Namespace) -> Path:
    from .core.samples import sample_path

    return Path(args.photo) if args.photo else sample_path("chelsea")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="efficientnet_lite0",
        help="zoo model (efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, toy_squares), torchvision:NAME, timm:NAME, "
        "or path/to/file.py:function returning an nn.Module or ZooModel (default: %(default)s)",
    )
    p.add_argument(
        "--layers", help="comma-separated chain of layer names, input side first (default: the model's chain; see `featuretree layers`)"
    )
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps (default: %(default)s)")
    p.add_argument(
        "--layout",
        action="append",
        default=[],
        metavar="LAYER=KIND",
        help="how a chain layer's output is laid out, where its shape does not tell: channels_first, channels_last, "
        "tokens (tokens:P for P leading non-patch tokens) or vector; repeat for more layers",
    )
    p.add_argument("--weights", help="state dict or checkpoint file for a torchvision:NAME or timm:NAME model (read offline)")
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="let a torchvision:NAME or timm:NAME model run with random weights, seeded (to try an architecture; weight matrices the library starts at zero are drawn small instead)",
    )
    p.add_argument(
        "--allow-bypass",
        action="store_true",
        help="accept a chain that does not cut the network (evidence reaching a layer around the layer below it): "
        "a warning instead of an error, and each expansion reports the share that goes around",
    )


def _add_engine_args(p: argparse.ArgumentParser, workers_help: str | None) -> None:
    p.add_argument(
        "--engine", choices=("local", "ray"), default="local", help="run here, or split into shards on Ray actors (default: %(default)s)"
    )
    p.add_argument("--ray-address", help="an existing Ray cluster (e.g. auto, or HOST:6379); default: start a local one")
    if workers_help:
        p.add_argument("--workers", type=_whole_number, default=None, help=workers_help)
    p.add_argument(
        "--threads",
        type=_whole_number,
        help="torch threads per worker; results are equal bit for bit only between runs with the same count (default: this process's)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Explain a vision model's prediction (CNN or transformer) on one image as a tree of units."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    ex = sub.add_parser(
        "explain",
        help="explain one photo: writes tree.json, PNGs and tree.html",
        description="Explain one photo. Children of a node are the units of the chain layer below it ranked by gradient x activation, with the gradient flowing from the root and masked at every node on the path.",
    )
    _add_photo_arg(ex)
    ex.add_argument("--out", help="output folder (default: featuretree-out/<photo name>)")
    ex.add_argument(
        "--root",
        help="root unit: class:N, class:NAME or LAYER:CHANNEL; class:A-class:B or LAYER:A-LAYER:B explains why A rather than B (default: the top predicted class)",
    )
    ex.add_argument("--k", type=_whole_number, default=5, help="children kept per node (default: %(default)s)")
    ex.add_argument(
        "--coverage",
        type=_fraction,
        metavar="F",
        help="keep only the fewest top children whose shares of the node's positive evidence sum to F (0 < F <= 1), at most --k",
    )
    ex.add_argument(
        "--rerank",
        type=_whole_number,
        metavar="N",
        help="measure the top N*k candidates by ablation (one batched pass per node) and keep the k whose removal lowers the parent most",
    )
    ex.add_argument("--depth", type=_whole_number, default=3, help="levels below the root (default: %(default)s)")
    ex.add_argument(
        "--rule", default="gradient", metavar=_RULES_METAVAR, help=f"how children are scored: {rules_help()} (default: %(default)s)"
    )
    ex.add_argument(
        "--seed-mode",
        default="sum",
        help="root objective: sum of the unit's map (the blog) or max (its largest pixel, the original code) (default: %(default)s)",
    )
    ex.add_argument(
        "--negatives",
        type=_whole_number,
        default=0,
        help="also list this many strongest negative contributors per node (default: %(default)s)",
    )
    ex.add_argument(
        "--verify",
        action="store_true",
        help="measure every edge by ablation: zero the child's channel and report the drop of the parent's and the root's objective",
    )
    ex.add_argument("--resize", help="pad (keep aspect, letterbox; default), crop (keep aspect, centre crop) or squash (ignore aspect)")
    ex.add_argument("--no-html", action="store_true", help="skip tree.html")
    ex.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    ex.add_argument("--timings", action="store_true", help="print the seconds spent in each phase to stderr")
    _add_model_args(ex)

    sa = sub.add_parser(
        "sanity",
        help="re-explain with the weights randomised layer by layer from the top; report how pictures and children change",
        description="Model-randomisation sanity check (Adebayo et al., 2018): cascading re-initialisation from the top of the chain and "
        "each layer alone. Each view's maps (guided, gradient, heatmap, contribution) are compared with the trained model's by the "
        "paper's measures (Spearman of |map| and signed, SSIM, HOG), for the root and averaged over the tree's nodes. Views that "
        "barely change do not depend on what the model learned.",
    )
    _add_photo_arg(sa)
    sa.add_argument("--out", help="output folder for sanity.md/.csv/.png (default: featuretree-out/sanity-<photo name>)")
    sa.add_argument(
        "--root",
        help="root unit: class:N, class:NAME or LAYER:CHANNEL; class:A-class:B or LAYER:A-LAYER:B explains why A rather than B (default: the top predicted class)",
    )
    sa.add_argument("--k", type=_whole_number, default=3, help="children kept per node (default: %(default)s)")
    sa.add_argument("--depth", type=_whole_number, default=2, help="levels below the root (default: %(default)s)")
    sa.add_argument("--rule", default="gradient", metavar=_RULES_METAVAR, help="child-scoring rule, as for explain (default: %(default)s)")
    sa.add_argument("--steps", type=_whole_number, help="randomise at most this many chain layers (default: all up to the root)")
    sa.add_argument("--seed", type=_whole_number, default=0, help="random seed (default: %(default)s)")
    sa.add_argument(
        "--randomisation",
        default="cascading,independent",
        help="cascading (from the top down), independent (one layer at a time) or both (default: %(default)s)",
    )
    sa.add_argument(
        "--json", action="store_true", help="print the report as JSON (steps: randomised, root and nodes per view) instead of tables"
    )
    _add_model_args(sa)

    ev = sub.add_parser(
        "evaluate",
        help="measure how well each scoring rule's children explain their parents over a folder of images",
        description="For each image: ablation drop of each rule's top-k children vs k random and k most active channels, rank "
        "correlation of predicted vs measured single-channel effects, and deletion/insertion AUC of each view's node maps vs random order.",
    )
    ev.add_argument("images_dir", nargs="?", help="folder of images (jpg, png, ...); default: the bundled sample photos")
    ev.add_argument("--out", help="output folder for evaluate.md/.csv/.png (default: featuretree-out/evaluate)")
    ev.add_argument("--k", type=_whole_number, default=5, help="children per node (default: %(default)s)")
    ev.add_argument("--rules", default=",".join(rule_names()), help="comma-separated rules to compare (default: %(default)s)")
    ev.add_argument(
        "--parents",
        type=_whole_number,
        default=3,
        help="nodes of the default tree's first level also used as parents (default: %(default)s)",
    )
    ev.add_argument("--random-draws", type=_whole_number, default=10, help="random k-sets per parent (default: %(default)s)")
    ev.add_argument("--curve-steps", type=_whole_number, default=16, help="points on each deletion/insertion curve (default: %(default)s)")
    ev.add_argument(
        "--views",
        default="heatmap,contribution,guided,gradient",  # reports.evaluate.CURVE_VIEWS (not imported: startup time)
        help="comma-separated views whose pixel orders get deletion/insertion curves (default: %(default)s)",
    )
    ev.add_argument("--limit", type=_whole_number, help="use at most this many images (sorted by name)")
    ev.add_argument("--seed", type=_whole_number, default=0, help="random seed (default: %(default)s)")
    ev.add_argument(
        "--rerank",
        type=_whole_number,
        metavar="N",
        help="also evaluate gradient+rerankN: the top N*k by gradient x activation, reordered by measured ablation (as explain --rerank)",
    )
    _add_model_args(ev)

    ab = sub.add_parser(
        "ablate",
        help="zero or scale units (any layers, several at once) and see the top classes and the root objective change",
        description="Intervene on one photo: multiply the named units by --scale (0 zeroes them) in one forward pass, and "
        "compare the top-5 classes and the root objective before and after.",
    )
    _add_photo_arg(ab)
    ab.add_argument("--units", required=True, help="comma-separated units LAYER:CHANNEL, e.g. _blocks.14:6,_head_act:1156")
    ab.add_argument("--scale", type=float, default=0.0, help="factor for those units (default: %(default)s, i.e. zeroed)")
    ab.add_argument(
        "--root", help="root objective: class:N, class:NAME, LAYER:CHANNEL or a contrast class:A-class:B (default: the top predicted class)"
    )
    ab.add_argument("--json", action="store_true", help="print one JSON object: top_before, top_after, root_before, root_after")
    _add_model_args(ab)

    ck = sub.add_parser(
        "check",
        help="what can be trusted for this model and chain: cuts, layouts, rules, receptive fields, model state, speed",
        description="Check a model and its chain before explaining: per chain layer its layout and shape, whether it cuts the "
        "network and whether it runs more than once; per scoring rule whether it is exact, approximate or unavailable here and "
        "why; whether receptive fields are shared across images; the model's state; and an estimate of a depth-3 tree's time.",
    )
    ck.add_argument("--input-size", type=_whole_number, help="input size in pixels (default: the model's own)")
    ck.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ck.add_argument("--no-speed", dest="speed", action="store_false", help="skip the timed expansion behind the speed estimate")
    _add_model_args(ck)

    ly = sub.add_parser("layers", help="list a model's layers and output shapes; marks the default chain")
    ly.add_argument("--chain", action="store_true", help="show only the chain layers")
    _add_model_args(ly)

    sv = sub.add_parser(
        "serve",
        help="start the interactive explorer in the browser (http://127.0.0.1:8765)",
        description="Start the interactive explorer: a local web page where you pick a photo and a root and expand the tree by clicking.",
    )
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s; loopback only)")
    sv.add_argument("--port", type=_port, default=8765, help="port (default: %(default)s; 0 picks a free one)")
    sv.add_argument(
        "--allow-remote", action="store_true", help="allow binding to a non-loopback --host (anyone who can reach it can use the server)"
    )
    sv.add_argument("--image", default="chelsea", help="photo shown first: a bundled sample name (default: %(default)s)")
    sv.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload in MB (default: %(default)s)")
    sv.add_argument("--open", action="store_true", help="open the page in the default web browser")
    sv.add_argument(
        "--no-prefetch",
        dest="prefetch",
        action="store_false",
        help="do not expand the shown nodes' children in the background (by default the next click finds them ready)",
    )
    sv.add_argument(
        "--db",
        help="exemplar database from `featuretree index`: show each unit's top image patches and reconstructions beside its node",
    )
    sv.add_argument(
        "--aggregate",
        metavar="DIR",
        help="the --out folder of `featuretree aggregate`: show its class graphs, each unit's images with its maps, and open any "
        "of them as an image tree (the model is the aggregate's own, or --model with the same weights)",
    )
    _add_model_args(sv)
    sv.set_defaults(model=None)
    ix = sub.add_parser(
        "index",
        help="index a folder of images: every chain unit's top images by spatial max activation (resumable)",
        description="Scan IMAGES_DIR recursively (jpg, png, webp, bmp, tiff) and keep, for every unit of every chain layer, "
        "its top images by spatial max activation with location, receptive-field crop and (on request) guided-backprop "
        "reconstruction. Stop it at any moment and run the same command again to continue; run it on a grown folder to add images.",
    )
    ix.add_argument("images", nargs="?", help="folder of images (default: a small collection cut from the sample photos)")
    ix.add_argument("--out", default="featuretree-out/exemplars.db", help="SQLite database to create or extend (default: %(default)s)")
    ix.add_argument("--top", type=_whole_number, default=16, help="images kept per unit (default: %(default)s)")
    ix.add_argument("--batch-size", type=_whole_number, default=16, help="images per forward pass (default: %(default)s)")
    ix.add_argument(
        "--workers",
        type=_whole_number,
        default=None,
        help="decoding worker processes, 0 = decode in the main process (default: CPU cores - 2, at most 4; 0 on 2 cores); "
        "with --engine ray: Ray actors, each holding the model (default: the cluster's CPUs)",
    )
    _add_engine_args(ix, None)
    ix.add_argument(
        "--reconstructions", action="store_true", help="also compute every kept entry's reconstruction now (else on first view)"
    )
    ix.add_argument(
        "--relevance-class",
        action="append",
        default=[],
        metavar="CLASS",
        help="also rank every unit's images by relevance to this class (index or name; sum of activation x logit gradient); repeatable",
    )
    ix.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_model_args(ix)

    ag = sub.add_parser(
        "aggregate",
        help="build every image's tree in a folder and merge them into class graphs (resumable; local or on Ray)",
        description="Build the tree of every image under IMAGES_DIR with the same settings, rooted at one class (--class) or at "
        "each image's own top class (--predicted, the default), and merge them into one graph per class: in how many images "
        "each unit and edge appears, their mean share and score, which edges are stable, and how often a random unit would "
        "appear. Writes OUT/aggregate.db (stop it at any moment and run the same command again to continue; run it on a grown "
        "folder to add images), OUT/graph.json and OUT/graph.html. Open it in the explorer with `featuretree serve --aggregate OUT`.",
    )
    ag.add_argument("images", metavar="IMAGES_DIR", help="folder of images (jpg, png, webp, bmp, tiff), searched recursively")
    ag.add_argument("--out", default="featuretree-out/aggregate", help="output folder (default: %(default)s)")
    which = ag.add_mutually_exclusive_group()
    which.add_argument("--class", dest="root_class", metavar="N", help="root every tree at this class (index or exact name)")
    which.add_argument("--predicted", action="store_true", help="root each tree at the image's top class, one graph per class (default)")
    ag.add_argument("--depth", type=_whole_number, default=3, help="levels below the root (default: %(default)s)")
    ag.add_argument("--k", type=_whole_number, default=5, help="children kept per node (default: %(default)s)")
    ag.add_argument("--rule", default="gradient", metavar=_RULES_METAVAR, help="child-scoring rule, as for explain (default: %(default)s)")
    ag.add_argument(
        "--stable", type=_fraction, default=0.5, help="mark edges that appear in at least this share of the images (default: %(default)s)"
    )
    _add_engine_args(ag, "Ray actors, each holding the model (default: the cluster's CPUs)")
    ag.add_argument(
        "--shard-size", type=_whole_number, default=8, help="images per shard, the unit of work and of commits (default: %(default)s)"
    )
    ag.add_argument("--no-html", action="store_true", help="skip graph.html")
    ag.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    _add_model_args(ag)

    un = sub.add_parser("units", help="list a layer's units from an exemplar database and save its contact sheet")
    un.add_argument("db", help="exemplar database made by `featuretree index`")
    un.add_argument("--layer", required=True, help="chain layer name")
    un.add_argument("--unit", type=_whole_number, help="write this unit's exemplar grid (patches | reconstructions) instead")
    un.add_argument("--out", help="PNG to write (default: <db name>-<layer>.png, or -<layer>-<unit>.png with --unit)")
    un.add_argument(
        "--ranking", default="activation", help="activation, or class:K if indexed with --relevance-class K (default: %(default)s)"
    )
    un.add_argument("--per-unit", type=_whole_number, default=4, help="patches per unit on the contact sheet (default: %(default)s)")
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def cmd_explain(args: argparse.Namespace) -> int:
    import dataclasses

    from .core.images import load_image
    from .render.export import ensure_writable, save_tree

    timings: dict[str, float] = {}
    clock = time.perf_counter()
    age = _process_age()
    if age is not None:
        timings["startup"] = age  # interpreter and imports, before this command ran
    photo = _photo_path(args)
    out = Path(args.out) if args.out else Path("featuretree-out") / photo.stem
    ensure_writable(out)
    image = load_image(photo)
    if args.k < 1:
        raise OptionError(f"--k must be at least 1, got {args.k}", "use --k 1 or more")
    explainer = load_explainer(args.model, args.layers, args.device, **model_options(args))
    if args.resize:
        explainer.preprocess = dataclasses.replace(explainer.preprocess, resize=args.resize)
    start = time.perf_counter()
    timings["load"] = start - clock
    analysis = explainer.analyze(image)
    analysis.image.source = str(photo)
    tree = analysis.tree(
        root=args.root,
        k=args.k,
        depth=args.depth,
        rule=args.rule,
        seed_mode=args.seed_mode,
        negatives=args.negatives,
        progress=not args.quiet,
        verify=args.verify,
        coverage=args.coverage,
        rerank=args.rerank,
    )
    timings["tree"] = time.perf_counter() - start
    save_tree(tree, out, html=not args.no_html, timings=timings)
    if args.timings:
        total = time.perf_counter() - clock + timings.get("startup", 0.0)
        phases = ", ".join(f"{name} {seconds:.2f}" for name, seconds in timings.items())
        print(f"{PROG}: timings (s): {phases}; total {total:.2f}", file=sys.stderr)
    if not args.quiet:
        elapsed = time.perf_counter() - start
        if tree.top_classes:
            top = tree.top_classes[0]
            verdict = f"{top['name']} (class {top['index']}, p={top['probability']:.2f})"
        else:
            verdict = f"root {tree.root.layer}:{tree.root.unit}"
        print(f"{photo.name}: {verdict}; {len(tree)} nodes in {elapsed:.1f}s")
        print(format_tree(tree))
        complete = tree.completeness()
        if complete:
            levels = ", ".join(f"{100 * c:.0f}%" for c in complete["levels"])
            print(f"the shown leaves carry {100 * complete['leaves']:.0f}% of the root's positive evidence (per level: {levels})")
    print(out / ("tree.html" if not args.no_html else "tree.json"))
    return 0


def _process_age() -> float | None:
    """Seconds since this process started (Linux), so --timings can include interpreter start and imports."""
    try:
        fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return float(Path("/proc/uptime").read_text().split()[0]) - started
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _relative_drop(effect: dict) -> str:
    """A class's relative probability drop as text; '<1%' where a saturated class barely moves."""
    drop = 1 - effect["probability_after"] / effect["probability"]
    return "<1%" if drop < 0.005 else f"{100 * drop:.0f}%"


def format_tree(tree, max_lines: int = 40) -> str:
    """One line per node, indented by depth; expanded nodes end with what their children leave out."""
    lines = []
    for node in tree.walk():
        if len(lines) >= max_lines:
            lines.append("  ...")
            break
        label = f" {node.label}" if node.label else ""
        line = f"{'  ' * node.depth}{node.path[-1]}{label}"
        if node.score is not None:
            line += f"  score {node.score:.4g}  share {100 * node.share:.1f}%"
        if node.verification:
            v = node.verification
            line += f"  | ablation drop: parent {v['parent_drop']:.4g}, root {v['root_drop']:.4g}"
            if v.get("classes"):
                lowered = ", ".join(f"{c['name'].split(',')[0]} {_relative_drop(c)}" for c in v["classes"])
                line += f"; lowers {lowered}"
        if node.rest and node.children:
            line += f"  [rest {100 * node.rest['share']:.1f}% of positive; negatives {node.rest['negative']:.4g}]"
        if node.bypass:
            line += f"  [bypass: {100 * node.bypass['share']:.1f}% of its evidence goes around {node.bypass['layer']}]"
        lines.append(line)
    return "\n".join(lines)


def cmd_layers(args: argparse.Namespace) -> int:
    import torch

    from .reports.layers import format_layers, list_layers

    explainer = load_explainer(args.model, args.layers, args.device, **model_options(args))
    rows = list_layers(explainer.model, explainer.preprocess.size, explainer.layers, explainer.device)
    size = explainer.preprocess.size
    try:  # each chain layer's layout, as an analysis decides it
        chain = explainer.analyze(torch.zeros(1, 3, size, size)).chain
        layouts = {info.name: f"layout {info.layout!r}" for info in chain}
        problem = None
    except FeatureTreeError as err:
        layouts, problem = {}, err
    print(format_layers(rows, chain_only=args.chain, layouts=layouts, given=bool(args.layers)))
    if problem is not None:
        print(f"note: {problem}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    import json

    if args.input_size is not None and args.input_size < 8:
        raise OptionError(f"--input-size must be at least 8, got {args.input_size}", "use e.g. --input-size 224")
    explainer = load_explainer(args.model, args.layers, args.device, **model_options(args), input_size=args.input_size)
    result = explainer.check(speed=args.speed)
    print(json.dumps(result.to_dict(), indent=1) if args.json else result.format())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .server.run import serve

    return serve(args)


def cmd_sanity(args: argparse.Namespace) -> int:
    from .core.images import load_image
    from .render.export import ensure_writable
    from .reports.sanity import MODES, sanity_check, save_report

    photo = _photo_path(args)
    out = Path(args.out) if args.out else Path("featuretree-out") / f"sanity-{photo.stem}"
    modes = [m.strip() for m in args.randomisation.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise OptionError(f"unknown --randomisation {args.randomisation!r}", f"use {', '.join(MODES)} or both, comma-separated")
    ensure_writable(out)
    image = load_image(photo)
    explainer = load_explainer(args.model, args.layers, args.device, **model_options(args))
    report = sanity_check(
        explainer, image, root=args.root, k=args.k, depth=args.depth, rule=args.rule, seed=args.seed, steps=args.steps, modes=modes
    )
    save_report(report, out)
    if args.json:
        print(report.to_json())
        return 0
    print(report.to_markdown())
    print(out / "sanity.md")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .render.export import ensure_writable

    out = Path(args.out) if args.out else Path("featuretree-out") / "evaluate"
    ensure_writable(out)
    if args.limit is not None and args.limit < 1:
        raise OptionError(f"--limit must be at least 1, got {args.limit}", "leave it out to use every image")
    explainer = load_explainer(args.model, args.layers, args.device, **model_options(args))
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    with tempfile.TemporaryDirectory() as samples_dir:
        if args.images_dir is None:
            from .core.samples import available_samples

            for name, path in available_samples().items():
                shutil.copy(path, Path(samples_dir) / f"{name}{path.suffix}")
        return _run_evaluate(args, explainer, rules, args.images_dir or samples_dir, out)


def _run_evaluate(args: argparse.Namespace, explainer, rules: list[str], images_dir: str, out: Path) -> int:
    from .reports.evaluate import evaluate_folder, save_evaluation

    result = evaluate_folder(
        explainer,
        images_dir,
        k=args.k,
        rules=rules,
        parents=args.parents,
        random_draws=args.random_draws,
        curve_steps=args.curve_steps,
        views=[v.strip() for v in args.views.split(",") if v.strip()],
        limit=args.limit,
        seed=args.seed,
        progress=True,
        rerank=args.rerank,
    )
    save_evaluation(result, out)
    print(result.to_markdown())
    print(out / "evaluate.md")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from .exemplars.collection import build_collection
    from .exemplars.indexer import index_folder

    images = args.images
    if images is None:
        images = Path(args.out).parent / "collection"
        build_collection(images)
        if not args.quiet:
            print(f"indexing the default collection in {images} (pass a folder of your own images for real use)")
    spec = ModelSpec.from_args(args)
    engine = _engine_options(args, actors=args.workers if args.engine == "ray" else None)
    explainer = spec.load()
    classes = [_class_index(explainer, text) for text in args.relevance_class]
    try:
        report = index_folder(
            images,
            args.out,
            explainer,
            args.model,
            top_n=args.top,
            batch_size=args.batch_size,
            workers=args.workers if args.engine == "local" else None,
            engine=engine,
            spec=spec,
            progress=not args.quiet,
            reconstructions=args.reconstructions,
            relevance_classes=classes,
        )
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; every finished batch is saved, run the same command again to continue", file=sys.stderr)
        return 130
    print(report.format())
    return 0


def _engine_options(args: argparse.Namespace, actors: int | None):
    """--engine, --ray-address, --threads and the Ray actors; checked before any model is loaded. A CUDA
    --device gives each actor one GPU."""
    from .scale.engines import EngineOptions

    gpus = 1.0 if args.engine == "ray" and args.device.startswith("cuda") else 0.0
    return EngineOptions(args.engine, actors, args.ray_address, args.threads, gpus).checked()


def cmd_aggregate(args: argparse.Namespace) -> int:
    from .aggregate.run import aggregate_folder
    from .aggregate.worker import TreeSettings

    spec = ModelSpec.from_args(args)
    engine = _engine_options(args, actors=args.workers)
    explainer = spec.load()
    root = f"class:{_class_index(explainer, args.root_class, '--class')}" if args.root_class is not None else None
    settings = TreeSettings(root=root, depth=args.depth, k=args.k, rule=args.rule)
    try:
        report = aggregate_folder(
            args.images,
            args.out,
            explainer,
            spec,
            settings,
            engine,
            shard_size=args.shard_size,
            stable=args.stable,
            progress=not args.quiet,
            html=not args.no_html,
        )
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; every finished shard is saved, run the same command again to continue", file=sys.stderr)
        return 130
    if not args.quiet:
        print(report.format())
    print(Path(args.out) / ("graph.html" if not args.no_html else "graph.json"))
    return 0


def _class_index(explainer, text: str, option: str = "--relevance-class") -> int:

    if re.fullmatch(r"[0-9]+", text.strip()):
        return int(text)
    names = [name.lower() for name in explainer.class_names or []]
    if text.strip().lower() in names:
        return names.index(text.strip().lower())
    raise UnitError(f"unknown class {text!r}", f"give {option} as a class index, e.g. 285, or an exact class name")


def cmd_units(args: argparse.Namespace) -> int:
    from .exemplars.db import ExemplarDB
    from .exemplars.indexer import layer_summary
    from .exemplars.sheets import contact_sheet, exemplar_grid

    db_path = Path(args.db)
    safe_layer = args.layer.replace("/", "_")
    with ExemplarDB(db_path) as db:
        if args.unit is not None:
            out = Path(args.out) if args.out else db_path.with_name(f"{db_path.stem}-{safe_layer}-{args.unit}.png")
            image = exemplar_grid(db, args.layer, args.unit, ranking=args.ranking)
            counts, total = db.exemplar_classes(args.layer, args.unit, ranking=args.ranking)
            if total:
                names = _db_class_names(db)
                shown = ", ".join(f"{names[c] if c < len(names) else f'class {c}'} ({n} of {total})" for c, n in counts)
                print(f"{args.layer}:{args.unit}: its exemplar images are predicted as {shown}")
        else:
            out = Path(args.out) if args.out else db_path.with_name(f"{db_path.stem}-{safe_layer}.png")
            for unit, best in layer_summary(db, args.layer, ranking=args.ranking):
                shown = ", ".join(f"{value:.3g} {path}" for value, path in best) or "(no images)"
                print(f"{args.layer}:{unit}  {shown}")
            image = contact_sheet(db, args.layer, per_unit=args.per_unit, ranking=args.ranking)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        image.save(out)
    except OSError as err:
        raise OptionError(f"cannot write {out} ({err.strerror})", "choose another --out") from None
    print(out)
    return 0


def _db_class_names(db) -> list[str]:
    """The class names of a database's model when it is a built-in one (else none: indices are printed)."""
    from .exemplars.indexer import explainer_for_db

    try:
        return list(explainer_for_db(db).class_names or [])
    except FeatureTreeError:
        return []


def cmd_ablate(args: argparse.Namespace) -> int:
    import json
    import math

    from .core.images import load_image
    from .core.units import Unit

    if not math.isfinite(args.scale):
        raise OptionError(f"--scale must be a finite number, got {args.scale}", "use e.g. --scale 0 (zero) or --scale 2")
    units = [Unit.parse(part.strip()) for part in args.units.split(",") if part.strip()]
    photo = _photo_path(args)
    explainer = load_explainer(args.model, args.layers, args.device, **model_options(args))
    analysis = explainer.analyze(load_image(photo))
    result = analysis.intervene(units, args.scale, args.root)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(f"{', '.join(result.units)} x {result.scale:g} on {photo.name}")
    print(f"root {result.root}: {result.root_before:.4g} -> {result.root_after:.4g} ({result.root_after - result.root_before:+.4g})")
    for title, rows in (("before", result.top_before), ("after", result.top_after)):
        if rows:
            print(f"top classes {title}:")
            for row in rows:
                print(f"  {row['index']:>5}  {row['probability']:6.1%}  logit {row['logit']:8.3f}  {row['name']}")
    return 0


COMMANDS = {
    "explain": cmd_explain,
    "aggregate": cmd_aggregate,
    "ablate": cmd_ablate,
    "layers": cmd_layers,
    "check": cmd_check,
    "serve": cmd_serve,
    "index": cmd_index,
    "units": cmd_units,
    "sanity": cmd_sanity,
    "evaluate": cmd_evaluate,
}


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each, like the errors."""
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return COMMANDS[args.command](args)
    except FeatureTreeError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
