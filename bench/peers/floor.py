"""The floor: the least a batching model server can be. Raw ASGI, one asyncio queue, the model in
one worker thread, KServe V1 `{"instances": [row]}` only; no validation, metrics or logging.
Whatever a full runtime does on top of this costs throughput; the benchmark shows how much."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import orjson
import uvicorn

from bench.mlp import MLPCore, ModelConfig


def make_app(core: MLPCore, max_batch_size: int, wait_s: float) -> Any:
    queue: asyncio.Queue[tuple[Any, asyncio.Future[Any]]] = asyncio.Queue()

    async def batcher() -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + wait_s
            while len(batch) < max_batch_size:
                if queue.empty():
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(queue.get(), left))
                    except TimeoutError:
                        break
                else:
                    batch.append(queue.get_nowait())
            try:
                out = await asyncio.to_thread(core.predict_rows, [row for row, _ in batch])
                for (_, fut), pred in zip(batch, out, strict=True):
                    fut.set_result(pred)
            except Exception as exc:  # every future resolves, or requests hang
                for _, fut in batch:
                    fut.set_exception(exc)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()  # lifespan.startup
            task = asyncio.create_task(batcher())
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
            task.cancel()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        fut = asyncio.get_running_loop().create_future()
        await queue.put((orjson.loads(body)["instances"][0], fut))
        payload = orjson.dumps({"predictions": [await fut]})
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-wait-timeout-s", type=float, default=0.005)
    p.add_argument("--stats", default=None)
    a = p.parse_args()
    core = MLPCore(ModelConfig(hidden=a.hidden, torch_threads=a.torch_threads), a.stats)
    app = make_app(core, a.max_batch_size, a.batch_wait_timeout_s)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=a.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
