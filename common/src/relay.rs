//! The relay plan: who holds, forwards, computes and reduces which block of
//! a Strassen job, so that A and B cross the requester's link once and C
//! comes back once.
//!
//! The lease's seven peers are *slots* 0..7; slot i computes M(i+1). The
//! requester sends each of the eight quadrants A11..B22 once, to its
//! *holder* (a slot whose product needs it), which forwards it to the other
//! slots that need it. Products go to the *reducers* of the C quadrants
//! they feed; each reducer sends its quadrant of C to the requester.
//!
//! ```text
//!                 requester ── A, B once (8 quadrants) ──▶ holders
//!                     ▲                                      │ forward (16 copies in all)
//!                     │ C once (4 quadrants)                 ▼
//!                 reducers ◀── products (8 copies) ── the slots computing M1..M7
//! ```
//!
//! Everything moves in *panels* of rows ([`Panels`]): B's quadrants first,
//! then A's quadrants a panel of rows at a time. A slot computes the rows
//! of its product for panel p as soon as it holds Y (its sum of B
//! quadrants, whole) and panel p of each A quadrant it needs; the reducers
//! add panel p of their C quadrant as soon as its products' panels are
//! in, and send it back — so C flows back while A's later rows still go
//! out, and a forward starts as soon as its panel has arrived.
//!
//! [`Roles::choose`] picks holders and reducers so that no slot's link
//! carries more than it must: it minimises the largest number of bytes a
//! slot sends (forwards, products, C), then the largest a slot receives.
//!
//! Every part the requester sends travels with a BLAKE3 digest sent to each
//! slot that will receive it by forward (over the requester's own link to
//! that slot), so a forwarder that alters a block is caught by the slot it
//! forwarded to, and named. A reducer folds a product panel another slot
//! sends it into C only once it passes the requester's check
//! ([`RelayPlan::checks`]), so a slot that computes wrong is caught by the
//! reducer, and named, before its panel is used. How C itself is checked
//! is the requester's business (`septet_client::requester::relay`).

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::frame::{BlockOp, BlocksHeader};
use crate::proto::{JobId, TaskId};
use crate::strassen::{Quad, Sign, Split, PRODUCTS};
use crate::{Dtype, Error, Result, PEERS_PER_LEASE};

/// Slots in a relayed job: one per product.
pub const SLOTS: usize = PEERS_PER_LEASE as usize;

/// Columns of a reducer's secret vector ([`key`]). One is enough
/// for a check that only decides whether a panel is folded in: with
/// entries ±U(½, 1), a single wrong element off by more than twice the
/// tolerance always shows, and C itself is still checked whole by the
/// requester with vectors nobody else sees.
pub const KEY_COLUMNS: usize = 1;

/// How often a relayed job's requester says [`crate::WorkerRequest::Alive`]
/// on a slot's link when it has sent nothing else meanwhile.
pub const ALIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Most panels a quadrant of a relayed job is sent in: a slot keeps a few
/// words of bookkeeping per panel, and a plan that cut a quadrant into
/// single rows would make that outgrow the blocks themselves.
/// [`Panels::choose`] makes larger panels sooner than more of them.
pub const MAX_PANELS: usize = 4096;

/// A block of a relayed job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Block {
    /// A quadrant of A (padded to ⌈m/2⌉×⌈k/2⌉).
    A(Quad),
    /// A quadrant of B (padded to ⌈k/2⌉×⌈n/2⌉).
    B(Quad),
    /// Product M(i+1) (⌈m/2⌉×⌈n/2⌉).
    M(usize),
    /// A quadrant of C, padded (⌈m/2⌉×⌈n/2⌉).
    C(Quad),
    /// M(i+1)·R for the job's public vectors R (⌈m/2⌉×rounds): the
    /// product's fingerprint, sent to the requester.
    Fingerprint(usize),
    /// The job's public vectors R (⌈n/2⌉×rounds), from the requester.
    Vectors,
    /// X(i+1)·(Y(i+1)·s) for a reducer's secret vector s ([`key`];
    /// ⌈m/2⌉×[`KEY_COLUMNS`]), from the requester: what product
    /// M(i+1)·s must come to, row by row.
    Expect(usize),
}

impl Block {
    fn code(self) -> u8 {
        match self {
            Block::A(q) => q.index() as u8,
            Block::B(q) => 4 + q.index() as u8,
            Block::M(i) => 8 + i as u8,
            Block::C(q) => 15 + q.index() as u8,
            Block::Fingerprint(i) => 19 + i as u8,
            Block::Vectors => 26,
            Block::Expect(i) => 27 + i as u8,
        }
    }

    fn from_code(code: u8) -> Option<Block> {
        Some(match code {
            0..4 => Block::A(Quad::ALL[code as usize]),
            4..8 => Block::B(Quad::ALL[code as usize - 4]),
            8..15 => Block::M(code as usize - 8),
            15..19 => Block::C(Quad::ALL[code as usize - 15]),
            19..26 => Block::Fingerprint(code as usize - 19),
            26 => Block::Vectors,
            27..34 => Block::Expect(code as usize - 27),
            _ => return None,
        })
    }

    /// "A11", "M3", "C22", "M3·R", "R" or "M3·s".
    pub fn name(self) -> String {
        match self {
            Block::A(q) => format!("A{}", q.suffix()),
            Block::B(q) => format!("B{}", q.suffix()),
            Block::M(i) => PRODUCTS[i].name.to_string(),
            Block::C(q) => format!("C{}", q.suffix()),
            Block::Fingerprint(i) => format!("{}·R", PRODUCTS[i].name),
            Block::Vectors => "R".into(),
            Block::Expect(i) => format!("{}·s", PRODUCTS[i].name),
        }
    }

    /// Index 0..8 of a quadrant of A (0..4) or B (4..8); `None` otherwise.
    pub fn input_index(self) -> Option<usize> {
        match self {
            Block::A(q) => Some(q.index()),
            Block::B(q) => Some(4 + q.index()),
            _ => None,
        }
    }
}

/// One panel of one block: what a [`crate::BlockOp::Part`] frame carries,
/// packed into the frame's task id (block code in bits 32..40, panel in
/// bits 0..32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartId {
    /// The block.
    pub block: Block,
    /// Its panel (0 for blocks sent whole).
    pub panel: u32,
}

impl PartId {
    /// The part's frame task id.
    pub fn task_id(self) -> TaskId {
        TaskId(u64::from(self.block.code()) << 32 | u64::from(self.panel))
    }

    /// The part a frame's task id names.
    ///
    /// # Errors
    /// [`Error::BadFrame`] for an id that names no block.
    pub fn from_task_id(id: TaskId) -> Result<PartId> {
        let code = id.0 >> 32;
        let block = u8::try_from(code)
            .ok()
            .and_then(Block::from_code)
            .ok_or_else(|| Error::BadFrame(format!("part id {:#x} names no block", id.0)))?;
        Ok(PartId { block, panel: id.0 as u32 })
    }

    /// "A11[3]".
    pub fn name(self) -> String {
        format!("{}[{}]", self.block.name(), self.panel)
    }
}

/// Bytes on the wire (before any encryption) of a part's frame carrying a
/// `shape` matrix of `dtype`: what both ends count a part as.
pub fn part_frame_len(dtype: Dtype, shape: (usize, usize)) -> u64 {
    let header =
        crate::frame::BlocksHeader { task_id: TaskId(0), op: crate::BlockOp::Part, dtype, shapes: vec![shape] };
    header.frame_len().unwrap_or(0) as u64
}

/// Rows split into panels of `per` rows (the last may be shorter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Panels {
    /// Rows in all.
    pub rows: usize,
    /// Rows per panel (≥ 1).
    pub per: usize,
}

impl Panels {
    /// Panels for `rows` rows of `cols` columns of `dtype`: about 16 of
    /// them (so C can flow back while A still goes out), each at most
    /// 8 MiB (so a forward starts soon after its panel arrived) unless
    /// that would take more than [`MAX_PANELS`].
    pub fn choose(rows: usize, cols: usize, dtype: Dtype) -> Panels {
        let cap = ((8 << 20) / (cols.max(1) * dtype.size())).max(1);
        Panels { rows, per: rows.div_ceil(16).clamp(1, cap).max(rows.div_ceil(MAX_PANELS)) }
    }

    /// How many panels.
    pub fn count(&self) -> usize {
        self.rows.div_ceil(self.per.max(1))
    }

    /// The rows of panel `p`.
    pub fn range(&self, p: usize) -> Range<usize> {
        let start = (p * self.per).min(self.rows);
        start..(start + self.per).min(self.rows)
    }
}

/// The slots whose product reads quadrant `input` (0..4: A11..A22,
/// 4..8: B11..B22), with the sign it enters with.
pub fn users(input: usize) -> impl Iterator<Item = (usize, Sign)> {
    PRODUCTS.iter().enumerate().filter_map(move |(i, p)| {
        let terms = if input < 4 { p.left } else { p.right };
        terms.iter().find(|(_, q)| q.index() == input % 4).map(|&(sign, _)| (i, sign))
    })
}

/// The products that feed C quadrant `q`, with their signs.
pub fn feeders(q: Quad) -> impl Iterator<Item = (usize, Sign)> {
    PRODUCTS
        .iter()
        .enumerate()
        .filter_map(move |(i, p)| p.into.iter().find(|(_, cq)| *cq == q).map(|&(sign, _)| (i, sign)))
}

/// Who holds (and forwards) each quadrant of A and B, and who reduces each
/// quadrant of C, as slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roles {
    /// Holder of A11, A12, A21, A22, B11, B12, B21, B22.
    pub holders: [u8; 8],
    /// Reducer of C11, C12, C21, C22.
    pub reducers: [u8; 4],
}

/// Bytes one slot moves in a job by plan (the requester's link is `None`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Load {
    /// Bytes it receives.
    pub bytes_in: u64,
    /// Bytes it sends.
    pub bytes_out: u64,
}

impl Roles {
    /// The roles that load the busiest slot's links least for `split`.
    ///
    /// The job has two phases, as the requester sends: B (its quadrants
    /// and their forwards), then A (its quadrants, their forwards, the
    /// products going to the reducers and C coming back, all flowing
    /// together, a panel at a time). A phase lasts at least as long as the
    /// requester's link takes for its quadrants (4 quadrants of B, then 4
    /// of A), so what matters is each slot's bytes *in that phase* against
    /// the requester's: the roles minimise the largest such ratio over
    /// every slot, phase and direction, then the largest bytes a slot sends
    /// and receives in all, then the bytes sent in all. (Balancing whole
    /// jobs' bytes alone can leave one slot's link in a phase busier than
    /// the requester's, and the job then runs at that slot's pace;
    /// `scripts/netbench.sh relay` measures the job against the link bound.)
    /// Holders are slots that need their quadrant, reducers slots whose
    /// product feeds theirs (so neither ever receives a block only to pass
    /// it on). Brute force over the 4096 × 64 candidates: a few milliseconds.
    pub fn choose(split: Split) -> Roles {
        let (mh, kh, nh) = split.half();
        let (a, b, c) = ((mh * kh) as f64, (kh * nh) as f64, (mh * nh) as f64);
        let holder_options: Vec<Vec<u8>> = (0..8).map(|q| users(q).map(|(i, _)| i as u8).collect()).collect();
        let reducer_options: Vec<Vec<u8>> =
            Quad::ALL.iter().map(|&q| feeders(q).map(|(i, _)| i as u8).collect()).collect();
        let pick = |options: &[Vec<u8>], mut index: usize| -> Vec<u8> {
            options
                .iter()
                .map(|o| {
                    let v = o[index % o.len()];
                    index /= o.len();
                    v
                })
                .collect()
        };
        // What the reducers cost (all in the A phase), per reducer choice.
        let reducer_count: usize = reducer_options.iter().map(Vec::len).product();
        let reductions: Vec<([u8; 4], [f64; SLOTS], [f64; SLOTS])> = (0..reducer_count)
            .map(|r| {
                let reducers: [u8; 4] = pick(&reducer_options, r).try_into().expect("four quadrants");
                let roles = Roles { holders: [0; 8], reducers };
                let (mut out, mut inn) = ([0.0; SLOTS], [0.0; SLOTS]);
                for (from, sent) in out.iter_mut().enumerate() {
                    for to in roles.product_targets(from) {
                        *sent += c;
                        inn[to] += c;
                    }
                }
                for &r in &reducers {
                    out[r as usize] += c;
                }
                (reducers, out, inn)
            })
            .collect();
        // What each slot receives of A and of B does not depend on the roles.
        let (mut a_in, mut b_in) = ([0.0; SLOTS], [0.0; SLOTS]);
        for q in 0..8 {
            for (user, _) in users(q) {
                if q < 4 {
                    a_in[user] += a;
                } else {
                    b_in[user] += b;
                }
            }
        }
        let (a_phase, b_phase) = ((4.0 * a).max(1.0), (4.0 * b).max(1.0));
        let holder_count: usize = holder_options.iter().map(Vec::len).product();
        let mut best: Option<((u64, u64, u64), Roles)> = None;
        for h in 0..holder_count {
            let holders: [u8; 8] = pick(&holder_options, h).try_into().expect("eight quadrants");
            let (mut a_fwd, mut b_fwd) = ([0.0; SLOTS], [0.0; SLOTS]);
            for (q, &holder) in holders.iter().enumerate() {
                let copies = (holder_options[q].len() - 1) as f64;
                if q < 4 {
                    a_fwd[holder as usize] += copies * a;
                } else {
                    b_fwd[holder as usize] += copies * b;
                }
            }
            let b_ratio = (0..SLOTS).map(|s| b_fwd[s].max(b_in[s]) / b_phase).fold(0.0, f64::max);
            for (reducers, out, inn) in &reductions {
                let mut worst = b_ratio;
                let (mut max_out, mut max_in, mut sum_out) = (0.0f64, 0.0f64, 0.0);
                for s in 0..SLOTS {
                    let (o, i) = (a_fwd[s] + out[s], a_in[s] + inn[s]);
                    worst = worst.max(o / a_phase).max(i / a_phase);
                    max_out = max_out.max(o + b_fwd[s]);
                    max_in = max_in.max(i + b_in[s]);
                    sum_out += o + b_fwd[s];
                }
                // Ratios to a thousandth, so that near-ties go to the totals.
                let key = ((worst * 1000.0).round() as u64, (max_out + max_in) as u64, sum_out as u64);
                if best.as_ref().is_none_or(|(k, _)| key < *k) {
                    best = Some((key, Roles { holders, reducers: *reducers }));
                }
            }
        }
        best.expect("there are candidates").1
    }

    /// The largest ratio, over slots, phases and directions, of a slot's
    /// bytes in a phase to the requester's in that phase (see
    /// [`Roles::choose`]); 1.0 means no slot's link carries more than the
    /// requester's in any phase.
    pub fn phase_ratio(&self, split: Split) -> f64 {
        let (mh, kh, nh) = split.half();
        let (a, b, c) = ((mh * kh) as f64, (kh * nh) as f64, (mh * nh) as f64);
        let (mut a_load, mut b_load) = ([(0.0f64, 0.0f64); SLOTS], [(0.0f64, 0.0f64); SLOTS]);
        for q in 0..8 {
            let holder = self.holders[q] as usize;
            let (load, size) = if q < 4 { (&mut a_load, a) } else { (&mut b_load, b) };
            for (user, _) in users(q) {
                load[user].0 += size;
                if user != holder {
                    load[holder].1 += size;
                }
            }
        }
        for from in 0..SLOTS {
            for to in self.product_targets(from) {
                a_load[from].1 += c;
                a_load[to].0 += c;
            }
        }
        for &r in &self.reducers {
            a_load[r as usize].1 += c;
        }
        let worst = |load: &[(f64, f64); SLOTS], phase: f64| {
            load.iter().map(|&(i, o)| i.max(o) / phase.max(1.0)).fold(0.0, f64::max)
        };
        worst(&a_load, 4.0 * a).max(worst(&b_load, 4.0 * b))
    }

    /// Checks that every role is on a slot that may hold it.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the first role out of place.
    pub fn validate(&self) -> Result<()> {
        for (q, &h) in self.holders.iter().enumerate() {
            if !users(q).any(|(i, _)| i == h as usize) {
                return Err(Error::Invalid(format!("quadrant {q} is held by slot {h}, which does not use it")));
            }
        }
        for (q, &r) in Quad::ALL.iter().zip(&self.reducers) {
            if !feeders(*q).any(|(i, _)| i == r as usize) {
                return Err(Error::Invalid(format!(
                    "C{} is reduced by slot {r}, whose product does not feed it",
                    q.suffix()
                )));
            }
        }
        Ok(())
    }

    /// The slots slot `from`'s product goes to (reducers of the quadrants
    /// it feeds, other than itself; each once).
    pub fn product_targets(&self, from: usize) -> Vec<usize> {
        let mut out: Vec<usize> =
            PRODUCTS[from].into.iter().map(|(_, q)| self.reducers[q.index()] as usize).filter(|&r| r != from).collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The quadrants of C slot `slot` reduces.
    pub fn reduced_by(&self, slot: usize) -> Vec<Quad> {
        Quad::ALL.into_iter().filter(|q| self.reducers[q.index()] as usize == slot).collect()
    }

    /// Bytes each slot receives and sends (element size `w`) by plan,
    /// padding included.
    pub fn loads(&self, split: Split, w: usize) -> [Load; SLOTS] {
        let (mh, kh, nh) = split.half();
        let (a, b, c) = ((mh * kh * w) as u64, (kh * nh * w) as u64, (mh * nh * w) as u64);
        let size = |q: usize| if q < 4 { a } else { b };
        let mut loads = [Load::default(); SLOTS];
        for q in 0..8 {
            let holder = self.holders[q] as usize;
            for (user, _) in users(q) {
                loads[user].bytes_in += size(q);
                if user != holder {
                    loads[holder].bytes_out += size(q);
                }
            }
        }
        for (from, load) in loads.iter_mut().enumerate() {
            load.bytes_out += c * self.product_targets(from).len() as u64;
        }
        for &r in &self.reducers {
            loads[r as usize].bytes_out += c;
        }
        for from in 0..SLOTS {
            for to in self.product_targets(from) {
                loads[to].bytes_in += c;
            }
        }
        loads
    }
}

/// What a slot is told of a relayed job (`WorkerRequest::Relay`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayPlan {
    /// The job, for the peers' connections to each other.
    pub job_id: JobId,
    /// Element type of every block.
    pub dtype: Dtype,
    /// Rows of A.
    pub m: u64,
    /// Inner dimension.
    pub k: u64,
    /// Columns of B.
    pub n: u64,
    /// Rows per panel of A's quadrants, the products and C (of ⌈m/2⌉).
    pub a_panel: u64,
    /// Rows per panel of B's quadrants (of ⌈k/2⌉).
    pub b_panel: u64,
    /// Columns of the public vectors R (and of each fingerprint).
    pub rounds: u32,
    /// The seven slots' compute listeners (`host:port`); slot i computes M(i+1).
    pub peers: Vec<String>,
    /// Holders and reducers.
    pub roles: Roles,
    /// The slot this plan is sent to.
    pub you: u8,
    /// Each slot's lease ticket (as `peers`): a slot forwarding parts to
    /// another presents the receiver's.
    pub tickets: Vec<Option<crate::proto::LeaseTicket>>,
    /// Empty: slot `you` computes its product itself. Otherwise (a job
    /// two levels deep) seven peers of the same lease that compute it: the
    /// slot forms its operands X and Y whole and requests X·Y from them as
    /// a relayed job of its own — it is their requester, checks what they
    /// send, and computes itself whatever they fail to deliver.
    pub delegate: Vec<crate::proto::PeerAddr>,
    /// Milliseconds of silence after which the requester gives a slot up:
    /// a slot that delegates applies the same to its group.
    pub silence_ms: u64,
    /// 0, or (the slot's roles moved here mid-relay from a slow peer,
    /// [`crate::proto::WorkerRequest::Moved`]) how many times they have
    /// moved: the requester then sends this slot every panel of the
    /// quadrants it uses as well as those it holds (the others no longer
    /// forward to it), and its links to peers say this generation.
    pub generation: u8,
    /// Bit j: slot j had finished all its roles when this plan was made
    /// (a slot whose roles moved here mid-relay forwards it nothing).
    pub done: u8,
    /// The slot checks every product panel another slot sends it before
    /// it folds the panel into C: once the requester has formed them it
    /// sends [`crate::proto::WorkerRequest::Checks`] (the seed of the
    /// slot's secret vector s, [`key`]), then X·(Y·s) for each product it
    /// is sent ([`Block::Expect`], [`RelayPlan::checked_products`]);
    /// until then such panels wait. A panel whose M·s is off is not
    /// folded in, and its sender is caught (the requester moves its roles
    /// to a spare, whose copy of the panel is folded in instead).
    pub checks: bool,
}

impl RelayPlan {
    /// A plan for a `size`³ f64 job in panels of `panel` rows, two
    /// vectors, seven loopback peers without tickets, seen by slot 0: for
    /// the tests of the crates that speak the relay.
    #[doc(hidden)]
    pub fn example(size: u64, panel: u64) -> RelayPlan {
        let s = size as usize;
        RelayPlan {
            job_id: JobId(1),
            dtype: Dtype::F64,
            m: size,
            k: size,
            n: size,
            a_panel: panel,
            b_panel: panel,
            rounds: 2,
            peers: vec!["127.0.0.1:1".into(); SLOTS],
            roles: Roles::choose(Split::of((s, s), (s, s)).expect("a square job")),
            you: 0,
            tickets: vec![None; SLOTS],
            delegate: Vec::new(),
            silence_ms: 4000,
            generation: 0,
            done: 0,
            checks: true,
        }
    }

    /// The job's split.
    pub fn split(&self) -> Split {
        Split { m: self.m as usize, k: self.k as usize, n: self.n as usize }
    }

    /// Panels of A's quadrants, the products and C.
    pub fn a_panels(&self) -> Panels {
        Panels { rows: self.split().half().0, per: self.a_panel as usize }
    }

    /// Panels of B's quadrants.
    pub fn b_panels(&self) -> Panels {
        Panels { rows: self.split().half().1, per: self.b_panel as usize }
    }

    /// The shape of `part`, if it belongs to this job.
    pub fn part_shape(&self, part: PartId) -> Option<(usize, usize)> {
        let (mh, kh, nh) = self.split().half();
        let panel = part.panel as usize;
        let rows_in = |panels: Panels| (panel < panels.count()).then(|| panels.range(panel).len());
        match part.block {
            Block::A(_) => Some((rows_in(self.a_panels())?, kh)),
            Block::B(_) => Some((rows_in(self.b_panels())?, nh)),
            Block::M(_) | Block::C(_) => Some((rows_in(self.a_panels())?, nh)),
            Block::Fingerprint(_) => (panel == 0).then_some((mh, self.rounds as usize)),
            Block::Vectors => (panel == 0).then_some((nh, self.rounds as usize)),
            Block::Expect(_) => (panel == 0).then_some((mh, KEY_COLUMNS)),
        }
    }

    /// The part a blocks frame's `header` declares, if it is one part of
    /// this plan, in the plan's dtype and shape (who may send it where is
    /// each end's to judge): what a relay link's reader admits a frame by,
    /// before anything is allocated for it.
    ///
    /// # Errors
    /// Why not, as "sent …" (said of the sender).
    pub fn part_of(&self, header: &BlocksHeader) -> std::result::Result<PartId, String> {
        let (BlockOp::Part, [shape]) = (header.op, &header.shapes[..]) else {
            return Err(format!("sent a {:?} frame of {} blocks, not a part", header.op, header.shapes.len()));
        };
        let part = PartId::from_task_id(header.task_id)
            .map_err(|_| format!("sent a part whose id {} names no block", header.task_id))?;
        if header.dtype != self.dtype || Some(*shape) != self.part_shape(part) {
            return Err(format!(
                "sent {} as a {} {shape:?}, not the plan's {} {:?}",
                part.name(),
                header.dtype,
                self.dtype,
                self.part_shape(part)
            ));
        }
        Ok(part)
    }

    /// The products other slots send slot `slot` to fold into the C
    /// quadrants it reduces (each once, in slot order): what it is sent
    /// checks for ([`RelayPlan::checks`]).
    pub fn checked_products(&self, slot: usize) -> Vec<usize> {
        if !self.checks {
            return Vec::new();
        }
        (0..SLOTS).filter(|&f| f != slot && self.roles.product_targets(f).contains(&slot)).collect()
    }

    /// Bytes a slot needs to hold the job's blocks at once, at most
    /// (its operands, Y, its product's panels in flight, its C quadrants,
    /// and the quadrants it forwards).
    pub fn bytes_needed(&self) -> Option<u64> {
        let own = slot_bytes(self.split(), self.dtype)?;
        if self.delegate.is_empty() {
            return Some(own);
        }
        own.checked_add(delegate_bytes(self.split(), self.dtype)?)
    }

    /// Checks the plan before anything is allocated for it.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a plan with the wrong number of slots, a slot
    /// out of range, roles out of place, an empty dimension, panels of 0
    /// rows or more than [`MAX_PANELS`] of them, no vectors, a part larger
    /// than `max_frame_len`, or blocks needing more than `max_bytes` in all.
    pub fn validate(&self, max_frame_len: usize, max_bytes: u64) -> Result<()> {
        let invalid = |what: String| Err(Error::Invalid(format!("relay plan: {what}")));
        if self.peers.len() != SLOTS
            || self.tickets.len() != SLOTS
            || self.you as usize >= SLOTS
            || !(self.delegate.is_empty() || self.delegate.len() == SLOTS)
        {
            return invalid(format!(
                "{} slots ({} tickets), this one {}, delegating to {}",
                self.peers.len(),
                self.tickets.len(),
                self.you,
                self.delegate.len()
            ));
        }
        if self.m == 0 || self.k == 0 || self.n == 0 || self.a_panel == 0 || self.b_panel == 0 {
            return invalid("an empty dimension or panel".into());
        }
        if self.rounds == 0 || self.rounds > 16 {
            return invalid(format!("{} vectors", self.rounds));
        }
        let counts = (self.a_panels().count(), self.b_panels().count());
        if counts.0 > MAX_PANELS || counts.1 > MAX_PANELS {
            return invalid(format!("{} and {} panels a quadrant (at most {MAX_PANELS})", counts.0, counts.1));
        }
        self.roles.validate()?;
        let fits = |rows: u64, cols: u64| {
            rows.checked_mul(cols)
                .and_then(|e| e.checked_mul(self.dtype.size() as u64))
                .is_some_and(|b| b < max_frame_len as u64)
        };
        let (mh, kh, nh) = self.split().half();
        let (pa, pb) = (self.a_panel.min(mh as u64), self.b_panel.min(kh as u64));
        if !fits(pa, kh as u64) || !fits(pa, nh as u64) || !fits(pb, nh as u64) || !fits(mh as u64, self.rounds.into())
        {
            return invalid(format!("a part exceeds the {max_frame_len}-byte frame limit"));
        }
        match self.bytes_needed() {
            Some(b) if b <= max_bytes => Ok(()),
            _ => invalid(format!(
                "a {}×{}×{} job needs more than the {max_bytes} bytes this worker allows",
                self.m, self.k, self.n
            )),
        }
    }
}

/// Bytes a slot of a relayed `split` job of `dtype` needs to hold its
/// blocks at once, at most (its operands, Y, its product's panels in
/// flight, its C quadrants, and the quadrants it forwards): what a worker
/// checks a plan against and a requester places slots by.
pub fn slot_bytes(split: Split, dtype: crate::Dtype) -> Option<u64> {
    let (mh, kh, nh) = split.half();
    let w = dtype.size() as u64;
    let (a, b, c) = (
        (mh as u64).checked_mul(kh as u64)?.checked_mul(w)?,
        (kh as u64).checked_mul(nh as u64)?.checked_mul(w)?,
        (mh as u64).checked_mul(nh as u64)?.checked_mul(w)?,
    );
    // Two quadrants of A, two of B, Y, the product, up to two C quadrants.
    a.checked_mul(2)?.checked_add(b.checked_mul(3)?)?.checked_add(c.checked_mul(3)?)
}

/// Bytes a slot that delegates its product needs beyond [`slot_bytes`]:
/// its left operand X whole (Y is counted already) and the product whole,
/// which its sub-job's C fills.
pub fn delegate_bytes(split: Split, dtype: crate::Dtype) -> Option<u64> {
    let (mh, kh, nh) = split.half();
    let w = dtype.size() as u64;
    (mh as u64).checked_mul((kh as u64).checked_add(nh as u64)?)?.checked_mul(w)
}

/// Bytes a worker needs for one direct-plan task of a `split` job of
/// `dtype`: its two operands and its product.
pub fn task_bytes(split: Split, dtype: crate::Dtype) -> Option<u64> {
    let w = dtype.size() as u64;
    let ((xr, xc), (yr, yc), (pr, pc)) = (split.left_shape(), split.right_shape(), split.product_shape());
    let e = |r: usize, c: usize| (r as u64).checked_mul(c as u64);
    e(xr, xc)?.checked_add(e(yr, yc)?)?.checked_add(e(pr, pc)?)?.checked_mul(w)
}

/// A reducer's secret vector s (`rows`×[`KEY_COLUMNS`]), from its 32-byte
/// `seed` ([`crate::proto::WorkerRequest::Checks`]): entries ±U(½, 1), as
/// the requester's other vectors, from BLAKE3's output stream keyed by
/// the seed (specified, so both ends form the same s whatever their
/// builds; sending the seed rather than s saves ⌈n/2⌉ words a reducer on
/// the requester's link).
pub fn key<T: crate::Element>(seed: &[u8; 32], rows: usize) -> ndarray::Array2<T> {
    let mut stream = blake3::Hasher::new_keyed(seed).finalize_xof();
    let mut word = [0u8; 8];
    ndarray::Array2::from_shape_simple_fn((rows, KEY_COLUMNS), || {
        stream.fill(&mut word);
        let bits = u64::from_le_bytes(word);
        // 53 random bits for the size in [½, 1], the lowest for the sign.
        let size = 0.5 + 0.5 * ((bits >> 11) as f64 / (1u64 << 53) as f64);
        T::from_f64(if bits & 1 == 1 { -size } else { size })
    })
}

/// Element-by-element digest of a block panel (BLAKE3 over its bytes in
/// row-major order, little-endian), whatever its strides.
pub fn digest<T: crate::Element>(x: ndarray::ArrayView2<'_, T>) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    match x.as_slice() {
        Some(all) => {
            h.update(crate::frame::as_bytes(all));
        }
        None => {
            let mut row = Vec::new();
            for r in x.rows() {
                match r.as_slice() {
                    Some(s) => {
                        h.update(crate::frame::as_bytes(s));
                    }
                    None => {
                        row.clear();
                        row.extend(r.iter().copied());
                        h.update(crate::frame::as_bytes(&row));
                    }
                }
            }
        }
    }
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_and_a_task_need_their_blocks_bytes() {
        // 512² f64: quadrants of 256² (512 KiB); a relay slot holds eight
        // such blocks at most, a direct task three (two operands, its product).
        let split = Split::of((512, 512), (512, 512)).unwrap();
        assert_eq!(slot_bytes(split, Dtype::F64), Some(8 << 19));
        assert_eq!(task_bytes(split, Dtype::F64), Some(3 << 19));
        assert_eq!(task_bytes(split, Dtype::F32), Some(3 << 18));
        // Odd shapes: padded blocks (⌈m/2⌉ and so on).
        let odd = Split::of((3, 5), (5, 7)).unwrap();
        assert_eq!(task_bytes(odd, Dtype::F64), Some((2 * 3 + 3 * 4 + 2 * 4) * 8));
        let huge = Split::of((1 << 40, 1 << 40), (1 << 40, 1 << 40)).unwrap();
        assert_eq!(slot_bytes(huge, Dtype::F64), None, "overflow is None, not a wrapped size");
    }

    #[test]
    fn part_ids_round_trip_and_unknown_blocks_are_bad_frames() {
        let blocks = Quad::ALL
            .iter()
            .flat_map(|&q| [Block::A(q), Block::B(q), Block::C(q)])
            .chain((0..7).flat_map(|i| [Block::M(i), Block::Fingerprint(i), Block::Expect(i)]))
            .chain([Block::Vectors]);
        for block in blocks {
            for panel in [0, 1, 15, u32::MAX] {
                let part = PartId { block, panel };
                assert_eq!(PartId::from_task_id(part.task_id()).unwrap(), part);
            }
        }
        for code in [34u64, 255, 1 << 20] {
            assert!(matches!(PartId::from_task_id(TaskId(code << 32)), Err(Error::BadFrame(_))));
        }
    }

    /// Both ends form a reducer's secret vector from its seed alike, in
    /// either dtype: entries ±U(½, 1), of both signs, different seeds
    /// giving different vectors.
    #[test]
    fn a_key_is_formed_from_its_seed_alike_at_both_ends() {
        let (a, b) = (key::<f64>(&[1; 32], 300), key::<f64>(&[1; 32], 300));
        assert_eq!(a, b);
        assert_eq!(a.dim(), (300, KEY_COLUMNS));
        assert!(a.iter().all(|v| (0.5..=1.0).contains(&v.abs())));
        assert!(a.iter().any(|v| *v < 0.0) && a.iter().any(|v| *v > 0.0));
        assert_ne!(a, key::<f64>(&[2; 32], 300));
        assert_eq!(key::<f32>(&[1; 32], 300), a.mapv(|v| v as f32));
    }

    #[test]
    fn panels_cover_every_row_once() {
        for rows in [1, 2, 15, 16, 17, 1024, 1025] {
            let p = Panels::choose(rows, 1000, Dtype::F64);
            let covered: Vec<usize> = (0..p.count()).flat_map(|i| p.range(i)).collect();
            assert_eq!(covered, (0..rows).collect::<Vec<_>>(), "{rows}");
            assert!(p.count() <= 16);
        }
        // Wide rows: panels stay within 8 MiB.
        let p = Panels::choose(8192, 8192, Dtype::F64);
        assert!(p.per * 8192 * 8 <= 8 << 20 && p.count() >= 16);
        // Unless that takes more than MAX_PANELS: then they grow instead.
        for (rows, cols) in [(1 << 20, 1 << 20), (MAX_PANELS + 1, 1 << 21), (1 << 30, 1)] {
            let p = Panels::choose(rows, cols, Dtype::F64);
            assert!(p.count() <= MAX_PANELS && p.count() * p.per >= rows, "{rows}x{cols}: {p:?}");
        }
    }

    #[test]
    fn chosen_roles_are_valid_and_no_slot_moves_more_than_the_requester() {
        for (m, k, n) in [(2048, 2048, 2048), (1000, 3000, 500), (1, 1, 1), (4096, 64, 4096)] {
            let split = Split::of((m, k), (k, n)).unwrap();
            let roles = Roles::choose(split);
            roles.validate().unwrap();
            let loads = roles.loads(split, 8);
            let (mh, kh, nh) = split.half();
            // The requester's link carries A and B out and C in.
            let requester = (4 * (mh * kh + kh * nh + mh * nh) * 8) as u64;
            for (slot, load) in loads.iter().enumerate() {
                assert!(load.bytes_out <= requester, "{m}x{k}x{n} slot {slot}: {load:?} vs {requester}");
            }
            // 24 operand copies, 8 product copies in; 16 forwards, 8 products, 4 C quadrants out.
            let total_in: u64 = loads.iter().map(|l| l.bytes_in).sum();
            let want_in = 12 * (mh * kh * 8) as u64 + 12 * (kh * nh * 8) as u64 + 8 * (mh * nh * 8) as u64;
            assert_eq!(total_in, want_in, "{m}x{k}x{n}");
        }
        // Square: in each phase, no slot's link carries more than the
        // requester's (the reducers of C11 and C22 receive three products
        // and need one quadrant of A: exactly the requester's four).
        let split = Split::of((2048, 2048), (2048, 2048)).unwrap();
        let roles = Roles::choose(split);
        assert!(roles.phase_ratio(split) <= 1.0 + 1e-9, "{roles:?}: {}", roles.phase_ratio(split));
        let quadrant = 1024 * 1024 * 8;
        let max_out = roles.loads(split, 8).iter().map(|l| l.bytes_out).max().unwrap();
        assert!(max_out <= 5 * quadrant, "{max_out}");
    }

    #[test]
    fn misplaced_roles_and_oversized_plans_are_refused() {
        let plan = RelayPlan::example(64, 8);
        plan.validate(1 << 20, 1 << 30).unwrap();
        let mut bad = plan.clone();
        bad.roles.holders[0] = 1; // M2 does not read A11
        assert!(bad.validate(1 << 20, 1 << 30).is_err());
        let mut bad = plan.clone();
        bad.roles.reducers[1] = 0; // M1 does not feed C12
        assert!(bad.validate(1 << 20, 1 << 30).is_err());
        let mut big = plan.clone();
        big.m = 1 << 40;
        assert!(big.validate(1 << 20, 1 << 30).is_err());
        let mut short = plan.clone();
        short.peers.pop();
        assert!(short.validate(1 << 20, 1 << 30).is_err());
        assert!(plan.validate(1 << 20, 1000).is_err(), "more memory than allowed");
        // Bookkeeping per panel stays bounded by MAX_PANELS, not by rows:
        // one-row panels of a tall quadrant are refused before anything is
        // allocated for them (a peer's plan must not buy 136 bytes a row).
        let mut thin = plan.clone();
        (thin.m, thin.k, thin.n, thin.a_panel) = (2 * MAX_PANELS as u64 + 2, 2, 2, 1);
        let err = thin.validate(1 << 20, 1 << 30).unwrap_err().to_string();
        assert!(err.contains("panels a quadrant"), "{err}");
        thin.a_panel = 2;
        thin.validate(1 << 20, 1 << 30).unwrap();
        (thin.m, thin.k, thin.b_panel) = (2, 2 * MAX_PANELS as u64 + 2, 1);
        let err = thin.validate(1 << 20, 1 << 30).unwrap_err().to_string();
        assert!(err.contains("panels a quadrant"), "{err}");
        // A slot that delegates names a group of exactly seven, and needs
        // room for X and its product besides.
        let peer =
            crate::proto::PeerAddr { peer_id: crate::proto::PeerId(1), addr: "127.0.0.1:2".into(), ticket: None };
        let mut delegating = plan.clone();
        delegating.delegate = vec![peer; 7];
        delegating.validate(1 << 20, 1 << 30).unwrap();
        let (own, more) = (plan.bytes_needed().unwrap(), delegate_bytes(plan.split(), Dtype::F64).unwrap());
        assert_eq!(delegating.bytes_needed(), Some(own + more));
        assert_eq!(more, 32 * (32 + 32) * 8);
        assert!(delegating.validate(1 << 20, own).is_err(), "room for its own blocks only");
        delegating.delegate.pop();
        assert!(delegating.validate(1 << 20, 1 << 30).is_err(), "a group of six");
        assert_eq!(plan.part_shape(PartId { block: Block::A(Quad::Q11), panel: 3 }), Some((8, 32)));
        assert_eq!(plan.part_shape(PartId { block: Block::A(Quad::Q11), panel: 4 }), None);
        assert_eq!(plan.part_shape(PartId { block: Block::Fingerprint(2), panel: 0 }), Some((32, 2)));
    }
}
