"""`/ws/predictions` (optional `?pairs=BTC,ETH`): every new prediction, pushed as it is made.

Each message is the JSON of `GET /api/predictions/{pair}?model=<modelType>` for one served model
of one pair. On connect the client gets the latest prediction of each of its pairs' served
models at once, then one message per model for every new candle (or newly served version).
The connection is read-only: what a client sends is read and dropped, one message at a time,
and a message over ML_WS_MAX_FRAME_BYTES closes it with code 1009 before its payload is read
(`service.bounds`). At most `ML_WS_MAX_CONNECTIONS` are open; one more is closed at once with
code 1013 ("try again later"). A foreign `Origin` is refused by the guard middleware (code
1008), as a bad `?pairs=` is here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from pipelines.pairs import check_pair
from service.live import SEND_TIMEOUT_S, Subscriber, message
from service.state import ServiceState

logger = logging.getLogger(__name__)

router = APIRouter(tags=["stream"])

POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013


def _pairs(state: ServiceState, value: str | None) -> list[str]:
    if value is None or not value.strip():
        return list(state.settings.pairs)
    pairs = []
    for item in value.split(","):
        if not item.strip():
            continue
        pairs.append(check_pair(item.strip(), state.settings.pairs))
    return pairs


async def _send_loop(websocket: WebSocket, subscriber: Subscriber) -> None:
    while True:
        data = await subscriber.queue.get()
        await asyncio.wait_for(websocket.send_bytes(data), timeout=SEND_TIMEOUT_S)


@router.websocket("/ws/predictions")
async def predictions_stream(websocket: WebSocket) -> None:
    """Push every new prediction of the chosen pairs (default: all configured)."""
    state: ServiceState | None = getattr(websocket.app.state, "service", None)
    await websocket.accept()
    if state is None or state.hub is None:
        await websocket.close(code=TRY_AGAIN_LATER, reason="the service is starting")
        return
    try:
        pairs = _pairs(state, websocket.query_params.get("pairs"))
    except (ValueError, LookupError) as exc:
        await websocket.close(code=POLICY_VIOLATION, reason=f"pairs: {exc}"[:120])
        return
    subscriber = state.hub.subscribe(pairs)
    if subscriber is None:
        await websocket.close(
            code=TRY_AGAIN_LATER,
            reason=f"{state.hub.max_connections} connections open (ML_WS_MAX_CONNECTIONS)",
        )
        return
    try:
        for pair in pairs:
            for model in state.models.models_of(pair):
                latest = state.predictor.latest(pair, model.model_type)
                if latest is not None:
                    subscriber.offer(message(latest))
        sender = asyncio.create_task(_send_loop(websocket, subscriber))
        receiver = asyncio.create_task(_drain(websocket))
        done, pending = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for task in done:
            error = task.exception()
            if isinstance(error, TimeoutError):
                logger.info(
                    "closing a WebSocket client that took no message for %gs", SEND_TIMEOUT_S
                )
                with contextlib.suppress(Exception):
                    await websocket.close(code=TRY_AGAIN_LATER, reason="too slow")
    finally:
        state.hub.unsubscribe(subscriber)


async def _drain(websocket: WebSocket) -> None:
    """Read and drop what the client sends, until it disconnects: nothing is kept, so a client
    holds at most one message (ML_WS_MAX_FRAME_BYTES) of this process's memory."""
    try:
        while True:
            received = await websocket.receive()
            if received["type"] == "websocket.disconnect":
                return
    except WebSocketDisconnect:
        return
