"""`make demo`: the whole gateway on this machine, one request through it, and its usage event.

Starts a private Redis, the fake OpenAI upstream (or the real OpenAI API when
UPSTREAM_OPENAI_API_KEY is set), `llm-gateway-proxy`, `llm-gateway-collector` (NDJSON) and
`llm-gateway-dispatcher` (JSONL file sink); sends a chat completion and a streamed one through the
gateway; prints the answers, the events they produced in the Redis stream, and the lines the
collector and the dispatcher wrote for them.
Interactive terminals keep everything running (Ctrl-C stops it); otherwise it exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import redis

from llm_gateway_fakes.localnet import free_port, wait_for_port
from llm_gateway_proxy.keys import hash_key, new_key

BIN = Path(sys.executable).parent
DEMO_KEY = new_key()  # a gateway key for this run; the proxy only ever sees its hash
STREAM = "llm-gateway:events"


def main() -> None:
    with services() as (proxy_url, redis_url, upstream, ndjson, jsonl, metrics):
        print(f"\n== gateway at {proxy_url} (upstream: {upstream})\n")
        body = {"model": os.environ.get("DEMO_MODEL", "gpt-4o-mini"),
                "messages": [{"role": "user", "content": "Say hello in five words."}]}  # fmt: skip
        request_id, answer = post(f"{proxy_url}/v1/chat/completions", body)
        print(f"$ curl {proxy_url}/v1/chat/completions -H 'Authorization: Bearer {DEMO_KEY}' "
              f"-d '{json.dumps(body)}'")  # fmt: skip
        print(f"X-LLM-Request-ID: {request_id}\n{answer.decode()}\n")
        stream_id, streamed = post(f"{proxy_url}/v1/chat/completions", {**body, "stream": True})
        print(f"-- the same, streamed (X-LLM-Request-ID: {stream_id}):")
        print(streamed.decode().strip() + "\n")
        client = redis.Redis.from_url(redis_url)
        for wanted in (request_id, stream_id):
            event = wait_for_event(client, wanted)
            print(f"== usage event for {wanted} (XRANGE {STREAM}):")
            print(json.dumps(event, indent=2) + "\n")
        for who, path in (("collector's NDJSON", ndjson), ("dispatcher's JSONL", jsonl)):
            print(f"== the {who} ({path}):")
            for wanted in (request_id, stream_id):
                print(wait_for_line(path, wanted))
            print()
        print("== Prometheus metrics (the operations listeners, never the data plane):")
        for url in metrics:
            print(f"$ curl {url}")
        with urllib.request.urlopen(metrics[0], timeout=5) as response:
            text = response.read().decode()
        print("\n".join(line for line in text.splitlines()
                        if line.startswith("llm_gateway_requests_total")))  # fmt: skip
        print()
        if sys.stdin.isatty():
            print(f"Gateway running: point an OpenAI client at {proxy_url}/v1 with api_key "
                  f"{DEMO_KEY} "
                  f"(redis-cli -u {redis_url} XRANGE {STREAM} - +). Ctrl-C stops.")  # fmt: skip
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()


@contextlib.contextmanager
def services() -> Iterator[tuple[str, str, str, Path, Path, list[str]]]:
    workdir = Path(tempfile.mkdtemp(prefix="llm-gateway-demo-"))
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(args: list[str], env: dict[str, str] | None = None, log: str = "") -> None:
        out = (workdir / log).open("wb") if log else subprocess.DEVNULL
        procs.append(subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=out,
                                      stderr=subprocess.STDOUT))  # fmt: skip

    try:
        redis_port, proxy_port, manage_port = free_port(), free_port(), free_port()
        server = shutil.which("redis-server")
        if server is None:
            sys.exit("redis-server not found: run `make deps` first")
        spawn([server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", str(workdir)])  # fmt: skip
        keys_file = workdir / "keys.json"
        keys_file.write_text(json.dumps([{"id": "key_demo", "key_hash": hash_key(DEMO_KEY),
                                          "name": "demo", "tenant": "demo"}]))  # fmt: skip
        env = {"REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
               "LISTEN_ADDR": f"127.0.0.1:{proxy_port}", "KEYS_FILE": str(keys_file),
               "MANAGEMENT_LISTEN_ADDR": f"127.0.0.1:{manage_port}"}  # fmt: skip
        if os.environ.get("UPSTREAM_OPENAI_API_KEY"):
            upstream = os.environ.get("UPSTREAM_OPENAI_BASE_URL", "https://api.openai.com/v1")
        else:
            fake_port = free_port()
            spawn([sys.executable, "-m", "llm_gateway_fakes.openai", "--port", str(fake_port),
                   "--chunk-delay", "0.05", "--words", "6"])  # fmt: skip
            wait_for_port(fake_port)
            env["UPSTREAM_OPENAI_BASE_URL"] = f"http://127.0.0.1:{fake_port}/v1"
            upstream = f"{env['UPSTREAM_OPENAI_BASE_URL']}, the fake OpenAI API (set "
            upstream += "UPSTREAM_OPENAI_API_KEY to use the real one)"
        wait_for_port(redis_port)
        spawn([str(BIN / "llm-gateway-proxy")], env, log="proxy.log")
        ndjson = workdir / "usage.ndjson"
        collector_port = free_port()
        collector_env = {"REDIS_URL": env["REDIS_URL"], "EVENT_LOG_PATH": str(ndjson),
                         "COLLECTOR_LISTEN_ADDR": f"127.0.0.1:{collector_port}"}  # fmt: skip
        spawn([str(BIN / "llm-gateway-collector")], collector_env, log="collector.log")
        jsonl = workdir / "dispatched.jsonl"
        dispatcher_port = free_port()
        dispatcher_env = {"REDIS_URL": env["REDIS_URL"], "DISPATCHER_SINK": "file",
                          "DISPATCHER_ENDPOINT": str(jsonl), "DISPATCHER_FLUSH_INTERVAL": "0.1",
                          "DISPATCHER_LISTEN_ADDR": f"127.0.0.1:{dispatcher_port}"}  # fmt: skip
        spawn([str(BIN / "llm-gateway-dispatcher")], dispatcher_env, log="dispatcher.log")
        for port in (proxy_port, collector_port, dispatcher_port):
            wait_for_port(port)
        print(f"logs in {workdir}")
        metrics = [f"http://127.0.0.1:{port}/metrics"
                   for port in (manage_port, collector_port, dispatcher_port)]  # fmt: skip
        yield f"http://127.0.0.1:{proxy_port}", env["REDIS_URL"], upstream, ndjson, jsonl, metrics
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def post(url: str, body: dict[str, object]) -> tuple[str, bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {DEMO_KEY}"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.headers["X-LLM-Request-ID"], response.read()


def wait_for_event(client: redis.Redis, request_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for _, fields in client.xrange(STREAM, "-", "+"):  # type: ignore[union-attr]
            event = json.loads(fields[b"data"])
            if event["request_id"] == request_id:
                return dict(event)
        time.sleep(0.05)
    sys.exit(f"no event arrived for {request_id}")


def wait_for_line(path: Path, request_id: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                if json.loads(line)["request_id"] == request_id:
                    return line
        time.sleep(0.05)
    sys.exit(f"the collector wrote no line for {request_id}")


if __name__ == "__main__":
    main()
