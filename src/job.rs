//! Running one multiplication from the CLI (`multiply` and `demo`): inputs,
//! progress display, the optional local check, and the summary.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::Array2;
use rand::{RngExt, SeedableRng};
use septet_client::{JobReport, Progress, RequestError, Requester, Store, TrackerClient, DEFAULT_REQUEST_TIMEOUT};
use septet_common::matrix::{matmul, parallelism};
use septet_common::secure::Security;
use septet_common::{Dtype, Element, Role};
use serde::Serialize;

use crate::npy::InputError;

/// What to do around the multiplication.
#[derive(Debug, Clone, Default)]
pub struct JobOptions {
    /// Also compute the product locally and report the error and timing.
    pub check: bool,
    /// Print the summary as one JSON object on stdout.
    pub json: bool,
    /// Where to write C.
    pub out: Option<PathBuf>,
    /// Seed of random inputs, for the summary.
    pub seed: Option<u64>,
    /// Where A and B came from, for the report (e.g. `A.npy, B.npy`).
    pub inputs: String,
    /// Write the job report (HTML, with its timeline) here.
    pub report: Option<PathBuf>,
    /// Keep A, B and C out of the requester's memory: random inputs are
    /// generated into scratch files, and C goes into `out` (or a scratch
    /// file) as it arrives. `multiply` sets it; `demo` does not.
    pub out_of_core: bool,
    /// With `check`: compare this many rows of C spread over it (0: all of
    /// C); by default all of C when it takes at most [`FULL_CHECK_BYTES`],
    /// else [`SAMPLED_ROWS`].
    pub check_rows: Option<usize>,
}

/// The largest C whose `--check` computes the whole product locally (the
/// reference takes C's size again in memory).
pub const FULL_CHECK_BYTES: usize = 512 << 20;
/// Rows of C a `--check` of a larger C compares.
pub const SAMPLED_ROWS: usize = 64;

/// Refuses a path for an output (`what`: "the report", "C") whose
/// directory does not exist, or that is a directory, before anything is
/// leased: a typo should not cost a job.
///
/// # Errors
/// An [`InputError`] (exit status 2) naming the path.
pub fn check_output_path(path: &std::path::Path, what: &str) -> Result<()> {
    let bad = |reason: String| InputError { path: path.display().to_string(), reason };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        return Err(bad(format!("cannot write {what} there: {} is not a directory", dir.display())).into());
    }
    if path.is_dir() {
        return Err(bad(format!("cannot write {what} there: it is a directory")).into());
    }
    Ok(())
}

/// Once a lease request is queued: asks the tracker (on a connection of
/// its own, as `security` says) for its peer table, and if the whole grid
/// — every peer not gone, siblings' included — has fewer slots than
/// `needed`, passes `say` a line saying the request cannot be served
/// until workers join, and how to add them. Runs beside the wait; says
/// nothing if the table cannot be had.
pub fn warn_if_unservable(tracker: String, security: Security, needed: u32, say: impl FnOnce(String) + Send + 'static) {
    tokio::spawn(async move {
        let Ok(mut client) =
            TrackerClient::connect_with(&tracker, Role::Client, DEFAULT_REQUEST_TIMEOUT, &security).await
        else {
            return;
        };
        let Ok((_, rows)) = client.federation_peers().await else { return };
        let live: Vec<_> = rows.iter().filter(|r| r.state != "gone").collect();
        let slots: u32 = live.iter().map(|r| r.slots).sum();
        if slots < needed {
            say(unservable(&tracker, slots, live.len(), needed));
        }
    });
}

/// The line [`warn_if_unservable`] says.
pub fn unservable(tracker: &str, slots: u32, workers: usize, needed: u32) -> String {
    format!(
        "the grid has only {slots} slot{} ({workers} worker{} not gone) and this request needs {needed}: it waits \
         until more join. Add workers with `septet worker --tracker {tracker}` (--slots N each; 1 by default), \
         or press Ctrl-C",
        if slots == 1 { "" } else { "s" },
        if workers == 1 { "" } else { "s" },
    )
}

/// What the job report says besides the job's own report.
fn report_context(
    opts: &JobOptions,
    security: &septet_common::secure::Security,
    check: Option<(f64, f64)>,
    error: Option<String>,
) -> septet::report::Context {
    septet::report::Context {
        inputs: opts.inputs.clone(),
        check,
        authenticated: security.secret.is_some(),
        encrypted: security.encrypt,
        when: septet::report::utc_now(),
        error,
    }
}

/// Shows `text` on the progress bar, and on stderr when there is no bar
/// (not a terminal), so a waiting or hedged job is never silent.
fn tell(bar: &ProgressBar, text: String) {
    if bar.is_hidden() {
        eprintln!("{text}");
    }
    bar.set_message(text);
}

/// Writes `html` to `path` through a temporary file beside it, so a
/// reader never sees half a report.
pub fn write_report(path: &std::path::Path, html: &str) -> Result<()> {
    let tmp = path.with_extension("html.partial");
    std::fs::write(&tmp, html).with_context(|| format!("while writing the report to {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("while moving the report into place at {}", path.display()))
}

/// The local reference product.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// max |C − C_ref| / max |C_ref|, over the rows compared.
    pub max_rel_error: f64,
    /// Seconds of the single-process faer product (of the rows compared).
    pub local_s: f64,
    /// The grid job's time (the lease wait left out) over local time —
    /// with sampled rows, over the local time scaled to all of C.
    pub grid_over_local: f64,
    /// Rows of C compared: all of them, or a sample spread over C.
    pub rows: usize,
}

#[derive(Debug, Serialize)]
struct Summary<'a> {
    #[serde(flatten)]
    report: &'a JobReport,
    /// Seconds of the job itself: `total_s` less `lease_wait_s`; `gflops`
    /// and `throughput_gbps` are over this time.
    job_s: f64,
    seed: Option<u64>,
    check: Option<Check>,
    out: Option<String>,
    security: SecuritySummary,
}

/// How the job's connections were protected.
#[derive(Debug, Serialize)]
struct SecuritySummary {
    /// Every connection proved the cluster secret in its handshake.
    authenticated: bool,
    /// Every byte after the handshake was AES-128-GCM encrypted.
    encrypted: bool,
}

/// Uniform [-1, 1) entries from a seeded generator.
pub fn random_matrix<T: Element>(rows: usize, cols: usize, rng: &mut rand::rngs::StdRng) -> Array2<T> {
    Array2::from_shape_simple_fn((rows, cols), || T::from_f64(rng.random_range(-1.0..1.0)))
}

/// A and B for `--random M,K,N`.
pub fn random_inputs<T: Element>(m: usize, k: usize, n: usize, seed: u64) -> (Array2<T>, Array2<T>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (random_matrix(m, k, &mut rng), random_matrix(k, n, &mut rng))
}

/// [`random_inputs`] (the same elements) generated row by row into
/// scratch files in `dir`, so that neither is ever whole in memory.
///
/// # Errors
/// A scratch file cannot be made.
pub fn random_stored<T: Element>(dir: &Path, m: usize, k: usize, n: usize, seed: u64) -> Result<(Store<T>, Store<T>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut fill = |shape: (usize, usize)| -> Result<Store<T>> {
        let mut x = Store::scratch(dir, shape)
            .with_context(|| format!("while making a scratch file in {} for a random input", dir.display()))?;
        x.view_mut().iter_mut().for_each(|v| *v = T::from_f64(rng.random_range(-1.0..1.0)));
        Ok(x)
    };
    let a = fill((m, k))?;
    Ok((a, fill((k, n))?))
}

/// [`run`] on seeded random M×K and K×N inputs of `dtype`.
///
/// # Errors
/// As [`run`].
pub async fn run_random(
    requester: &Requester,
    dtype: Dtype,
    (m, k, n): (usize, usize, usize),
    seed: u64,
    opts: &JobOptions,
) -> Result<()> {
    let dir = std::env::temp_dir();
    match dtype {
        Dtype::F64 if opts.out_of_core => {
            let (a, b) = random_stored::<f64>(&dir, m, k, n, seed)?;
            run(requester, a, b, opts).await
        }
        Dtype::F32 if opts.out_of_core => {
            let (a, b) = random_stored::<f32>(&dir, m, k, n, seed)?;
            run(requester, a, b, opts).await
        }
        Dtype::F64 => {
            let (a, b) = random_inputs::<f64>(m, k, n, seed);
            run(requester, a.into(), b.into(), opts).await
        }
        Dtype::F32 => {
            let (a, b) = random_inputs::<f32>(m, k, n, seed);
            run(requester, a.into(), b.into(), opts).await
        }
    }
}

fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(14);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} [{bar:28}] {pos}/{len} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar.set_message("asking the tracker for seven peers");
    bar
}

/// A progress bar on stderr (hidden when stderr is not a terminal) and
/// the callback that moves it as `requester`'s job reports [`Progress`].
/// A queued job also checks, once, that the grid has enough slots at all
/// ([`warn_if_unservable`]).
pub fn progress(requester: &Requester) -> (ProgressBar, impl Fn(Progress) + Send + Sync + 'static) {
    let bar = progress_bar();
    let shown = bar.clone();
    let (tracker, security) = (requester.config().tracker.clone(), requester.config().security.clone());
    let checked = AtomicBool::new(false);
    let on_progress = move |p: Progress| match p {
        Progress::Waiting { position, free, needed } => {
            tell(
                &shown,
                format!("waiting: position {position} in the tracker's queue ({free} of {needed} slots free)"),
            );
            if !checked.swap(true, Ordering::Relaxed) {
                let bar = shown.clone();
                warn_if_unservable(tracker.clone(), security.clone(), needed, move |line| {
                    if bar.is_hidden() {
                        eprintln!("{line}");
                    } else {
                        bar.println(line);
                    }
                });
            }
        }
        Progress::Leased { lease_id } => shown.set_message(format!("lease {lease_id}: sending operands")),
        Progress::Sent { product, .. } => {
            shown.inc(1);
            shown.set_message(format!("{product} sent"));
        }
        Progress::Hedged { product, addr } => tell(&shown, format!("{product} lags: a copy goes to {addr}")),
        Progress::Received { product, .. } => {
            shown.inc(1);
            shown.set_message(format!("{product} received"));
        }
    };
    (bar, on_progress)
}

/// `path` with `.partial` added: where C is written until the job is done.
fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

/// Multiplies on the grid, then checks, saves and reports as asked. With
/// `--out`, C is written into the file's mapping as the job delivers it
/// (under `OUT.partial`, renamed when the job succeeds); out of core
/// without `--out`, into a scratch file.
///
/// # Errors
/// Any error of the request, the check or writing C, with context.
pub async fn run<T>(requester: &Requester, a: Store<T>, b: Store<T>, opts: &JobOptions) -> Result<()>
where
    T: Element + ndarray_npy::WritableElement,
{
    let (a, b) = (Arc::new(a), Arc::new(b));
    let shape = (a.nrows(), b.ncols());
    let partial = opts.out.as_deref().map(partial_path);
    let c = match &partial {
        Some(path) => crate::npy::create_output::<T>(path, shape)?,
        None => Store::zeroed_in(opts.out_of_core.then(std::env::temp_dir).as_deref(), shape)
            .with_context(|| format!("while making a scratch file for C in {}", std::env::temp_dir().display()))?,
    };
    let (bar, on_progress) = progress(requester);
    let (result, mut report) = requester.multiply_stored(a.clone(), b.clone(), c, on_progress).await;
    bar.finish_and_clear();
    if let (Err(_), Some(path)) = (&result, &partial) {
        let _ = std::fs::remove_file(path);
    }
    septet::report::exclude_lease_wait(&mut report);
    let security = &requester.config().security;
    let c = match result {
        Ok(c) => c,
        Err(e) => {
            // A failed job's report is the one most worth reading: its
            // timeline shows what failed where.
            if let Some(path) = &opts.report {
                let context = report_context(opts, security, None, Some(e.to_string()));
                if let Err(w) = write_report(path, &septet::report::render(&report, &context)) {
                    eprintln!("warning: {w:#}");
                } else {
                    eprintln!("report of the failed job: {}", path.display());
                }
            }
            let never_reached = report.lease_id.0 == 0
                && matches!(&e, RequestError::Tracker { source: septet_common::Error::Io(_), .. });
            let context = if never_reached {
                crate::cli::unreachable_tracker(&requester.config().tracker)
            } else {
                "while multiplying on the grid".to_string()
            };
            return Err(anyhow::Error::new(e).context(context));
        }
    };

    let check = if opts.check {
        let m = shape.0;
        let rows = match opts.check_rows {
            Some(0) => m,
            Some(r) => r.min(m),
            None if m.saturating_mul(shape.1).saturating_mul(T::DTYPE.size()) <= FULL_CHECK_BYTES => m,
            None => SAMPLED_ROWS.min(m),
        };
        let (a, b, c) = (a.clone(), b.clone(), c);
        let (c, checked) = tokio::task::spawn_blocking(move || {
            let checked = compare_rows(&a, &b, &c, rows);
            (c, checked)
        })
        .await?;
        let (max_rel_error, local_s) = checked.context("while computing the local reference product")?;
        let full_local_s = local_s * m as f64 / rows.max(1) as f64;
        let grid_over_local = septet::report::job_s(&report) / full_local_s.max(1e-9);
        (Some(Check { max_rel_error, local_s, grid_over_local, rows }), c)
    } else {
        (None, c)
    };
    let (check, c) = check;
    if let (Some(path), Some(partial)) = (&opts.out, &partial) {
        c.flush().with_context(|| format!("while writing {}", partial.display()))?;
        drop(c);
        std::fs::rename(partial, path)
            .with_context(|| format!("while moving {} into place at {}", partial.display(), path.display()))?;
    }
    let summary = Summary {
        report: &report,
        job_s: septet::report::job_s(&report),
        seed: opts.seed,
        check,
        out: opts.out.as_ref().map(|p| p.display().to_string()),
        security: SecuritySummary { authenticated: security.secret.is_some(), encrypted: security.encrypt },
    };
    if opts.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print_summary(&summary);
    }
    if let Some(path) = &opts.report {
        let check = summary.check.as_ref().map(|c| (c.max_rel_error, c.local_s));
        let context = report_context(opts, security, check, None);
        write_report(path, &septet::report::render(&report, &context))?;
        if !opts.json {
            println!("  report      {}", path.display());
        }
    }
    if let Some(check) = &summary.check {
        // f32 products carry ~1e-6 relative error, f64 ~1e-15; far above
        // either means a wrong product, not rounding.
        let limit = T::DTYPE.unit_roundoff() * (report.k.max(1) as f64) * 64.0;
        anyhow::ensure!(
            check.max_rel_error <= limit,
            "the grid's product differs from the local one: max relative error {:.3e} > {limit:.1e}",
            check.max_rel_error
        );
    }
    Ok(())
}

/// Computes `rows` rows of A·B locally — all of them, or rows spread
/// evenly over C — and compares them with C's: the max relative error
/// (over the largest reference element) and the local product's seconds.
/// A sample takes its rows of A (rows × k) and one product with B, so its
/// memory is the sample's, whatever C's size.
fn compare_rows<T: Element>(a: &Store<T>, b: &Store<T>, c: &Store<T>, rows: usize) -> Result<(f64, f64)> {
    let m = a.nrows();
    let (a_view, c_view) = (a.view(), c.view());
    let picked: Vec<usize> = if rows >= m { (0..m).collect() } else { (0..rows).map(|i| i * m / rows).collect() };
    let t = Instant::now();
    let reference = if picked.len() == m {
        matmul(a_view, b.view(), parallelism(0))?
    } else {
        let sample = a_view.select(ndarray::Axis(0), &picked);
        matmul(sample.view(), b.view(), parallelism(0))?
    };
    let local_s = t.elapsed().as_secs_f64();
    let scale = reference.iter().fold(0.0f64, |m, v| m.max(v.to_f64().abs())).max(f64::MIN_POSITIVE);
    let mut err = 0.0f64;
    for (r, &i) in picked.iter().enumerate() {
        for (x, y) in c_view.row(i).iter().zip(reference.row(r)) {
            err = err.max((x.to_f64() - y.to_f64()).abs());
        }
    }
    Ok((err / scale, local_s))
}

fn print_summary(s: &Summary<'_>) {
    let r = s.report;
    println!("septet: C = A·B, {}×{} · {}×{} {} on lease {}", r.m, r.k, r.k, r.n, r.dtype, r.lease_id);
    println!("  total       {:>9.3} s   lease wait {:.3} s + job {:.3} s", r.total_s, r.lease_wait_s, s.job_s);
    println!(
        "  job         {:>9.3} s   {:.1} GFLOP/s (2mkn / job time; the lease wait is left out)",
        s.job_s, r.gflops
    );
    println!("  connect     {:>9.3} s", r.connect_s);
    println!(
        "  moved       {:>9.1} MB sent, {:.1} MB received, {:.2} GB/s",
        r.bytes_sent as f64 / 1e6,
        r.bytes_received as f64 / 1e6,
        r.throughput_gbps
    );
    if r.verified {
        println!(
            "  verified    every product passed Freivalds' check: {:.3} s on the critical path ({:.1}% of the job), {:.3} s of work in all",
            r.verify_critical_s,
            100.0 * r.verify_critical_s / s.job_s.max(1e-9),
            r.verify_s
        );
    } else {
        println!("  verified    no (--verify off)");
    }
    println!("  plan        {}", r.plan);
    if let Some(relay) = &r.relay {
        println!(
            "  relay       A and B out once, C back once; panels of {} rows (A) and {} rows (B); C quadrants verified: {}",
            relay.a_panel_rows,
            relay.b_panel_rows,
            if relay.quadrants_verified.is_empty() { "none".to_string() } else { relay.quadrants_verified.join(" ") }
        );
        println!(
            "  {:<4} {:>5}  {:<22} {:<10} {:<8} {:>9} {:>9} {:>9} {:>9} {:>10}",
            "slot", "peer", "addr", "holds", "reduces", "in MB", "out MB", "from rq", "to rq", "compute s"
        );
        for sl in &relay.slots {
            println!(
                "  {:<4} {:>5}  {:<22} {:<10} {:<8} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10.3}",
                sl.product,
                sl.peer.peer_id,
                sl.peer.addr,
                sl.holds.join(","),
                sl.reduces.join(","),
                sl.bytes_in as f64 / 1e6,
                sl.bytes_out as f64 / 1e6,
                sl.from_requester as f64 / 1e6,
                sl.to_requester as f64 / 1e6,
                sl.compute_s
            );
            // Two levels: the slot's group, product j of its split named
            // M3.5 (the slot's bytes above include the group's).
            if let Some(d) = &sl.delegated {
                for (j, sub) in d.slots.iter().enumerate() {
                    println!(
                        "  {:<6} {:>3}  {:<22} {:<19} {:>9.1} {:>9.1} {:>19} {:>10.3}",
                        format!("{}.{}", sl.product, j + 1),
                        sub.peer_id,
                        sub.addr,
                        if sub.done { "" } else { "did not finish" },
                        sub.bytes_in as f64 / 1e6,
                        sub.bytes_out as f64 / 1e6,
                        "",
                        sub.compute_us as f64 / 1e6
                    );
                }
                if !d.computed_here.is_empty() {
                    let quads: Vec<String> = d
                        .computed_here
                        .iter()
                        .map(|&q| ["C11", "C12", "C21", "C22"][usize::from(q) % 4].to_string())
                        .collect();
                    println!(
                        "  {:<6} computed {} of its product itself: {}",
                        sl.product,
                        quads.join(","),
                        d.failure.as_deref().unwrap_or("its group did not deliver them")
                    );
                }
            }
        }
    }
    for g in &r.regrouped {
        let peers: Vec<String> = g.peers.iter().map(|p| p.peer_id.to_string()).collect();
        println!(
            "  regrouped   {} over peers {}: {} in {:.2} s ({:.1} MB out, {:.1} MB in)",
            g.product,
            peers.join(","),
            g.failure.as_deref().map_or("verified".to_string(), |f| format!("failed ({f}); computed the direct way")),
            g.took_s,
            g.bytes_sent as f64 / 1e6,
            g.bytes_received as f64 / 1e6
        );
    }
    println!("  retries     {}", r.retries);
    if r.hedges.is_empty() {
        println!("  hedges      none");
    }
    for h in &r.hedges {
        println!(
            "  hedge       {} at {:.2} s: {} ({}) lagged — {}; copy on {} ({}); {} copy used",
            h.product,
            h.at_s,
            h.slow_peer.peer_id,
            h.slow_peer.addr,
            h.reason,
            h.hedge_peer.peer_id,
            h.hedge_peer.addr,
            h.winner
        );
    }
    println!(
        "  security    {}",
        match (s.security.authenticated, s.security.encrypted) {
            (true, true) => "every connection authenticated with the cluster secret and encrypted (AES-128-GCM)",
            (true, false) => "every connection authenticated with the cluster secret; not encrypted (--encrypt)",
            _ => "none: no cluster secret (--secret-file)",
        }
    );
    if let Some(seed) = s.seed {
        println!("  inputs      random, seed {seed}");
    }
    if let Some(c) = &s.check {
        if c.rows == s.report.m {
            println!(
                "  check       max relative error {:.2e}; local faer product {:.3} s; grid/local {:.2}× (job time ÷ local time)",
                c.max_rel_error, c.local_s, c.grid_over_local
            );
        } else {
            println!(
                "  check       max relative error {:.2e} over {} rows spread over C; their local product {:.3} s; \
                 grid/local about {:.2}× (job time ÷ local time scaled to all rows)",
                c.max_rel_error, c.rows, c.local_s, c.grid_over_local
            );
        }
    }
    if let Some(out) = &s.out {
        println!("  wrote       {out}");
    }
    println!(
        "  {:<4} {:>5}  {:<22} {:>9} {:>8} {:>10} {:>10} {:>9}",
        "prod", "peer", "addr", "sent MB", "send s", "compute s", "receive s", "done at"
    );
    for p in &r.peers {
        println!(
            "  {:<4} {:>5}  {:<22} {:>9.1} {:>8.3} {:>10.3} {:>10.3} {:>9.3}",
            p.product,
            p.peer_id,
            p.addr,
            p.bytes_sent as f64 / 1e6,
            p.send_s,
            p.compute_s,
            p.receive_s,
            p.done_at_s
        );
    }
    if r.failures.is_empty() {
        println!("  failures    none");
    } else {
        for f in &r.failures {
            println!("  failure     {f}");
        }
    }
}
