//! [`PeerTable`]: the grid's peers as a polars `DataFrame`, the one source of
//! truth for who is in the grid. This is the only code in septet that sees
//! polars. Every change is a vectorized expression over whole columns (a
//! mask and a `set`, or a column-wide addition); nothing loops over cells.
//!
//! Rows are only ever appended, never removed: a peer that leaves is marked
//! `gone` and a returning one revives its row, so a peer's id is its row
//! index for the tracker's whole life.

use polars::chunked_array::ops::arity;
use polars::prelude::*;
use septet_common::proto::{PeerAddr, PeerId, PeerRow};

/// Most peers a table holds: peer ids fit the 20 low bits of the ranking key.
pub const MAX_PEERS: usize = 1 << PEER_ID_BITS;
/// Bits of the ranking key that hold the peer id.
const PEER_ID_BITS: u32 = 20;
/// Where `in_use` starts in the ranking key (above 32 bits of `leases_total`;
/// 11 bits hold any `in_use` plus extra slots of a peer of up to 1,024 slots).
const IN_USE_SHIFT: u32 = 52;
/// The ranking key's top bit: set for a peer on probation (`slow` > 0) or
/// with a failure against it (`failures` > 0), which ranks it after every
/// peer that is neither.
const PROBATION_BIT: u64 = 1 << 63;
/// Most `slow` strikes a peer collects: a peer beaten by many hedges proves
/// itself again after at most this many products delivered first.
pub const MAX_SLOW: u32 = 3;
/// `leases_total` saturates here in the ranking key (4.3 billion leases).
const LEASES_KEY_MAX: u64 = (1 << (IN_USE_SHIFT - PEER_ID_BITS)) - 1;

/// Result alias for the table's polars operations.
pub type TableResult<T> = PolarsResult<T>;

/// Health of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Heartbeating; leaseable when it has free slots.
    Alive,
    /// Late heartbeat or reported failure; not leased until it heartbeats again.
    Suspect,
    /// Deregistered or silent past the heartbeat timeout; never leased until
    /// it registers again.
    Gone,
}

impl PeerState {
    /// The value in the `state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Alive => "alive",
            PeerState::Suspect => "suspect",
            PeerState::Gone => "gone",
        }
    }

    fn parse(s: &str) -> PeerState {
        match s {
            "alive" => PeerState::Alive,
            "suspect" => PeerState::Suspect,
            _ => PeerState::Gone,
        }
    }
}

/// Counts over the whole table: see [`PeerTable::summary`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Peers alive, suspect and gone, in that order.
    pub peers: [u64; 3],
    /// Peers with slow strikes that are not gone.
    pub on_probation: u64,
    /// Slots offered by peers that are not gone.
    pub slots: u64,
    /// Slots held by leases (on any peer).
    pub slots_in_use: u64,
}

/// The peer table. Columns: `peer_id` (u64, = row index), `addr` (str),
/// `slots`, `in_use`, `failures`, `slow` (u32), `leases_total`, `joined_at`,
/// `last_seen` (u64; times are milliseconds since the tracker started) and
/// `state` (str: alive / suspect / gone).
#[derive(Debug, Clone)]
pub struct PeerTable {
    df: DataFrame,
    /// 1 for alive peers, 0 for the others: an index over the `state`
    /// column, rebuilt (one vectorized comparison) whenever that column
    /// changes — rarely: registrations, revivals, failures, sweeps — so the
    /// lease path does arithmetic on it instead of comparing strings.
    alive: UInt32Chunked,
}

impl Default for PeerTable {
    fn default() -> Self {
        Self::new()
    }
}

fn col<T>(name: &str, values: Vec<T>) -> Column
where
    Series: NamedFrom<Vec<T>, [T]>,
{
    Column::new(name.into(), values)
}

/// The row of a peer that just joined.
fn new_row(id: u64, addr: &str, slots: u32, now: u64) -> TableResult<DataFrame> {
    DataFrame::new(
        1,
        vec![
            col("peer_id", vec![id]),
            col("addr", vec![addr.to_string()]),
            col("slots", vec![slots]),
            col("memory_mib", vec![0u64]),
            col("in_use", vec![0u32]),
            col("leases_total", vec![0u64]),
            col("failures", vec![0u32]),
            col("slow", vec![0u32]),
            col("joined_at", vec![now]),
            col("last_seen", vec![now]),
            col("state", vec![PeerState::Alive.as_str().to_string()]),
        ],
    )
}

impl PeerTable {
    /// An empty table with the full schema.
    pub fn new() -> Self {
        let df = DataFrame::new(
            0,
            vec![
                col::<u64>("peer_id", vec![]),
                col::<String>("addr", vec![]),
                col::<u32>("slots", vec![]),
                col::<u64>("memory_mib", vec![]),
                col::<u32>("in_use", vec![]),
                col::<u64>("leases_total", vec![]),
                col::<u32>("failures", vec![]),
                col::<u32>("slow", vec![]),
                col::<u64>("joined_at", vec![]),
                col::<u64>("last_seen", vec![]),
                col::<String>("state", vec![]),
            ],
        )
        .expect("static schema is valid");
        Self { df, alive: UInt32Chunked::from_vec("alive".into(), Vec::new()) }
    }

    /// Number of rows (peers ever registered).
    pub fn len(&self) -> usize {
        self.df.height()
    }

    /// True when no peer ever registered.
    pub fn is_empty(&self) -> bool {
        self.df.height() == 0
    }

    /// The underlying frame, for display and tests.
    pub fn frame(&self) -> &DataFrame {
        &self.df
    }

    fn u32s(&self, name: &str) -> TableResult<&UInt32Chunked> {
        self.df.column(name)?.u32()
    }

    fn u64s(&self, name: &str) -> TableResult<&UInt64Chunked> {
        self.df.column(name)?.u64()
    }

    fn strs(&self, name: &str) -> TableResult<&StringChunked> {
        self.df.column(name)?.str()
    }

    fn replace(&mut self, name: &str, values: impl IntoColumn) -> TableResult<()> {
        self.df.replace(name, values.into_column().with_name(name.into()))?;
        Ok(())
    }

    fn mask_of(&self, peer_id: u64) -> TableResult<BooleanChunked> {
        Ok(self.u64s("peer_id")?.equal(peer_id))
    }

    fn state_mask(&self, state: PeerState) -> TableResult<BooleanChunked> {
        Ok(self.strs("state")?.equal(state.as_str()))
    }

    /// Replaces the `state` column and rebuilds the alive index from it.
    fn write_state(&mut self, state: StringChunked) -> TableResult<()> {
        self.replace("state", state)?;
        self.refresh_alive()
    }

    fn refresh_alive(&mut self) -> TableResult<()> {
        let alive = self.state_mask(PeerState::Alive)?.cast(&DataType::UInt32)?;
        self.alive = alive.u32()?.clone();
        Ok(())
    }

    /// Each peer's leaseable slots: its free slots if it is alive, else 0.
    /// (Saturating: a peer that re-registered with fewer slots than its
    /// leases still hold has none free.)
    fn leaseable_free(&self) -> TableResult<UInt32Chunked> {
        let free: UInt32Chunked =
            arity::binary_elementwise_values(self.u32s("slots")?, self.u32s("in_use")?, |s: u32, u: u32| {
                s.saturating_sub(u)
            });
        Ok(&free * &self.alive)
    }

    /// Adds a peer, or revives the row of a peer that registered before from
    /// the same address (keeping its slots in use by live leases). Returns
    /// the peer id.
    ///
    /// # Errors
    /// Only polars errors, which would be a bug in this module.
    pub fn register(&mut self, addr: &str, slots: u32, now: u64) -> TableResult<u64> {
        let hit = self.strs("addr")?.equal(addr);
        if let Some(row) = hit.iter().position(|v| v == Some(true)) {
            let slots_col = self.u32s("slots")?.set(&hit, Some(slots))?;
            let seen = self.u64s("last_seen")?.set(&hit, Some(now))?;
            let state = self.strs("state")?.set(&hit, Some(PeerState::Alive.as_str()))?;
            self.replace("slots", slots_col)?;
            self.replace("last_seen", seen)?;
            self.write_state(state)?;
            return Ok(row as u64);
        }
        if self.df.height() >= MAX_PEERS {
            polars_bail!(ComputeError: "the peer table is full ({MAX_PEERS} peers)");
        }
        let id = self.df.height() as u64;
        let row = new_row(id, addr, slots, now)?;
        self.df.vstack_mut_owned(row)?;
        self.df.rechunk_mut();
        self.refresh_alive()?;
        Ok(id)
    }

    /// Gives a new worker at `addr` the row of a peer gone since before
    /// `gone_before` (ms) with no slot in use — the oldest such — with
    /// fresh counts; `None` if there is none. How a full table takes new
    /// workers: dead rows cannot fill it for good.
    ///
    /// # Errors
    /// Only polars errors.
    pub fn recycle(&mut self, addr: &str, slots: u32, now: u64, gone_before: u64) -> TableResult<Option<u64>> {
        let (states, in_use, seen) = (self.strs("state")?, self.u32s("in_use")?, self.u64s("last_seen")?);
        let oldest = states
            .iter()
            .zip(in_use.iter())
            .zip(seen.iter())
            .enumerate()
            .filter(|(_, ((state, used), seen))| {
                *state == Some(PeerState::Gone.as_str()) && *used == Some(0) && seen.is_some_and(|t| t < gone_before)
            })
            .min_by_key(|(_, (_, seen))| *seen)
            .map(|(row, _)| row);
        let Some(row) = oldest else { return Ok(None) };
        let height = self.df.height();
        let mut df = self.df.slice(0, row);
        df.vstack_mut_owned(new_row(row as u64, addr, slots, now)?)?;
        df.vstack_mut_owned(self.df.slice(row as i64 + 1, height - row - 1))?;
        df.rechunk_mut();
        self.df = df;
        self.refresh_alive()?;
        Ok(Some(row as u64))
    }

    /// Sets the memory peer `peer_id` offers its tasks (MiB; 0: not said).
    ///
    /// # Errors
    /// Only polars errors.
    pub fn set_memory(&mut self, peer_id: u64, memory_mib: u64) -> TableResult<()> {
        let hit = self.u64s("peer_id")?.equal(peer_id);
        let memory = self.u64s("memory_mib")?.set(&hit, Some(memory_mib))?;
        self.replace("memory_mib", memory)
    }

    /// The id of the peer registered from `addr`, if any.
    ///
    /// # Errors
    /// Only polars errors.
    pub fn find(&self, addr: &str) -> TableResult<Option<u64>> {
        Ok(self.strs("addr")?.equal(addr).iter().position(|v| v == Some(true)).map(|row| row as u64))
    }

    /// `(slots, in_use)` of one peer (zeros for an unknown id).
    ///
    /// # Errors
    /// Only polars errors.
    pub fn usage_of(&self, peer_id: u64) -> TableResult<(u32, u32)> {
        let row = peer_id as usize;
        Ok((self.u32s("slots")?.get(row).unwrap_or(0), self.u32s("in_use")?.get(row).unwrap_or(0)))
    }

    /// The state of a peer, or `None` for an unknown id.
    ///
    /// # Errors
    /// Only polars errors.
    pub fn state(&self, peer_id: u64) -> TableResult<Option<PeerState>> {
        if peer_id >= self.df.height() as u64 {
            return Ok(None);
        }
        Ok(self.strs("state")?.get(peer_id as usize).map(PeerState::parse))
    }

    /// Records a heartbeat: `last_seen = now`, and a suspect peer is alive
    /// again. A gone peer stays gone (it must register again).
    ///
    /// # Errors
    /// Only polars errors.
    pub fn heartbeat(&mut self, peer_id: u64, now: u64) -> TableResult<()> {
        let hit = self.mask_of(peer_id)?;
        let seen = self.u64s("last_seen")?.set(&hit, Some(now))?;
        self.replace("last_seen", seen)?;
        let revive = &self.mask_of(peer_id)? & &self.state_mask(PeerState::Suspect)?;
        if revive.any() {
            // Rewriting a string column is the costly part: only when needed.
            let state = self.strs("state")?.set(&revive, Some(PeerState::Alive.as_str()))?;
            self.write_state(state)?;
        }
        Ok(())
    }

    /// Sets a peer's state.
    ///
    /// # Errors
    /// Only polars errors.
    pub fn set_state(&mut self, peer_id: u64, state: PeerState) -> TableResult<()> {
        let hit = self.mask_of(peer_id)?;
        let col = self.strs("state")?.set(&hit, Some(state.as_str()))?;
        self.write_state(col)
    }

    /// Counts a failure against a peer and marks it suspect (unless gone).
    /// Returns its failure count.
    ///
    /// # Errors
    /// Only polars errors.
    pub fn record_failure(&mut self, peer_id: u64) -> TableResult<u32> {
        let hit = self.mask_of(peer_id)?;
        let failures = self.u32s("failures")?;
        let updated = failures.set(&hit, failures.get(peer_id as usize).map(|f| f.saturating_add(1)))?;
        let demote = &hit & &!&self.state_mask(PeerState::Gone)?;
        let state = self.strs("state")?.set(&demote, Some(PeerState::Suspect.as_str()))?;
        let count = updated.get(peer_id as usize).unwrap_or(0);
        self.replace("failures", updated)?;
        self.write_state(state)?;
        Ok(count)
    }

    /// Records how peers did against hedges: one `slow` strike for each
    /// entry of `beaten` (up to [`MAX_SLOW`]), then one taken away for each
    /// entry of `proven`. Column-wide arithmetic, like slot counts.
    ///
    /// # Errors
    /// Only polars errors.
    pub fn record_speed(&mut self, beaten: &[PeerAddr], proven: &[PeerAddr]) -> TableResult<()> {
        if beaten.is_empty() && proven.is_empty() {
            return Ok(());
        }
        let (up, down) = (self.deltas(beaten), self.deltas(proven));
        let slow: UInt32Chunked = arity::binary_elementwise_values(
            self.u32s("slow")?,
            &UInt32Chunked::from_vec("up".into(), up),
            |s: u32, u: u32| s.saturating_add(u).min(MAX_SLOW),
        );
        let slow: UInt32Chunked =
            arity::binary_elementwise_values(&slow, &UInt32Chunked::from_vec("down".into(), down), |s: u32, d: u32| {
                s.saturating_sub(d)
            });
        self.replace("slow", slow)
    }

    /// Marks peers silent for too long: `suspect` once `last_seen` is older
    /// than `suspect_after`, `gone` once older than `gone_after` (both in ms
    /// before `now`). Returns the ids that just became gone.
    ///
    /// # Errors
    /// Only polars errors.
    pub fn sweep(&mut self, now: u64, suspect_after: u64, gone_after: u64) -> TableResult<Vec<u64>> {
        let seen = self.u64s("last_seen")?;
        let not_gone = !&self.state_mask(PeerState::Gone)?;
        let to_gone = &seen.lt(now.saturating_sub(gone_after)) & &not_gone;
        let to_suspect =
            &(&seen.lt(now.saturating_sub(suspect_after)) & &self.state_mask(PeerState::Alive)?) & &!&to_gone;
        if !to_gone.any() && !to_suspect.any() {
            return Ok(Vec::new());
        }
        let gone_ids: Vec<u64> = self.u64s("peer_id")?.filter(&to_gone)?.into_no_null_iter().collect();
        let state = self.strs("state")?.set(&to_gone, Some(PeerState::Gone.as_str()))?;
        let state = state.set(&to_suspect, Some(PeerState::Suspect.as_str()))?;
        self.write_state(state)?;
        Ok(gone_ids)
    }

    /// Free slots on alive peers: the lease queue's permits.
    ///
    /// # Errors
    /// Only polars errors.
    pub fn free_slots(&self) -> TableResult<u32> {
        Ok(self.leaseable_free()?.sum().unwrap_or(0))
    }

    /// Chooses `count` slots: alive peers with free slots, peers not on
    /// probation (`slow` = 0) and never reported failed (`failures` = 0)
    /// first, then least `in_use`, then least `leases_total`, then lowest
    /// id. (A failed peer is suspect, and not leased at all, until it
    /// heartbeats again; a heartbeat says it is up, not that its work is
    /// right, so a peer caught computing wrong — or dead once — is leased
    /// after the others from then on, as a slow one is: still leased when
    /// the grid has no other slot free.) A peer with several
    /// free slots may be chosen several times; its n-th extra slot ranks as
    /// if its `in_use` were already n higher, so load spreads round the grid.
    /// Returns fewer than `count` only if fewer slots are free — then every
    /// free slot — so one call both checks for and picks a lease's slots.
    ///
    /// The ranking is vectorized: one u64 key per peer packing probation
    /// (the top bit), `in_use` (11 bits) and `leases_total` (32 bits,
    /// saturating) above the peer id (low 20 bits), so ordering keys orders
    /// peers by all four at once, and one column of leaseable free slots. One pass over the two
    /// columns keeps the `count` best leaseable keys in a bounded heap (the
    /// best `count` slots can only come from those peers); ranking their
    /// extra slots is a small sort (at most the free slots of those peers,
    /// and never more than `count` per peer). Keys and a heap rather than a
    /// multi-column `DataFrame::sort` or string masks and filters, because
    /// this runs on every lease: `cargo bench --bench tracker -- in_process`
    /// times a lease + release cycle.
    ///
    /// # Errors
    /// Only polars errors.
    pub fn choose(&self, count: usize) -> TableResult<Vec<PeerAddr>> {
        self.choose_except(count, None)
    }

    /// [`PeerTable::choose`], never on the peer `except` (a hedge's slot
    /// must not be on the peer whose product it hedges).
    ///
    /// # Errors
    /// Only polars errors.
    pub fn choose_except(&self, count: usize, except: Option<u64>) -> TableResult<Vec<PeerAddr>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let free = self.leaseable_free()?;
        let rank: UInt64Chunked =
            arity::binary_elementwise_values(self.u32s("in_use")?, self.u64s("leases_total")?, |u: u32, t: u64| {
                (u64::from(u) << IN_USE_SHIFT) | (t.min(LEASES_KEY_MAX) << PEER_ID_BITS)
            });
        // Ranked after every other peer: on probation (slow strikes) or
        // with failures (non-zero either way, so their bits or'd).
        let last: UInt32Chunked =
            arity::binary_elementwise_values(self.u32s("slow")?, self.u32s("failures")?, |s: u32, f: u32| s | f);
        let rank: UInt64Chunked =
            arity::binary_elementwise_values(&rank, &last, |r: u64, l: u32| if l > 0 { r | PROBATION_BIT } else { r });
        // Max-heap of the best (smallest) keys so far, with their free slots.
        let mut best = std::collections::BinaryHeap::with_capacity(count.min(self.len()) + 1);
        for (row, (rank, free)) in rank.into_no_null_iter().zip(free.into_no_null_iter()).enumerate() {
            if free == 0 || except == Some(row as u64) {
                continue;
            }
            let key = rank | row as u64;
            if best.len() < count {
                best.push((key, free));
            } else if best.peek().is_some_and(|&(worst, _)| key < worst) {
                best.pop();
                best.push((key, free));
            }
        }
        let addrs = self.strs("addr")?;
        let mut keys = Vec::new();
        for (k, free) in best {
            let row = (k & ((1 << PEER_ID_BITS) - 1)) as usize;
            for extra in 0..free.min(count as u32) {
                // Below the probation bit: `in_use` + extras < 2^11.
                keys.push((k + (u64::from(extra) << IN_USE_SHIFT), row));
            }
        }
        keys.sort_unstable();
        Ok(keys
            .into_iter()
            .take(count)
            .map(|(_, row)| PeerAddr {
                peer_id: PeerId(row as u64),
                addr: addrs.get(row).unwrap_or_default().to_string(),
                ticket: None,
            })
            .collect())
    }

    /// Per-row increments built from (peer_id, n) pairs.
    fn deltas(&self, peers: &[PeerAddr]) -> Vec<u32> {
        let mut delta = vec![0u32; self.df.height()];
        for p in peers {
            if let Some(d) = delta.get_mut(p.peer_id.0 as usize) {
                *d += 1;
            }
        }
        delta
    }

    /// Takes one slot per entry of `slots` (an id may repeat): `in_use` and
    /// `leases_total` grow by a column-wide addition.
    ///
    /// # Errors
    /// Only polars errors.
    pub fn take_slots(&mut self, slots: &[PeerAddr]) -> TableResult<()> {
        if slots.is_empty() {
            return Ok(());
        }
        let delta = self.deltas(slots);
        let in_use = self.u32s("in_use")? + &UInt32Chunked::from_vec("in_use".into(), delta.clone());
        let delta64: Vec<u64> = delta.into_iter().map(u64::from).collect();
        let total = self.u64s("leases_total")? + &UInt64Chunked::from_vec("leases_total".into(), delta64);
        self.replace("in_use", in_use)?;
        self.replace("leases_total", total)
    }

    /// Gives back one slot per entry of `slots`: a column-wide subtraction.
    /// Callers give back exactly what they took, so `in_use` never underflows.
    ///
    /// # Errors
    /// Only polars errors.
    pub fn return_slots(&mut self, slots: &[PeerAddr]) -> TableResult<()> {
        if slots.is_empty() {
            return Ok(());
        }
        let delta = UInt32Chunked::from_vec("in_use".into(), self.deltas(slots));
        let in_use = self.u32s("in_use")? - &delta;
        self.replace("in_use", in_use)
    }

    /// Counts for metrics and the status page: peers alive, suspect and gone;
    /// peers on probation that are not gone; slots offered by peers that are
    /// not gone; slots in use. A few column passes, no per-row strings.
    ///
    /// # Errors
    /// Only polars errors.
    pub fn summary(&self) -> TableResult<Summary> {
        let count = |mask: &BooleanChunked| mask.num_trues() as u64;
        let gone = self.state_mask(PeerState::Gone)?;
        let not_gone = !&gone;
        let keep = not_gone.cast(&DataType::UInt32)?;
        // At most 2^20 peers of 1,024 slots each: the sums fit in u32.
        let offered = self.u32s("slots")? * keep.u32()?;
        let probation = &self.u32s("slow")?.gt(0) & &not_gone;
        Ok(Summary {
            peers: [
                count(&self.state_mask(PeerState::Alive)?),
                count(&self.state_mask(PeerState::Suspect)?),
                count(&gone),
            ],
            on_probation: count(&probation),
            slots: u64::from(offered.sum().unwrap_or(0)),
            slots_in_use: u64::from(self.u32s("in_use")?.sum().unwrap_or(0)),
        })
    }

    /// `(slots, in_use)` per peer id, for invariant checks.
    ///
    /// # Errors
    /// Only polars errors.
    pub fn usage(&self) -> TableResult<Vec<(u32, u32)>> {
        let (slots, in_use) = (self.u32s("slots")?, self.u32s("in_use")?);
        Ok(slots.iter().zip(in_use.iter()).map(|(s, u)| (s.unwrap_or(0), u.unwrap_or(0))).collect())
    }

    /// The rows, structured.
    ///
    /// # Errors
    /// Only polars errors.
    pub fn rows(&self) -> TableResult<Vec<PeerRow>> {
        let (ids, addrs, states) = (self.u64s("peer_id")?, self.strs("addr")?, self.strs("state")?);
        let (slots, in_use, failures) = (self.u32s("slots")?, self.u32s("in_use")?, self.u32s("failures")?);
        let (slow, memory) = (self.u32s("slow")?, self.u64s("memory_mib")?);
        let (total, joined, seen) = (self.u64s("leases_total")?, self.u64s("joined_at")?, self.u64s("last_seen")?);
        Ok((0..self.df.height())
            .map(|i| PeerRow {
                peer_id: PeerId(ids.get(i).unwrap_or(0)),
                addr: addrs.get(i).unwrap_or_default().to_string(),
                slots: slots.get(i).unwrap_or(0),
                memory_mib: memory.get(i).unwrap_or(0),
                in_use: in_use.get(i).unwrap_or(0),
                leases_total: total.get(i).unwrap_or(0),
                failures: failures.get(i).unwrap_or(0),
                slow: slow.get(i).unwrap_or(0),
                joined_at: joined.get(i).unwrap_or(0),
                last_seen: seen.get(i).unwrap_or(0),
                state: states.get(i).unwrap_or_default().to_string(),
                cluster: String::new(),
            })
            .collect())
    }

    /// The table as polars prints it.
    pub fn display(&self) -> String {
        self.df.to_string()
    }
}

/// `rows` (of one cluster or several) as polars prints them, with the
/// `cluster` column last: what `septet peers` shows.
///
/// # Errors
/// Only polars errors.
pub fn render(rows: &[PeerRow]) -> TableResult<String> {
    let pick = |f: fn(&PeerRow) -> u64| rows.iter().map(f).collect::<Vec<u64>>();
    let pick32 = |f: fn(&PeerRow) -> u32| rows.iter().map(f).collect::<Vec<u32>>();
    let text = |f: fn(&PeerRow) -> &str| rows.iter().map(|r| f(r).to_string()).collect::<Vec<String>>();
    let df = DataFrame::new(
        rows.len(),
        vec![
            col("peer_id", pick(|r| r.peer_id.0)),
            col("addr", text(|r| &r.addr)),
            col("slots", pick32(|r| r.slots)),
            col("memory_mib", pick(|r| r.memory_mib)),
            col("in_use", pick32(|r| r.in_use)),
            col("leases_total", pick(|r| r.leases_total)),
            col("failures", pick32(|r| r.failures)),
            col("slow", pick32(|r| r.slow)),
            col("joined_at", pick(|r| r.joined_at)),
            col("last_seen", pick(|r| r.last_seen)),
            col("state", text(|r| &r.state)),
            col("cluster", text(|r| &r.cluster)),
        ],
    )?;
    Ok(df.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(peers: &[PeerAddr]) -> Vec<u64> {
        peers.iter().map(|p| p.peer_id.0).collect()
    }

    /// Peer `id` as a lease names it (the table goes by id alone).
    fn peer(id: u64) -> PeerAddr {
        PeerAddr { peer_id: PeerId(id), addr: String::new(), ticket: None }
    }

    /// A table of peers a, b and c (ids 0, 1, 2), one slot each.
    fn three_one_slot_peers() -> PeerTable {
        let mut t = PeerTable::new();
        for a in ["a", "b", "c"] {
            t.register(a, 1, 0).unwrap();
        }
        t
    }

    #[test]
    fn registration_appends_rows_and_revives_by_address() {
        let mut t = PeerTable::new();
        assert_eq!(t.register("a:1", 1, 10).unwrap(), 0);
        assert_eq!(t.register("b:1", 3, 11).unwrap(), 1);
        assert_eq!(t.free_slots().unwrap(), 4);
        t.set_state(0, PeerState::Gone).unwrap();
        assert_eq!(t.free_slots().unwrap(), 3);
        assert_eq!(t.register("a:1", 2, 20).unwrap(), 0, "same address, same row");
        assert_eq!(t.len(), 2);
        assert_eq!(t.free_slots().unwrap(), 5);
        let rows = t.rows().unwrap();
        assert_eq!((rows[0].slots, rows[0].joined_at, rows[0].last_seen, rows[0].state.as_str()), (2, 10, 20, "alive"));
    }

    #[test]
    fn choice_prefers_idle_then_least_leased_and_spreads_multi_slot_peers() {
        let mut t = PeerTable::new();
        t.register("a", 3, 0).unwrap(); // 0
        t.register("b", 1, 0).unwrap(); // 1
        t.register("c", 1, 0).unwrap(); // 2
                                        // Idle peers first; the 3-slot peer's extra slots rank after them.
        let first = t.choose(4).unwrap();
        assert_eq!(ids(&first), vec![0, 1, 2, 0]);
        t.take_slots(&first).unwrap();
        assert_eq!(t.free_slots().unwrap(), 1);
        assert_eq!(ids(&t.choose(7).unwrap()), vec![0], "only what is free");
        t.return_slots(&first).unwrap();
        // Now every peer is idle but a, b and c have 2, 1 and 1 leases: b and c first.
        assert_eq!(ids(&t.choose(2).unwrap()), vec![1, 2]);
        t.record_failure(1).unwrap();
        assert_eq!(ids(&t.choose(2).unwrap()), vec![2, 0], "suspect peers are not leased");
    }

    #[test]
    fn a_peer_reported_failed_ranks_last_once_it_heartbeats_again() {
        let mut t = three_one_slot_peers();
        // b and c have a lease behind them, a none, so a would come first.
        t.take_slots(&[peer(1), peer(2)]).unwrap();
        t.return_slots(&[peer(1), peer(2)]).unwrap();
        assert_eq!(ids(&t.choose(3).unwrap()), vec![0, 1, 2]);
        t.record_failure(0).unwrap();
        assert_eq!(ids(&t.choose(3).unwrap()), vec![1, 2], "suspect: not leased");
        // Up again (a heartbeat): that says nothing of whether its
        // products are right.
        t.heartbeat(0, 1).unwrap();
        assert_eq!(ids(&t.choose(3).unwrap()), vec![1, 2, 0], "leased last, but still leased");
        assert_eq!(ids(&t.choose(1).unwrap()), vec![1]);
    }

    #[test]
    fn peers_beaten_by_hedges_rank_last_until_they_prove_fast_again() {
        let mut t = three_one_slot_peers();
        assert_eq!(ids(&t.choose(3).unwrap()), vec![0, 1, 2]);
        t.record_speed(&[peer(0), peer(0)], &[peer(1)]).unwrap();
        assert_eq!(t.rows().unwrap().iter().map(|r| r.slow).collect::<Vec<_>>(), vec![2, 0, 0]);
        assert_eq!(ids(&t.choose(3).unwrap()), vec![1, 2, 0], "on probation: leased last, but still leased");
        assert_eq!(ids(&t.choose_except(2, Some(1)).unwrap()), vec![2, 0], "never on the excepted peer");
        // Strikes are capped, and each product delivered first takes one away.
        t.record_speed(&vec![peer(0); 5], &[]).unwrap();
        assert_eq!(t.rows().unwrap()[0].slow, MAX_SLOW);
        t.record_speed(&[], &vec![peer(0); 2]).unwrap();
        assert_eq!(ids(&t.choose(3).unwrap()), vec![1, 2, 0], "still one strike");
        t.record_speed(&[], &[peer(0), peer(0)]).unwrap();
        assert_eq!(t.rows().unwrap()[0].slow, 0, "never below zero");
        assert_eq!(ids(&t.choose(3).unwrap()), vec![0, 1, 2], "proven fast: ranked as before");
        assert!(t.display().contains("slow"));
    }

    #[test]
    fn a_short_choice_is_every_free_slot_and_shrunken_peers_have_none_free() {
        let mut t = PeerTable::new();
        t.register("a", 2, 0).unwrap(); // 0
        t.register("b", 3, 0).unwrap(); // 1
        t.register("c", 1, 0).unwrap(); // 2
        t.set_state(2, PeerState::Suspect).unwrap();
        assert_eq!(ids(&t.choose(9).unwrap()), vec![0, 1, 0, 1, 1], "all five alive slots, spread");
        assert!(t.choose(0).unwrap().is_empty());
        let held = t.choose(5).unwrap();
        t.take_slots(&held).unwrap();
        // b comes back offering one slot while three are still leased on it.
        t.register("b", 1, 5).unwrap();
        assert_eq!(t.free_slots().unwrap(), 0, "no wrap-around below zero");
        assert!(t.choose(1).unwrap().is_empty());
        t.return_slots(&held).unwrap();
        assert_eq!(t.free_slots().unwrap(), 3);
        t.heartbeat(2, 6).unwrap();
        assert_eq!(t.free_slots().unwrap(), 4, "a revived peer's slot is leaseable again");
    }

    #[test]
    fn sweep_marks_late_peers_suspect_then_gone_and_heartbeats_revive_suspects_only() {
        let mut t = PeerTable::new();
        t.register("a", 1, 0).unwrap();
        t.register("b", 1, 0).unwrap();
        t.heartbeat(1, 4_000).unwrap();
        assert_eq!(t.sweep(4_000, 3_000, 6_000).unwrap(), Vec::<u64>::new());
        assert_eq!(t.state(0).unwrap(), Some(PeerState::Suspect));
        assert_eq!(t.state(1).unwrap(), Some(PeerState::Alive));
        t.heartbeat(0, 4_500).unwrap();
        assert_eq!(t.state(0).unwrap(), Some(PeerState::Alive));
        assert_eq!(t.sweep(10_600, 3_000, 6_000).unwrap(), vec![0, 1]);
        t.heartbeat(0, 10_700).unwrap();
        assert_eq!(t.state(0).unwrap(), Some(PeerState::Gone), "gone peers must register again");
        assert_eq!(t.state(7).unwrap(), None);
        assert!(t.display().contains("last_seen"));
    }

    #[test]
    fn the_summary_counts_states_probation_and_slots_of_peers_not_gone() {
        let mut t = PeerTable::new();
        t.register("a", 2, 0).unwrap();
        t.register("b", 3, 0).unwrap();
        t.register("c", 4, 0).unwrap();
        t.register("d", 1, 0).unwrap();
        t.take_slots(&t.choose(3).unwrap()).unwrap();
        t.set_state(1, PeerState::Suspect).unwrap();
        t.set_state(2, PeerState::Gone).unwrap();
        t.record_speed(&[peer(0), peer(2)], &[]).unwrap();
        let s = t.summary().unwrap();
        assert_eq!(s, Summary { peers: [2, 1, 1], on_probation: 1, slots: 6, slots_in_use: 3 });
    }
}
