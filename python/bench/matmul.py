"""septet.matmul against the CLI's file-to-file job and numpy.matmul, same run.

Starts a tracker and seven workers (the `septet` binary given, with a fresh
secret), then times, for random n×n float64 inputs:
  numpy     numpy.matmul(a, b) in this process
  python    septet.matmul(a, b, tracker=..., secret_file=...)  (C-ordered: no copy)
  python-F  the same on Fortran-ordered copies of a and b (no copy either)
  cli       np.save(A, B); `septet multiply --a --b --out`; np.load(C)
Each is run --repeat times (results checked against numpy's, untimed);
the median and the best are printed, the median's ratio to numpy's, and
how many operands septet copied. The load average printed is the
machine's, this run's own processes included.

    python python/bench/matmul.py --bin target/release/septet --n 4096
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import septet


def grid(bin_path, secret):
    tracker = subprocess.Popen(
        [bin_path, "tracker", "--listen", "127.0.0.1:0", "--secret-file", secret],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    procs = [tracker]
    addr = None
    for line in tracker.stderr:
        if "listening on " in line:
            addr = line.split("listening on ")[1].strip()
            break
    for _ in range(7):
        procs.append(subprocess.Popen(
            [bin_path, "worker", "--tracker", addr, "--secret-file", secret],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
    return procs, addr


def timed(f, repeat, check=None):
    """Median and best time of f(); check(result), if given, runs untimed."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        result = f()
        times.append(time.perf_counter() - t)
        if check:
            check(result)
    return statistics.median(times), min(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", required=True, help="the septet binary (a release build)")
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    load = os.getloadavg()
    rng = np.random.default_rng(1)
    a, b = rng.uniform(-1, 1, (args.n, args.n)), rng.uniform(-1, 1, (args.n, args.n))
    with tempfile.TemporaryDirectory() as d:
        secret = os.path.join(d, "secret")
        subprocess.run([args.bin, "secret", "--out", secret], check=True, capture_output=True)
        procs, tracker = grid(args.bin, secret)
        try:
            # Wait for the workers (their warm-up) by running one small job.
            deadline = time.monotonic() + 300
            while True:
                try:
                    septet.matmul(np.eye(64), np.eye(64), tracker=tracker, secret_file=secret, timeout=60)
                    break
                except septet.GridError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1)
            reference = np.matmul(a, b)
            results, copies = {}, {}
            results["numpy"] = timed(lambda: np.matmul(a, b), args.repeat)
            # What lending A and B in place saves: one copy of each.
            copy_s = timed(lambda: (a.copy(), b.copy()), args.repeat)[0]

            def check(c):
                assert np.abs(c - reference).max() <= 1e-9 * np.abs(reference).max()

            results["python"] = timed(lambda: septet.matmul(a, b, tracker=tracker, secret_file=secret), args.repeat, check)
            fa, fb = np.asfortranarray(a), np.asfortranarray(b)

            def check_f(c):
                assert c.flags["F_CONTIGUOUS"]
                check(c)

            results["python-F"] = timed(
                lambda: septet.matmul(fa, fb, tracker=tracker, secret_file=secret), args.repeat, check_f
            )
            # What the calls copied (the timed ones are septet.matmul, which
            # keeps no summary; a Grid's call is the same job).
            with septet.Grid(tracker, secret_file=secret) as g:
                for name, (x, y) in {"python": (a, b), "python-F": (fa, fb)}.items():
                    g.matmul(x, y)
                    copies[name] = g.last_job["operand_copies"]
            pa, pb, pc = (os.path.join(d, x) for x in ("A.npy", "B.npy", "C.npy"))

            def cli():
                np.save(pa, a)
                np.save(pb, b)
                subprocess.run(
                    [args.bin, "multiply", "--tracker", tracker, "--secret-file", secret,
                     "--a", pa, "--b", pb, "--out", pc],
                    check=True, capture_output=True,
                )
                return np.load(pc)

            results["cli"] = timed(cli, args.repeat, check)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait()
    print(f"n={args.n} float64, {args.repeat} runs each, 7 workers + requester on this machine ({os.cpu_count()} cores)")
    print(f"a copy of A and B (what septet.matmul does not make): {copy_s * 1e3:.0f} ms (median)")
    print(f"load average before the runs: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; after: {os.getloadavg()[0]:.2f}")
    print(f"{'':8} {'median s':>9} {'best s':>8} {'GFLOP/s':>8} {'× numpy':>8}  operands copied")
    for name, (median, best) in results.items():
        ratio = median / results["numpy"][0]
        print(f"{name:8} {median:9.3f} {best:8.3f} {2 * args.n**3 / median / 1e9:8.1f} {ratio:8.2f}  {copies.get(name, '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
