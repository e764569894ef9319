"""The OpenAPI document states every answer and the API key; real answers match what it states."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from pipelines.features.spec import default_spec
from pipelines.queue import schemas as queue_schemas
from service import schemas
from service.app import create_app
from tests.service.conftest import (
    LiveServer,
    Trained,
    bundled_candles,
    live_server,
    make_settings,
    wait_until,
)

# Every route that changes state, as the document names it (tests/service/test_security.py
# checks the same routes refuse a request without the key).
GUARDED = {
    ("post", "/api/train/{pair}"),
    ("post", "/api/train/{pair}/{model_type}"),
    ("delete", "/api/training/job/{job_id}"),
    ("post", "/api/training/emergency-stop"),
    ("post", "/api/training/resume"),
    ("post", "/api/training/clear-cooldowns"),
    ("post", "/api/storage/save"),
    ("post", "/api/storage/cleanup"),
}


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    app = create_app(make_settings(tmp_path_factory.mktemp("openapi"), None, api_key="k"))
    return app.openapi()


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            yield method, path, operation


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    resolved: dict[str, Any] = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return resolved


def test_every_success_answer_of_every_route_has_a_schema(document: dict[str, Any]) -> None:
    operations = list(_operations(document))
    assert len(operations) >= 19

    for method, path, operation in operations:
        successes = {c: r for c, r in operation["responses"].items() if c.startswith("2")}
        assert successes, (method, path)
        for code, answer in successes.items():
            schemas = [media.get("schema") for media in answer.get("content", {}).values()]
            assert schemas, (method, path, code)
            assert all(schemas), f"{method} {path} {code} answers an empty schema"


def test_error_answers_are_documented_as_the_json_error_body(document: dict[str, Any]) -> None:
    # FastAPI's own 422 (`{"detail": [...]}`) is not what this service answers.
    assert "HTTPValidationError" not in document["components"]["schemas"]

    for method, path, operation in _operations(document):
        if path in ("/metrics", "/livez"):  # answered without the service state: never 503
            continue
        failures = {c: r for c, r in operation["responses"].items() if c >= "400"}
        assert "503" in failures, (method, path)
        for code, answer in failures.items():
            schema = _resolve(document, answer["content"]["application/json"]["schema"])
            assert {"error", "status"} <= set(schema["properties"]), (method, path, code)


def test_state_changing_routes_name_the_api_key_scheme_and_reads_do_not(
    document: dict[str, Any],
) -> None:
    scheme = document["components"]["securitySchemes"]["ApiKey"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "X-API-Key")

    secured = {
        (method, path)
        for method, path, operation in _operations(document)
        if operation.get("security") == [{"ApiKey": []}]
    }
    assert secured == GUARDED
    for method, path in GUARDED:
        assert "401" in document["paths"][path][method]["responses"], (method, path)


# --- real answers --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, trained: Trained) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("openapi-live")
    with live_server(make_settings(root, trained, enabled_models=["lstm", "gru"])) as live:
        yield live


def _models() -> dict[str, type[BaseModel]]:
    """The response models by the name the document gives their schema."""
    found: dict[str, type[BaseModel]] = {}
    for module in (queue_schemas, schemas):
        for name, value in vars(module).items():
            if isinstance(value, type) and issubclass(value, BaseModel):
                found[name] = value
    return found


def declared(server: LiveServer, method: str, template: str, status: int) -> type[BaseModel]:
    """The model the OpenAPI document declares for an answer of the route `template`."""
    operation = server.app.openapi()["paths"][template][method.lower()]
    schema = operation["responses"][str(status)]["content"]["application/json"]["schema"]
    return _models()[schema["$ref"].rsplit("/", 1)[1]]


def _undocumented(value: Any, where: str = "") -> list[str]:
    """Fields of a validated answer that its model does not name."""
    if isinstance(value, BaseModel):
        found = [f"{where}.{name}" for name in value.model_extra or {}]
        for name in type(value).model_fields:
            found += _undocumented(getattr(value, name), f"{where}.{name}")
        return found
    if isinstance(value, dict):
        return [f for key, item in value.items() for f in _undocumented(item, f"{where}[{key}]")]
    if isinstance(value, list | tuple):
        return [f for i, item in enumerate(value) for f in _undocumented(item, f"{where}[{i}]")]
    return []


def assert_described(model: type[BaseModel], body: Any) -> None:
    """`body` validates against `model`, which names every field and drops none."""
    parsed = model.model_validate(body)
    assert _undocumented(parsed) == [], model.__name__
    assert parsed.model_dump(mode="json", exclude_unset=True) == body, model.__name__


def assert_answer(
    server: LiveServer, method: str, template: str, path: str, status: int = 200, **kw: Any
) -> dict[str, Any]:
    """Request `path` (an instance of the route `template`) and check the answer's model."""
    response = server.client.request(method, path, **kw)
    assert response.status_code == status, response.text
    model = declared(server, method, template, status)
    body: dict[str, Any] = response.json()
    assert_described(model, body)
    return body


def _candles(pair: str, count: int) -> list[list[float]]:
    candles = bundled_candles(pair).iloc[-count:]
    return [
        [int(stamp.value // 1_000_000), *(float(v) for v in row)]
        for stamp, row in zip(candles.index, candles.to_numpy(), strict=True)
    ]


READS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("GET", "/api/health", "/api/health", {}),
    ("GET", "/api/predictions", "/api/predictions", {}),
    ("GET", "/api/predictions/{pair}", "/api/predictions/BTC", {}),
    ("GET", "/api/predictions/{pair}", "/api/predictions/BTC?ensemble=true", {}),
    ("GET", "/api/predictions/{pair}", "/api/predictions/ETH?model=gru", {}),
    ("GET", "/api/features/{pair}", "/api/features/ETH", {}),
    ("GET", "/api/models/{pair}/status", "/api/models/BTC/status", {}),
    ("GET", "/api/training/queue", "/api/training/queue", {}),
    ("GET", "/api/storage/stats", "/api/storage/stats", {}),
]


@pytest.mark.parametrize(("method", "template", "path", "kw"), READS, ids=[r[2] for r in READS])
def test_read_answers_match_their_declared_model(
    server: LiveServer, method: str, template: str, path: str, kw: dict[str, Any]
) -> None:
    assert_answer(server, method, template, path, **kw)


def test_posted_candles_prediction_and_history_match_their_declared_models(
    server: LiveServer,
) -> None:
    rows = _candles("BTC", default_spec().lookback + 12)
    assert_answer(
        server, "POST", "/api/predictions/{pair}", "/api/predictions/BTC", json={"candles": rows}
    )
    server.client.get("/api/predictions/BTC")
    history = "/api/predictions/{pair}/history"

    wait_until(lambda: server.client.get("/api/predictions/BTC/history").json()["count"])
    body = assert_answer(server, "GET", history, "/api/predictions/BTC/history")
    assert body["predictions"]


def test_errors_match_their_declared_models(server: LiveServer) -> None:
    body = assert_answer(server, "GET", "/api/predictions/{pair}", "/api/predictions/DOGE", 404)
    assert "DOGE" in body["error"]
    assert_answer(server, "GET", "/api/features/{pair}", "/api/features/DOGE", 404)
    assert_answer(server, "GET", "/api/predictions", "/api/predictions?model=nope", 422)
    assert_answer(server, "GET", "/api/training/job/{job_id}", "/api/training/job/nope", 404)


def test_state_changing_answers_match_their_declared_models(server: LiveServer) -> None:
    job = assert_answer(
        server,
        "POST",
        "/api/train/{pair}/{model_type}",
        "/api/train/BTC/lstm",
        202,
        json={"epochs": 1},
    )
    assert_answer(server, "POST", "/api/train/{pair}/{model_type}", "/api/train/BTC/lstm", 409)
    assert_answer(server, "POST", "/api/train/{pair}", "/api/train/ETH", 202)
    job_path = f"/api/training/job/{job['jobId']}"
    assert_answer(server, "GET", "/api/training/job/{job_id}", job_path)
    assert_answer(server, "DELETE", "/api/training/job/{job_id}", job_path)
    assert_answer(server, "DELETE", "/api/training/job/{job_id}", job_path, 409)
    assert_answer(server, "POST", "/api/training/emergency-stop", "/api/training/emergency-stop")
    assert_answer(server, "POST", "/api/training/resume", "/api/training/resume")
    assert_answer(
        server,
        "POST",
        "/api/training/clear-cooldowns",
        "/api/training/clear-cooldowns",
        json={"pair": "BTC"},
    )
    assert_answer(server, "POST", "/api/storage/save", "/api/storage/save")
    assert_answer(server, "POST", "/api/storage/cleanup", "/api/storage/cleanup")


def _enum(schema: dict[str, Any]) -> Any:
    strings = [s for s in schema.get("anyOf", []) if s.get("type") == "string"]
    return (strings[0] if strings else schema).get("enum")


def test_pairs_and_model_types_are_enums_from_the_settings(tmp_path: Any) -> None:
    document = create_app(make_settings(tmp_path, None, pairs=["BTC", "SOL"])).openapi()
    seen = set()

    for method, path, operation in _operations(document):
        for param in operation.get("parameters", []):
            if param["name"] == "pair":
                assert _enum(param["schema"]) == ["BTC", "SOL"], (method, path)
                seen.add("pair")
            if param["name"] in ("model", "model_type"):
                assert _enum(param["schema"]) == [
                    "lstm",
                    "gru",
                    "cnn",
                    "transformer",
                    "lightgbm",
                    "logistic",
                    "blend",
                    "pooled",
                ], path
                seen.add(param["name"])
    assert seen == {"pair", "model", "model_type"}
    body = document["components"]["schemas"]["ClearCooldownsBody"]["properties"]
    assert body["pair"]["enum"] == ["BTC", "SOL"]


def test_the_guards_answers_are_declared_on_every_route(document: dict[str, Any]) -> None:
    for method, path, operation in _operations(document):
        codes = set(operation["responses"])
        assert "400" in codes, (method, path)
        if method in ("post", "delete"):
            assert {"403", "413", "415"} <= codes, (method, path)


def test_without_a_key_the_document_asks_for_none(tmp_path: Any) -> None:
    document = create_app(make_settings(tmp_path, None)).openapi()

    assert "securitySchemes" not in document.get("components", {})
    for method, path, operation in _operations(document):
        assert "security" not in operation, (method, path)
        assert "401" not in operation["responses"], (method, path)
