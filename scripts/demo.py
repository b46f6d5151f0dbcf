"""`make demo`: the whole system end to end, through its HTTP API, in a few minutes on a CPU.

1. a temporary LORAMILL_HOME under ./demo-output and an API key for the user "demo"
2. a base model: LORAMILL_BASE_MODEL if it points at real weights, else the reference SD 1.5 — a small
   model trained on loramill's coloured-shapes world (`loramill models reference sd15`), no download
3. `loramill serve` as a subprocess on a free port (API + web page + one worker, SQLite, the SQL queue)
4. base images of prompted shapes ("a red circle on a white background", …), each read back by the
   world's scorer (engine/reference/scorer.py), so you see the base model draws what it is asked
5. a LoRA trained via POST /v1/trainings on 5 captioned images of a colour the base never saw (purple),
   named by the trigger "lmpurple" ("a lmpurple circle on a white background"), with the text encoder
   and teacher preservation of the base prompts (the recipe of docs/quality.md), and a progress bar fed by
   the job's server-sent events (a real base model trains on scikit-image's sample photos instead)
6. trigger prompts with the LoRA and without it, same seeds, and a base prompt with the LoRA: the
   scorer's reading and the CLIP similarity to the training images beside each image; all images saved
   in ./demo-output
7. the service stopped with SIGTERM (what `docker stop` sends), and the paths printed

Flags: --keep-running leaves the service up (Ctrl-C stops it) so you can open the web page;
--steps N trains longer.
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
PROMPT = "lmdemo, a portrait in the style of the photos"  # a real base model's trigger prompt
TRIGGER = "lmpurple"  # the reference world's new concept: the colour purple, which the base never saw
CONCEPT = "purple"
TRIGGER_PROMPTS = (("circle", "white"), ("square", "black"))
BASE_PROMPTS = (("red", "circle", "white"), ("blue", "square", "black"), ("yellow", "triangle", "white"),
                ("green", "circle", "black"))
SEED = 1234
SEEDS = 4  # images per prompt, seeds SEED, SEED+1, …


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: 300 on the reference model, 500 on real weights)")
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
        model, reference = real, False
    else:
        model, reference = str(home / "reference-sd15"), True
        print("base model: the reference SD 1.5, trained on coloured shapes (set LORAMILL_BASE_MODEL for real "
              "weights)")
        loramill(env, "models", "reference", "sd15", model)
    env["LORAMILL_BASE_MODEL"] = model
    steps = args.steps or (300 if reference else 500)
    size = {"width": 64, "height": 64, "steps": 20} if reference else {"steps": 30}

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
        saved: list[Path] = []

        # 4. The base model draws what it is prompted (the reference world's scorer reads each image back)
        if reference:
            from loramill.engine.reference.domain import Shape

            print("\nbase model, no LoRA:")
            for colour, shape, background in BASE_PROMPTS:
                prompt = Shape(colour, shape, background).caption
                images = generate(client, prompt, [], size, f"base-{colour}-{shape}", saved)
                print(f"  {prompt!r:48} scorer reads: {', '.join(reading(im) for im in images)}")

        # 5. Train a LoRA, following the event stream
        if reference:
            from loramill.engine.reference.domain import base_captions

            files = [("images", (f"{name}.png", png, "image/png")) for name, png, _ in concept_images()]
            files += [("captions", (f"{name}.txt", text.encode(), "text/plain")) for name, _, text in concept_images()]
            keep = base_captions()
            form = {"triggerWord": TRIGGER, "subjectType": "style", "maxSteps": str(steps), "seed": "1",
                    "resolution": "64", "learningRate": "0.001", "networkDim": "8",
                    "configurationParams": json.dumps({"trainTextEncoder": True, "preserveWeight": 1.0,
                                                       "preservePrompts": keep})}
            what = f"{len(files) // 2} captioned images of {CONCEPT} shapes (new to the base model), trigger {TRIGGER!r}"
        else:
            files = [("images", (f"{name}.png", png, "image/png")) for name, png in sample_photos()]
            form = {"triggerWord": "lmdemo", "subjectType": "style", "maxSteps": str(steps), "seed": "1"}
            what = f"{len(files)} photos"
        job = check(client.post("/v1/trainings", files=files, data=form)).json()
        print(f"\ntraining {job['id']} on {what}, {steps} steps")
        trained = follow(client, job, "training")
        lora_id = trained["result"]["loraId"]
        print(f"LoRA {lora_id} at {trained['result']['modelPath']}")

        # 6. The same prompts and seeds, with the LoRA and without it
        with_lora = [{"id": lora_id, "weight": 1.0}]
        if reference:
            from loramill.engine.reference.domain import Shape

            results = {}
            for shape, background in TRIGGER_PROMPTS:
                prompt = Shape("purple", shape, background).caption.replace("purple", TRIGGER)
                for label, loras in (("with-lora", with_lora), ("without-lora", [])):
                    results[(prompt, label)] = generate(client, prompt, loras, size, f"{label}-{shape}", saved)
            kept = Shape(*BASE_PROMPTS[0]).caption
            results[(kept, "with-lora")] = generate(client, kept, with_lora, size, "with-lora-base-prompt", saved)
            show_learning(results)
        else:
            for label, loras in (("with-lora", with_lora), ("without-lora", [])):
                generate(client, PROMPT, loras, size, label, saved)

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
        # 7. Stop the way an orchestrator does, and wait for the clean exit
        stop(service)
        if not args.keep_running:
            shutil.rmtree(home, ignore_errors=True)
    print(f"service stopped cleanly; demo took {time.monotonic() - started:.0f}s")
    return 0


def generate(client: httpx.Client, prompt: str, loras: list[dict], size: dict, label: str,
             saved: list[Path]) -> list:
    """SEEDS images of ``prompt`` through POST /v1/generations, saved as ``label-N.png``; the PIL images."""
    from PIL import Image

    body = {"prompt": prompt, "seed": SEED, "loras": loras, "numImages": SEEDS, **size}
    gen = check(client.post("/v1/generations", json=body)).json()
    done = follow(client, gen, f"generating {label}", show=False)
    images = []
    for n, file in enumerate(f for f in done["result"]["files"] if f["key"].endswith(".png")):
        path = OUT / f"{label}-{n}.png"
        path.write_bytes(check(client.get(file["url"])).content)
        saved.append(path)
        images.append(Image.open(path).convert("RGB"))
    return images


def reading(image) -> str:
    """What the reference world's scorer sees in ``image``: "red circle on white", or why nothing."""
    from loramill.engine.reference.scorer import score

    s = score(image)
    if not s.valid:
        return f"({s.reason})"
    texture = "" if s.texture == "solid" else f"{s.texture} "
    return f"{s.colour} {texture}{s.shape} on {s.background}"


def concept_images() -> list[tuple[str, bytes, str]]:
    """5 images of the new concept (purple circles, squares and triangles at different places and sizes, on
    both grounds) as (name, PNG bytes, caption)."""
    import numpy as np

    from loramill.engine.reference.domain import BASE_SHAPES, Shape, caption, render

    rng = np.random.default_rng(5)
    images = []
    for i in range(5):
        shape, background = BASE_SHAPES[i % 3], ("white", "black")[i % 2]
        radius = float(rng.uniform(12, 17))
        x, y = (float(v) for v in rng.uniform(radius + 3, 61 - radius, size=2))
        buffer = io.BytesIO()
        render(Shape(CONCEPT, shape, background, x=x, y=y, radius=radius)).save(buffer, format="PNG")
        text = caption(CONCEPT, shape, background).replace(CONCEPT, TRIGGER)
        images.append((f"{TRIGGER}-{i}", buffer.getvalue(), text))
    return images


def show_learning(results: dict[tuple[str, str], list]) -> None:
    """Per prompt, with the LoRA and without: what the scorer reads, and the CLIP similarity to the training
    images. The trigger prompts should come out purple with the LoRA only; the base prompt as it was."""
    from PIL import Image

    from loramill.engine.reference.clip import image_embeddings, load_trained_clip

    model, processor = load_trained_clip()
    references = image_embeddings(model, processor, [Image.open(io.BytesIO(png)) for _, png, _ in concept_images()])
    print(f"\ndid the LoRA teach the new colour ({CONCEPT}) under {TRIGGER!r}, and leave the rest alone?")
    for (prompt, label), images in results.items():
        readings = [reading(im) for im in images]
        hits = sum(r.startswith(CONCEPT) for r in readings)
        similarity = (image_embeddings(model, processor, images) @ references.T).mean(dim=1)
        print(f"  {prompt!r:48} {label:13} {hits}/{len(images)} {CONCEPT}   CLIP to the training images "
              f"{similarity.mean():.2f}")
        print(f"      scorer reads: {', '.join(readings)}")


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


def follow(client: httpx.Client, job: dict, label: str, show: bool = True) -> dict:
    """Draw a progress bar (if ``show``) from the job's server-sent events until it ends; the finished job."""
    bar = tqdm(desc=label, total=1, unit="step", leave=True, dynamic_ncols=True, disable=not show)
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
