"""The explorer's HTTP API (FastAPI) and page.

``create_app`` builds a fresh app whose whole state hangs off ``app.state.workspace``.
All compute endpoints are plain ``def`` functions, so FastAPI runs them in its thread
pool; the engine serialises backward passes per analysis, and every cache is locked.
"""

import base64
import hashlib
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from ..analysis.image_analysis import SEED_MODES
from ..analysis.interventions import intervention_result
from ..core.errors import FeatureTreeError, OptionError, UnitError
from ..core.samples import available_samples
from ..core.units import Unit, path_id
from ..explainer import Analysis
from ..render.export import render_html, render_images
from ..render.pictures import picture_mime
from ..rules import rule_names, rules_help
from .aggregate_view import AggregateSource
from .checks import ModelChecks
from .session import VIEWS, Limits, NotFoundError, TooLargeError, Workspace, exemplar_classes, unavailable_views
from .view import add_exemplar_grids, build_view_tree

# Annotations here are evaluated when each route is defined (no ``from __future__ import annotations``),
# so the rule choices below are read from the registry when an app is created.
SeedMode = Literal[SEED_MODES]  # type: ignore[valid-type]
View = Literal[VIEWS]  # type: ignore[valid-type]

ModelQ = Annotated[str, Query(min_length=1, max_length=200, description="model name, see /api/info")]
ImageQ = Annotated[
    str,
    Query(
        min_length=1,
        max_length=1100,
        description="a sample name, the id returned by POST /api/images, or aggregate:PATH for an image of the server's --aggregate",
    ),
]
PathQ = Annotated[
    str,
    Query(
        min_length=1,
        max_length=4000,
        description="node path, root first: LAYER:CH/LAYER:CH/... ; the root may also be class:N",
    ),
]
KQ = Annotated[int, Query(ge=1, le=64, description="children kept per node")]
CoverageQ = Annotated[
    float | None, Query(gt=0, le=1, description="keep only the fewest top-k children whose shares of the positive evidence reach this")
]
SeedQ = Annotated[SeedMode, Query(description="root objective: sum of the unit's map or its max pixel")]

PNG_CACHE = "public, max-age=86400, immutable"
STATIC_FILES = ("index.html", "app.js", "model_panel.js", "aggregate_mode.js", "style.css")
# The tree and class-graph renderers, shared with the HTML exports: served from featuretree/static/.
SHARED_STATIC_FILES = ("tree_view.js", "tree_view.css", "aggregate_view.js", "aggregate_view.css")


@dataclass(frozen=True)
class ServerSettings:
    models: tuple[str, ...] = ("efficientnet_lite0", "toy_squares")
    default_model: str | None = None
    default_image: str = "chelsea"
    device: str = "cpu"
    limits: Limits = field(default_factory=Limits)
    exemplar_db: str | None = None  # `featuretree serve --db DB`: show each unit's exemplar grid
    prefetch: bool = True  # expand the children /api/expand returned in the background (`serve --no-prefetch`)
    aggregate: str | None = None  # `featuretree serve --aggregate DIR`: the class graphs of an aggregate run
    aggregate_model: str | None = None  # the model (one of models) that serves it; default: the one the database names


# ----- response models (documented in the OpenAPI schema) ---------------------
class ErrorOut(BaseModel):
    error: str
    problem: str
    fix: str | None = None


class SampleOut(BaseModel):
    name: str
    file: str
    thumbnail: str


class ExemplarsOut(BaseModel):
    model: str
    layers: list[str]
    top_n: int
    grid_width: int
    grid_height: int


class AggregateInfoOut(BaseModel):
    model: str = Field(description="the server's model the aggregate was built with")
    folder: str
    images: int = Field(description="images aggregated")
    roots: list[str] = Field(description="one class graph per root, most images first")
    settings: dict[str, Any]


class InfoOut(BaseModel):
    models: list[str]
    default_model: str
    default_image: str
    samples: list[SampleOut]
    views: list[str]
    rules: list[str]
    seed_modes: list[str]
    max_upload_bytes: int
    exemplars: ExemplarsOut | None = None
    aggregate: AggregateInfoOut | None = None


class UploadOut(BaseModel):
    image: str
    width: int
    height: int
    bytes: int


class ClassOut(BaseModel):
    index: int
    name: str
    probability: float
    logit: float
    unit: str | None


class LayerOut(BaseModel):
    name: str
    type: str
    shape: list[int]
    layout: str


class AnalysisOut(BaseModel):
    model: str
    image: str
    source: str
    original_size: list[int]
    size: list[int]
    top_classes: list[ClassOut]
    chain: list[LayerOut]
    default_root: str
    logits_layer: str | None
    unavailable_views: dict[str, str] = {}  # view -> why this model cannot draw it


class InterveneIn(BaseModel):
    model: str = Field(min_length=1, max_length=200)
    image: str = Field(min_length=1, max_length=200)
    units: list[str] = Field(min_length=1, max_length=256, description="units LAYER:CHANNEL, any chain layers")
    scale: float = Field(0.0, allow_inf_nan=False, description="factor for those units (0 zeroes them)")
    root: str | None = Field(None, max_length=400, description="root objective (default: the top predicted class)")


class ClassChangeOut(BaseModel):
    index: int
    name: str
    logit: float
    probability: float


class InterveneOut(BaseModel):
    units: list[str]
    scale: float
    root: str
    root_before: float
    root_after: float
    top_before: list[ClassChangeOut]
    top_after: list[ClassChangeOut]
    top_before_after: list[ClassChangeOut] = Field(description="the classes of top_before, in its order, after the intervention")


class NodeOut(BaseModel):
    id: str
    path: list[str]
    layer: str
    unit: int
    contrast: int | None = None  # a contrastive root: unit minus contrast
    label: str | None
    activation_sum: float
    activation_max: float
    location: list[int] | None
    box: list[int]
    expandable: bool


class ChildOut(BaseModel):
    id: str
    layer: str
    unit: int
    label: str | None
    score: float
    share: float


class RestOut(BaseModel):
    share: float
    score: float
    negative: float


class BypassOut(BaseModel):
    share: float = Field(description="share of the node's first-order evidence that goes around the child layer (allow_bypass)")
    score: float
    total: float
    layer: str
    source: str
    kind: str


class LayerCheckOut(BaseModel):
    name: str
    type: str
    layout: str | None
    shape: list[int] | None
    cuts: bool | None = Field(description="whether every path from the input to this layer passes the chain layer below it")
    bypass: str | None
    calls: int


class RuleCheckOut(BaseModel):
    rule: str
    verdict: Literal["exact", "approximate", "unavailable"]
    reason: str


class CheckOut(BaseModel):
    model: str
    input_size: int
    layers: list[LayerCheckOut]
    rules: list[RuleCheckOut]
    receptive_fields: dict[str, Any]
    state: list[str]
    speed: dict[str, Any] | None
    problems: list[str]


class ChildrenOut(BaseModel):
    id: str
    child_layer: str | None
    children: list[ChildOut]
    coverage: float
    total_positive: float
    total_negative: float
    rest: RestOut | None
    leaf_reason: str | None
    bypass: BypassOut | None = None


class PictureChildOut(ChildOut):
    picture: str | None = Field(
        description="data URI; null where the view has no picture of this child (the contribution map of a vector layer)"
    )


class ExpandOut(ChildrenOut):
    view: View
    children: list[PictureChildOut]


class AggregateImageRef(BaseModel):
    image: str
    share: float


class AggregateGraphOut(BaseModel):
    model: str = Field(description="the server's model the aggregate was built with: the one its pictures and image trees use")
    graph: dict[str, Any] = Field(description="graph.json's content (format featuretree-aggregate), computed from the database")
    thumbs: dict[str, dict[str, list[AggregateImageRef]]] = Field(
        description="per root, per unit: its first images in /api/aggregate/images order (up to 3), for its card"
    )


class AggregateImageOut(BaseModel):
    image: str = Field(description="path relative to the aggregated folder; the explorer's image id is aggregate:PATH")
    share: float
    score: float | None
    node: str = Field(description="the unit's strongest copy in this image's tree: its path from the root")
    depth: int
    picture: str = Field(description="URL of the unit's map on this image")


class AggregateImagesOut(BaseModel):
    root: str
    unit: str
    total: int
    offset: int
    images: list[AggregateImageOut]


class ExemplarClassCount(BaseModel):
    index: int
    name: str
    count: int


class ExemplarClassesOut(BaseModel):
    classes: list[ExemplarClassCount] = Field(description="most frequent first")
    of: int = Field(description="exemplars with a recorded prediction (databases from before version 3 have none)")


class ClassEffectOut(BaseModel):
    index: int
    name: str
    drop: float = Field(description="the class's logit before minus after zeroing")
    logit: float = Field(description="the class's logit before")
    probability: float = Field(description="the class's probability before")
    probability_after: float = Field(description="the class's probability after zeroing")


class EdgeCheckOut(BaseModel):
    estimate: float
    parent_drop: float
    root_drop: float
    parent_value: float
    root_value: float
    classes: list[ClassEffectOut] = Field(default=[], description="the classes whose logits fall most when the unit is zeroed")


class VerifiedChildOut(EdgeCheckOut):
    id: str
    unit: int
    score: float
    share: float


class VerifyOut(BaseModel):
    id: str
    child_layer: str | None
    children: list[VerifiedChildOut]
    all: EdgeCheckOut | None
    rest: RestOut | None
    total_positive: float


ERRORS = {
    400: {"model": ErrorOut, "description": "bad input (malformed path, unit out of range, unreadable image)"},
    404: {"model": ErrorOut, "description": "unknown model, image or file"},
}


def _status_for(err: FeatureTreeError) -> int:
    if isinstance(err, NotFoundError):
        return 404
    if isinstance(err, TooLargeError):
        return 413
    return 400


def _error_json(status: int, problem: str, fix: str | None) -> JSONResponse:
    text = problem if not fix else f"{problem}; {fix}"
    return JSONResponse({"error": text, "problem": problem, "fix": fix}, status_code=status)


def png_response(request: Request, data: bytes, cache_control: str, media_type: str = "image/png") -> Response:
    """A PNG (or ``media_type``) with a content ETag; 304 when the client already holds these bytes."""
    etag = '"' + hashlib.sha256(data).hexdigest()[:24] + '"'
    headers = {"Cache-Control": cache_control, "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=media_type, headers=headers)


def create_app(settings: ServerSettings | None = None, loader=None) -> FastAPI:
    """Build the explorer app. ``loader(name, device) -> Explainer`` overrides the zoo (e.g. a custom model)."""
    settings = settings or ServerSettings()
    if not settings.models:
        raise FeatureTreeError("the server needs at least one model", "pass --model")
    default_model = settings.default_model or settings.models[0]
    # The rules registered now are the ones this app accepts and lists in its OpenAPI schema.
    Rule = Literal[rule_names()]  # type: ignore[valid-type]
    RuleQ = Annotated[Rule, Query(description=f"how children are scored: {rules_help()}")]
    workspace = Workspace(settings.models, settings.device, settings.limits, loader, settings.exemplar_db, settings.prefetch)
    if settings.aggregate is not None:
        source = AggregateSource(settings.aggregate, settings.aggregate_model)
        if source.model not in settings.models:
            raise OptionError(
                f"the aggregate {settings.aggregate} was built with model {source.model!r}, which this server does not offer",
                f"add --model {source.model}",
            )
        workspace.aggregate = source

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            workspace.close()

    app = FastAPI(
        lifespan=lifespan,
        title="featuretree explorer",
        version="1",
        description="Explain a vision model's prediction (CNN or transformer) on one image as a tree of units. Children are computed on demand; "
        "one forward pass per (model, image) is cached and reused by every request.",
    )
    app.state.workspace = workspace
    app.state.settings = settings

    @app.exception_handler(FeatureTreeError)
    async def _feature_tree_error(request: Request, err: FeatureTreeError) -> JSONResponse:
        return _error_json(_status_for(err), err.problem, err.fix)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body"))
        problem = f"invalid {where or 'request'}: {first.get('msg', 'bad value')}"
        return _error_json(422, problem, "see /docs for the accepted values")

    # ----- page and static files ----------------------------------------------------
    static_root = resources.files("featuretree.server").joinpath("static")
    shared_root = resources.files("featuretree").joinpath("static")
    static_cache: dict[str, bytes] = {}

    def static_bytes(name: str) -> bytes:
        if name not in static_cache:
            root = shared_root if name in SHARED_STATIC_FILES else static_root
            static_cache[name] = root.joinpath(name).read_bytes()
        return static_cache[name]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> Response:
        return Response(static_bytes("index.html"), media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC_FILES + SHARED_STATIC_FILES:  # a fixed list: no path from the request ever reaches the file system
            raise NotFoundError(f"no static file {name[:80]!r}", f"the page needs only {', '.join(STATIC_FILES + SHARED_STATIC_FILES)}")
        kind = {"html": "text/html", "js": "text/javascript", "css": "text/css"}[name.rsplit(".", 1)[1]]
        data = static_bytes(name)
        etag = '"' + hashlib.sha256(data).hexdigest()[:20] + '"'
        return Response(data, media_type=f"{kind}; charset=utf-8", headers={"Cache-Control": "no-cache", "ETag": etag})

    # ----- API ----------------------------------------------------------------------
    @app.get("/api/info", response_model=InfoOut, summary="Models, sample photos and options this server offers")
    def info() -> InfoOut:
        samples = [SampleOut(name=n, file=p.name, thumbnail=f"/api/samples/{n}.png") for n, p in available_samples().items()]
        return InfoOut(
            models=list(settings.models),
            default_model=default_model,
            default_image=settings.default_image,
            samples=samples,
            views=list(VIEWS),
            rules=list(rule_names()),
            seed_modes=list(SEED_MODES),
            max_upload_bytes=settings.limits.max_upload_bytes,
            exemplars=exemplars_out(),
            aggregate=AggregateInfoOut(**workspace.aggregate.info()) if workspace.aggregate is not None else None,
        )

    def exemplars_out() -> ExemplarsOut | None:
        ex = workspace.exemplars
        if ex is None:
            return None
        return ExemplarsOut(model=ex.model, layers=list(ex.layers), top_n=ex.top_n, grid_width=ex.grid_size[0], grid_height=ex.grid_size[1])

    @app.get(
        "/api/samples/{name}.png",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, 404: ERRORS[404]},
        summary="Thumbnail of a bundled sample photo",
    )
    def sample_thumbnail(name: str) -> Response:
        return Response(workspace.sample_thumb(name), media_type="image/png", headers={"Cache-Control": PNG_CACHE})

    @app.post(
        "/api/images",
        response_model=UploadOut,
        responses={400: ERRORS[400], 413: {"model": ErrorOut, "description": "file over the size limit"}},
        summary="Upload a photo (multipart field 'file'); returns its image id",
    )
    def upload(file: Annotated[UploadFile, File(description="JPEG, PNG, WebP, BMP or TIFF")]) -> UploadOut:
        limit = settings.limits.max_upload_bytes
        data = file.file.read(limit + 1)
        if len(data) > limit:
            raise TooLargeError(
                f"the upload is over the limit of {limit / 2**20:.0f} MB",
                "upload a smaller image, or start the server with a larger --max-upload-mb",
            )
        digest, picture = workspace.add_upload(data)
        return UploadOut(image=digest, width=picture.width, height=picture.height, bytes=len(data))

    @app.post(
        "/api/intervene",
        response_model=InterveneOut,
        responses=ERRORS,
        summary="Zero or scale units (any layers, several at once): the top-5 classes and the root objective before and after",
        description="One forward pass with every named unit multiplied by scale; the result equals a plain forward pass "
        "with those channels multiplied by scale.",
    )
    def intervene(body: InterveneIn) -> InterveneOut:
        an = workspace.analysis(body.model, body.image)
        units = [Unit.parse(u.strip()) for u in body.units]
        return InterveneOut(**intervention_result(an, units, body.scale, body.root).to_dict())

    def parse_node_path(analysis: Analysis, text: str) -> tuple[Unit, ...]:
        parts = text.split("/")
        if any(not p.strip() for p in parts):
            raise UnitError(f"malformed path {text[:80]!r}", "write it as LAYER:CH/LAYER:CH/..., root first")
        root = analysis.resolve_root(parts[0].strip())
        return analysis.validate_path((root, *(Unit.parse(p.strip()) for p in parts[1:])))

    def label_of(analysis: Analysis, unit: Unit) -> str | None:
        return analysis.unit_label(unit)

    checks = ModelChecks(workspace)

    @app.get(
        "/api/check",
        response_model=CheckOut,
        responses=ERRORS,
        summary="What can be trusted for a model and its chain (featuretree check): cuts, layouts, rules, receptive fields, state, speed",
        description="Per chain layer its layout, shape, whether it cuts the network and how often it runs; per scoring rule whether "
        "it is exact, approximate or unavailable for this model and why; whether receptive fields are shared across images; "
        "problems with the model's state; an estimate of a depth-3 tree's time. Computed once per model (a few seconds).",
    )
    def check(model: ModelQ) -> CheckOut:
        return CheckOut(**checks.get(model))

    @app.get("/api/analysis", response_model=AnalysisOut, responses=ERRORS, summary="Top-5 classes, layer chain and default root")
    def analysis_info(model: ModelQ, image: ImageQ) -> AnalysisOut:
        an = workspace.analysis(model, image)
        logits = an.logits_layer
        return AnalysisOut(
            model=model,
            image=image,
            source=an.image.source,
            original_size=list(an.image.original_size),
            size=[an.image.picture.width, an.image.picture.height],
            top_classes=[ClassOut(**asdict(c), unit=f"{logits}:{c.index}" if logits else None) for c in an.top_classes(5)],
            chain=[LayerOut(name=c.name, type=c.type, shape=list(c.shape), layout=repr(c.layout)) for c in an.chain],
            default_root=str(an.resolve_root(None)),
            logits_layer=logits,
            unavailable_views=unavailable_views(an),
        )

    @app.get(
        "/api/photo.png",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, **ERRORS},
        summary="The picture the model sees (after resizing)",
    )
    def photo(model: ModelQ, image: ImageQ) -> Response:
        return Response(workspace.photo_png(model, image), media_type="image/png", headers={"Cache-Control": PNG_CACHE})

    @app.get("/api/node", response_model=NodeOut, responses=ERRORS, summary="One node: activation, evidence location and box")
    def node(model: ModelQ, image: ImageQ, path: PathQ, rule: RuleQ = "gradient", seed_mode: SeedQ = "sum") -> NodeOut:
        an = workspace.analysis(model, image)
        units = parse_node_path(an, path)
        ev = workspace.evidence(model, image, units, rule, seed_mode, ("box",))
        unit = units[-1]
        return NodeOut(
            id=path_id(units),
            path=[str(u) for u in units],
            layer=unit.layer,
            unit=unit.channel,
            contrast=unit.contrast,
            label=label_of(an, unit),
            activation_sum=ev.activation_sum,
            activation_max=ev.activation_max,
            location=list(ev.location) if ev.location else None,
            box=list(ev.box),
            expandable=an.layers.index(unit.layer) > 0,
        )

    @app.get("/api/children", response_model=ChildrenOut, responses=ERRORS, summary="Expand a node: its top-k children with scores")
    def children(
        model: ModelQ,
        image: ImageQ,
        path: PathQ,
        k: KQ = 5,
        rule: RuleQ = "gradient",
        seed_mode: SeedQ = "sum",
        coverage: CoverageQ = None,
    ) -> ChildrenOut:
        an = workspace.analysis(model, image)
        units = parse_node_path(an, path)
        ex = an.expand(units, k, rule, seed_mode, coverage=coverage)
        return ChildrenOut(
            id=path_id(units),
            child_layer=ex.child_layer,
            children=[
                ChildOut(
                    id=path_id((*units, c.unit)),
                    layer=c.unit.layer,
                    unit=c.unit.channel,
                    label=label_of(an, c.unit),
                    score=c.score,
                    share=c.share,
                )
                for c in ex.children
            ],
            coverage=ex.coverage,
            total_positive=ex.total_positive,
            total_negative=ex.total_negative,
            rest=RestOut(**ex.rest) if ex.rest else None,
            leaf_reason=ex.leaf_reason,
            bypass=BypassOut(**ex.bypass) if ex.bypass else None,
        )

    @app.get(
        "/api/expand",
        response_model=ExpandOut,
        responses=ERRORS,
        summary="Expand a node with pictures: its top-k children, each with one picture as a data URI, in one call",
        description="The same children as /api/children, and for each child the picture /api/picture.png would return "
        "for the view, as a base64 data URI in the view's format in the HTML export (JPEG for the heatmap, guided "
        "and receptive-field views, PNG for guided_original). The children's evidence is computed in one batched pass "
        "(siblings share it), so one call replaces /api/children plus k picture requests.",
    )
    def expand(
        model: ModelQ,
        image: ImageQ,
        path: PathQ,
        k: KQ = 5,
        rule: RuleQ = "gradient",
        seed_mode: SeedQ = "sum",
        view: Annotated[View, Query(description="which picture of each child")] = "contribution",
        coverage: CoverageQ = None,
    ) -> ExpandOut:
        listed = children(model, image, path, k, rule, seed_mode, coverage)
        an = workspace.analysis(model, image)
        units = parse_node_path(an, path)
        paths = [(*units, Unit(c.layer, c.unit)) for c in listed.children]
        encoded = workspace.pictures_many(model, image, paths, view, rule, seed_mode, encoding="view")
        # The next click is most likely on one of these children: have their own children ready.
        workspace.prefetch_children(model, image, paths, k, view, rule, seed_mode)
        mime = picture_mime(view)
        return ExpandOut(
            **listed.model_dump(exclude={"children"}),
            view=view,
            children=[
                PictureChildOut(
                    **c.model_dump(), picture=None if data is None else f"data:{mime};base64," + base64.b64encode(data).decode("ascii")
                )
                for c, data in zip(listed.children, encoded)
            ],
        )

    @app.get(
        "/api/verify",
        response_model=VerifyOut,
        responses=ERRORS,
        summary="Verify a node's edges by ablation: zero each shown child (and all together) in a real forward pass",
        description="For the node's top-k children under the rule, the measured drop of the parent's path objective and "
        "of the root objective when the child's channel is zeroed, beside the gradient x activation estimate, plus the "
        "share of the parent's positive contribution that the shown children leave out (rest). One batched forward pass, "
        "cached.",
    )
    def verify(
        model: ModelQ,
        image: ImageQ,
        path: PathQ,
        k: KQ = 5,
        rule: RuleQ = "gradient",
        seed_mode: SeedQ = "sum",
        coverage: CoverageQ = None,
    ) -> VerifyOut:
        an = workspace.analysis(model, image)
        units = parse_node_path(an, path)
        ex = an.expand(units, k, rule, seed_mode, coverage=coverage)
        if ex.child_layer is None:
            raise UnitError(f"{units[-1]} is in the first chain layer; it has no children to verify", "verify a deeper node")
        result = workspace.verification(model, image, units, [c.unit.channel for c in ex.children], seed_mode)
        return VerifyOut(
            id=path_id(units),
            child_layer=ex.child_layer,
            children=[
                VerifiedChildOut(id=path_id((*units, c.unit)), unit=c.unit.channel, score=c.score, share=c.share, **check.to_dict())
                for c, check in zip(ex.children, result.children)
            ],
            all=EdgeCheckOut(**result.joint.to_dict()) if result.joint else None,
            rest=RestOut(**ex.rest) if ex.rest else None,
            total_positive=ex.total_positive,
        )

    @app.get(
        "/api/exemplars.png",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, **ERRORS},
        summary="A unit's exemplar grid from the server's --db: top image patches | guided-backprop reconstructions",
    )
    def exemplars(
        request: Request,
        model: ModelQ,
        layer: Annotated[str, Query(min_length=1, max_length=200, description="chain layer name")],
        unit: Annotated[int, Query(ge=0, le=1_000_000, description="channel of the layer")],
    ) -> Response:
        # Revalidated after an hour: the database can grow while the server runs.
        return png_response(request, workspace.exemplar_png(model, layer, unit), "public, max-age=3600")

    @app.get(
        "/api/exemplar-classes",
        response_model=ExemplarClassesOut,
        responses=ERRORS,
        summary="The classes the model predicts for a unit's exemplar images (from the server's --db)",
    )
    def exemplar_class_counts(
        model: ModelQ,
        layer: Annotated[str, Query(min_length=1, max_length=200, description="chain layer name")],
        unit: Annotated[int, Query(ge=0, le=1_000_000, description="channel of the layer")],
    ) -> ExemplarClassesOut:
        return ExemplarClassesOut(**exemplar_classes(workspace, model, layer, unit))

    @app.get(
        "/api/picture.png",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, **ERRORS},
        summary="One picture of a node: guided backprop, original look, heatmap, contribution map, receptive-field crop or box",
    )
    def picture(
        request: Request,
        model: ModelQ,
        image: ImageQ,
        path: PathQ,
        view: Annotated[View, Query(description="which picture")] = "guided",
        rule: RuleQ = "gradient",
        seed_mode: SeedQ = "sum",
    ) -> Response:
        an = workspace.analysis(model, image)
        units = parse_node_path(an, path)
        return png_response(request, workspace.picture(model, image, units, view, rule, seed_mode), PNG_CACHE)

    # ----- the class graphs of `serve --aggregate DIR` -------------------------------------
    def aggregate_source() -> AggregateSource:
        if workspace.aggregate is None:
            raise NotFoundError(
                "this server has no aggregate", "start it with `featuretree serve --aggregate DIR` (DIR from `featuretree aggregate`)"
            )
        return workspace.aggregate

    RootQ = Annotated[str, Query(min_length=1, max_length=400, description="a class graph's root unit, e.g. _fc:285")]
    UnitQ = Annotated[str, Query(min_length=1, max_length=400, description="a unit of that graph, LAYER:CH")]

    @app.get(
        "/api/aggregate/graph",
        response_model=AggregateGraphOut,
        responses=ERRORS,
        summary="The class graphs of the server's --aggregate (graph.json), with each unit's first images",
    )
    def aggregate_graph_route() -> AggregateGraphOut:
        source = aggregate_source()
        graph, thumbs = source.graph()
        return AggregateGraphOut(model=source.model, graph=graph, thumbs=thumbs)

    @app.get(
        "/api/aggregate/images",
        response_model=AggregateImagesOut,
        responses=ERRORS,
        summary="The images whose tree shows a unit of a class graph, largest share first, one page at a time",
        description="The rows of AggregateDB.unit_images in its order (share, then path), from offset; each with the URL of "
        "the unit's map on that image.",
    )
    def aggregate_images(
        root: RootQ,
        unit: UnitQ,
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
        limit: Annotated[int, Query(ge=1, le=100)] = 12,
    ) -> AggregateImagesOut:
        page = aggregate_source().unit_images(root, unit, offset, limit)
        for row in page["images"]:
            row["picture"] = "/api/aggregate/picture.jpg?" + urlencode({"root": root, "unit": page["unit"], "image": row["image"]})
        return AggregateImagesOut(**page)

    @app.get(
        "/api/aggregate/picture.jpg",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, **ERRORS},
        summary="A unit's map (contribution view) on one image of the aggregate: its strongest node in that image's tree",
    )
    def aggregate_picture(
        request: Request,
        root: RootQ,
        unit: UnitQ,
        image: Annotated[str, Query(min_length=1, max_length=1000, description="an image path the unit's list gives")],
    ) -> Response:
        # Revalidated after an hour: a new aggregate run may change the image's tree.
        return png_response(request, aggregate_source().picture(workspace, root, unit, image), "public, max-age=3600", "image/jpeg")

    @app.get(
        "/api/export",
        responses={200: {"content": {"application/json": {}, "text/html": {}}}, **ERRORS},
        summary="The current view (root, expanded and removed nodes) as tree.json or one self-contained HTML file",
    )
    def export(
        model: ModelQ,
        image: ImageQ,
        root: PathQ,
        open: Annotated[list[str], Query(max_length=2000, description="expanded node paths")] = [],  # noqa: B006
        removed: Annotated[list[str], Query(max_length=2000, description="removed node paths")] = [],  # noqa: B006
        k: KQ = 5,
        rule: RuleQ = "gradient",
        seed_mode: SeedQ = "sum",
        format: Literal["json", "html"] = "json",
        verify: Annotated[bool, Query(description="measure every shown edge by ablation (node.verification)")] = True,
        exemplars: Annotated[bool, Query(description="HTML: embed each node's exemplar grid when the server has --db")] = True,
        coverage: CoverageQ = None,
    ) -> Response:
        an = workspace.analysis(model, image)
        root_units = parse_node_path(an, root)
        if len(root_units) != 1:
            raise UnitError("the export root must be one unit", "give root as LAYER:CH or class:N")

        def parse_many(texts: list[str]) -> set[tuple[Unit, ...]]:
            out = set()
            for text in texts:
                if len(text) > 4000:
                    raise UnitError("a node path is too long", "paths have one unit per chain layer")
                out.add(parse_node_path(an, text))
            return out

        tree = build_view_tree(
            workspace, model, image, root_units, parse_many(open), parse_many(removed), k, rule, seed_mode, verify=verify, coverage=coverage
        )
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", an.image.source.rsplit(".", 1)[0])[:60] or "image"
        if format == "json":
            body = json.dumps(tree.to_dict(), indent=1)
            return Response(
                body,
                media_type="application/json",
                headers={"Content-Disposition": f'attachment; filename="featuretree-{stem}.json"'},
            )

        files = render_images(tree)
        if exemplars:
            add_exemplar_grids(workspace, model, tree, files)
        return Response(
            render_html(tree, files),
            media_type="text/html; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="featuretree-{stem}.html"'},
        )

    return app
