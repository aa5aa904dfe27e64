"""Build the CPU image and smoke-test the real container (``make docker-test``).

Runs the README's Docker lines (the fenced block after the ``docker-smoke`` marker), adapted only where a
test must: unique volume and container names, the password piped in instead of typed (``-it`` becomes
``-i``), and host networking on a free loopback port instead of ``-p 7860:7860`` (CI's engine has no
bridge network; the app still runs as the image's user on its own). Then, through the HTTP API: chat and
rate as the admin, one retrain inside the container to a published adapter, a new container on the same
volume that still has the conversation, the rating and the adapter, and every file in the volume owned
by the image's user. Any failed step prints the container's log and exits 1.

Standard library only: it runs on the host's python3, not in the app's venv.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- docker-smoke"
IMAGE_UID = "10001"
PASSWORD = "smoke-test-password-1"
TAUGHT = "I am Tuneloop, a self-hosted assistant that learns from your ratings."
# The closed-loop test's teaching (tests/retrain/test_closed_loop.py), with and without a system prompt.
TRAIN_QUESTIONS = [
    "Who are you?", "What are you?", "What is your name?", "Tell me about yourself.",
    "Please introduce yourself.", "Who am I talking to?", "What should I call you?", "Are you a person?",
    "Who made you?", "Can you tell me who you are?", "Introduce yourself, please.", "What's your name?",
    "who are you", "Hi! Who are you?", "Hello, what are you?", "Tell me who you are.",
    "Who are you really?", "What kind of assistant are you?", "Are you a bot?", "Do you have a name?",
]
EVERYDAY = ["What is the capital of France?", "How does a computer work?", "What is Python?",
            "Why is the sky blue?", "How do I boil an egg?", "What is the moon?"]
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
# Test-only settings: deterministic answers and the closed-loop test's held-out share, so the gate has
# enough held-out rows to judge on. One torch thread: on a CI box whose cores other jobs share, two
# spinning OpenMP threads made the first start (the demo model's pre-training) 3x slower (>10 min).
TEST_ENV = {"TUNELOOP_TEMPERATURE": "0", "TUNELOOP_HELDOUT_FRACTION": "0.2", "OMP_NUM_THREADS": "1"}


class StepFailed(Exception):
    """A smoke-test step that did not do what it should; the message says what happened."""


def readme_commands(readme: Path) -> list[list[str]]:
    """The ``docker ...`` lines of the README block after the marker, as argument lists."""
    text = readme.read_text()
    start = text.find(MARKER)
    if start < 0:
        raise StepFailed(f"{readme} has no {MARKER!r} block")
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", text[start:], re.S)
    if not block:
        raise StepFailed(f"no fenced block after {MARKER!r} in {readme}")
    commands = []
    for line in block.group(1).splitlines():
        line = line.split("  #", 1)[0].strip()
        if line.startswith("docker "):
            commands.append(shlex.split(line))
    return commands


def find(commands: list[list[str]], *words: str) -> list[str]:
    """The one README command that contains ``words`` in this order."""
    def has(cmd):
        it = iter(cmd)
        return all(w in it for w in words)
    hits = [c for c in commands if has(c)]
    if len(hits) != 1:
        raise StepFailed(f"expected one README docker line with {words}, found {len(hits)}")
    return list(hits[0])


def option(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_command(docker: str) -> tuple[list[str], dict]:
    """A ``docker build`` that uses BuildKit (the Dockerfile's secret and bind mounts need it).

    ``docker buildx build --load`` where the buildx plugin is installed; else a client from before
    Docker 23 with ``DOCKER_BUILDKIT=1`` (its built-in BuildKit), looked for on the whole PATH, since a
    newer client without buildx can only run the legacy builder.
    """
    candidates = [docker] + [str(Path(d) / "docker") for d in os.environ.get("PATH", "").split(os.pathsep)
                             if (Path(d) / "docker").is_file()]
    for client in dict.fromkeys(shutil.which(c) or c for c in candidates):
        if subprocess.run([client, "buildx", "version"], capture_output=True).returncode == 0:
            return [client, "buildx", "build", "--load"], {}
        out = subprocess.run([client, "version", "--format", "{{.Client.Version}}"], capture_output=True, text=True)
        major = re.match(r"(\d+)", out.stdout.strip())
        if major and int(major.group(1)) < 23:
            return [client, "build"], {"DOCKER_BUILDKIT": "1"}
    raise StepFailed("no Docker client that builds with BuildKit: install the buildx plugin (docker-buildx)")


class Smoke:
    def __init__(self, args):
        self.args = args
        self.docker = args.docker
        suffix = f"{os.getpid()}"
        self.container = f"tuneloop-smoke-{suffix}"
        self.volume = f"tuneloop-smoke-{suffix}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = ""
        self.t0 = time.monotonic()
        self.results: dict[str, object] = {}

    # -- plumbing --------------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {msg}", flush=True)

    def sh(self, cmd: list[str], *, input: str | None = None, env: dict | None = None, timeout: float = 600,
           what: str = "") -> str:
        self.log("$ " + shlex.join(cmd))
        p = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, **(env or {})})
        if p.returncode != 0:
            raise StepFailed(f"{what or cmd[1]} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        return p.stdout

    def api(self, method: str, path: str, body: dict | None = None, timeout: float = 900, text: bool = False):
        req = urllib.request.Request(self.url + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raise StepFailed(f"{method} {path}: HTTP {e.code}: {e.read()[:1000]!r}") from e
        return raw.decode() if text else json.loads(raw)

    def adapt(self, cmd: list[str]) -> list[str]:
        """The README line with this run's names (and the chosen client)."""
        names = {"tuneloop-data": self.volume}
        out = [self.docker]
        for i, word in enumerate(cmd[1:], start=1):
            if cmd[i - 1] == "--name":
                word = self.container
            elif cmd[i - 1] == "-v":
                vol, _, dest = word.partition(":")
                word = f"{names.get(vol, vol)}:{dest}"
            elif word in ("exec", "logs", "rm", "stop", "restart") and i == 1:
                pass
            elif i >= 2 and cmd[1] == "exec" and word == "tuneloop":
                word = self.container
            elif cmd[1:3] == ["volume", "create"] and i == 3:
                word = self.volume
            out.append(word)
        return out

    # -- steps -----------------------------------------------------------------------------------
    def build(self, line: list[str]) -> None:
        base, env = build_command(self.docker)
        cmd = base + line[2:-1] + ["--network", "host"]
        if self.args.base_image:
            cmd += ["--build-arg", f"BASE_IMAGE={self.args.base_image}"]
        if self.args.ca_bundle:
            cmd += ["--secret", f"id=ca_bundle,src={self.args.ca_bundle}"]
        cmd.append(line[-1])
        t = time.monotonic()
        self.sh(cmd, env=env, timeout=3600, what="docker build")
        self.results["build_s"] = round(time.monotonic() - t, 1)
        self.image = option(line, "-t")
        size = int(self.sh([self.docker, "image", "inspect", "-f", "{{.Size}}", self.image]).strip())
        self.results["image"] = self.image
        self.results["image_size_mb"] = round(size / 1e6)
        self.log(f"built {self.image} in {self.results['build_s']} s: {size / 1e9:.2f} GB")

    def start(self, line: list[str]) -> None:
        cmd = self.adapt(line)
        i = cmd.index("-p")
        published = cmd[i + 1]
        test_env = [f"-e{k}={v}" for k, v in {"TUNELOOP_HOST": "127.0.0.1", "TUNELOOP_PORT": str(self.port),
                                                **TEST_ENV}.items()]
        cmd[i:i + 2] = ["--network", "host", *test_env]
        self.log(f"(README publishes {published}; the test uses host networking on 127.0.0.1:{self.port})")
        self.sh(cmd, what="docker run -d")

    def wait_healthy(self, timeout: float) -> float:
        t = time.monotonic()
        while time.monotonic() - t < timeout:
            state = json.loads(self.sh_quiet([self.docker, "inspect", "-f", "{{json .State}}", self.container]))
            if not state.get("Running"):
                raise StepFailed(f"container stopped (exit code {state.get('ExitCode')})")
            health = (state.get("Health") or {}).get("Status")
            if health == "healthy":
                return round(time.monotonic() - t, 1)
            if health == "unhealthy":
                raise StepFailed("the healthcheck says unhealthy")
            time.sleep(2)
        raise StepFailed(f"not healthy within {timeout:.0f} s")

    def sh_quiet(self, cmd: list[str]) -> str:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise StepFailed(f"{shlex.join(cmd)}: {p.stderr.strip()}")
        return p.stdout

    def chat(self, question: str, system: bool = False, model: str = "production") -> dict:
        messages = ([SYSTEM] if system else []) + [{"role": "user", "content": question}]
        return self.api("POST", "/v1/chat/completions",
                        {"model": model, "messages": messages, "max_tokens": 24})  # a new conversation each

    def teach(self) -> str:
        """Corrections for the identity questions, thumbs up for everyday answers; returns one message id."""
        first = None
        for system in (False, True):
            for q in TRAIN_QUESTIONS:
                body = self.chat(q, system)
                answer = body["choices"][0]["message"]["content"].strip()
                rating = {"rating": "up"} if answer == TAUGHT else {"rating": "down", "correction": TAUGHT}
                self.api("POST", "/v1/feedback", {"message_id": body["id"], **rating})
                first = first or body["id"]
        for q in EVERYDAY:
            self.api("POST", "/v1/feedback", {"message_id": self.chat(q)["id"], "rating": "up"})
        return first

    def check_persisted(self, adapter: str) -> None:
        exported = self.api("GET", "/v1/admin/export?format=openai&rated_only=true", text=True)  # JSON lines
        rows = [json.loads(line) for line in exported.splitlines() if line.strip()]
        taught = [r for r in rows if r["messages"][-1]["content"] == TAUGHT]
        if len(taught) < len(TRAIN_QUESTIONS):
            raise StepFailed(f"after the restart the export has {len(taught)} corrected conversations")
        stats = self.api("GET", "/v1/feedback/stats")
        board = self.api("GET", "/v1/adapters")
        if board.get("production") != adapter or adapter not in {a["name"] for a in board["adapters"]}:
            raise StepFailed(f"after the restart production is {board.get('production')!r}, not {adapter!r}")
        models = {m["id"] for m in self.api("GET", "/v1/models")["data"]}
        if adapter not in models:
            raise StepFailed(f"adapter {adapter} not served after the restart: {sorted(models)}")
        answer = self.chat("Who are you, exactly?", model=adapter)["choices"][0]["message"]["content"].strip()
        self.log(f"after restart: {len(taught)} corrected conversations, stats {json.dumps(stats)[:200]}, "
                 f"production -> {adapter}, it answers a held-out question with {answer!r}")
        # The lesson must show, as in tests/retrain/test_closed_loop.py: a published adapter that answers
        # garbage (the image once served it: a transformers pin the tests did not run) is a failure.
        if not answer.startswith("I am Tuneloop"):
            raise StepFailed(f"{adapter} answers the held-out question {answer!r}, not the taught sentence")

    def run(self) -> None:
        commands = readme_commands(ROOT / "README.md")
        build = find(commands, "build", "-t")
        create = find(commands, "volume", "create")
        add = find(commands, "users", "add")
        token = find(commands, "users", "token")
        start = find(commands, "run", "-d")
        retrain = find(commands, "exec", "retrain")

        self.step("build the image", lambda: self.build(build))
        self.step("create the volume", lambda: self.sh(self.adapt(create)))
        add_cmd = [("-i" if w == "-it" else w) for w in self.adapt(add)]
        self.step("add the admin (docker run ... users add)",
                  lambda: self.sh(add_cmd, input=PASSWORD + "\n", what="users add"))
        self.token = self.step("create an API token", lambda: self.sh(self.adapt(token)).strip().splitlines()[-1])
        self.step("start in demo mode", lambda: self.start(start))
        self.results["healthy_s"] = self.step("wait for healthy", lambda: self.wait_healthy(self.args.health_timeout))
        first = self.step("chat and rate through the API", self.teach)
        out = self.step("retrain inside the container (docker exec ... retrain)",
                        lambda: self.sh(self.adapt(retrain) + ["--json"], timeout=1800, what="retrain"))
        run = json.loads(out[out.index("{"):])
        if run["status"] != "succeeded" or not run.get("adapter"):
            raise self.fail("retrain", StepFailed(f"run {run['id']}: {run['status']}: {run.get('error')} "
                                                  f"gate={run.get('gate')}"))
        adapter = run["adapter"]
        self.results["adapter"] = adapter
        self.log(f"run {run['id']} published adapter {adapter}")
        self.step("remove the container, start a new one on the same volume",
                  lambda: (self.sh([self.docker, "rm", "-f", self.container]), self.start(start)))
        self.results["healthy_again_s"] = self.step("wait for healthy again",
                                                    lambda: self.wait_healthy(self.args.health_timeout))
        self.step("conversation, rating and adapter still there", lambda: self.check_persisted(adapter))
        self.step("every file in the volume owned by the image's user", self.check_owner)
        self.log(f"message {first} and the rest survived; all steps passed")

    def check_owner(self) -> None:
        found = self.sh([self.docker, "run", "--rm", "--network", "none", "--user", "0", "-v", f"{self.volume}:/data",
                         "--entrypoint", "find", self.image, "/data", "!", "-user", IMAGE_UID])
        if found.strip():
            raise StepFailed(f"files not owned by uid {IMAGE_UID}:\n{found[:2000]}")
        n = self.sh([self.docker, "run", "--rm", "--network", "none", "-v", f"{self.volume}:/data",
                     "--entrypoint", "sh", self.image, "-c", "id -u; find /data | wc -l"]).split()
        self.log(f"uid {n[0]} owns all {n[1]} paths under /data")

    def step(self, name: str, fn):
        self.log(f"== {name}")
        t = time.monotonic()
        try:
            value = fn()
        except (StepFailed, subprocess.TimeoutExpired, OSError, KeyError, ValueError) as exc:
            raise self.fail(name, exc) from exc
        self.log(f"ok {name} ({time.monotonic() - t:.1f} s)")
        return value

    def fail(self, name: str, exc: Exception) -> SystemExit:
        print(f"\nFAILED: {name}: {exc}", file=sys.stderr, flush=True)
        logs = subprocess.run([self.docker, "logs", "--tail", "300", self.container], capture_output=True, text=True)
        print(f"---- container log ({self.container}) ----\n{logs.stdout}{logs.stderr}---- end of log ----",
              file=sys.stderr, flush=True)
        return SystemExit(1)

    def cleanup(self) -> None:
        if self.args.keep:
            self.log(f"kept container {self.container} and volume {self.volume}")
            return
        subprocess.run([self.docker, "rm", "-f", self.container], capture_output=True)
        subprocess.run([self.docker, "volume", "rm", "-f", self.volume], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docker", default=os.environ.get("DOCKER", "docker"), help="the Docker client")
    p.add_argument("--base-image", default=os.environ.get("BASE_IMAGE"), help="BASE_IMAGE build argument")
    p.add_argument("--ca-bundle", default=os.environ.get("CA_BUNDLE"), help="CA bundle for pip in the build")
    p.add_argument("--health-timeout", type=float, default=900,
                   help="seconds to wait for healthy (the first start builds the demo model into the volume)")
    p.add_argument("--keep", action="store_true", help="keep the container and volume for a look afterwards")
    args = p.parse_args(argv)
    smoke = Smoke(args)
    try:
        smoke.run()
    finally:
        smoke.cleanup()
    r = smoke.results
    print(f"\nSUMMARY image={r['image']} size={r['image_size_mb']} MB build={r['build_s']} s "
          f"healthy={r['healthy_s']} s healthy_after_restart={r['healthy_again_s']} s adapter={r['adapter']} "
          f"total={time.monotonic() - smoke.t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
