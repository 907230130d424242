//! The job report: one self-contained HTML file (`multiply --report`,
//! `demo --report`) with the job's inputs, lease, totals, verification,
//! retries and hedges, and an SVG timeline of every attempt at the seven
//! products — connect, send, compute, receive and check on one time axis,
//! failures, redos and hedges marked — so a reader sees at a glance which
//! product held the job up.
//!
//! Nothing is fetched from anywhere: the CSS is inline and there is no
//! script. Every piece of text that comes from the job (addresses, error
//! messages, file names) is escaped.

use std::fmt::Write as _;

use septet_client::requester::AttemptReport;
use septet_client::JobReport;

/// What the report says besides the [`JobReport`].
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// Where A and B came from, e.g. `A.npy, B.npy` or `random, seed 1`.
    pub inputs: String,
    /// `(max relative error, local faer seconds)` if the job was checked.
    pub check: Option<(f64, f64)>,
    /// Whether every connection was authenticated / encrypted.
    pub authenticated: bool,
    /// Whether every connection was encrypted.
    pub encrypted: bool,
    /// When the report was made, as text.
    pub when: String,
    /// Why the job failed, if it did (C was not returned).
    pub error: Option<String>,
}

/// Seconds of the job itself: its wall time less the wait for a lease (a
/// queue behind other jobs says nothing about the grid's speed).
pub fn job_s(r: &JobReport) -> f64 {
    (r.total_s - r.lease_wait_s).max(0.0)
}

/// Sets a finished job's GFLOP/s and GB/s over [`job_s`], so the lease wait
/// is reported beside them rather than inside them. The same result
/// however often it is applied (it reads `total_s` and `lease_wait_s`
/// only); a failed job (no rate) keeps its zeros.
pub fn exclude_lease_wait(r: &mut JobReport) {
    let job = job_s(r);
    if r.gflops > 0.0 && job > 0.0 {
        r.gflops = 2.0 * (r.m * r.k * r.n) as f64 / job / 1e9;
        r.throughput_gbps = (r.bytes_sent + r.bytes_received) as f64 / job / 1e9;
    }
}

/// The current time in UTC, e.g. `2026-11-30 07:41 UTC`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02} UTC", rest / 3600, rest % 3600 / 60)
}

/// Escapes text for HTML and SVG element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Phases of an attempt as drawn: (name, start, end, CSS class).
fn phases(a: &AttemptReport) -> Vec<(&'static str, f64, f64, &'static str)> {
    let end = a.ended_s;
    let relay = a.kind == "relay";
    let points = [
        ("connect and wait for a send lane", Some(a.started_s), "wait"),
        (if relay { "operands arriving (held and forwarded)" } else { "send operands" }, a.send_start_s, "send"),
        ("compute", a.sent_s, "compute"),
        ("wait for a receive slot", a.computed_s, "queue"),
        (if relay { "product to the reducers, C back" } else { "receive and check" }, a.receive_start_s, "receive"),
    ];
    let mut out = Vec::new();
    for (k, (name, start, class)) in points.iter().enumerate() {
        let Some(start) = *start else { continue };
        let next = points[k + 1..].iter().find_map(|p| p.1).unwrap_or(end).min(end);
        if next > start {
            out.push((*name, start, next, *class));
        }
    }
    out
}

/// A tick step that gives 5–10 ticks over `span` seconds.
fn tick_step(span: f64) -> f64 {
    let raw = (span / 8.0).max(1e-6);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| span / s <= 10.0).unwrap_or(10.0 * mag)
}

/// The timeline: one row per attempt, grouped by product.
fn timeline(r: &JobReport) -> String {
    const LABEL: f64 = 190.0;
    const PLOT: f64 = 640.0;
    const ROW: f64 = 24.0;
    /// Room for the marks after the last bar.
    const RIGHT: f64 = 130.0;
    const TOP: f64 = 30.0;
    let mut rows: Vec<&AttemptReport> = r.attempts.iter().collect();
    rows.sort_by(|a, b| a.product.cmp(b.product).then(a.started_s.total_cmp(&b.started_s)));
    let span = rows.iter().map(|a| a.ended_s).fold(r.total_s, f64::max).max(1e-3);
    let x = |t: f64| LABEL + t.clamp(0.0, span) / span * PLOT;
    // The product whose verified copy came in last held the job up.
    let last = rows.iter().filter(|a| a.outcome == "verified").max_by(|a, b| a.ended_s.total_cmp(&b.ended_s));
    let height = TOP + ROW * rows.len() as f64 + 40.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" viewBox="0 0 {w} {height}" role="img" aria-label="timeline of the job's attempts">"#,
        w = LABEL + PLOT + RIGHT
    );
    // The lease wait, shaded.
    if r.lease_wait_s > 0.0 {
        let _ = write!(
            s,
            r#"<rect class="lease" x="{}" y="{}" width="{:.1}" height="{}"><title>waiting for the lease: {:.3} s</title></rect><text class="note" x="{}" y="{}">lease</text>"#,
            x(0.0),
            TOP - 6.0,
            x(r.lease_wait_s) - x(0.0),
            ROW * rows.len() as f64 + 6.0,
            r.lease_wait_s,
            x(0.0) + 3.0,
            TOP - 10.0
        );
    }
    // Grid lines and the axis.
    let step = tick_step(span);
    let axis_y = TOP + ROW * rows.len() as f64 + 8.0;
    let mut t = 0.0;
    while t <= span + 1e-9 {
        let _ = write!(
            s,
            r#"<line class="grid" x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{axis_y}"/><text class="tick" x="{x:.1}" y="{}">{}</text>"#,
            TOP - 4.0,
            axis_y + 14.0,
            format_seconds(t, step),
            x = x(t)
        );
        t += step;
    }
    let _ = write!(
        s,
        r#"<text class="tick" x="{}" y="{}">seconds from the start of the job</text>"#,
        LABEL + PLOT / 2.0,
        axis_y + 30.0
    );
    for (k, a) in rows.iter().enumerate() {
        let y = TOP + ROW * k as f64;
        let held_up = last.is_some_and(|l| std::ptr::eq(*l, *a));
        let kind = match a.kind {
            "first" | "relay" => String::new(),
            other => format!(" ({other})"),
        };
        let _ = write!(
            s,
            r#"<text class="label{}" x="4" y="{:.1}">{}{} · peer {}</text>"#,
            if held_up { " held" } else { "" },
            y + ROW * 0.65,
            a.product,
            escape(&kind),
            a.peer.peer_id
        );
        for (name, start, end, class) in phases(a) {
            let _ = write!(
                s,
                r#"<rect class="{class}" x="{:.2}" y="{:.1}" width="{:.2}" height="{:.1}"><title>{} ({} attempt) on {}: {name}, {:.3}–{:.3} s ({:.3} s)</title></rect>"#,
                x(start),
                y + 4.0,
                (x(end) - x(start)).max(0.8),
                ROW - 8.0,
                a.product,
                escape(a.kind),
                escape(&a.peer.addr),
                start,
                end,
                end - start
            );
        }
        let end = x(a.ended_s);
        let mid = y + ROW / 2.0;
        match a.outcome {
            "verified" => {
                let _ = write!(s, r#"<text class="ok" x="{:.1}" y="{:.1}">✓</text>"#, end + 3.0, mid + 4.0);
            }
            "failed" | "unverifiable" => {
                let why = escape(a.error.as_deref().unwrap_or(a.outcome));
                let _ = write!(
                    s,
                    r#"<g class="failed"><line x1="{a:.1}" y1="{b:.1}" x2="{c:.1}" y2="{d:.1}"/><line x1="{a:.1}" y1="{d:.1}" x2="{c:.1}" y2="{b:.1}"/><title>{} failed: {why}</title></g>"#,
                    a.product,
                    a = end - 5.0,
                    b = mid - 5.0,
                    c = end + 5.0,
                    d = mid + 5.0,
                );
            }
            other => {
                let text = match (other, a.kind) {
                    ("cancelled", "hedge") => "cancelled: the first copy won".to_string(),
                    ("cancelled", _) => "cancelled: the hedge won".to_string(),
                    ("moved", _) => "moved to a spare".to_string(),
                    (other, _) => other.to_string(),
                };
                let _ = write!(
                    s,
                    r#"<text class="note" x="{:.1}" y="{:.1}">{}</text>"#,
                    end + 3.0,
                    mid + 4.0,
                    escape(&text)
                );
            }
        }
        if held_up {
            let _ =
                write!(s, r#"<text class="held" x="{:.1}" y="{:.1}">◀ last product in</text>"#, end + 16.0, mid + 4.0);
        }
    }
    s.push_str("</svg>");
    s
}

fn format_seconds(t: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{t:.0}")
    } else if step >= 0.1 {
        format!("{t:.1}")
    } else {
        format!("{t:.2}")
    }
}

/// The whole report.
pub fn render(r: &JobReport, cx: &Context) -> String {
    let mut h = String::new();
    let what = if cx.error.is_some() { "septet job failed" } else { "septet job" };
    let title = format!("{what}: C = A·B, {}×{} · {}×{} {}", r.m, r.k, r.k, r.n, r.dtype);
    let _ = write!(
        h,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{STYLE}</style></head><body>
<h1>{title}</h1>
<p class="sub">lease {lease} · {when}</p>
"#,
        title = escape(&title),
        lease = r.lease_id,
        when = escape(&cx.when),
    );
    if let Some(error) = &cx.error {
        let _ = write!(h, r#"<p class="error">The job failed, and no C was returned: {}</p>"#, escape(error));
    }
    // Key figures.
    let hedges_won = r.hedges.iter().filter(|x| x.winner == "hedge").count();
    let figures = [
        ("total", format!("{:.3} s", r.total_s)),
        ("lease wait", format!("{:.3} s", r.lease_wait_s)),
        ("job", format!("{:.3} s", job_s(r))),
        ("throughput", format!("{:.1} GFLOP/s", r.gflops)),
        ("moved", format!("{:.1} MB out, {:.1} MB in", r.bytes_sent as f64 / 1e6, r.bytes_received as f64 / 1e6)),
        ("retries", r.retries.to_string()),
        ("hedges", format!("{} ({} won)", r.hedges.len(), hedges_won)),
    ];
    h.push_str(r#"<div class="figures">"#);
    for (k, v) in figures {
        let _ = write!(h, r#"<div class="fig"><div class="k">{k}</div><div class="v">{}</div></div>"#, escape(&v));
    }
    h.push_str("</div>\n");

    h.push_str("<h2>Timeline</h2>\n");
    h.push_str(r#"<p class="legend"><span class="sw wait"></span>connect / wait for a send lane <span class="sw send"></span>send operands <span class="sw compute"></span>compute <span class="sw queue"></span>wait for a receive slot <span class="sw receive"></span>receive and check <span class="sw lease"></span>lease wait · ✓ verified · ✕ failed</p>"#);
    if r.attempts.is_empty() {
        h.push_str("<p>No attempts: nothing was distributed (an empty product).</p>");
    } else {
        h.push_str(&timeline(r));
        let last = r.attempts.iter().filter(|a| a.outcome == "verified").max_by(|a, b| a.ended_s.total_cmp(&b.ended_s));
        if let (Some(last), None) = (last, &cx.error) {
            let _ = write!(
                h,
                r#"<p class="verdict">{} on peer {} ({}) came in last, at {:.3} s of {:.3} s.</p>"#,
                last.product,
                last.peer.peer_id,
                escape(&last.peer.addr),
                last.ended_s,
                r.total_s
            );
        }
    }

    h.push_str("<h2>Job</h2>\n<table class=\"kv\">");
    let verified = if r.verified {
        format!(
            "every product passed Freivalds' check; {:.3} s on the critical path, {:.3} s of work in all",
            r.verify_critical_s, r.verify_s
        )
    } else {
        "no (--verify off)".to_string()
    };
    let security = match (cx.authenticated, cx.encrypted) {
        (true, true) => "every connection authenticated with the cluster secret and encrypted (AES-128-GCM)",
        (true, false) => "every connection authenticated with the cluster secret; not encrypted",
        _ => "none: no cluster secret",
    };
    let mut rows = vec![
        ("inputs", format!("{} — A {}×{}, B {}×{}, {}", cx.inputs, r.m, r.k, r.k, r.n, r.dtype)),
        ("lease", format!("{} (waited {:.3} s; connected in {:.3} s)", r.lease_id, r.lease_wait_s, r.connect_s)),
        ("verification", verified),
        ("security", security.to_string()),
        (
            "moved",
            format!(
                "{} bytes sent, {} received ({:.2} GB/s over the job, the lease wait left out)",
                r.bytes_sent, r.bytes_received, r.throughput_gbps
            ),
        ),
    ];
    if let Some((err, local)) = cx.check {
        rows.push((
            "check",
            format!(
                "max relative error {err:.2e} against the local faer product ({local:.3} s; grid job ÷ local {:.2}×, \
                 the lease wait left out)",
                job_s(r) / local.max(1e-9)
            ),
        ));
    }
    for (k, v) in rows {
        let _ = write!(h, "<tr><th>{k}</th><td>{}</td></tr>", escape(&v));
    }
    h.push_str("</table>\n");

    if let Some(relay) = &r.relay {
        let _ = write!(
            h,
            "<h2>Relay</h2>\n<p>A and B left the requester once and C came back once; every slot forwarded the quadrants it held to the slots that need them and sent its product to the reducers. Panels of {} rows (A, products, C) and {} rows (B). C quadrants verified: {}.{}</p>",
            relay.a_panel_rows,
            relay.b_panel_rows,
            if relay.quadrants_verified.is_empty() { "none".to_string() } else { relay.quadrants_verified.join(", ") },
            relay
                .failure
                .as_ref()
                .map(|f| {
                    let how = match r.plan {
                        "relay+regroup" => "regrouped (each product it needed over seven slots)",
                        "relay+regroup+direct" => "regrouped (each product it needed over seven slots) or computed directly",
                        _ => "computed directly",
                    };
                    format!(" The relay stopped: {}; the rest was {how}.", escape(f))
                })
                .unwrap_or_default()
        );
        if let Some(mv) = &relay.moved {
            let _ = write!(
                h,
                "<p>{}'s roles moved mid-relay, at {:.3} s, from peer {} ({}) to peer {} ({}): {}. The other slots took its parts from the new peer, and the requester sent the new peer the quadrants {} uses.</p>",
                mv.product,
                mv.at_s,
                mv.from.peer_id,
                escape(&mv.from.addr),
                mv.to.peer_id,
                escape(&mv.to.addr),
                escape(&mv.reason),
                mv.product
            );
        }
        if relay.slots.iter().any(|s| s.delegated.is_some()) {
            h.push_str("<p>Two levels deep: each slot had its product computed by the seven peers listed under it (M3.5 is product 5 of M3's split) as a relayed job of its own, checked what they sent, and computed itself whatever they did not deliver. A slot's bytes include its group's; its compute time is the time its group took.</p>");
        }
        h.push_str("<table><tr><th>slot</th><th>peer</th><th>address</th><th>holds</th><th>reduces</th><th>in MB</th><th>out MB</th><th>from requester MB</th><th>to requester MB</th><th>compute s</th></tr>");
        for sl in &relay.slots {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.3}</td></tr>",
                sl.product,
                sl.peer.peer_id,
                escape(&sl.peer.addr),
                escape(&sl.holds.join(", ")),
                escape(&sl.reduces.join(", ")),
                sl.bytes_in as f64 / 1e6,
                sl.bytes_out as f64 / 1e6,
                sl.from_requester as f64 / 1e6,
                sl.to_requester as f64 / 1e6,
                sl.compute_s
            );
            // Two levels: the slot's group under it, product j of its split
            // as M3.5; the slot's own bytes above include its group's.
            if let Some(d) = &sl.delegated {
                for (j, sub) in d.slots.iter().enumerate() {
                    let blamed = d.blamed.iter().find(|(b, _)| usize::from(*b) == j).map(|(_, why)| why.as_str());
                    let _ = write!(
                        h,
                        "<tr class=\"level2\"><td>&nbsp;&nbsp;{}.{}</td><td>{}</td><td>{}</td><td colspan=\"2\">{}</td><td>{:.1}</td><td>{:.1}</td><td></td><td></td><td>{:.3}</td></tr>",
                        sl.product,
                        j + 1,
                        sub.peer_id,
                        escape(&sub.addr),
                        escape(blamed.unwrap_or(if sub.done { "" } else { "did not finish" })),
                        sub.bytes_in as f64 / 1e6,
                        sub.bytes_out as f64 / 1e6,
                        sub.compute_us as f64 / 1e6
                    );
                }
                if !d.computed_here.is_empty() {
                    let quads: Vec<&str> =
                        d.computed_here.iter().map(|&q| ["C11", "C12", "C21", "C22"][usize::from(q) % 4]).collect();
                    let _ = write!(
                        h,
                        "<tr class=\"level2\"><td></td><td colspan=\"9\">{} computed {} of its product itself: {}</td></tr>",
                        sl.product,
                        quads.join(", "),
                        escape(d.failure.as_deref().unwrap_or("its group did not deliver them"))
                    );
                }
            }
        }
        h.push_str("</table>\n");
    }

    h.push_str("<h2>Products</h2>\n<table><tr><th>product</th><th>peer</th><th>address</th><th>sent MB</th><th>send s</th><th>compute s</th><th>receive s</th><th>done at s</th><th></th></tr>");
    for p in &r.peers {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td></tr>",
            p.product,
            p.peer_id,
            escape(&p.addr),
            p.bytes_sent as f64 / 1e6,
            p.send_s,
            p.compute_s,
            p.receive_s,
            p.done_at_s,
            if p.hedged { "hedge's copy" } else { "" }
        );
    }
    h.push_str("</table>\n");

    if !r.regrouped.is_empty() {
        h.push_str("<h2>Regrouped</h2>\n<p>Products whose share of C the relay did not deliver, computed again each over seven slots.</p>\n<table><tr><th>product</th><th>peers</th><th>outcome</th><th>s</th><th>MB out</th><th>MB in</th></tr>");
        for g in &r.regrouped {
            let peers: Vec<String> = g.peers.iter().map(|p| p.peer_id.to_string()).collect();
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.1}</td><td>{:.1}</td></tr>",
                g.product,
                peers.join(", "),
                escape(g.failure.as_deref().unwrap_or("verified")),
                g.took_s,
                g.bytes_sent as f64 / 1e6,
                g.bytes_received as f64 / 1e6
            );
        }
        h.push_str("</table>\n");
    }

    if !r.hedges.is_empty() {
        h.push_str("<h2>Hedges</h2>\n<table><tr><th>product</th><th>at s</th><th>slow peer</th><th>copy on</th><th>why</th><th>copy used</th></tr>");
        for x in &r.hedges {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{:.3}</td><td>{} ({})</td><td>{} ({})</td><td>{}</td><td>{}</td></tr>",
                x.product,
                x.at_s,
                x.slow_peer.peer_id,
                escape(&x.slow_peer.addr),
                x.hedge_peer.peer_id,
                escape(&x.hedge_peer.addr),
                escape(&x.reason),
                x.winner
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("<h2>Failures</h2>\n");
    if r.failures.is_empty() {
        h.push_str("<p>None.</p>\n");
    } else {
        h.push_str("<ul class=\"failures\">");
        for f in &r.failures {
            let _ = write!(h, "<li>{}</li>", escape(f));
        }
        h.push_str("</ul>\n");
    }
    h.push_str("<p class=\"foot\">Made by septet. Times are seconds from the start of the job (asking the tracker for the lease).</p>\n</body></html>\n");
    h
}

const STYLE: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1000px;color:#1d2330;padding:0 16px}
h1{font-size:22px;margin:0}h2{font-size:16px;margin:28px 0 8px;border-bottom:1px solid #e2e5ea;padding-bottom:4px}
.sub{color:#667;margin:2px 0 16px}
tr.level2 td{color:#556;font-size:12px;padding-top:1px;padding-bottom:1px}
.figures{display:flex;flex-wrap:wrap;gap:10px}
.fig{background:#f4f6f9;border-radius:6px;padding:8px 14px;min-width:120px}
.fig .k{color:#667;font-size:12px;text-transform:uppercase;letter-spacing:.04em}.fig .v{font-size:18px;font-weight:600}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eceef2;vertical-align:top}
th{color:#556;font-weight:600}
table.kv th{width:130px}
.legend{color:#445;font-size:13px}
.sw{display:inline-block;width:12px;height:12px;border-radius:2px;margin:0 4px 0 10px;vertical-align:-1px}
.wait,.sw.wait{fill:#cfd5de;background:#cfd5de}.send,.sw.send{fill:#4a7fd4;background:#4a7fd4}
.compute,.sw.compute{fill:#e39334;background:#e39334}.queue,.sw.queue{fill:#f1dfb5;background:#f1dfb5}
.receive,.sw.receive{fill:#3fa66b;background:#3fa66b}.lease,.sw.lease{fill:#eef0f4;background:#eef0f4}
svg.timeline{display:block;margin:6px 0;max-width:100%;height:auto}
svg .label{font-size:12px;fill:#1d2330}svg .label.held{font-weight:700;fill:#b3261e}
svg .tick,svg .note{font-size:11px;fill:#667}svg .tick{text-anchor:middle}
svg .grid{stroke:#e6e8ec;stroke-width:1}
svg .ok{fill:#2e7d4f;font-size:13px}svg .held{fill:#b3261e;font-size:12px;font-weight:600}
svg .failed line{stroke:#c62828;stroke-width:2.2}
.verdict{font-weight:600}
.error{background:#fdecea;border-left:4px solid #c62828;padding:8px 12px;color:#8a1c1c;font-weight:600}
.failures li{color:#8a1c1c}
.foot{color:#889;font-size:12px;margin-top:28px}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(escape(r#"<a href="x">&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
    }

    #[test]
    fn ticks_are_round_and_few() {
        for (span, step) in [(0.42, 0.05), (1.3, 0.2), (4.8, 0.5), (47.7, 5.0), (0.003, 0.0005)] {
            let got = tick_step(span);
            assert!((got - step).abs() < 1e-9, "{span}: {got}");
            assert!(span / got <= 10.0);
        }
    }
}
