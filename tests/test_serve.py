"""The draw-a-digit app through its API: predictions, feature maps, limits and bad input."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from mnist_cnn import cli
from mnist_cnn.checkpoint import load_model
from mnist_cnn.errors import CheckpointError, ConfigError
from mnist_cnn.preprocess import ImageError, load_image, preprocess_image
from mnist_cnn.serve import (
    MAP_LAYERS,
    STATIC_DIR,
    STATIC_FILES,
    DigitSet,
    array_to_image,
    bind_socket,
    create_app,
    decode_image,
    decode_maps,
    encode_maps,
    is_loopback,
    running_server,
)

LIMIT = 64 * 1024  # a small body limit so oversized requests stay cheap


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def photo_of(digit: np.ndarray) -> np.ndarray:
    """A test digit as a person's picture: dark ink on white paper, 5× larger, off centre."""
    big = np.asarray(Image.fromarray(digit).resize((140, 140), Image.Resampling.BILINEAR))
    paper = np.full((200, 180), 255, dtype=np.uint8)
    paper[10:150, 30:170] = 255 - big
    return paper


@pytest.fixture(scope="module")
def digits(mnist) -> DigitSet:
    return DigitSet(mnist.test.images.numpy(), mnist.test.labels.numpy())


@pytest.fixture(scope="module")
def client(trained_run: Path, digits: DigitSet):
    app = create_app(trained_run, max_body_bytes=LIMIT, test_digits=digits)
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def model(trained_run: Path) -> torch.nn.Module:
    return load_model(trained_run, "cpu")[0]


# --------------------------------------------------------------------------- pure helpers


def test_encode_maps_round_trip_within_half_a_step() -> None:
    maps = torch.rand(5, 7, 6) * torch.tensor([0.0, 1.0, 3.0, 10.0, 0.5]).view(5, 1, 1)
    maps[4] = 0.25  # a constant map
    enc = encode_maps(maps)
    assert enc["shape"] == [5, 7, 6]
    back = decode_maps(enc)
    span = (maps.amax(dim=(1, 2)) - maps.amin(dim=(1, 2))).numpy()
    err = np.abs(back - maps.numpy()).reshape(5, -1).max(axis=1)
    assert np.all(err <= span / 510 + 1e-5), (err, span)
    assert np.allclose(back[4], 0.25)


def test_array_to_image_scales_and_checks() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(28, 28)).astype(np.uint8)
    assert np.array_equal(array_to_image(img.tolist()), img)
    assert np.array_equal(array_to_image((img / 255.0).tolist()), img)
    assert np.array_equal(array_to_image(img.tolist(), invert=True), 255 - img)
    with pytest.raises(ImageError, match="28×28"):
        array_to_image(np.zeros((27, 28)))
    with pytest.raises(ImageError, match="NaN"):
        array_to_image([[float("nan")] * 28] * 28)
    with pytest.raises(ImageError, match="0–255"):
        array_to_image([[300.0] * 28] * 28)
    with pytest.raises(ImageError, match="2-D"):
        array_to_image([[1, 2], [3]])


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")


def test_busy_port_is_a_clear_error() -> None:
    sock = bind_socket("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        with pytest.raises(ConfigError, match="choose another --port"):
            bind_socket("127.0.0.1", port)
    finally:
        sock.close()


# --------------------------------------------------------------------------- page


def test_page_and_its_files_are_served_offline(client: TestClient) -> None:
    res = client.get("/")
    assert res.status_code == 200
    assert "text/html" in res.headers["content-type"]
    assert "default-src 'none'" in res.headers["content-security-policy"]
    for name in STATIC_FILES:
        assert client.get(f"/static/{name}").status_code == 200
        text = (STATIC_DIR / name).read_text()
        # Nothing is loaded from another machine: no absolute or protocol-relative URLs.
        assert "http:" not in text and "https:" not in text, name
        assert not re.search(r"""(src|href)=["']//""", text), name
    assert client.get("/docs").status_code == 200
    assert client.get("/static/serve.py").status_code == 404
    assert client.get("/static/..%2Fserve.py").status_code == 404
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/predict", "/api/predict/array", "/api/random-test-digit"} <= set(paths)


# --------------------------------------------------------------------------- predictions


def test_png_of_a_photographed_digit_is_recognised(client: TestClient, digits: DigitSet) -> None:
    right = 0
    for i in range(10):
        res = client.post("/api/predict", content=png_bytes(photo_of(digits.images[i])))
        assert res.status_code == 200, res.text
        body = res.json()
        assert "activations" not in body
        assert len(body["probabilities"]) == 10
        assert abs(sum(body["probabilities"]) - 1) < 1e-4
        right += body["prediction"] == int(digits.labels[i])
    assert right >= 9, right


def test_png_input_is_the_preprocessed_image_and_maps_match_the_model(
    client: TestClient, digits: DigitSet, model: torch.nn.Module
) -> None:
    data = png_bytes(photo_of(digits.images[3]))
    res = client.post("/api/predict?activations=true", content=data)
    assert res.status_code == 200, res.text
    body = res.json()
    expected = preprocess_image(load_image(data))
    assert np.array_equal(decode_image(body["input"]), expected)
    x = torch.from_numpy(expected).float().div(255).view(1, 1, 28, 28)
    with torch.inference_mode():
        logits, acts = model(x, return_activations=True)
    assert body["prediction"] == int(logits.argmax())
    assert set(body["activations"]) == set(MAP_LAYERS)
    for name in MAP_LAYERS:
        got = decode_maps(body["activations"][name])
        want = acts[name][0].numpy()
        assert got.shape == want.shape
        span = np.ptp(want.reshape(want.shape[0], -1), axis=1)
        err = np.abs(got - want).reshape(want.shape[0], -1).max(axis=1)
        assert np.all(err <= span / 510 + 1e-4), name


def test_multipart_upload_matches_raw_body(client: TestClient, digits: DigitSet) -> None:
    data = png_bytes(photo_of(digits.images[0]))
    raw = client.post("/api/predict", content=data, headers={"content-type": "image/png"})
    form = client.post("/api/predict", files={"file": ("seven.png", data, "image/png")})
    assert raw.status_code == form.status_code == 200
    assert raw.json() == form.json()
    no_file = client.post("/api/predict", files={"other": ("x.png", data, "image/png")})
    assert no_file.status_code == 400 and "'file'" in no_file.json()["detail"]


def test_array_endpoint_in_both_scales(client: TestClient, digits: DigitSet) -> None:
    img = digits.images[1]
    a = client.post("/api/predict/array", json={"image": img.tolist(), "activations": True})
    b = client.post("/api/predict/array", json={"image": (img / 255).tolist()})
    assert a.status_code == b.status_code == 200
    assert a.json()["prediction"] == b.json()["prediction"] == int(digits.labels[1])
    assert np.array_equal(decode_image(a.json()["input"]), img)
    assert a.json()["activations"]["conv2"]["shape"] == [64, 14, 14]
    photo = client.post(
        "/api/predict/array", json={"image": photo_of(img)[::3, ::3].tolist(), "preprocess": True}
    )
    assert photo.status_code == 200 and photo.json()["prediction"] == int(digits.labels[1])


def test_random_test_digit_reports_label_and_mistakes(tiny_run: Path, tiny_data) -> None:
    """The test digit's label and the verdict come from the test set and the prediction.

    The same picture is labelled once with what the network predicts (asked through the other
    endpoint) and once with another class: the first must be reported right, the second a
    mistake, each with its own label.
    """
    image = tiny_data.test.images[0].numpy()
    app = create_app(tiny_run, test_digits=DigitSet(image[None], np.array([0])))
    with TestClient(app, base_url="http://127.0.0.1") as c:
        predicted = c.post("/api/predict/array", json={"image": image.tolist()}).json()
    other = (predicted["prediction"] + 1) % 10
    digits = DigitSet(np.stack([image, image]), np.array([predicted["prediction"], other]))
    app = create_app(tiny_run, test_digits=digits)
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        right = c.get("/api/random-test-digit?index=0&activations=true").json()
        wrong = c.get("/api/random-test-digit?index=1").json()
        assert right["index"] == 0 and right["label"] == predicted["prediction"]
        assert right["correct"] is True and right["prediction"] == predicted["prediction"]
        assert wrong["index"] == 1 and wrong["label"] == other
        assert wrong["correct"] is False and wrong["prediction"] == predicted["prediction"]
        assert np.array_equal(decode_image(right["input"]), image)
        assert set(right["activations"]) == set(MAP_LAYERS)
        assert {c.get("/api/random-test-digit").json()["index"] for _ in range(8)} <= {0, 1}
        assert c.get("/api/random-test-digit?index=2").status_code == 422
        assert c.get("/api/random-test-digit?index=-1").status_code == 422


def test_info(client: TestClient, trained_run: Path) -> None:
    info = client.get("/api/info").json()
    assert info["run"] == trained_run.name and info["dataset"] == "mnist"
    assert info["test_digits"] == 10000 and info["max_body_bytes"] == LIMIT
    assert 0.9 < info["test_accuracy"] <= 1


# --------------------------------------------------------------------------- bad input


def test_bad_uploads_get_400_or_422_with_a_message(client: TestClient) -> None:
    blank = png_bytes(np.full((50, 50), 255, dtype=np.uint8))
    noise = png_bytes(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    cases = {
        "empty": (b"", 400, "empty"),
        "not an image": (b"hello, this is text", 400, "not an image"),
        "truncated PNG": (noise[: len(noise) // 2], 400, "damaged image"),
        "blank page": (blank, 422, "no digit"),
    }
    for name, (data, status, words) in cases.items():
        res = client.post("/api/predict", content=data)
        assert res.status_code == status, (name, res.status_code, res.text)
        assert words in res.json()["detail"], (name, res.json())
    assert client.post("/api/predict?activations=maybe", content=blank).status_code == 422


def test_bad_arrays_get_422_with_a_message(client: TestClient) -> None:
    headers = {"content-type": "application/json"}
    row = ",".join(["0"] * 28)
    nan_body = '{"image": [[NaN' + ",0" * 27 + "]" + f",[{row}]" * 27 + "]}"
    inf_body = '{"image": [[1e999' + ",0" * 27 + "]" + f",[{row}]" * 27 + "]}"
    cases = {
        "wrong shape": (json.dumps({"image": [[0] * 27] * 28}), "28×28"),
        "1-D": (json.dumps({"image": [0] * 784}), ""),
        "ragged": (json.dumps({"image": [[0] * 28] * 27 + [[0] * 5]}), "2-D"),
        "empty": (json.dumps({"image": []}), "2-D"),
        "NaN": (nan_body, "NaN"),
        "infinite": (inf_body, "NaN or infinite"),
        "negative": (json.dumps({"image": [[-1] * 28] * 28}), "0–255"),
        "too bright": (json.dumps({"image": [[256] * 28] * 28}), "0–255"),
        "not numbers": (json.dumps({"image": [["a"] * 28] * 28}), ""),
        "no image": (json.dumps({"picture": []}), ""),
        "not JSON": ("{image: ", ""),
        "blank, preprocessed": (json.dumps({"image": [[0] * 28] * 28, "preprocess": True}), "no "),
    }
    for name, (text, words) in cases.items():
        res = client.post("/api/predict/array", content=text, headers=headers)
        assert res.status_code == 422, (name, res.status_code, res.text)
        detail = res.json()["detail"]
        assert detail, name
        assert words in (detail if isinstance(detail, str) else json.dumps(detail)), (name, detail)


def test_oversized_bodies_get_413(client: TestClient) -> None:
    big = b"\x89PNG" + b"\0" * LIMIT
    declared = client.post("/api/predict", content=big)
    assert declared.status_code == 413
    assert f"{LIMIT:,}" in declared.json()["detail"]

    def chunks():  # no Content-Length: the server must count what arrives
        for _ in range(LIMIT // 4096 + 2):
            yield b"\0" * 4096

    streamed = client.post("/api/predict", content=chunks())
    assert streamed.status_code == 413
    # A lying Content-Length that is smaller than the body is cut off by the protocol layer
    # in a real server; through the app the streamed count is what decides.
    just_fits = client.post("/api/predict", content=b"x" * LIMIT)
    assert just_fits.status_code == 400  # read, and found not to be an image


# --------------------------------------------------------------------------- starting up


def test_a_model_that_fails_to_load_stops_at_start(tmp_path: Path, capsys) -> None:
    with pytest.raises(CheckpointError):
        create_app(tmp_path)
    damaged = tmp_path / "model.safetensors"
    damaged.write_bytes(b"not a checkpoint")
    status = cli.main(["serve", str(tmp_path), "--port", "0"])
    err = capsys.readouterr().err
    assert status == 1
    assert err.count("\n") == 1 and "damaged or not a safetensors file" in err


def test_without_the_test_set_the_page_still_predicts(trained_run: Path, tmp_path: Path) -> None:
    app = create_app(trained_run, data_dir=tmp_path)
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        assert c.get("/api/info").json()["test_digits"] == 0
        res = c.get("/api/random-test-digit")
        assert res.status_code == 503 and "--data-dir" in res.json()["detail"]
        ok = c.post("/api/predict/array", json={"image": [[0.0] * 28] * 28})
        assert ok.status_code == 200


def test_cli_says_where_it_listens_and_warns_off_loopback(monkeypatch, capsys) -> None:
    calls = []

    def fake_serve(run, host, port, **kwargs):
        calls.append((run, host, port, kwargs["max_body_bytes"]))
        kwargs["on_ready"](f"http://{host}:{port}/")

    monkeypatch.setattr("mnist_cnn.serve.serve", fake_serve)
    assert cli.main(["serve", "RUN"]) == 0
    out, err = capsys.readouterr()
    assert "http://127.0.0.1:8000/" in out and "this machine only" in out and not err
    assert cli.main(["serve", "RUN", "--host", "0.0.0.0", "--port", "9000"]) == 0
    out, err = capsys.readouterr()
    assert "http://0.0.0.0:9000/" in out and "warning" in err and "anyone" in err
    assert calls[0] == ("RUN", "127.0.0.1", 8000, 8 * 1024 * 1024)


def test_running_server_answers_on_a_real_socket(trained_run: Path, digits: DigitSet) -> None:
    app = create_app(trained_run, max_body_bytes=LIMIT, test_digits=digits)
    with running_server(app) as url:
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(url + "api/info", timeout=30).json()["test_digits"] == 10000
        res = httpx.post(url + "api/predict", content=b"\0" * (2 * LIMIT), timeout=30)
        assert res.status_code == 413
        ok = httpx.get(url + "api/random-test-digit?index=0", timeout=30)
        assert ok.status_code == 200 and ok.json()["label"] == int(digits.labels[0])
