"""`make demo`: the whole system end to end, through its HTTP API, in a few minutes on a CPU.

1. a temporary LORAMILL_HOME under ./demo-output and an API key for the user "demo"
2. a base model: LORAMILL_BASE_MODEL if it points at real weights, else a tiny random SD 1.5 (no download)
3. `loramill serve` as a subprocess on a free port (API + web page + one worker, SQLite, the SQL queue)
4. a LoRA trained on sample photos (scikit-image's astronaut, cat, coffee, rocket) via POST /v1/trainings,
   with a progress bar fed by the job's server-sent events
5. the same prompt and seed generated with the LoRA and without it; both images saved in ./demo-output
6. the service stopped with SIGTERM (what `docker stop` sends), and the paths printed

Flags: --keep-running leaves the service up (Ctrl-C stops it) so you can open the web page;
--steps N trains longer. A tiny model's images are noise: they show the plumbing, not the quality.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "demo-output"
PROMPT = "lmdemo, a portrait in the style of the photos"
SEED = 1234


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: 20 tiny, 500 real)")
    parser.add_argument("--keep-running", action="store_true", help="leave the service up until Ctrl-C")
    args = parser.parse_args()
    started = time.monotonic()

    # 1. A temporary home for the database, queue and storage; a key for the demo user
    OUT.mkdir(exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="home-", dir=OUT))
    env = {**os.environ, "LORAMILL_HOME": str(home), "LORAMILL_LOG_FORMAT": "text", "PYTHONUNBUFFERED": "1"}
    env.pop("LORAMILL_TELEGRAM_TOKEN", None)  # the demo never talks to Telegram
    key = loramill(env, "keys", "create", "--user", "demo").strip().splitlines()[-1]

    # 2. The base model
    real = os.environ.get("LORAMILL_BASE_MODEL")
    if real:
        print(f"base model: {real}")
        model, tiny = real, False
    else:
        model, tiny = str(home / "tiny-sd15"), True
        print("base model: building a tiny random SD 1.5 (set LORAMILL_BASE_MODEL for real weights)")
        loramill(env, "models", "tiny", "sd15", model)
    env["LORAMILL_BASE_MODEL"] = model
    steps = args.steps or (20 if tiny else 500)

    # 3. The service
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = OUT / "serve.log"
    with log_path.open("w") as log:
        service = subprocess.Popen([sys.executable, "-m", "loramill.cli", "serve", "--port", str(port)], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        wait_ready(client, service, log_path)
        print(f"service up at {base} (log: {log_path.relative_to(ROOT)})")

        # 4. Train on sample photos, following the event stream
        files = [("images", (f"{name}.png", png, "image/png")) for name, png in sample_photos()]
        form = {"triggerWord": "lmdemo", "subjectType": "style", "maxSteps": str(steps), "seed": "1"}
        if tiny:
            form["resolution"] = "64"
        job = check(client.post("/v1/trainings", files=files, data=form)).json()
        print(f"training {job['id']} on {len(files)} photos, {steps} steps")
        trained = follow(client, job, "training")
        lora_id = trained["result"]["loraId"]
        print(f"LoRA {lora_id} at {trained['result']['modelPath']}")

        # 5. The same prompt and seed, with the LoRA and without it
        size = {"width": 64, "height": 64, "steps": 8} if tiny else {"steps": 30}
        saved = []
        for label, loras in (("with-lora", [{"id": lora_id, "weight": 1.0}]), ("without-lora", [])):
            body = {"prompt": PROMPT, "seed": SEED, "loras": loras, **size}
            gen = check(client.post("/v1/generations", json=body)).json()
            done = follow(client, gen, f"generating {label}")
            for n, file in enumerate(f for f in done["result"]["files"] if f["key"].endswith(".png")):
                path = OUT / f"{label}-{n}.png"
                path.write_bytes(check(client.get(file["url"])).content)
                saved.append(path)

        print("\nimages:")
        for path in saved:
            print(f"  {path.relative_to(ROOT)}")
        print(f"web page: {base}/  (API key: {key})")
        print(f"API docs: {base}/docs")
        if args.keep_running:
            print("the service keeps running; Ctrl-C stops it")
            service.wait()
        else:
            print("(the service stops now; `python scripts/demo.py --keep-running` leaves it up for the page)")
    except KeyboardInterrupt:
        pass
    finally:
        # 6. Stop the way an orchestrator does, and wait for the clean exit
        stop(service)
        if not args.keep_running:
            shutil.rmtree(home, ignore_errors=True)
    print(f"service stopped cleanly; demo took {time.monotonic() - started:.0f}s")
    return 0


def loramill(env: dict[str, str], *args: str) -> str:
    """Run a loramill command, returning its stdout (its stderr goes to ours only on failure)."""
    done = subprocess.run([sys.executable, "-m", "loramill.cli", *args], env=env, capture_output=True, text=True,
                          cwd=ROOT)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"loramill {' '.join(args)} failed")
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(client: httpx.Client, service: subprocess.Popen[bytes], log_path: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise SystemExit(f"loramill serve exited ({service.returncode}); see {log_path}")
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"loramill serve was not ready after {timeout:.0f}s; see {log_path}")


def sample_photos() -> list[tuple[str, bytes]]:
    """Real photographs shipped with scikit-image, as PNG bytes."""
    from PIL import Image
    from skimage import data

    photos = []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        buffer = io.BytesIO()
        image = Image.fromarray(getattr(data, name)())
        image.thumbnail((512, 512))
        image.save(buffer, format="PNG")
        photos.append((name, buffer.getvalue()))
    return photos


def follow(client: httpx.Client, job: dict, label: str) -> dict:
    """Draw a progress bar from the job's server-sent events until it ends; the finished job."""
    bar = tqdm(desc=label, total=1, unit="step", leave=True, dynamic_ncols=True)
    stage = None
    with client.stream("GET", job["links"]["events"], timeout=None) as response:
        check(response)
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[len("data: "):])
            progress = event.get("progress")
            if progress:
                if progress.get("stage") != stage:  # dataset, cache, train, generate: one bar per stage
                    stage = progress.get("stage")
                    bar.reset(total=progress["totalSteps"])
                    bar.set_description(f"{label} [{stage}]")
                bar.n = min(progress["step"], progress["totalSteps"])
                bar.refresh()
            if event["status"] in ("completed", "failed", "canceled"):
                if event["status"] == "completed":  # progress events are throttled; the last step may not have one
                    bar.n = bar.total
                    bar.refresh()
                break
    bar.close()
    final = check(client.get(job["links"]["self"])).json()
    if final["status"] != "completed":
        raise SystemExit(f"{label} {final['status']}: {final.get('error')}")
    return final


def check(response: httpx.Response) -> httpx.Response:
    if response.is_error:
        response.read()
        raise SystemExit(f"{response.request.method} {response.request.url.path} → {response.status_code}: "
                         f"{response.text[:500]}")
    return response


def stop(service: subprocess.Popen[bytes]) -> None:
    if service.poll() is None:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(timeout=150)
        except subprocess.TimeoutExpired:
            service.kill()


if __name__ == "__main__":
    raise SystemExit(main())
