"""The rater app's attack scripts (issue 18): lockout, argon2 exhaustion, a huge body; figures printed and saved.

    .venv/bin/python benchmarks/raters_attacks.py [--parallel 40] [--legacy]

The app runs as `tether raters serve` in its own process, with the shipped argon2 cost (RFC 9106 low
memory: 64 MiB, ~0.3 s a hash) and `--forwarded-allow-ips 127.0.0.1`, so this script can play clients
at many addresses through X-Forwarded-For, as a botnet or a proxy in front would be. `--legacy` runs
the same attacks on a checkout from before the fixes (PYTHONPATH=<old>/src; no new flags passed: the old
server trusted X-Forwarded-For from loopback anyway).

1. Lockout (run last): 40 wrong passwords for the admin from 40 addresses, then the right one from a new address;
   then 6 wrong from one address and the right one from that address.
2. argon2 load: a rater is signed in; `--parallel` sign-ins with new unknown usernames at once, each from
   its own address. Reported: the server's peak RSS (sampled every 10 ms), the statuses, and the
   latency of the rater's GET /rate during the attack against before it.
3. Body: a 20 MiB JSON body to the unauthenticated POST /api/login: the status and the RSS growth.
Results go to benchmarks/results/raters_attacks.json.
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "a long enough password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(folder: Path, legacy: bool) -> tuple[psutil.Popen, str]:
    import subprocess

    (folder / "pw").write_text(PASSWORD)
    subprocess.run([sys.executable, "-m", "tether", "raters", "init", str(folder / "p"), "--password-file",
                    str(folder / "pw")], check=True, capture_output=True)
    port = free_port()
    argv = [sys.executable, "-m", "tether", "raters", "serve", str(folder / "p"), "--port", str(port)]
    if not legacy:
        argv += ["--forwarded-allow-ips", "127.0.0.1"]
    proc = psutil.Popen(argv, stdout=open(folder / "server.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(f"{url}/login", timeout=2)
            return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit((folder / "server.log").read_text()[-3000:])


def login(url: str, username: str, password: str, address: str) -> httpx.Response:
    return httpx.post(f"{url}/api/login", json={"username": username, "password": password},
                      headers={"X-Forwarded-For": address}, timeout=120)


def lockout(url: str) -> dict:
    spread = Counter(login(url, "admin", "wrong password", f"10.1.0.{i}").status_code for i in range(40))
    from_elsewhere = login(url, "admin", PASSWORD, "192.168.50.5").status_code
    one = [login(url, "admin", "wrong password", "10.2.0.1").status_code for _ in range(6)]
    right_from_attacker = login(url, "admin", PASSWORD, "10.2.0.1").status_code
    return {"spread_40_wrong": dict(spread), "right_password_from_elsewhere": from_elsewhere,
            "six_wrong_from_one_address": one, "right_password_from_that_address": right_from_attacker}


class RssSampler(threading.Thread):
    def __init__(self, proc: psutil.Process):
        super().__init__(daemon=True)
        self.proc, self.peak, self.running = proc, 0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.01)


def rater_page_ms(client: httpx.Client, stop: threading.Event | None, n: int = 10) -> list[float]:
    out = []
    while (stop is None and len(out) < n) or (stop is not None and not stop.is_set()):
        t0 = time.perf_counter()
        client.get("/guidelines")
        out.append(1000 * (time.perf_counter() - t0))
        time.sleep(0.05)
    return out


def argon2_load(url: str, proc: psutil.Process, parallel: int) -> dict:
    rater = httpx.Client(base_url=url, timeout=120)
    r = rater.post("/api/login", json={"username": "admin", "password": PASSWORD}, headers={"X-Forwarded-For": "192.168.60.1"})
    assert r.status_code == 200, r.text
    before = rater_page_ms(rater, None)
    rss_before = proc.memory_info().rss
    sampler = RssSampler(proc)
    sampler.start()
    stop = threading.Event()
    during: list[float] = []
    watcher = threading.Thread(target=lambda: during.extend(rater_page_ms(rater, stop)))
    watcher.start()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        statuses = Counter(pool.map(lambda i: login(url, f"stranger{i}", "guess guess", f"10.3.{i // 250}.{i % 250}").status_code,
                                    range(parallel)))
    seconds = time.perf_counter() - t0
    stop.set()
    watcher.join()
    sampler.running = False
    sampler.join()
    return {"parallel_bad_logins": parallel, "statuses": dict(statuses), "attack_seconds": round(seconds, 2),
            "rss_before_mb": round(rss_before / 2**20), "rss_peak_mb": round(sampler.peak / 2**20),
            "rater_page_ms_before_median": round(statistics.median(before), 1),
            "rater_page_ms_during_median": round(statistics.median(during), 1),
            "rater_page_ms_during_max": round(max(during), 1)}


def big_body(url: str, proc: psutil.Process) -> dict:
    sampler = RssSampler(proc)
    rss_before = proc.memory_info().rss
    sampler.start()
    body = b'{"username": "x", "password": "' + b"y" * (20 << 20) + b'"}'
    try:
        status = httpx.post(f"{url}/api/login", content=body, headers={"content-type": "application/json"},
                            timeout=120).status_code
    except httpx.TransportError as err:  # the server may close before reading it all
        status = f"closed ({type(err).__name__})"
    time.sleep(0.3)
    sampler.running = False
    sampler.join()
    return {"body_mb": 20, "status": status, "rss_before_mb": round(rss_before / 2**20),
            "rss_peak_mb": round(sampler.peak / 2**20)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parallel", type=int, default=40)
    p.add_argument("--legacy", action="store_true", help="a server from before the fixes (no new flags)")
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="tether-attacks-"))
    proc, url = start(folder, args.legacy)
    try:
        # lockout last: on a legacy server it locks the admin out, whom the argon2 stage signs in
        row = {"legacy": args.legacy, "argon2": argon2_load(url, proc, args.parallel), "body": big_body(url, proc)}
        row["lockout"] = lockout(url)
    finally:
        proc.terminate()
        proc.wait(10)
    print(json.dumps(row, indent=1))
    out = ROOT / "benchmarks" / "results" / f"raters_attacks{'_legacy' if args.legacy else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
