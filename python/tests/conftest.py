"""Fixtures: an embedded grid (septet.LocalGrid) and a grid of separate
`septet` processes with a cluster secret, as a user starts one."""

import json
import os
import pathlib
import subprocess
import time

import pytest

import septet

ROOT = pathlib.Path(__file__).resolve().parents[2]


def septet_bin():
    """The CLI the Rust tests built (SEPTET_BIN overrides)."""
    if "SEPTET_BIN" in os.environ:
        return os.environ["SEPTET_BIN"]
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    path = target / "debug" / "septet"
    assert path.exists(), f"{path} is missing: run `cargo build` first (or set SEPTET_BIN)"
    return str(path)


def run(*args, check=True):
    out = subprocess.run([septet_bin(), *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def peers_json(tracker, secret):
    return json.loads(run("peers", "--tracker", tracker, "--json", "--secret-file", secret).stdout)


@pytest.fixture(scope="module")
def local():
    with septet.LocalGrid(workers=7) as g:
        yield g


class CliGrid:
    def __init__(self, tracker, secret, procs):
        self.tracker, self.secret, self.procs = tracker, secret, procs

    def in_use(self):
        return sum(row["in_use"] for row in peers_json(self.tracker, self.secret))


@pytest.fixture(scope="module")
def cli_grid(tmp_path_factory):
    """A tracker and seven workers as processes, sharing a secret."""
    secret = str(tmp_path_factory.mktemp("secret") / "secret")
    run("secret", "--out", secret)
    procs = []
    try:
        tracker = subprocess.Popen(
            [septet_bin(), "tracker", "--listen", "127.0.0.1:0", "--secret-file", secret],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(tracker)
        addr = None
        for line in tracker.stderr:
            if "listening on " in line:
                addr = line.split("listening on ")[1].strip()
                break
        assert addr, "the tracker did not start"
        for _ in range(7):
            procs.append(
                subprocess.Popen(
                    [septet_bin(), "worker", "--tracker", addr, "--secret-file", secret, "--threads", "1", "--warm-up", "0"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        deadline = time.monotonic() + 30
        while len([r for r in peers_json(addr, secret) if r["state"] == "alive"]) < 7:
            assert time.monotonic() < deadline, "the workers did not register"
            time.sleep(0.05)
        yield CliGrid(addr, secret, procs)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
