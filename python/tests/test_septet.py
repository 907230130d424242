"""`import septet` against NumPy: correctness, layouts, bad input, the GIL,
Ctrl-C, held leases, the embedded grid and a CLI-started grid with a secret."""

import os
import signal
import threading
import time

import numpy as np
import pytest

import septet

SEED = 20261202


def rng():
    print(f"seed {SEED}")
    return np.random.default_rng(SEED)


def close(c, expected, dtype):
    """Relative to the result's scale: f32 carries ~1e-6 error, f64 ~1e-15."""
    tol = 1e-4 if dtype == np.float32 else 1e-11
    scale = max(np.abs(expected).max(), 1.0)
    return np.abs(c.astype(np.float64) - expected).max() <= tol * scale


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 4), (65, 33, 17), (128, 128, 128), (257, 100, 301)])
def test_matches_numpy(local, shape, dtype):
    m, k, n = shape
    r = rng()
    a, b = r.uniform(-1, 1, (m, k)).astype(dtype), r.uniform(-1, 1, (k, n)).astype(dtype)
    c = local.matmul(a, b)
    assert c.dtype == dtype and c.shape == (m, n) and c.flags["C_CONTIGUOUS"]
    assert close(c, a.astype(np.float64) @ b.astype(np.float64), dtype)
    job = local.last_job
    assert (job["m"], job["k"], job["n"]) == shape and job["verified"] is True
    assert job["security"] == {"authenticated": True, "encrypted": False}


def test_small_integers_are_exact(local):
    r = rng()
    a, b = r.integers(-8, 8, (90, 70)).astype(np.float64), r.integers(-8, 8, (70, 50)).astype(np.float64)
    np.testing.assert_array_equal(local.matmul(a, b), a @ b)


@pytest.mark.parametrize(
    "layout",
    ["fortran", "transposed", "row-strided", "col-strided", "negative-stride", "readonly", "list"],
)
def test_any_layout(local, layout):
    r = rng()
    big_a, big_b = r.uniform(-1, 1, (160, 120)), r.uniform(-1, 1, (120, 140))
    a, b = {
        "fortran": lambda: (np.asfortranarray(big_a), np.asfortranarray(big_b)),
        "transposed": lambda: (big_b.T, big_a.T),
        "row-strided": lambda: (big_a[::2], big_b[:, :90]),
        "col-strided": lambda: (big_a[:, ::3], big_b[::3]),
        "negative-stride": lambda: (big_a[::-1, ::-1], big_b[::-1]),
        "readonly": lambda: (big_a.copy(), big_b.copy()),
        "list": lambda: (big_a[:5, :4].tolist(), big_b[:4, :3].tolist()),
    }[layout]()
    if layout == "readonly":
        a.flags.writeable = False
    before = (np.array(a, copy=True), np.array(b, copy=True))
    c = local.matmul(a, b)
    assert close(c, np.asarray(a) @ np.asarray(b), np.float64)
    np.testing.assert_array_equal(np.asarray(a), before[0], "inputs are not modified")
    np.testing.assert_array_equal(np.asarray(b), before[1])


# (a, b) of each layout; what the call should copy, whether it multiplies
# Cᵀ = Bᵀ·Aᵀ, and C's order. Mixed layouts copy the smaller operand.
LAYOUTS = {
    "C·C": (lambda a, b: (a, b), 0, False, "C"),
    "F·F": (lambda a, b: (np.asfortranarray(a), np.asfortranarray(b)), 0, True, "F"),
    "transposed views": (lambda a, b: (np.ascontiguousarray(a.T).T, np.ascontiguousarray(b.T).T), 0, True, "F"),
    "C·F, B smaller": (lambda a, b: (a, np.asfortranarray(b[:, :40])), 1, False, "C"),
    "F·C, B smaller": (lambda a, b: (np.asfortranarray(a), b[:, :40]), 1, True, "F"),
    "F·C, A smaller": (lambda a, b: (np.asfortranarray(a[:30]), b), 1, False, "C"),
    "strided·C": (lambda a, b: (a[:, ::2], b[:60]), 1, False, "C"),
    "strided·F": (lambda a, b: (a[::2], np.asfortranarray(b)), 1, True, "F"),
    "strided·strided": (lambda a, b: (a[::-1, ::2], b[::2, ::-1]), 2, False, "C"),
    "unaligned·C": (lambda a, b: (unaligned(a), b), 1, False, "C"),
}


def unaligned(x):
    """x's elements at an address that is not a multiple of their size."""
    buf = np.zeros(x.nbytes + 1, dtype=np.uint8)
    y = np.frombuffer(buf[1:].data, dtype=x.dtype).reshape(x.shape)
    y[...] = x
    assert not y.flags["ALIGNED"]
    return y


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_operands_are_lent_in_place_unless_their_layout_demands_a_copy(local, layout, dtype):
    make, copies, transposed, order = LAYOUTS[layout]
    r = rng()
    a, b = make(r.uniform(-1, 1, (150, 120)).astype(dtype), r.uniform(-1, 1, (120, 110)).astype(dtype))
    before = (a.copy(), b.copy())
    c = local.matmul(a, b)
    assert c.dtype == dtype and c.shape == (a.shape[0], b.shape[1])
    assert close(c, a.astype(np.float64) @ b.astype(np.float64), dtype)
    job = local.last_job
    assert (job["operand_copies"], job["transposed"]) == (copies, transposed), job
    assert (job["m"], job["k"], job["n"]) == (a.shape[0], a.shape[1], b.shape[1]), "the caller's shapes"
    assert c.flags["C_CONTIGUOUS" if order == "C" else "F_CONTIGUOUS"]
    # Handed over as the Rust allocation, in either order.
    assert not c.flags["OWNDATA"] and c.flags["WRITEABLE"]
    np.testing.assert_array_equal(a, before[0], "inputs are not modified")
    np.testing.assert_array_equal(b, before[1])
    # The borrow ended with the call: the caller can write its arrays again.
    if a.flags["WRITEABLE"]:
        a[0, 0] = 7.0


@pytest.mark.parametrize("order", ["C", "F"])
def test_large_contiguous_operands_are_not_copied(local, order):
    # 32 MiB each: a copy would show as operand_copies, and as ~20 ms a copy.
    r = rng()
    a = np.asarray(r.uniform(-1, 1, (2048, 2048)), order=order)
    b = np.asarray(r.uniform(-1, 1, (2048, 2048)), order=order)
    c = local.matmul(a, b)
    job = local.last_job
    assert job["operand_copies"] == 0 and job["transposed"] == (order == "F")
    assert c.flags[order + "_CONTIGUOUS"] and not c.flags["OWNDATA"]
    rows = r.choice(2048, 8, replace=False)
    assert close(c[rows], a[rows] @ b, np.float64)


def test_held_lease_lends_operands_too(local):
    a = np.asfortranarray(rng().uniform(-1, 1, (64, 48)))
    b = np.asfortranarray(rng().uniform(-1, 1, (48, 40)))
    local.lease()
    try:
        c = local.matmul(a, b)
        assert local.last_job["operand_copies"] == 0 and local.last_job["transposed"] is True
        assert local.last_job["lease_id"] == local.lease_id
        assert close(c, a @ b, np.float64) and c.flags["F_CONTIGUOUS"]
    finally:
        local.release()


def test_result_is_handed_over_without_a_copy(local):
    c = local.matmul(np.ones((64, 32)), np.ones((32, 16)))
    # NumPy does not own the data: it is the Rust allocation, kept alive by c's base.
    assert not c.flags["OWNDATA"] and c.base is not None and c.flags["WRITEABLE"]
    c[0, 0] = 5.0
    assert c[0, 0] == 5.0 and (c[1:] == 32.0).all()


def test_empty_inner_dimension_gives_zeros(local):
    c = local.matmul(np.zeros((3, 0)), np.zeros((0, 4)))
    np.testing.assert_array_equal(c, np.zeros((3, 4)))


@pytest.mark.parametrize(
    "a, b, message",
    [
        (np.ones((3, 4)), np.ones((5, 2)), "shape mismatch: a is 3×4 and b is 5×2"),
        (np.ones(3), np.ones((3, 2)), "a must be a 2-D array"),
        (np.ones((2, 2)), np.ones((2, 2, 2)), "b must be a 2-D array"),
        (np.ones((2, 2), dtype=np.int64), np.ones((2, 2), dtype=np.int64), "septet multiplies float64 or float32"),
        (np.ones((2, 2), dtype=np.complex128), np.ones((2, 2), dtype=np.complex128), "complex128"),
        (np.ones((2, 2)), np.ones((2, 2), dtype=np.float32), "a is float64 and b is float32"),
        (np.array([[1.0, np.nan]]), np.ones((2, 1)), "a[0, 1] is NaN"),
        (np.ones((1, 2)), np.array([[1.0], [np.inf]]), "b[1, 0] is inf"),
        (np.ones((1, 2)), np.array([[1.0], [-np.inf]]), "b[1, 0] is -inf"),
        (np.array([["x"]]), np.ones((1, 1)), "float64 or float32"),
    ],
)
def test_bad_input_is_a_value_error(local, a, b, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        local.matmul(a, b)


def test_non_finite_input_multiplies_with_verify_off(local):
    a = np.array([[1.0, np.inf], [2.0, 3.0]])
    c = local.matmul(a, np.array([[1.0], [0.5]]), verify=False)
    # Strassen forms sums and differences: an inf may come out NaN.
    assert not np.isfinite(c[0, 0]) and c[1, 0] == 3.5
    assert local.last_job["verified"] is False


def test_bad_arguments(local, tmp_path):
    with pytest.raises(ValueError, match="timeout must be a positive"):
        local.matmul(np.ones((2, 2)), np.ones((2, 2)), timeout=-1)
    with pytest.raises(ValueError, match="not a directory"):
        local.matmul(np.ones((2, 2)), np.ones((2, 2)), report=tmp_path / "missing" / "job.html")
    with pytest.raises(ValueError, match="exactly 7 slots"):
        local.lease(3)
    with pytest.raises(ValueError, match="at least 7 workers"):
        septet.LocalGrid(workers=3)
    with pytest.raises(ValueError, match="needs a cluster secret"):
        septet.Grid("127.0.0.1:1", encrypt=True)
    with pytest.raises(ValueError, match="missing-secret"):
        septet.Grid("127.0.0.1:1", secret_file=tmp_path / "missing-secret")


def test_report_and_last_job(local, tmp_path):
    path = tmp_path / "job.html"
    a, b = rng().uniform(-1, 1, (100, 80)), rng().uniform(-1, 1, (80, 60))
    local.matmul(a, b, report=path)
    html = path.read_text()
    assert html.lower().startswith("<!doctype html>") and "M7" in html
    job = local.last_job
    for field in ["total_s", "job_s", "lease_wait_s", "gflops", "lease_id", "bytes_sent", "bytes_received", "peers", "attempts", "plan"]:
        assert field in job, field
    assert len(job["peers"]) == 7 and job["bytes_sent"] > a.nbytes
    # Rates are over the job's own time: the lease wait is reported beside them.
    assert abs(job["total_s"] - job["lease_wait_s"] - job["job_s"]) < 1e-9
    assert abs(job["gflops"] - 2 * 100 * 80 * 60 / job["job_s"] / 1e9) <= 1e-9 * job["gflops"]


def test_held_lease_is_used_across_calls_and_released(local):
    assert local.lease_id is None
    lease = local.lease()
    assert local.lease_id == lease
    with pytest.raises(septet.GridError, match="already holds a lease"):
        local.lease()
    a, b = np.eye(20), np.arange(400.0).reshape(20, 20)
    for _ in range(3):
        np.testing.assert_array_equal(local.matmul(a, b), b)
        assert local.last_job["lease_id"] == lease
    assert local.release() is True and local.lease_id is None
    assert local.release() is False
    local.matmul(a, b)
    assert local.last_job["lease_id"] != lease


def test_unreachable_tracker_is_a_grid_error():
    with septet.Grid("127.0.0.1:1") as g:
        with pytest.raises(septet.GridError, match="127.0.0.1:1"):
            g.matmul(np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(septet.GridError, match="closed"):
        g.matmul(np.ones((2, 2)), np.ones((2, 2)))


def test_peers_dataframe(local):
    try:
        import polars  # noqa: F401

        kind = "polars"
    except ImportError:
        try:
            import pandas  # noqa: F401

            kind = "pandas"
        except ImportError:
            with pytest.raises(ImportError, match="polars or pandas"):
                local.peers()
            return
    df = local.peers()
    assert type(df).__module__.startswith(kind)
    assert len(df) == 7 and list(df["state"]) == ["alive"] * 7
    assert "peer_id" in df.columns and "in_use" in df.columns


def test_local_grid_encrypted():
    with septet.LocalGrid(workers=7, encrypt=True) as g:
        a, b = rng().uniform(-1, 1, (50, 40)), rng().uniform(-1, 1, (40, 30))
        assert close(g.matmul(a, b), a @ b, np.float64)
        assert g.last_job["security"] == {"authenticated": True, "encrypted": True}
    with pytest.raises(septet.GridError, match="closed"):
        g.matmul(a, b)


def test_cli_grid_with_a_secret(cli_grid, tmp_path):
    r = rng()
    a, b = r.uniform(-1, 1, (200, 150)).astype(np.float32), r.uniform(-1, 1, (150, 100)).astype(np.float32)
    c = septet.matmul(a, b, tracker=cli_grid.tracker, secret_file=cli_grid.secret)
    assert close(c, a.astype(np.float64) @ b.astype(np.float64), np.float32)
    with septet.Grid(cli_grid.tracker, secret_file=cli_grid.secret) as g:
        assert close(g.matmul(a, b), a.astype(np.float64) @ b.astype(np.float64), np.float32)
    # No secret, or another one: refused, with the CLI's message.
    with pytest.raises(septet.GridError):
        septet.matmul(a, b, tracker=cli_grid.tracker)
    other = tmp_path / "other"
    septet_cli = __import__("conftest")
    septet_cli.run("secret", "--out", str(other))
    with pytest.raises(septet.GridError, match="refused our cluster secret"):
        septet.matmul(a, b, tracker=cli_grid.tracker, secret_file=other)
    assert cli_grid.in_use() == 0


def test_gil_is_released_while_waiting(cli_grid):
    """Another Python thread must run during the call for it to end: it
    releases the lease the call waits for."""
    holder = septet.Grid(cli_grid.tracker, secret_file=cli_grid.secret)
    holder.lease()
    counted = []

    def work():
        time.sleep(2.0)
        counted.append(sum(range(100_000)))
        holder.release()

    t = threading.Thread(target=work)
    with septet.Grid(cli_grid.tracker, secret_file=cli_grid.secret) as g:
        t.start()
        c = g.matmul(np.eye(30), np.eye(30), timeout=120)
        t.join()
        np.testing.assert_array_equal(c, np.eye(30))
        assert counted == [sum(range(100_000))]
        # It waited in the tracker's queue while the other thread ran.
        assert g.last_job["lease_wait_s"] > 0.5, g.last_job["lease_wait_s"]
    holder.close()
    assert cli_grid.in_use() == 0


def test_ctrl_c_interrupts_a_call_and_leaves_the_queue(cli_grid):
    holder = septet.Grid(cli_grid.tracker, secret_file=cli_grid.secret)
    holder.lease()
    timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    with septet.Grid(cli_grid.tracker, secret_file=cli_grid.secret) as g:
        timer.start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            g.matmul(np.eye(30), np.eye(30), timeout=120)
        timer.join()
        assert time.monotonic() - started < 60
        holder.release()
        # The interrupted request left the queue: the next call gets the
        # seven slots, and nothing stays leased afterwards.
        np.testing.assert_array_equal(g.matmul(np.eye(30), np.eye(30), timeout=120), np.eye(30))
    deadline = time.monotonic() + 20
    while cli_grid.in_use() != 0:
        assert time.monotonic() < deadline, "a slot stayed leased"
        time.sleep(0.1)
    holder.close()


def test_timeout_releases_the_lease(cli_grid):
    holder = septet.Grid(cli_grid.tracker, secret_file=cli_grid.secret)
    holder.lease()
    with pytest.raises(septet.GridError, match="timeout=0.500"):
        septet.matmul(np.eye(4), np.eye(4), tracker=cli_grid.tracker, secret_file=cli_grid.secret, timeout=0.5)
    holder.close()
    deadline = time.monotonic() + 20
    while cli_grid.in_use() != 0:
        assert time.monotonic() < deadline, "a slot stayed leased"
        time.sleep(0.1)


def test_ctrl_c_stops_a_running_job_and_ends_its_lease(cli_grid):
    """SIGINT once the job holds its seven slots: KeyboardInterrupt, and the
    tracker ends the lease (the job's tracker connection closes)."""
    r = rng()
    a, b = r.uniform(-1, 1, (3000, 3000)), r.uniform(-1, 1, (3000, 3000))
    sent = []

    def interrupt_once_leased():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if cli_grid.in_use() == 7:
                os.kill(os.getpid(), signal.SIGINT)
                sent.append(True)
                return
            time.sleep(0.02)

    t = threading.Thread(target=interrupt_once_leased)
    t.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            septet.matmul(a, b, tracker=cli_grid.tracker, secret_file=cli_grid.secret, timeout=120)
    finally:
        t.join()
    assert sent, "the job never held seven slots"
    deadline = time.monotonic() + 30
    while cli_grid.in_use() != 0:
        assert time.monotonic() < deadline, "the interrupted job's lease was not ended"
        time.sleep(0.1)


@pytest.mark.parametrize("held", [False, True])
def test_calls_from_several_threads(local, held):
    """Each call waits its turn (for slots, or for the held lease) without
    the GIL; every result is right."""
    r = rng()
    pairs = [(r.uniform(-1, 1, (90, 60)), r.uniform(-1, 1, (60, 70))) for _ in range(4)]
    results = [None] * len(pairs)
    errors = []

    def call(i):
        try:
            results[i] = local.matmul(*pairs[i], timeout=120)
        except Exception as e:  # reported below
            errors.append(e)

    if held:
        local.lease()
    try:
        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(pairs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        if held:
            local.release()
    assert not errors, errors
    for (a, b), c in zip(pairs, results):
        assert close(c, a @ b, np.float64)


def test_two_levels_deep_on_49_local_workers():
    """depth=2 leases 49 slots: each of the seven products is split again
    and computed by a group of seven; C matches NumPy, the report shows
    both levels, and a bad depth is refused before anything is leased."""
    r = rng()
    a, b = r.uniform(-1, 1, (300, 260)), r.uniform(-1, 1, (260, 280))
    with septet.LocalGrid(workers=49) as g:
        c = g.matmul(a, b, depth=2)
        assert close(c, a @ b, np.float64)
        job = g.last_job
        assert job["depth"] == 2 and job["plan"] == "relay" and not job["failures"], job["failures"]
        groups = [s["delegated"]["slots"] for s in job["relay"]["slots"]]
        assert len(groups) == 7 and all(len(s) == 7 for s in groups)
        assert len({sub["peer_id"] for s in groups for sub in s}) == 49
        assert close(g.matmul(a, b, depth="auto"), a @ b, np.float64)
        assert g.last_job["depth"] == 1, "auto takes one level below its size threshold"
        for bad in (0, 3, "two"):
            with pytest.raises(ValueError, match="depth must be 1, 2"):
                g.matmul(a, b, depth=bad)
