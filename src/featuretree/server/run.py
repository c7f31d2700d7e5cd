"""``featuretree serve``: check the options, build the app and run it under uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import math
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ..aggregate.pictures import check_model
from ..core.errors import FeatureTreeError, OptionError
from ..core.samples import SAMPLES, sample_path
from ..loading import load_explainer, model_options
from ..models.zoo import MODELS
from .aggregate_view import AggregateSource
from .app import ServerSettings, create_app
from .session import Limits, read_exemplar_info


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, allow_remote: bool) -> None:
    if not is_loopback(host) and not allow_remote:
        raise OptionError(
            f"--host {host} would expose the explorer beyond this computer",
            "use --host 127.0.0.1, or add --allow-remote if you really mean it",
        )


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    check_bind(args.host, args.allow_remote)
    if args.image not in SAMPLES:
        raise OptionError(f"unknown sample {args.image!r}", f"use one of {', '.join(SAMPLES)}; upload other photos in the page")
    if not (args.max_upload_mb > 0 and math.isfinite(args.max_upload_mb)):
        raise OptionError(f"--max-upload-mb must be positive, got {args.max_upload_mb}", "use e.g. --max-upload-mb 20")
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 2**20))
    aggregate = getattr(args, "aggregate", None)
    source = AggregateSource(aggregate, args.model) if aggregate is not None else None  # a missing or foreign folder fails now
    if args.model is not None:
        models: tuple[str, ...] = (args.model,)
    else:
        models = (source.model,) if source is not None else ("efficientnet_lite0", "toy_squares")
    db = getattr(args, "db", None)
    if db is not None:
        info = read_exemplar_info(db)  # a missing or foreign file fails now, in one line
        if info.model not in models:
            raise OptionError(
                f"the exemplar database {db} was built with model {info.model!r}, which this server does not offer",
                f"add --model {info.model}",
            )
    if args.model is None and source is None:
        loader = None
    else:
        if args.model is None:
            loaded = _aggregate_model(source, args.device)
        else:
            loaded = load_explainer(args.model, args.layers, args.device, **model_options(args))  # fail now, not on the first request
        if source is not None:
            # Another model's maps would show trees that were never built: refused in one line, before serving.
            check_model(loaded, source.meta["model"], f"the aggregate {aggregate}")
        # A chain that does not cut the network is refused now, with the reason (unless --allow-bypass).
        loaded.analyze(sample_path(args.image))

        def loader(name: str, device: str):
            return loaded

    unknown = [m for m in models if m not in MODELS and loader is None]
    if unknown:
        raise OptionError(f"unknown model {unknown[0]!r}", f"use one of {', '.join(MODELS)}")
    settings = ServerSettings(
        models=models,
        default_image=args.image,
        device=args.device,
        limits=limits,
        exemplar_db=db,
        prefetch=args.prefetch,
        aggregate=aggregate,
        aggregate_model=source.model if source is not None else None,
    )
    app = create_app(settings, loader=loader)
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as err:
        raise OptionError(f"cannot listen on {args.host}:{args.port} ({err.strerror})", "pick another --port, or --port 0") from None
    port = sock.getsockname()[1]
    shown = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{shown}:{port}/"
    print(f"featuretree explorer on {url}  (Ctrl+C to stop)", flush=True)
    if args.open:
        import webbrowser

        webbrowser.open(url)
    config = uvicorn.Config(app, log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def _aggregate_model(source: AggregateSource, device: str):
    """The aggregate's own model, from the spec, chain and layouts its database records."""
    try:
        return source.load_explainer(device)
    except FeatureTreeError as err:
        raise OptionError(
            f"cannot load the aggregate's model {source.model!r} ({err.problem})",
            "pass --model (and --weights, --layers) as given to `featuretree aggregate`",
        ) from None


@contextmanager
def serve_in_thread(app, host: str = "127.0.0.1") -> Iterator[str]:
    """Run ``app`` under uvicorn on a free port in a background thread; yields the base URL (tests, benchmarks)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
