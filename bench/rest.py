"""REST throughput: images per second through ``POST /api/images/generate`` then
``GET /api/images/{id}`` polled until completed, on a real stack (NATS, billing on SQLite, one
generator with the local provider in instant mode, one gateway), with the rate limit off.

Baseline, measured in the same run on the same machine with the same client: a bare FastAPI app,
served by uvicorn in its own process like the gateway, whose two routes return the same JSON at once
(the image is "completed" at the first poll). The ratio says what the whole path (authentication,
quote, the reservation in billing, the job through NATS and the generator, the polls that read
billing) costs against HTTP and JSON alone. Each measurement stops after ``--count`` images or
``--seconds``, whichever comes first; 127.0.0.1 only.

    python bench/rest.py [--count 300] [--seconds 15] [--in-flight 16] [--poll-interval 0.02]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from imagegen_testing.net import free_port, wait_for_port
from imagegen_testing.stack import start_stack

BASELINE_APP = """
import sys, uvicorn
from fastapi import FastAPI
app = FastAPI()
IMAGE = {"id": "img_bench", "status": 0, "status_name": "queued", "width": 512, "height": 512,
         "created_at": "2026-11-28T09:15:02.123456Z"}
DONE = {"success": True, "image": {**IMAGE, "status": 2, "status_name": "completed", "model": "flux-schnell",
        "url": "http://127.0.0.1/images/img_bench.png", "credits_used": 1, "error": None,
        "started_at": "2026-11-28T09:15:02.223456Z", "completed_at": "2026-11-28T09:15:02.323456Z",
        "webhook": None}}
@app.post("/api/images/generate")
async def generate(body: dict) -> dict:
    return {"success": True, "images": [IMAGE], "message": "1 image(s) queued for generation"}
@app.get("/api/images/{image_id}")
async def image(image_id: str) -> dict:
    return DONE
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""
BODY = {"model": "flux-schnell", "prompt": "a benchmark lighthouse at dusk", "width": 512, "height": 512}


@dataclass(frozen=True)
class Limits:
    count: int
    seconds: float
    in_flight: int
    poll_interval: float


@dataclass(frozen=True)
class Result:
    images_per_second: float
    images: int
    polls_per_image: float


async def measure(base_url: str, token: str, limits: Limits) -> Result:
    """Images per second with ``in_flight`` clients, each submitting one image and polling it."""
    done = polls = 0
    deadline = time.perf_counter() + limits.seconds
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        timeout=30,
        limits=httpx.Limits(max_connections=limits.in_flight),
    ) as client:

        async def worker() -> None:
            nonlocal done, polls
            while done < limits.count and time.perf_counter() < deadline:
                submitted = await client.post("/api/images/generate", json=BODY)
                submitted.raise_for_status()
                image_id = submitted.json()["images"][0]["id"]
                while True:
                    polled = await client.get(f"/api/images/{image_id}")
                    polls += 1
                    polled.raise_for_status()
                    status = polled.json()["image"]["status"]
                    if status == 3:
                        raise RuntimeError(f"image {image_id} failed: {polled.json()}")
                    if status == 2:
                        break
                    await asyncio.sleep(limits.poll_interval)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(limits.in_flight)))
        elapsed = time.perf_counter() - started
    return Result(done / elapsed, done, polls / max(done, 1))


async def baseline(limits: Limits) -> Result:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", BASELINE_APP, str(port)])
    try:
        wait_for_port("127.0.0.1", port)
        url = f"http://127.0.0.1:{port}"
        await measure(url, "unused", Limits(min(32, limits.count), 5, limits.in_flight, 0))  # warm-up
        return await measure(url, "unused", limits)
    finally:
        server.terminate()
        server.wait()


async def stack_rate(limits: Limits, tmp: Path) -> Result:
    quiet = {"IMAGEGEN_LOG_LEVEL": "WARNING"}
    stack = start_stack(
        tmp,
        env={**quiet, "IMAGEGEN_LOCAL_PROVIDER_INSTANT": "true"},
        gateway_env={"IMAGEGEN_RATE_LIMIT_PER_MINUTE": "0"},
    )
    try:
        account = stack.create_account(credits=10_000_000)
        warm = Limits(min(32, limits.count), 10, limits.in_flight, limits.poll_interval)
        await measure(stack.gateway_url, account.token, warm)
        return await measure(stack.gateway_url, account.token, limits)
    finally:
        stack.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=300, help="images per measurement at most")
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of one measurement at most")
    parser.add_argument("--in-flight", type=int, default=16, help="clients submitting and polling at once")
    parser.add_argument(
        "--poll-interval", type=float, default=0.02, help="seconds between two polls of an image"
    )
    args = parser.parse_args()
    limits = Limits(args.count, args.seconds, args.in_flight, args.poll_interval)
    print(
        f"{os.cpu_count()} CPUs, 512x512 flux-schnell, {args.in_flight} clients, poll every "
        f"{args.poll_interval:g} s, at most {args.count} images or {args.seconds:g} s per measurement"
    )
    base = await baseline(limits)
    print(f"baseline: bare FastAPI (uvicorn), same JSON   {base.images_per_second:8.1f} images/s")
    with tempfile.TemporaryDirectory(prefix="imagegen-bench-") as tmp:
        rest = await stack_rate(limits, Path(tmp))
    print(
        f"imagegen REST: submit + poll to completed     {rest.images_per_second:8.1f} images/s "
        f"({rest.images} images, {rest.polls_per_image:.1f} polls each)"
    )
    ratio = rest.images_per_second / base.images_per_second
    print(f"ratio to baseline                             {ratio:8.3f}")


if __name__ == "__main__":
    asyncio.run(main())
