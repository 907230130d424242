#!/usr/bin/env python3
"""What an outsider's connection flood costs a job: a tracker and seven
workers (separate processes, with a cluster secret, loopback), then ROUNDS
pairs of the same job -- without, then with an outsider holding PER_SERVER
unauthenticated connections to every server from 127.0.0.2 and re-opening
each as soon as it is closed. Prints each job, the medians of the job times
(`job_s` of --json) and their ratio, and any product refused or retried.

    cargo build --release && scripts/flood-ratio.py [N] [ROUNDS] [PER_SERVER]
    (defaults 2048, 3, 1000)
"""
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
PER_SERVER = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
BIN = os.environ.get("SEPTET_BIN", "target/release/septet")


def flood(servers, stop, opened):
    async def hold(host, port):
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(host, port, local_addr=("127.0.0.2", 0))
                opened[0] += 1
                # Say nothing; wait for the server to give up on us.
                while not stop.is_set():
                    try:
                        if not await asyncio.wait_for(reader.read(64), 0.5):
                            break
                    except asyncio.TimeoutError:
                        continue
                writer.close()
            except OSError:
                await asyncio.sleep(0.01)

    async def main():
        await asyncio.gather(*(hold(h, p) for h, p in servers for _ in range(PER_SERVER)))

    asyncio.run(main())


def main():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory(prefix="septet-flood-") as d:
        secret = os.path.join(d, "k")
        subprocess.run([BIN, "secret", "--out", secret], check=True, capture_output=True)
        sec = ["--secret-file", secret]
        procs = []
        try:
            log = open(os.path.join(d, "tracker.log"), "w+")
            procs.append(subprocess.Popen([BIN, "tracker", "--listen", "127.0.0.1:0", *sec], stderr=log))
            addr = None
            for _ in range(100):
                log.seek(0)
                m = re.search(r"tracker listening.*?addr=(\S+)", log.read())
                if m:
                    addr = m.group(1)
                    break
                time.sleep(0.1)
            for i in range(7):
                procs.append(subprocess.Popen([BIN, "worker", "--tracker", addr, *sec], stderr=subprocess.DEVNULL))
            peers = []
            for _ in range(300):
                out = subprocess.run([BIN, "peers", "--tracker", addr, "--json", *sec], capture_output=True, text=True)
                peers = json.loads(out.stdout or "[]") if out.returncode == 0 else []
                if sum(p["state"] == "alive" for p in peers) == 7:
                    break
                time.sleep(0.2)
            servers = [tuple(addr.rsplit(":", 1))] + [tuple(p["addr"].rsplit(":", 1)) for p in peers]
            servers = [(h, int(p)) for h, p in servers]

            def job():
                out = subprocess.run(
                    [BIN, "multiply", "--tracker", addr, "--random", f"{N},{N},{N}", "--json", *sec],
                    capture_output=True,
                    text=True,
                )
                if out.returncode != 0:
                    print(out.stderr, file=sys.stderr)
                    sys.exit(1)
                s = json.loads(out.stdout)
                return s["job_s"], s["retries"], s["failures"]

            print(f"warm-up: {job()[0]:.3f} s")
            healthy, flooded = [], []
            for r in range(ROUNDS):
                t, retries, failures = job()
                healthy.append(t)
                stop, opened = threading.Event(), [0]
                flooder = threading.Thread(target=flood, args=(servers, stop, opened), daemon=True)
                flooder.start()
                time.sleep(3)  # let it fill every server's handshake budget
                ft, fretries, ffailures = job()
                stop.set()
                flooder.join()
                flooded.append(ft)
                print(
                    f"round {r + 1}: healthy {t:.3f} s (retries {retries}), flooded {ft:.3f} s "
                    f"(retries {fretries}, failures {len(ffailures)}; {opened[0]} flood connections opened)"
                )
            h, f = statistics.median(healthy), statistics.median(flooded)
            print(
                f"n={N}: median healthy {h:.3f} s, flooded {f:.3f} s: flooded/healthy {f / h:.2f}x "
                f"over {ROUNDS} rounds, {PER_SERVER} connections per server"
            )
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait()


main()
