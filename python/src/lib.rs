//! `import septet`: NumPy matrices multiplied on a septet grid from Python.
//!
//! This module owns the Python surface — `matmul`, `Grid`, `LocalGrid`,
//! `GridError` — and the hand-over of arrays between NumPy and the
//! [`Requester`]; leasing, planning, verification and hedging stay in
//! `septet-client`, and the embedded grid is `septet::local::LocalGrid`.
//!
//! Threads: every job runs on one process-wide tokio runtime. The calling
//! thread waits for it without the GIL, waking every
//! [`SIGNAL_CHECK_INTERVAL`] to let Python handle signals: a pending
//! `KeyboardInterrupt` aborts the job (dropping the job's future closes its
//! tracker connection, so the tracker ends a lease taken for the call)
//! and is raised once the job has stopped.
//!
//! Memory: A and B are read where NumPy holds them when their layout
//! allows — a C-contiguous array as it is, two Fortran-ordered ones as the
//! row-major Aᵀ and Bᵀ of Cᵀ = Bᵀ·Aᵀ (see [`Orientation`]) — and an
//! operand in any other layout is copied once, without the GIL;
//! `last_job["operand_copies"]` counts the copies. C is handed to NumPy
//! as the Rust allocation itself (Fortran-ordered after Cᵀ): no copy.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ndarray::{Array2, ArrayView2};
use numpy::{IntoPyArray, PyArray2, PyArrayMethods, PyReadonlyArray2};
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use septet_client::{HeldLease, JobReport, Requester, RequesterConfig, Store, TrackerClient, DEFAULT_REQUEST_TIMEOUT};
use septet_common::secure::{Secret, Security};
use septet_common::{Element, Role};

/// How often a waiting call takes the GIL back to let Python handle
/// signals (Ctrl-C): often enough to feel immediate, rarely enough to cost
/// nothing.
const SIGNAL_CHECK_INTERVAL: Duration = Duration::from_millis(50);

pyo3::create_exception!(
    septet,
    GridError,
    PyException,
    "A grid operation failed: the tracker or a peer could not be reached, refused our secret, \
     or a job could not finish. The message is the CLI's one-line error."
);

/// The runtime every job and embedded grid of this process runs on.
fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<std::io::Result<tokio::runtime::Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| tokio::runtime::Builder::new_multi_thread().thread_name("septet").enable_all().build())
        .as_ref()
        .map_err(|e| GridError::new_err(format!("could not start the async runtime: {e}")))
}

/// Runs `fut` on the runtime and waits for it without the GIL; a signal
/// handler that raises (Ctrl-C) aborts it, waits until it has stopped, and
/// the exception is returned.
fn wait<F>(py: Python<'_>, fut: F) -> PyResult<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let rt = runtime()?;
    let mut job = rt.spawn(fut);
    loop {
        let done = py.detach(|| rt.block_on(async { tokio::time::timeout(SIGNAL_CHECK_INTERVAL, &mut job).await }));
        if let Ok(joined) = done {
            return joined.map_err(|e| GridError::new_err(format!("internal error: the job's task failed: {e}")));
        }
        if let Err(interrupt) = py.check_signals() {
            job.abort();
            let _ = py.detach(|| rt.block_on(job));
            return Err(interrupt);
        }
    }
}

/// An error's chain on one line, as the CLI prints it.
fn one_line(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

fn grid_error(e: anyhow::Error) -> PyErr {
    GridError::new_err(one_line(&e))
}

/// How to reach and join a grid.
#[derive(Clone)]
struct Target {
    tracker: String,
    security: Security,
}

impl Target {
    fn new(py: Python<'_>, tracker: String, secret_file: Option<PathBuf>, encrypt: bool) -> PyResult<Self> {
        let security = match secret_file {
            None if encrypt => return Err(PyValueError::new_err(
                "encrypt=True needs a cluster secret: pass secret_file=... (make one with `septet secret --out FILE`)",
            )),
            None => Security::default(),
            Some(path) => {
                let (secret, warning) =
                    Secret::load(&path, allow_readable_secret()).map_err(|e| PyValueError::new_err(e.to_string()))?;
                if let Some(warning) = warning {
                    let warnings = py.import("warnings")?;
                    warnings.call_method1("warn", (warning,))?;
                }
                Security::with_secret(secret, encrypt)
            }
        };
        Ok(Self { tracker, security })
    }
}

/// Options of one multiplication.
#[derive(Clone, Copy)]
struct CallOptions {
    verify: bool,
    timeout: Option<Duration>,
    /// 1, 2, or 0 for auto (see `RequesterConfig::depth`).
    depth: u8,
}

/// `depth=`: 1, 2 or "auto".
fn parse_depth(depth: &Bound<'_, PyAny>) -> PyResult<u8> {
    if let Ok(d) = depth.extract::<u8>() {
        if d == 1 || d == 2 {
            return Ok(d);
        }
    } else if depth.extract::<String>().is_ok_and(|d| d == "auto") {
        return Ok(0);
    }
    Err(PyValueError::new_err(format!("depth must be 1, 2 or \"auto\", not {depth}")))
}

fn parse_timeout(timeout: Option<f64>) -> PyResult<Option<Duration>> {
    timeout
        .map(|t| {
            Duration::try_from_secs_f64(t)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| PyValueError::new_err(format!("timeout must be a positive number of seconds, not {t}")))
        })
        .transpose()
}

/// Checks a report path before anything is leased: a typo should not cost a job.
fn check_report_path(path: &std::path::Path) -> PyResult<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() || path.is_dir() {
        return Err(PyValueError::new_err(format!(
            "{}: cannot write the report there: {} is not a directory",
            path.display(),
            if path.is_dir() { path } else { dir }.display()
        )));
    }
    Ok(())
}

/// `x` as a 2-D NumPy array (array-likes go through `numpy.asarray`, which
/// does not copy an ndarray).
fn as_ndarray<'py>(py: Python<'py>, x: &Bound<'py, PyAny>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    let array = py.import("numpy")?.call_method1("asarray", (x,))?;
    let ndim: usize = array.getattr("ndim")?.extract()?;
    if ndim != 2 {
        let shape = array.getattr("shape")?.repr()?.to_string();
        return Err(PyValueError::new_err(format!("{name} must be a 2-D array, not of shape {shape}")));
    }
    Ok(array)
}

/// How a call hands its operands to the requester.
///
/// The requester reads row-major operands. A C-contiguous array is one
/// already, and is lent in place ([`Store::borrowed`]). A Fortran-ordered
/// array is the row-major transpose of itself, so when that saves copying
/// the call computes Cᵀ = Bᵀ·Aᵀ instead, from Bᵀ and Aᵀ as they lie, and
/// Cᵀ's row-major elements are C in Fortran order. An operand that does
/// not fit the orientation chosen (strided, or in the other order than its
/// partner) is copied once, without the GIL; an unaligned one is copied
/// by NumPy first (see [`operands`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Orientation {
    /// C = A·B from A and B.
    Direct,
    /// Cᵀ = Bᵀ·Aᵀ from Bᵀ and Aᵀ.
    Transposed,
}

impl Orientation {
    /// The caller's C from the job's product: Cᵀ's row-major elements are
    /// C in Fortran order, so this is a view, not a copy.
    fn c_of<T>(self, product: Array2<T>) -> Array2<T> {
        match self {
            Orientation::Direct => product,
            Orientation::Transposed => product.reversed_axes(),
        }
    }
}

/// The layouts an operand can be lent in without a copy.
#[derive(Clone, Copy)]
struct Layout {
    c: bool,
    f: bool,
    elements: usize,
}

impl Layout {
    fn of<T>(view: &ArrayView2<'_, T>) -> Layout {
        // Empty arrays and unaligned buffers (numpy.frombuffer at an odd
        // offset) are copied: a Rust slice needs an aligned, non-null start.
        let lendable = !view.is_empty() && view.as_ptr().is_aligned();
        Layout {
            c: lendable && view.is_standard_layout(),
            f: lendable && view.t().is_standard_layout(),
            elements: view.len(),
        }
    }
}

/// The orientation that copies fewer elements (direct when equal).
fn orientation(a: Layout, b: Layout) -> Orientation {
    let copied = |fits: fn(&Layout) -> bool| [a, b].iter().filter(|x| !fits(x)).map(|x| x.elements).sum::<usize>();
    if copied(|x| x.f) < copied(|x| x.c) {
        Orientation::Transposed
    } else {
        Orientation::Direct
    }
}

/// The first non-finite element of `view`, as (row, column, value).
fn first_non_finite<T: Element>(view: ArrayView2<'_, T>) -> Option<(usize, usize, f64)> {
    let finite = |v: &T| v.to_f64().is_finite();
    let all = match view.as_slice_memory_order() {
        Some(s) => s.iter().all(finite),
        None => view.iter().all(finite),
    };
    if all {
        return None;
    }
    view.indexed_iter().find(|(_, v)| !finite(v)).map(|((i, j), v)| (i, j, v.to_f64()))
}

/// A and B as the requester takes them (in the call's orientation).
struct Inputs<T> {
    a: Arc<Store<T>>,
    b: Arc<Store<T>>,
    orientation: Orientation,
    /// Operands copied (0, 1 or 2); the others are lent in place.
    copies: u8,
}

/// The inputs of one call, of one dtype.
enum Operands {
    F64(Inputs<f64>),
    F32(Inputs<f32>),
}

/// The NumPy arrays a call lends, borrowed (rust-numpy's shared borrow)
/// until every store that reads them has been dropped.
#[allow(dead_code, reason = "held only to be dropped: that ends the borrows")]
enum Borrows<'py> {
    F64(Vec<PyReadonlyArray2<'py, f64>>),
    F32(Vec<PyReadonlyArray2<'py, f32>>),
}

/// The calling side of a call's lent operands.
struct Lending<'py> {
    /// Disconnected once every lent store is dropped: each holds a sender
    /// as its owner.
    dropped: std::sync::mpsc::Receiver<()>,
    borrows: Borrows<'py>,
}

impl Lending<'_> {
    /// Waits, without the GIL, until the job has dropped every lent
    /// operand, then ends the borrows. A job's tasks hold its operands by
    /// `Arc`, and some can outlive the job's future by a moment (a task
    /// aborted on Ctrl-C or timeout finishes its current step; a
    /// verification on a blocking thread runs to its end): until they let
    /// go, the arrays must stay allocated and borrowed.
    fn settle(self, py: Python<'_>) {
        let Lending { dropped, borrows } = self;
        // Err(RecvError) once every sender is gone; nothing is ever sent.
        py.detach(move || while dropped.recv().is_ok() {});
        drop(borrows);
    }
}

/// A's and B's stores in `orientation`: each lent in place when its layout
/// allows, else copied (row-major, without the GIL). NaN and ±inf are
/// refused when `finite` (their products cannot be verified), named at
/// their place in the caller's array.
fn lend<'py, T: Element + numpy::Element>(
    py: Python<'py>,
    arrays: [&Bound<'py, PyArray2<T>>; 2],
    finite: bool,
    lent: &std::sync::mpsc::Sender<()>,
) -> PyResult<(Inputs<T>, Vec<PyReadonlyArray2<'py, T>>)> {
    let mut borrows = Vec::with_capacity(2);
    for (array, name) in arrays.into_iter().zip(["a", "b"]) {
        borrows.push(array.try_readonly().map_err(|e| PyValueError::new_err(format!("{name}: {e}")))?);
    }
    let views = [borrows[0].as_array(), borrows[1].as_array()];
    let orientation = orientation(Layout::of(&views[0]), Layout::of(&views[1]));
    let mut stores = Vec::with_capacity(2);
    let mut copies = 0;
    for (view, name) in views.into_iter().zip(["a", "b"]) {
        // The operand as the requester reads it: A or Aᵀ (B or Bᵀ).
        let operand = match orientation {
            Orientation::Direct => view,
            Orientation::Transposed => view.t(),
        };
        let layout = Layout::of(&operand);
        let (store, bad) = py.detach(|| {
            let bad = if finite { first_non_finite(view) } else { None };
            if bad.is_some() {
                return (None, bad);
            }
            let store = if layout.c {
                // SAFETY: `operand` is standard layout (row-major,
                // contiguous) and aligned, so its `len` elements from
                // `as_ptr` are the matrix. They stay allocated and
                // unwritten by Rust code while the store lives: the
                // caller keeps the array alive and its rust-numpy shared
                // borrow held until `Lending::settle` has seen every
                // store's owner (a clone of `lent`) dropped (see `Session::matmul`).
                // The borrow does not stop Python code on another thread
                // from writing the array meanwhile (rust-numpy leaves
                // Python to its author): that races with the job as it
                // would with `numpy.matmul`, which also reads without the
                // GIL, and is documented as the caller's to avoid. The
                // job only reads the elements as floats (no pointer or
                // length comes from them), so such a race can spoil the
                // product, not the process's memory.
                unsafe { Store::borrowed(operand.as_ptr(), operand.dim(), Box::new(lent.clone())) }
            } else {
                Store::from(operand.as_standard_layout().into_owned())
            };
            (Some(store), None)
        });
        if let Some((i, j, v)) = bad {
            return Err(PyValueError::new_err(format!(
                "{name}[{i}, {j}] is {v}: NaN and ±inf cannot be verified (pass verify=False to multiply them unchecked)"
            )));
        }
        copies += u8::from(!layout.c);
        stores.push(Arc::new(store.expect("no store only when refused")));
    }
    let [a, b]: [Arc<Store<T>>; 2] = stores.try_into().expect("two operands");
    let (a, b) = match orientation {
        Orientation::Direct => (a, b),
        Orientation::Transposed => (b, a),
    };
    Ok((Inputs { a, b, orientation, copies }, borrows))
}

/// Checks A and B and lends them to the job: see [`Orientation`].
fn operands<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
    verify: bool,
) -> PyResult<(Operands, Lending<'py>)> {
    let (a, b) = (as_ndarray(py, a, "a")?, as_ndarray(py, b, "b")?);
    let dtype = |x: &Bound<'_, PyAny>| -> PyResult<String> { Ok(x.getattr("dtype")?.str()?.to_string()) };
    let (da, db) = (dtype(&a)?, dtype(&b)?);
    let shape = |x: &Bound<'_, PyAny>| -> PyResult<(usize, usize)> { x.getattr("shape")?.extract() };
    let (sa, sb) = (shape(&a)?, shape(&b)?);
    if sa.1 != sb.0 {
        return Err(PyValueError::new_err(format!(
            "shape mismatch: a is {}×{} and b is {}×{}; a's columns must equal b's rows",
            sa.0, sa.1, sb.0, sb.1
        )));
    }
    for (name, dtype) in [("a", &da), ("b", &db)] {
        if dtype != "float64" && dtype != "float32" {
            return Err(PyValueError::new_err(format!(
                "{name} is {dtype}: septet multiplies float64 or float32 (convert with .astype(numpy.float64))"
            )));
        }
    }
    if da != db {
        return Err(PyValueError::new_err(format!(
            "a is {da} and b is {db}: both must be float64 or both float32 (convert one with .astype)"
        )));
    }
    // Unaligned elements (numpy.frombuffer at an odd offset) cannot be
    // viewed from Rust at all: NumPy copies them first, into an aligned
    // array of the same order. Rare enough to do with the GIL.
    let mut realigned = 0;
    let (a, b) = {
        let mut aligned = |x: Bound<'py, PyAny>| -> PyResult<Bound<'py, PyAny>> {
            if x.getattr("flags")?.getattr("aligned")?.extract()? {
                return Ok(x);
            }
            realigned += 1;
            py.import("numpy")?.call_method1("array", (x,))
        };
        (aligned(a)?, aligned(b)?)
    };
    let (lent, dropped) = std::sync::mpsc::channel();
    let (mut operands, borrows) = match da.as_str() {
        "float64" => {
            let (inputs, borrows) = lend(py, [a.cast::<PyArray2<f64>>()?, b.cast::<PyArray2<f64>>()?], verify, &lent)?;
            (Operands::F64(inputs), Borrows::F64(borrows))
        }
        "float32" => {
            let (inputs, borrows) = lend(py, [a.cast::<PyArray2<f32>>()?, b.cast::<PyArray2<f32>>()?], verify, &lent)?;
            (Operands::F32(inputs), Borrows::F32(borrows))
        }
        other => {
            return Err(PyValueError::new_err(format!("a and b are {other}: septet multiplies float64 or float32")))
        }
    };
    match &mut operands {
        Operands::F64(i) => i.copies += realigned,
        Operands::F32(i) => i.copies += realigned,
    }
    Ok((operands, Lending { dropped, borrows }))
}

/// One job's result before it becomes a NumPy array, and how it was made.
enum Product {
    F64(Array2<f64>),
    F32(Array2<f32>),
}

/// The job's `--json` summary (the report's fields and how its
/// connections were protected), as the CLI prints it without `--check`:
/// rates over the job's own time (`job_s`), the lease wait beside them.
fn summary(report: &JobReport, security: &Security) -> serde_json::Value {
    let mut value = serde_json::to_value(report).unwrap_or_else(|_| serde_json::json!({}));
    value["job_s"] = septet::report::job_s(report).into();
    value["seed"] = serde_json::Value::Null;
    value["check"] = serde_json::Value::Null;
    value["out"] = serde_json::Value::Null;
    value["security"] = serde_json::json!({
        "authenticated": security.secret.is_some(),
        "encrypted": security.encrypt,
    });
    value
}

/// A connection to a grid: where its tracker is, how to prove we belong,
/// and an optional lease held across calls.
struct Session {
    target: Target,
    lease: Mutex<Option<Arc<HeldLease>>>,
    /// One job at a time on the held lease: its seven slots are one job's
    /// (calls from other threads wait their turn, without the GIL).
    lease_jobs: Arc<tokio::sync::Mutex<()>>,
    last_job: Mutex<Option<serde_json::Value>>,
    closed: std::sync::atomic::AtomicBool,
}

impl Session {
    fn new(target: Target) -> Self {
        Self {
            target,
            lease: Mutex::new(None),
            lease_jobs: Arc::new(tokio::sync::Mutex::new(())),
            last_job: Mutex::new(None),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn check_open(&self) -> PyResult<()> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(GridError::new_err("this grid is closed"));
        }
        Ok(())
    }

    fn requester(&self, verify: bool, depth: u8) -> Requester {
        Requester::new(RequesterConfig {
            tracker: self.target.tracker.clone(),
            verify,
            security: self.target.security.clone(),
            depth,
            ..RequesterConfig::default()
        })
    }

    fn held(&self) -> Option<Arc<HeldLease>> {
        self.lease.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn matmul<'py>(
        &self,
        py: Python<'py>,
        a: &Bound<'py, PyAny>,
        b: &Bound<'py, PyAny>,
        opts: CallOptions,
        report: Option<PathBuf>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.check_open()?;
        if let Some(path) = &report {
            check_report_path(path)?;
        }
        let (inputs, lending) = operands(py, a, b, opts.verify)?;
        let (orientation, copies) = match &inputs {
            Operands::F64(i) => (i.orientation, i.copies),
            Operands::F32(i) => (i.orientation, i.copies),
        };
        let done = self.run(py, inputs, opts);
        // However the job ended: the arrays stay borrowed until it has let
        // go of them.
        lending.settle(py);
        let (c, mut job_report) = done?;
        if orientation == Orientation::Transposed {
            // The grid multiplied Bᵀ·Aᵀ: the caller's C is m×n all the same.
            std::mem::swap(&mut job_report.m, &mut job_report.n);
        }
        septet::report::exclude_lease_wait(&mut job_report);
        let security = &self.target.security;
        let mut json = summary(&job_report, security);
        json["operand_copies"] = copies.into();
        json["transposed"] = (orientation == Orientation::Transposed).into();
        *self.last_job.lock().unwrap_or_else(|p| p.into_inner()) = Some(json);
        if let Some(path) = &report {
            let inputs = match orientation {
                Orientation::Direct => "NumPy arrays (Python)",
                Orientation::Transposed => "NumPy arrays (Python), multiplied as Cᵀ = Bᵀ·Aᵀ (Fortran-ordered)",
            };
            let context = septet::report::Context {
                inputs: inputs.into(),
                check: None,
                authenticated: security.secret.is_some(),
                encrypted: security.encrypt,
                when: septet::report::utc_now(),
                error: c.as_ref().err().map(|e| e.to_string()),
            };
            let html = septet::report::render(&job_report, &context);
            std::fs::write(path, html)
                .map_err(|e| GridError::new_err(format!("while writing the report to {}: {e}", path.display())))?;
        }
        let c = c.map_err(|e| grid_error(anyhow::Error::new(e).context("while multiplying on the grid")))?;
        Ok(match c {
            Product::F64(c) => orientation.c_of(c).into_pyarray(py).into_any(),
            Product::F32(c) => orientation.c_of(c).into_pyarray(py).into_any(),
        })
    }

    /// Runs the job on `inputs` (on the held lease, if any) and waits for
    /// it without the GIL.
    fn run(
        &self,
        py: Python<'_>,
        inputs: Operands,
        opts: CallOptions,
    ) -> PyResult<(septet_client::requester::Result<Product>, JobReport)> {
        let requester = self.requester(opts.verify, opts.depth);
        let lease = self.held();
        if lease.is_some() && opts.depth != 1 {
            return Err(PyValueError::new_err(
                "this grid holds a lease of seven slots (one level): release() it for a call with depth=2 or \"auto\"",
            ));
        }
        let lease_jobs = self.lease_jobs.clone();
        let job = async move {
            let run = async {
                let _turn = match lease {
                    Some(_) => Some(lease_jobs.lock_owned().await),
                    None => None,
                };
                match inputs {
                    Operands::F64(i) => {
                        let (c, r) = multiply(&requester, lease.as_deref(), i.a, i.b).await;
                        (c.map(Product::F64), r)
                    }
                    Operands::F32(i) => {
                        let (c, r) = multiply(&requester, lease.as_deref(), i.a, i.b).await;
                        (c.map(Product::F32), r)
                    }
                }
            };
            match opts.timeout {
                Some(limit) => tokio::time::timeout(limit, run).await.map_err(|_| limit),
                None => Ok(run.await),
            }
        };
        let started = Instant::now();
        wait(py, job)?.map_err(|limit| {
            GridError::new_err(format!(
                "the job did not finish within timeout={:.3} s (stopped after {:.3} s; its lease was released)",
                limit.as_secs_f64(),
                started.elapsed().as_secs_f64()
            ))
        })
    }

    fn lease(&self, py: Python<'_>, count: u32, max_wait: Option<f64>) -> PyResult<u64> {
        self.check_open()?;
        if count != septet_common::PEERS_PER_LEASE {
            return Err(PyValueError::new_err(format!(
                "a Strassen job runs on exactly {} slots; lease({count}) cannot be used for it",
                septet_common::PEERS_PER_LEASE
            )));
        }
        if self.held().is_some() {
            return Err(GridError::new_err("this grid already holds a lease: release() it first"));
        }
        let mut requester = self.requester(true, 1);
        let max_wait = parse_timeout(max_wait)?;
        let config = RequesterConfig { max_lease_wait: max_wait, ..requester.config().clone() };
        requester = Requester::new(config);
        let held = wait(py, async move { requester.lease(|_| {}).await })?
            .map_err(|e| grid_error(anyhow::Error::new(e).context("while leasing peers")))?;
        let id = held.lease_id().0;
        *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(held));
        Ok(id)
    }

    fn release(&self, py: Python<'_>) -> PyResult<bool> {
        let Some(held) = self.lease.lock().unwrap_or_else(|p| p.into_inner()).take() else { return Ok(false) };
        let id = held.lease_id();
        match Arc::try_unwrap(held) {
            Ok(held) => wait(py, async move { held.release().await })?
                .map_err(|e| GridError::new_err(format!("while releasing lease {id}: {e}")))?,
            // A call on another thread still uses it: the lease ends when
            // that call returns and drops the last handle (its tracker
            // connection closes).
            Err(_shared) => {}
        }
        Ok(true)
    }

    fn peers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.check_open()?;
        let target = self.target.clone();
        let rows = wait(py, async move {
            let mut client =
                TrackerClient::connect_with(&target.tracker, Role::Client, DEFAULT_REQUEST_TIMEOUT, &target.security)
                    .await?;
            let (_, rows) = client.peers().await?;
            Ok::<_, septet_common::Error>(rows)
        })?
        .map_err(|e| GridError::new_err(format!("tracker {}: {e}", self.target.tracker)))?;
        let text = serde_json::to_string(&rows).map_err(|e| GridError::new_err(e.to_string()))?;
        let records = py.import("json")?.call_method1("loads", (text,))?;
        for (module, call) in [("polars", "DataFrame"), ("pandas", "DataFrame")] {
            if let Ok(m) = py.import(module) {
                return m.call_method1(call, (records,));
            }
        }
        Err(pyo3::exceptions::PyImportError::new_err(
            "peers() returns a DataFrame and needs polars or pandas: pip install polars (or pandas)",
        ))
    }

    fn last_job<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(json) = self.last_job.lock().unwrap_or_else(|p| p.into_inner()).clone() else { return Ok(None) };
        let text = json.to_string();
        Ok(Some(py.import("json")?.call_method1("loads", (text,))?))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let released = self.release(py);
        self.closed.store(true, std::sync::atomic::Ordering::Release);
        released.map(|_| ())
    }
}

/// C = A·B (row-major stores) on `lease`, or on a lease taken for the job.
async fn multiply<T: Element>(
    requester: &Requester,
    lease: Option<&HeldLease>,
    a: Arc<Store<T>>,
    b: Arc<Store<T>>,
) -> (septet_client::requester::Result<Array2<T>>, JobReport) {
    let c = Store::zeros((a.nrows(), b.ncols()));
    let (c, report) = match lease {
        Some(lease) => requester.multiply_stored_on(lease, a, b, c, |_| {}).await,
        None => requester.multiply_stored(a, b, c, |_| {}).await,
    };
    (c.map(Store::into_owned), report)
}

/// A connection to a septet grid (a tracker and its workers).
#[pyclass(module = "septet", subclass, frozen)]
struct Grid {
    session: Session,
}

#[pymethods]
impl Grid {
    #[new]
    #[pyo3(signature = (tracker, *, secret_file=None, encrypt=false))]
    fn new(py: Python<'_>, tracker: String, secret_file: Option<PathBuf>, encrypt: bool) -> PyResult<Self> {
        Ok(Self { session: Session::new(Target::new(py, tracker, secret_file, encrypt)?) })
    }

    /// The tracker's address.
    #[getter]
    fn tracker(&self) -> String {
        self.session.target.tracker.clone()
    }

    /// C = a @ b on the grid (on the lease held, if any; else on a lease
    /// taken for this call and released after it).
    #[pyo3(signature = (a, b, *, verify=true, timeout=None, report=None, depth=None))]
    #[allow(clippy::too_many_arguments)]
    fn matmul<'py>(
        &self,
        py: Python<'py>,
        a: &Bound<'py, PyAny>,
        b: &Bound<'py, PyAny>,
        verify: bool,
        timeout: Option<f64>,
        report: Option<PathBuf>,
        depth: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let depth = depth.map(parse_depth).transpose()?.unwrap_or(1);
        let opts = CallOptions { verify, timeout: parse_timeout(timeout)?, depth };
        self.session.matmul(py, a, b, opts, report)
    }

    /// Leases seven slots and holds them for the following calls; returns
    /// the lease id.
    #[pyo3(signature = (count=7, *, max_wait=None))]
    fn lease(&self, py: Python<'_>, count: u32, max_wait: Option<f64>) -> PyResult<u64> {
        self.session.lease(py, count, max_wait)
    }

    /// Gives the held lease back; returns whether one was held.
    fn release(&self, py: Python<'_>) -> PyResult<bool> {
        self.session.release(py)
    }

    /// The id of the lease held, or None.
    #[getter]
    fn lease_id(&self) -> Option<u64> {
        self.session.held().map(|l| l.lease_id().0)
    }

    /// The tracker's peer table as a DataFrame (polars if installed, else pandas).
    fn peers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.session.peers(py)
    }

    /// The last job's summary: the fields of `septet multiply --json`.
    #[getter]
    fn last_job<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.session.last_job(py)
    }

    /// Releases the lease held; later calls raise GridError.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.session.close(py)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.session.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!("septet.Grid(tracker={:?})", self.session.target.tracker)
    }
}

/// A tracker and `workers` workers on 127.0.0.1 inside this process.
#[pyclass(module = "septet", extends = Grid, frozen)]
struct LocalGrid {
    grid: Mutex<Option<septet::local::LocalGrid>>,
    workers: u32,
}

#[pymethods]
impl LocalGrid {
    #[new]
    #[pyo3(signature = (workers=7, *, encrypt=false))]
    fn new(py: Python<'_>, workers: u32, encrypt: bool) -> PyResult<(Self, Grid)> {
        if workers < septet_common::PEERS_PER_LEASE {
            return Err(PyValueError::new_err(format!(
                "a LocalGrid needs at least {} workers, one per Strassen product (got {workers})",
                septet_common::PEERS_PER_LEASE
            )));
        }
        // Its own secret, made for this grid, never leaves the process.
        let security = Security::with_secret(Secret::generate(), encrypt);
        let s = security.clone();
        let grid = wait(py, async move { septet::local::LocalGrid::start_with(workers, s).await })?
            .map_err(|e| grid_error(e.context("while starting the local grid")))?;
        let target = Target { tracker: grid.tracker().to_string(), security };
        Ok((Self { grid: Mutex::new(Some(grid)), workers }, Grid { session: Session::new(target) }))
    }

    /// Workers started.
    #[getter]
    fn workers(&self) -> u32 {
        self.workers
    }

    /// Releases the lease held and stops the workers and the tracker.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let released = slf.as_super().get().session.close(py);
        let grid = slf.get().grid.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(grid) = grid {
            wait(py, async move { grid.shutdown().await })?
                .map_err(|e| grid_error(e.context("while stopping the local grid")))?;
        }
        released
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(slf: &Bound<'_, Self>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        Self::close(slf)?;
        Ok(false)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> String {
        format!(
            "septet.LocalGrid(workers={}, tracker={:?})",
            slf.get().workers,
            slf.as_super().get().session.target.tracker
        )
    }
}

impl Drop for LocalGrid {
    fn drop(&mut self) {
        // Not closed (no `with`, no close()): stop it in the background
        // rather than leave servers running for the life of the process.
        let grid = self.grid.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        if let (Some(grid), Ok(rt)) = (grid, runtime()) {
            rt.spawn(async move {
                let _ = grid.shutdown().await;
            });
        }
    }
}

/// C = a @ b on the grid at `tracker`: one lease for the call, released after it.
#[pyfunction]
#[pyo3(signature = (a, b, *, tracker, secret_file=None, encrypt=false, verify=true, timeout=None, report=None, depth=None))]
#[allow(clippy::too_many_arguments)]
fn matmul<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
    tracker: String,
    secret_file: Option<PathBuf>,
    encrypt: bool,
    verify: bool,
    timeout: Option<f64>,
    report: Option<PathBuf>,
    depth: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let depth = depth.map(parse_depth).transpose()?.unwrap_or(1);
    let opts = CallOptions { verify, timeout: parse_timeout(timeout)?, depth };
    Session::new(Target::new(py, tracker, secret_file, encrypt)?).matmul(py, a, b, opts, report)
}

/// The `septet` Python module.
#[pymodule(name = "septet")]
fn septet_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("GridError", m.py().get_type::<GridError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Grid>()?;
    m.add_class::<LocalGrid>()?;
    m.add_function(wrap_pyfunction!(matmul, m)?)?;
    Ok(())
}

/// Whether SEPTET_ALLOW_READABLE_SECRET allows a secret file others can
/// read (as `--allow-readable-secret` does for the CLI).
fn allow_readable_secret() -> bool {
    std::env::var("SEPTET_ALLOW_READABLE_SECRET").is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "yes" | "on"))
}
