"""Draw a digit in a browser and watch a trained run respond: a page plus a small JSON API.

``create_app(run)`` builds the FastAPI app; ``serve(run)`` runs it with uvicorn. The page
(``static/``: plain HTML, CSS and JS, no build step, nothing fetched from elsewhere) posts the
drawing as a PNG to ``/api/predict`` and shows the input as the network sees it, the ten class
probabilities and the conv1/conv2 feature maps.

Safety defaults: listen on 127.0.0.1; bodies over ``max_body_bytes`` get 413 (both the declared
Content-Length and the bytes actually streamed are counted); bad input gets 400 (not readable:
empty, not an image, not JSON) or 422 (readable but unusable: wrong shape, NaN, no digit), with
a message; the client never names a file (the page's three files are held in memory); the
network runs on one worker thread, off the event loop, one request at a time (a torch module is
not safe to call from several threads at once).

Feature maps travel compactly: each map is scaled to its own [min, max] and quantised to uint8,
the bytes base64-encoded, with the per-map min and max alongside so a client can recover values
to within (max - min) / 510.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from torch import nn

from .checkpoint import load_model, model_file
from .datasets import IMAGE_SIZE, load_dataset
from .device import device_description, select_device
from .digitness import DigitScorer, optional_scorer
from .errors import ConfigError, MnistCnnError
from .explain import explain as explain_images
from .limits import DEFAULT_HOST, DEFAULT_PORT, MAX_BODY_BYTES
from .preprocess import ImageError, load_image, preprocess_image
from .rundir import run_classes, run_test_accuracy

log = logging.getLogger(__name__)

# Seconds an idle keep-alive connection stays open. uvicorn's 5 s default closes connections that
# a busy client is about to reuse, and the request on them fails (seen under load on loopback).
KEEP_ALIVE_S = 30
# Memory bound: a picture may decode to at most SERVER_MAX_PIXELS (16 MP: 64 MB as RGBA) and is
# shrunk to about 1 MP before any float work; at most DECODE_SLOTS bodies are decoded (images)
# or parsed (JSON arrays) at once. Measured by benchmarks/serve_memory.py (docs/reliability.md).
SERVER_MAX_PIXELS = 16_000_000
DECODE_SLOTS = 2
MAX_ERROR_CHARS = 1_000  # an error's message is cut to this: error bodies stay well under 4 KB
# Host names the server answers to (a DNS-rebinding guard); ``--host`` adds its own.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
MAP_LAYERS = ("conv1", "conv2")  # the feature maps the page shows: (32, 28, 28) and (64, 14, 14)
STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {  # URL name -> media type; the only files the app ever sends
    "index.html": "text/html; charset=utf-8",
    "docs.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "docs.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# Everything the page loads comes from this server: the browser refuses anything else.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


# --------------------------------------------------------------------------- encoding


def encode_image(image: np.ndarray) -> dict[str, Any]:
    """A (H, W) uint8 image as ``{"shape": [H, W], "data": base64 of its row-major bytes}``."""
    arr = np.ascontiguousarray(image, dtype=np.uint8)
    return {"shape": list(arr.shape), "data": base64.b64encode(arr.tobytes()).decode("ascii")}


def encode_maps(maps: torch.Tensor) -> dict[str, Any]:
    """Feature maps (C, H, W) -> uint8 per map over its own [min, max], base64, with min and max.

    Map c's value at byte q is ``min[c] + q / 255 * (max[c] - min[c])``; a constant map is all 0.
    """
    c, h, w = maps.shape
    flat = maps.detach().to("cpu", torch.float32).reshape(c, h * w)
    lo = flat.min(dim=1).values
    hi = flat.max(dim=1).values
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    q = ((flat - lo[:, None]) / span[:, None] * 255).round().clamp(0, 255).to(torch.uint8)
    return {
        "shape": [c, h, w],
        "min": [float(f"{v:.6g}") for v in lo.tolist()],
        "max": [float(f"{v:.6g}") for v in hi.tolist()],
        "data": base64.b64encode(q.numpy().tobytes()).decode("ascii"),
    }


def decode_maps(encoded: dict[str, Any]) -> np.ndarray:
    """The inverse of :func:`encode_maps`: float32 (C, H, W), each value within span / 510."""
    c, h, w = encoded["shape"]
    q = np.frombuffer(base64.b64decode(encoded["data"]), dtype=np.uint8).reshape(c, h * w)
    lo = np.asarray(encoded["min"], dtype=np.float32)[:, None]
    hi = np.asarray(encoded["max"], dtype=np.float32)[:, None]
    return (lo + q.astype(np.float32) / 255 * (hi - lo)).reshape(c, h, w)


def decode_image(encoded: dict[str, Any]) -> np.ndarray:
    """The inverse of :func:`encode_image`: uint8 (H, W)."""
    h, w = encoded["shape"]
    return np.frombuffer(base64.b64decode(encoded["data"]), dtype=np.uint8).reshape(h, w).copy()


def array_to_image(
    values: Any, *, preprocess: bool = False, invert: bool | None = None
) -> np.ndarray:
    """A client's 2-D array (0–255, or 0–1 when no value exceeds 1) -> the 28×28 uint8 input.

    Without ``preprocess`` the array must already be 28×28, white ink on black, as MNIST's
    digits are; with it, any 2-D picture goes through MNIST's preprocessing. Raises ImageError.
    """
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError):
        raise ImageError(
            "image must be a 2-D array of numbers (a list of equal-length rows)"
        ) from None
    if arr.ndim != 2 or arr.size == 0:
        raise ImageError(f"image must be a non-empty 2-D array; got shape {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise ImageError("image holds NaN or infinite values; send numbers in 0–255 or 0–1")
    if arr.min() < 0 or arr.max() > 255:
        raise ImageError(
            f"image values must lie in 0–255 (or 0–1); got {arr.min():g} to {arr.max():g}"
        )
    if arr.max() > 1:
        arr = arr / 255.0
    if preprocess:
        return preprocess_image(arr.astype(np.float32), invert=invert)
    if arr.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise ImageError(
            f"image must be {IMAGE_SIZE}×{IMAGE_SIZE} (or set preprocess to true for other "
            f"sizes); got {arr.shape[0]}×{arr.shape[1]}"
        )
    if invert:
        arr = 1.0 - arr
    return (arr * 255).round().astype(np.uint8)


def cut_message(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """One line of at most ``limit`` characters: errors never echo a client's body back."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_array_request(raw: bytes) -> tuple[ArrayRequest, np.ndarray]:
    """A ``/api/predict/array`` body -> (its options, the image as float64 (H, W)).

    Blocking and memory-hungry for big bodies (the caller runs it on a worker thread, in a
    decode slot). The image is converted by numpy in one pass, which fails fast on strings or
    ragged rows instead of collecting one validation error per element; the other fields go
    through the pydantic model. Raises ImageError with a short message.
    """
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # not UTF-8 (a PNG), not JSON, nested too deep
        raise ImageError('request body is not JSON; send {"image": [[...], ...]}') from None
    if not isinstance(data, dict) or "image" not in data:
        raise ImageError('request body must be a JSON object with an "image" field')
    values = data.pop("image")
    if not isinstance(values, list) or not all(isinstance(row, list) for row in values):
        raise ImageError("image must be a 2-D array of numbers (a list of equal-length rows)")
    try:
        options = ArrayRequest.model_validate({**data, "image": []})
    except ValidationError as err:
        raise ImageError(cut_message(_validation_summary(err.errors()))) from None
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        raise ImageError(
            "image must be a 2-D array of numbers (a list of equal-length rows)"
        ) from None
    return options, arr


def _validation_summary(errors: Sequence[Any]) -> str:
    """'where: what' for the first few validation errors, without the values that failed."""
    parts = []
    for e in list(errors)[:3]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{where or 'body'}: {e.get('msg', 'invalid')}")
    more = len(errors) - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


# --------------------------------------------------------------------------- the network


class Predictor:
    """Runs one network on a single worker thread: one image at a time, off the event loop."""

    def __init__(
        self, model: nn.Module, device: torch.device, scorer: DigitScorer | None = None
    ) -> None:
        self.model = model
        self.device = device
        self.scorer = scorer
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()

    def predict(
        self, image: np.ndarray, activations: bool = False, explain: bool = False
    ) -> dict[str, Any]:
        """The network's answer for one 28×28 uint8 image (white ink on black); blocking.

        ``explain``: also the integrated-gradients attribution of the predicted class (one
        image, ``IG_STEPS`` network inputs in one pass: bounded memory).
        """
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.uint8)).to(self.device)
        x = x.to(torch.float32).div_(255).view(1, 1, IMAGE_SIZE, IMAGE_SIZE)
        with torch.inference_mode():
            logits, acts = self.model(x, return_activations=True)
            probs = torch.softmax(logits.float(), dim=1)[0].cpu()
            maps = {name: acts[name][0].cpu() for name in MAP_LAYERS} if activations else None
        result: dict[str, Any] = {
            "prediction": int(probs.argmax()),
            "probabilities": [float(f"{p:.6g}") for p in probs.tolist()],
            "input": encode_image(image),
        }
        if maps is not None:
            result["activations"] = {name: encode_maps(m) for name, m in maps.items()}
        if self.scorer is not None:
            score = float(self.scorer.scores(self.model, image[None])[0])
            result["digit_score"] = float(f"{score:.6g}")
            result["not_a_digit"] = bool(score < self.scorer.threshold)
        if explain:
            e = explain_images(self.model, image[None], "integrated-gradients")
            result["attribution"] = encode_maps(torch.from_numpy(e.attributions))
        return result

    async def predict_async(
        self, image: np.ndarray, activations: bool = False, explain: bool = False
    ) -> dict[str, Any]:
        """:meth:`predict` on the worker thread, awaited without blocking the event loop."""
        with self._executor_lock:
            if self._executor is None:  # first use, or used again after close()
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="mnist-cnn-model")
            executor = self._executor
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, self.predict, image, activations, explain)

    def close(self) -> None:
        """Stop the worker thread (after the request it is running, if any)."""
        with self._executor_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)


# --------------------------------------------------------------------------- body limit


class BodyLimitMiddleware:
    """413 for a request body over ``max_bytes``: by its Content-Length and by the bytes sent.

    The body (at most ``max_bytes``) is read before the app sees the request, so a client that
    declares a small length, or none (chunked), and then streams more is cut off all the same.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reply(self, send: Callable[..., Awaitable[None]], status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _too_large(self, size: str) -> str:
        return f"request body {size} is over this server's limit of {self.max_bytes:,} bytes"

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await self._reply(send, 400, "Content-Length is not a number")
                return
            if length > self.max_bytes:
                await self._reply(send, 413, self._too_large(f"of {length:,} bytes"))
                return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await self._reply(send, 413, self._too_large("(streamed)"))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class HostCheckMiddleware:
    """400 for a request whose Host header names none of ``allowed`` (``"*"``: any).

    A web page elsewhere can point a DNS name of its own at 127.0.0.1 and drive a local server
    from the user's browser (DNS rebinding); its requests then carry that name as their Host.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], allowed: Sequence[str]) -> None:
        self.app = app
        self.allowed = frozenset(h.lower() for h in allowed)

    @staticmethod
    def host_name(header: str) -> str:
        """The name in a Host header, without its port ('[::1]:8000' -> '[::1]')."""
        header = header.strip().lower()
        if header.startswith("["):
            return header[: header.find("]") + 1]
        return header.rsplit(":", 1)[0] if header.count(":") == 1 else header

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket") or "*" in self.allowed:
            await self.app(scope, receive, send)
            return
        raw = dict(scope["headers"]).get(b"host", b"")
        if self.host_name(raw.decode("latin-1")) in self.allowed:
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "detail": "this server answers only to Host "
                + ", ".join(sorted(self.allowed))[:500]
                + " (start it with --allow-host NAME to add one)"
            }
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 400, "headers": headers})
        await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- the app


class EncodedImage(BaseModel):
    """A uint8 image: base64 of its row-major bytes."""

    shape: list[int] = Field(description="[height, width]")
    data: str = Field(description="base64 of the uint8 pixels, row by row")


class EncodedMaps(BaseModel):
    """Feature maps, each quantised to uint8 over its own [min, max]."""

    shape: list[int] = Field(description="[maps, height, width]")
    min: list[float] = Field(description="each map's smallest value")
    max: list[float] = Field(description="each map's largest value")
    data: str = Field(description="base64 of uint8 bytes, map by map, row by row")


class Prediction(BaseModel):
    """The network's answer for one image."""

    prediction: int = Field(description="index of the most probable class")
    probabilities: list[float] = Field(description="softmax over the classes")
    input: EncodedImage = Field(description="the 28×28 image the network saw")
    activations: dict[str, EncodedMaps] | None = Field(
        None, description="conv1 (32×28×28) and conv2 (64×14×14), when asked for"
    )
    digit_score: float | None = Field(
        None, description="how digit-like the input is (higher: more; see not_a_digit)"
    )
    not_a_digit: bool | None = Field(
        None,
        description="true: not sure this is a digit (the score is below the run's "
        "threshold, set on its validation digits so as to flag at most about 2% of real digits)",
    )
    attribution: EncodedMaps | None = Field(
        None,
        description="what made it say this, when asked for (explain=true): integrated "
        "gradients of the predicted class, 1×28×28, signed (positive: evidence for it)",
    )


class LabelledPrediction(Prediction):
    """The network's answer for a test digit, with its true label."""

    index: int = Field(description="position in the test split")
    label: int = Field(description="the true class")
    correct: bool = Field(description="whether the prediction is the label")


class ArrayRequest(BaseModel):
    """A picture as rows of numbers."""

    image: list[list[float]] = Field(
        description="rows of pixels, 0–255 (or 0–1 when no value exceeds 1); 28×28 white "
        "ink on black unless preprocess is true"
    )
    preprocess: bool = Field(
        False, description="apply MNIST's preprocessing (crop, fit 20×20, centre of mass)"
    )
    invert: bool | None = Field(
        None,
        description="ink is dark on light (null: decide from the border when "
        "preprocessing; otherwise false)",
    )
    activations: bool = Field(False, description="also return conv1 and conv2 feature maps")
    explain: bool = Field(False, description="also return the attribution of the prediction")


@dataclass(frozen=True)
class DigitSet:
    """Digits with labels for the "random test digit" button (the test split)."""

    images: np.ndarray  # uint8 (N, 28, 28)
    labels: np.ndarray  # int64 (N,)


def _load_test_digits(dataset: str, data_dir: str | os.PathLike[str] | None) -> DigitSet | None:
    try:
        data = load_dataset(dataset, data_dir, download=False)
    except MnistCnnError as err:
        log.warning("no test digits for the 'random test digit' button: %s", err)
        return None
    return DigitSet(data.test.images.numpy(), data.test.labels.numpy())


def create_app(
    run: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    max_body_bytes: int = MAX_BODY_BYTES,
    test_digits: DigitSet | None = None,
    allowed_hosts: Sequence[str] = LOOPBACK_HOSTS,
    digit_check: bool = True,
    on_calibrate: Callable[[str], None] | None = None,
) -> FastAPI:
    """The FastAPI app serving the draw-a-digit page and the JSON API for RUN.

    The model loads now, so a bad run raises CheckpointError here, before anything listens.
    Test digits come from the run's dataset in ``data_dir`` (or ``test_digits``); without them
    the page still works and only the random-test-digit button is unavailable. Requests whose
    Host header names none of ``allowed_hosts`` get 400 (a web page elsewhere cannot reach the
    server through DNS rebinding); ``"*"`` allows any. ``digit_check``: answer ``not_a_digit``
    too (the run's stored check, calibrated on its dataset on first use; ``on_calibrate``
    hears when that starts).
    """
    if max_body_bytes < 1:
        raise ConfigError(f"max_body_bytes must be at least 1, got {max_body_bytes}")
    path = model_file(run)
    torch_device = select_device(device)
    model, meta = load_model(path, torch_device)
    dataset, names = run_classes(path, meta)
    classes = list(names)
    try:
        accuracy = run_test_accuracy(path)
    except MnistCnnError as err:  # the page works without it
        log.warning("no test accuracy shown: %s", err)
        accuracy = None
    if test_digits is None:
        test_digits = _load_test_digits(dataset, data_dir)
    # The not-a-digit check (calibrated on the run's dataset on first use; see digitness.py).
    scorer = (
        optional_scorer(path, model, data_dir=data_dir, dataset=dataset, on_calibrate=on_calibrate)
        if digit_check
        else None
    )
    predictor = Predictor(model, torch_device, scorer)
    rng = np.random.default_rng()
    rng_lock = threading.Lock()
    # Bounds the memory of decoding: each slot holds at most one body's decoded picture or
    # parsed array. Created lazily, inside the server's event loop.
    decode_slots: list[asyncio.Semaphore] = []

    @contextlib.asynccontextmanager
    async def decode_slot() -> AsyncIterator[None]:
        if not decode_slots:
            decode_slots.append(asyncio.Semaphore(DECODE_SLOTS))
        async with decode_slots[0]:
            yield

    static = {name: (STATIC_DIR / name).read_bytes() for name in STATIC_FILES}
    run_name = path.parent.name if path.name == "model.safetensors" else path.name
    info = {
        "run": run_name,
        "dataset": dataset,
        "classes": classes,
        "test_accuracy": accuracy,
        "step": meta.get("step"),
        "device": device_description(torch_device),
        "test_digits": 0 if test_digits is None else int(len(test_digits.labels)),
        "max_body_bytes": max_body_bytes,
        "digit_check": scorer is not None,
    }

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        predictor.close()

    app = FastAPI(
        title="mnist-cnn",
        summary="Draw a digit and watch a trained network's prediction and feature maps.",
        description=(
            "Predictions from one trained run. Images are 28×28 uint8, white ink on black, "
            "base64 of the row-major bytes. Feature maps (`activations=true`) are per-map uint8 "
            "over [min, max]: value = min + byte / 255 × (max − min)."
        ),
        version="1",
        docs_url=None,  # FastAPI's own /docs loads its scripts from a CDN; ours is offline
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.predictor = predictor
    app.state.info = info

    upload_errors = {
        400: {"description": "not readable as an image (empty, not an image, bad multipart)"},
        413: {"description": "body over the size limit"},
        422: {"description": "an image, but no digit in it; or a bad query parameter"},
    }
    array_errors = {
        413: {"description": "body over the size limit"},
        422: {"description": "not JSON, or not a usable array (wrong shape, NaN, out of range)"},
    }

    def _page(name: str) -> Response:
        return Response(static[name], media_type=STATIC_FILES[name])

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable) -> Any:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    # ----------------------------------------------------------------- page

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return _page("index.html")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return _page("docs.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        if name not in STATIC_FILES:  # a lookup in a fixed table: the path never reaches disk
            raise HTTPException(404, "no such file")
        return _page(name)

    # ----------------------------------------------------------------- API

    @app.get("/api/info", summary="About the run being served")
    async def api_info() -> dict[str, Any]:
        return info

    @app.post(
        "/api/predict",
        summary="Predict from an image file (PNG, JPEG, ...)",
        description=(
            "Send the image as the raw request body, or as the field `file` of a multipart "
            "form. It goes through MNIST's preprocessing: dark-on-light pictures are inverted, "
            "the digit is cropped, fitted into 20×20 and centred by its centre of mass."
        ),
        response_model=Prediction,
        response_model_exclude_none=True,
        responses=upload_errors,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "image/png": {"schema": {"type": "string", "format": "binary"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"file": {"type": "string", "format": "binary"}},
                            "required": ["file"],
                        }
                    },
                },
            }
        },
    )
    async def api_predict(
        request: Request,
        activations: bool = Query(False, description="also return conv1 and conv2 feature maps"),
        invert: bool | None = Query(
            None, description="ink is dark on light (default: decide from the border)"
        ),
        explain: bool = Query(False, description="also return what made it say this"),
    ) -> Any:
        data = await _image_bytes(request)
        async with decode_slot():
            try:
                picture = await asyncio.to_thread(load_image, data, max_pixels=SERVER_MAX_PIXELS)
            except ImageError as err:
                raise HTTPException(400, _upload_message(err)) from None
            del data
            try:
                image = await asyncio.to_thread(preprocess_image, picture, invert=invert)
            except ImageError as err:
                raise HTTPException(422, str(err)) from None
            del picture
        return await predictor.predict_async(image, activations, explain)

    @app.post(
        "/api/predict/array",
        summary="Predict from a 2-D array of pixels",
        response_model=Prediction,
        response_model_exclude_none=True,
        responses=array_errors,
        # The body is parsed by parse_array_request off the event loop (a big array of strings
        # would otherwise be validated on it, element by element); the schema is the same.
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ArrayRequest.model_json_schema()}},
            }
        },
    )
    async def api_predict_array(request: Request) -> Any:
        raw = await request.body()
        async with decode_slot():
            try:
                body, values = await asyncio.to_thread(parse_array_request, raw)
                del raw
                image = await asyncio.to_thread(
                    array_to_image, values, preprocess=body.preprocess, invert=body.invert
                )
            except ImageError as err:
                raise HTTPException(422, cut_message(str(err))) from None
            del values
        return await predictor.predict_async(image, body.activations, body.explain)

    @app.get(
        "/api/random-test-digit",
        summary="A test-set digit (random, or by index) with its label and the prediction",
        response_model=LabelledPrediction,
        response_model_exclude_none=True,
        responses={
            422: {"description": "index out of range"},
            503: {"description": "the test set is not available on this server"},
        },
    )
    async def api_random_test_digit(
        activations: bool = Query(False, description="also return conv1 and conv2 feature maps"),
        index: int | None = Query(None, description="a given test digit instead of a random one"),
        explain: bool = Query(False, description="also return what made it say this"),
    ) -> Any:
        if test_digits is None:
            raise HTTPException(
                503,
                f"the {dataset} test set is not on this server; start it with --data-dir "
                "pointing at the folder that holds it",
            )
        n = len(test_digits.labels)
        if index is None:
            with rng_lock:
                index = int(rng.integers(n))
        elif not 0 <= index < n:
            raise HTTPException(422, f"index must lie in 0–{n - 1}, got {index}")
        result = await predictor.predict_async(test_digits.images[index], activations, explain)
        label = int(test_digits.labels[index])
        return {**result, "index": index, "label": label, "correct": result["prediction"] == label}

    async def _image_bytes(request: Request) -> bytes:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            return await request.body()
        try:
            form = await request.form()
        except Exception as err:  # malformed multipart: the parser's own message
            raise HTTPException(400, f"malformed multipart body ({err})") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(400, "multipart body has no file field named 'file'")
        return await upload.read()

    @app.exception_handler(MnistCnnError)
    async def mnist_cnn_error(request: Request, err: MnistCnnError) -> JSONResponse:
        return JSONResponse({"detail": cut_message(str(err))}, status_code=422)

    # Error bodies are one short line: never the client's input echoed back, never a traceback.
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        detail = err.detail if isinstance(err.detail, str) else json.dumps(err.detail)
        return JSONResponse(
            {"detail": cut_message(detail)}, status_code=err.status_code, headers=err.headers
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": cut_message(_validation_summary(err.errors()))}, 422)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error answering %s", request.url.path)
        return JSONResponse({"detail": "internal error; see the server's log"}, 500)

    # Added last, so they run first: the Host is checked, then the body's size, before anything
    # reads a body.
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(HostCheckMiddleware, allowed=allowed_hosts)
    return app


def _upload_message(err: ImageError) -> str:
    # load_image names its source "image"; say "body" so the client knows what was wrong.
    text = str(err)
    return "request body" + text[len("image") :] if text.startswith("image:") else text


# --------------------------------------------------------------------------- running it


def is_loopback(host: str) -> bool:
    """Whether HOST only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts_for(host: str, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The Host names a server listening on ``host`` answers to: the loopback names, ``host``
    itself and ``extra``; for a wildcard address (0.0.0.0, ::) also this machine's names and
    addresses, since other machines reach it by those."""
    names = list(LOOPBACK_HOSTS)
    candidates = [host, *extra]
    if host in ("0.0.0.0", "::", ""):
        candidates += [socket.gethostname(), socket.getfqdn()]
        with contextlib.suppress(OSError):
            candidates += [i[4][0] for i in socket.getaddrinfo(socket.gethostname(), None)]
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # UDP: no packet is sent; picks the outward address
            candidates.append(s.getsockname()[0])
    for name in candidates:
        name = name.strip().lower()
        if ":" in name and not name.startswith("["):  # an IPv6 address, as browsers write it too
            names.append(f"[{name}]")
        if name and name not in ("0.0.0.0", "::"):
            names.append(name)
    return tuple(dict.fromkeys(names))


def bind_socket(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> socket.socket:
    """A listening TCP socket (port 0: a free one), or MnistCnnError saying why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ConfigError(f"cannot listen on {host!r}: {err.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        sock.close()
        hint = "; choose another --port" if err.errno in (98, 48, 10048) else ""
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror}{hint}") from None
    sock.set_inheritable(True)
    return sock


def socket_url(sock: socket.socket) -> str:
    """The http:// URL a bound socket answers on."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def serve(
    run: str | os.PathLike[str],
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    max_body_bytes: int = MAX_BODY_BYTES,
    on_ready: Callable[[str], None] | None = None,
    allow_hosts: Sequence[str] = (),
    on_calibrate: Callable[[str], None] | None = None,
) -> None:
    """Serve RUN's page and API until interrupted; ``on_ready(url)`` once it listens,
    ``on_calibrate(message)`` before the run's digit check is calibrated (its first use).

    Requests must name ``host`` (or a loopback name, or one of ``allow_hosts``) in their Host
    header; see :func:`allowed_hosts_for`.
    """
    import uvicorn

    app = create_app(
        run,
        data_dir=data_dir,
        device=device,
        max_body_bytes=max_body_bytes,
        allowed_hosts=allowed_hosts_for(host, allow_hosts),
        on_calibrate=on_calibrate,
    )
    sock = bind_socket(host, port)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on", timeout_keep_alive=KEEP_ALIVE_S
    )
    server = uvicorn.Server(config)
    if on_ready is not None:
        on_ready(socket_url(sock))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


@contextlib.contextmanager
def running_server(app: Any, host: str = DEFAULT_HOST, port: int = 0) -> Iterator[str]:
    """Run APP with uvicorn on a background thread (e.g. from a notebook); yields its URL."""
    import uvicorn

    sock = bind_socket(host, port)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, timeout_keep_alive=KEEP_ALIVE_S)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise MnistCnnError("the server stopped while starting; see the log above")
            threading.Event().wait(0.02)
        yield socket_url(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
