"""Property-based attacks on the HTTP API: random JSON bodies, random bytes, random queries and
Host headers. Every answer is a 2xx or a 4xx with a short JSON error, never a 5xx."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from mnist_cnn.serve import DigitSet, create_app

from .hostile_util import store_digit_check, tiny_model_file

FUZZ = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    # No shrinking: a failure is reported as found; a failing run stays as short as a passing one.
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
)
MAX_ERROR_BYTES = 4096
LIMIT = 256 * 1024

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)  # what JSON can carry
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=40,
)
rows = st.lists(
    st.lists(
        st.floats(min_value=-10, max_value=300)
        | st.integers(0, 255)
        | st.text(max_size=3)
        | st.none(),
        min_size=0,
        max_size=30,
    ),
    max_size=30,
)
array_bodies = st.fixed_dictionaries(
    {"image": rows},
    optional={
        "preprocess": json_values,
        "invert": json_values,
        "activations": json_values,
    },
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):
    path = store_digit_check(tiny_model_file(tmp_path_factory.mktemp("api") / "model.safetensors"))
    rng = np.random.default_rng(0)
    digits = DigitSet(rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), np.arange(20) % 10)
    app = create_app(path, max_body_bytes=LIMIT, test_digits=digits)
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        yield c


def check(res) -> None:
    assert res.status_code < 500, (res.status_code, res.text[:300])
    if res.status_code >= 400:
        assert len(res.content) <= MAX_ERROR_BYTES, len(res.content)
        detail = res.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail


@pytest.mark.timeout(120)
@FUZZ
@given(body=json_values)
def test_any_json_body_gets_an_answer_not_a_crash(client, body):
    check(client.post("/api/predict/array", content=json.dumps(body)))


@pytest.mark.timeout(120)
@FUZZ
@given(body=array_bodies)
def test_array_like_bodies_get_an_answer_not_a_crash(client, body):
    res = client.post("/api/predict/array", json=body)
    check(res)
    if res.status_code == 200:
        assert len(res.json()["probabilities"]) == 10


@pytest.mark.timeout(120)
@FUZZ
@given(
    data=st.binary(max_size=3_000),
    path=st.sampled_from(["/api/predict", "/api/predict/array"]),
    content_type=st.sampled_from(
        ["image/png", "application/json", "multipart/form-data; boundary=x", "text/plain", ""]
    ),
)
def test_random_bytes_get_an_answer_not_a_crash(client, data, path, content_type):
    check(client.post(path, content=data, headers={"content-type": content_type}))


@pytest.mark.timeout(120)
@FUZZ
@given(
    query=st.dictionaries(
        st.sampled_from(["index", "activations", "invert", "x"]), st.text(max_size=12), max_size=3
    ),
    path=st.sampled_from(
        ["/api/random-test-digit", "/api/info", "/", "/static/app.js", "/static/..%2f"]
    ),
)
def test_random_queries_get_an_answer_not_a_crash(client, query, path):
    check(client.get(path, params=query))


@pytest.mark.timeout(60)
@FUZZ
@given(
    host=st.text(
        alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=30
    )
)
def test_only_loopback_host_names_are_answered(client, host):
    res = client.get("/api/info", headers={"host": host})
    check(res)
    name = host.lower().split("]")[0] + "]" if host.startswith("[") else host.lower()
    name = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
    if name not in ("127.0.0.1", "localhost", "[::1]", "::1"):
        assert res.status_code == 400


def test_a_png_posted_as_json_is_a_422(client):
    png = bytes.fromhex("89504e470d0a1a0a0000000d49484452") + bytes(range(256))
    res = client.post(
        "/api/predict/array", content=png, headers={"content-type": "application/json"}
    )
    assert res.status_code == 422 and "not JSON" in res.json()["detail"]


def test_a_body_of_strings_is_refused_quickly_with_a_short_error(client):
    body = json.dumps({"image": [["x"] * 200] * 200})  # 40,000 strings, 200 KiB
    res = client.post("/api/predict/array", content=body)
    assert res.status_code == 422 and len(res.content) < 300, res.text[:300]


def test_loopback_names_are_answered(client):
    for host in ("127.0.0.1", "127.0.0.1:8000", "localhost:80", "[::1]:8000"):
        assert client.get("/api/info", headers={"host": host}).status_code == 200, host
    assert client.get("/api/info", headers={"host": "evil.example"}).status_code == 400
