//! Sockets ⇄ [`Frame`]s: a buffered, cancel-safe frame reader, a frame
//! writer that sends matrix memory without copying it, and [`Connection`],
//! which pairs the two over a TCP stream once the handshake of
//! [`crate::secure`] has authenticated it (and, with encryption, carries
//! every byte in sealed records that the reader opens in place).

use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use ndarray::ArrayView2;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::frame::{self, BlockOp, Blocks, BlocksHeader, Frame, KIND_BLOCKS, LEN_PREFIX};
use crate::matrix::{Element, Matrix, MatrixView};
use crate::proto::{Failure, Reply, TaskId};
use crate::secure::{self, Opener, Sealer, Security, MAX_RECORD, RECORD_HEADER, TAG_LEN};
use crate::{deadline, Error, Result, Role};

/// Slices per `writev` call when sending a matrix row by row.
const IOV_BATCH: usize = 256;
/// Bytes of a streamed sum formed per write.
const SUM_CHUNK: usize = 256 << 10;
/// Read buffer growth step.
const READ_CHUNK: usize = 64 << 10;
/// Highest receive low-water mark set while a matrix payload is read.
const LOW_WATER: usize = 1 << 20;

/// One matrix of a blocks frame, as [`FrameWriter::send_parts`] sends it.
#[derive(Debug, Clone, Copy)]
pub enum WirePart<'a> {
    /// Elements as they lie in memory.
    View(MatrixView<'a>),
    /// `a + b`, or `a − b` with `subtract`: formed a chunk of rows at a time
    /// as it is written, never stored whole. `a` and `b` have one shape and
    /// one dtype.
    Sum {
        /// First term.
        a: MatrixView<'a>,
        /// Second term.
        b: MatrixView<'a>,
        /// Subtract `b` instead of adding it.
        subtract: bool,
    },
}

impl WirePart<'_> {
    fn dtype(&self) -> crate::Dtype {
        match self {
            WirePart::View(v) | WirePart::Sum { a: v, .. } => v.dtype(),
        }
    }

    fn shape(&self) -> (usize, usize) {
        match self {
            WirePart::View(v) | WirePart::Sum { a: v, .. } => v.shape(),
        }
    }
}

/// A blocks frame whose payload is being read straight into its matrices.
#[derive(Debug)]
struct PendingBlocks {
    header: BlocksHeader,
    mats: Vec<Matrix>,
    /// Matrix being filled.
    index: usize,
    /// Bytes of it filled so far.
    filled: usize,
}

impl PendingBlocks {
    /// Bytes of the whole payload filled so far.
    fn payload_filled(&self) -> usize {
        let before: usize = self.mats[..self.index].iter().map(|m| m.shape().0 * m.shape().1 * m.dtype().size()).sum();
        before + self.filled
    }

    /// The unfilled bytes of the current matrix, skipping finished (or empty) ones.
    fn unfilled(&mut self) -> Option<&mut [u8]> {
        while self.index < self.mats.len() {
            let len = frame::matrix_bytes_mut(&mut self.mats[self.index]).len();
            if self.filled < len {
                let filled = self.filled;
                return Some(&mut frame::matrix_bytes_mut(&mut self.mats[self.index])[filled..]);
            }
            self.index += 1;
            self.filled = 0;
        }
        None
    }
}

/// The receive low-water mark (`SO_RCVLOWAT`) of a TCP socket, kept in
/// step with the matrix payload being read.
///
/// By default the kernel wakes a reader for every few dozen kilobytes that
/// arrive. While a payload is read, asking it to wait until up to 1 MiB —
/// never more than the payload still missing, so the last bytes of a frame
/// always wake the reader — means fewer, larger copies and fewer wake-ups
/// (`cargo bench --bench wire` measures loopback transfers). Between payloads the mark is
/// back to 1 byte, so control messages are read as soon as they arrive.
#[derive(Debug)]
struct LowWater {
    #[cfg(unix)]
    fd: std::os::fd::RawFd,
    current: usize,
}

impl LowWater {
    /// Waits for `bytes` (clamped to 1..=[`LOW_WATER`]) before waking the reader.
    fn set(&mut self, bytes: usize) {
        let bytes = bytes.clamp(1, LOW_WATER);
        if bytes == self.current {
            return;
        }
        #[cfg(unix)]
        {
            let value = bytes as libc::c_int;
            // SAFETY: `fd` is the socket of the stream the reader owns, open
            // for the reader's whole life; the option value is a live c_int
            // of the size passed.
            let rc = unsafe {
                libc::setsockopt(
                    self.fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVLOWAT,
                    (&raw const value).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                // The kernel keeps the previous mark; it only ever delays a
                // wake-up until the payload's missing bytes arrive.
                tracing::debug!(error = %std::io::Error::last_os_error(), "SO_RCVLOWAT not set");
                return;
            }
        }
        self.current = bytes;
    }
}

/// Where a [`FrameReader`]'s plaintext comes from: the socket as it is, or
/// the records of an encrypted connection, opened as they arrive.
#[derive(Debug)]
struct Source<R> {
    inner: R,
    /// Plaintext read but not yet parsed into a frame.
    buf: BytesMut,
    /// For TCP streams: the socket's low-water mark, raised while a payload is read.
    low_water: Option<LowWater>,
    /// How long a frame already begun may go without a byte arriving.
    stall_timeout: Option<Duration>,
    /// How long the reader may wait between frames without a byte arriving.
    idle_timeout: Option<Duration>,
    /// With encryption: the record state.
    records: Option<Records>,
}

/// The receive side of an encrypted connection.
#[derive(Debug)]
struct Records {
    opener: Opener,
    /// Ciphertext read in bulk and not yet opened (control messages, and
    /// records that do not fit the payload being read).
    raw: BytesMut,
    /// A record being read straight into a matrix payload: its header…
    head: [u8; RECORD_HEADER],
    head_filled: usize,
    /// …the ciphertext bytes already in the payload, and its tag.
    body_filled: usize,
    tag: [u8; TAG_LEN],
    tag_filled: usize,
    /// The peer sent its authenticated close record.
    closed: bool,
}

impl Records {
    fn mid_record(&self) -> bool {
        !self.closed && (!self.raw.is_empty() || self.head_filled > 0)
    }

    /// Opens the first record in `raw` if it is complete, appending its
    /// plaintext to `out`: the number of plaintext bytes, or `None` if more
    /// ciphertext is needed.
    fn open_buffered(&mut self, out: &mut BytesMut) -> Result<Option<usize>> {
        if self.raw.len() < RECORD_HEADER {
            return Ok(None);
        }
        let header = [self.raw[0], self.raw[1], self.raw[2], self.raw[3]];
        let len = Opener::record_len(header)?;
        let total = RECORD_HEADER + len + TAG_LEN;
        if self.raw.len() < total {
            self.raw.reserve(total - self.raw.len());
            return Ok(None);
        }
        let (data, tag) = self.raw[RECORD_HEADER..total].split_at_mut(len);
        self.opener.open(header, data, tag)?;
        if len == 0 {
            // The authenticated close record: nothing may follow it.
            self.raw.advance(total);
            if !self.raw.is_empty() {
                return Err(Error::BadFrame("bytes after the close record".into()));
            }
            self.closed = true;
            return Ok(Some(0));
        }
        out.extend_from_slice(data);
        self.raw.advance(total);
        Ok(Some(len))
    }
}

/// A deadline for one read: how long, and what the error says was awaited.
type ReadDeadline = Option<(Duration, &'static str)>;

const STALLED: &str = "the rest of a frame (the peer stalled mid-frame)";
const SILENT: &str = "any byte from the peer (it went silent)";

/// Reads `fut` (one read from the socket), failing with
/// [`Error::Timeout`] if it takes longer than the deadline.
async fn bounded<T>(deadline: ReadDeadline, fut: impl Future<Output = std::io::Result<T>>) -> Result<T> {
    match deadline {
        Some((after, what)) => match tokio::time::timeout(after, fut).await {
            Ok(read) => Ok(read?),
            Err(_) => Err(Error::Timeout { what, after }),
        },
        None => Ok(fut.await?),
    }
}

impl<R: AsyncRead + Unpin> Source<R> {
    fn set_low_water(&mut self, bytes: usize) {
        if let Some(mark) = &mut self.low_water {
            mark.set(bytes);
        }
    }

    /// True while part of a frame or record has been read: the stall
    /// deadline applies.
    fn mid_frame(&self) -> bool {
        !self.buf.is_empty() || self.records.as_ref().is_some_and(Records::mid_record)
    }

    /// Appends more plaintext to `buf`: how many bytes, 0 at the end of the stream.
    async fn fill(&mut self) -> Result<usize> {
        let stalled = self.stall_timeout.map(|d| (d, STALLED));
        let stall = if self.mid_frame() { stalled } else { self.idle_timeout.map(|d| (d, SILENT)) };
        let Some(records) = &mut self.records else {
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(READ_CHUNK);
            }
            return bounded(stall, self.inner.read_buf(&mut self.buf)).await;
        };
        loop {
            if records.closed {
                // After the close record: the end, and nothing else may come.
                return match bounded(stall, self.inner.read_buf(&mut records.raw)).await? {
                    0 => Ok(0),
                    _ => Err(Error::BadFrame("bytes after the close record".into())),
                };
            }
            if let Some(n) = records.open_buffered(&mut self.buf)? {
                return Ok(n);
            }
            if records.raw.capacity() - records.raw.len() < READ_CHUNK / 4 {
                records.raw.reserve(READ_CHUNK);
            }
            let stall = if records.mid_record() { stalled } else { stall };
            if bounded(stall, self.inner.read_buf(&mut records.raw)).await? == 0 {
                if !records.raw.is_empty() {
                    return Err(Error::ClosedMidFrame);
                }
                // An end without the close record: a peer that dropped the
                // connection, or someone on the path cutting it. Either way
                // no frame was cut; what the conversation still expected
                // (a reply, the rest of a job's parts) tells.
                tracing::debug!("an encrypted connection ended without its close record");
                return Ok(0);
            }
        }
    }

    /// Reads payload bytes into `dst` (not empty): how many, at least one.
    /// Encrypted records that fit are read straight into `dst` and opened
    /// there, so payloads are not copied once more for decryption.
    async fn read_payload(&mut self, dst: &mut [u8]) -> Result<usize> {
        if !self.buf.is_empty() {
            let n = dst.len().min(self.buf.len());
            dst[..n].copy_from_slice(&self.buf[..n]);
            self.buf.advance(n);
            return Ok(n);
        }
        let stall = self.stall_timeout.map(|d| (d, STALLED));
        let Some(records) = &mut self.records else {
            self.set_low_water(dst.len());
            return match bounded(stall, self.inner.read(dst)).await? {
                0 => Err(Error::ClosedMidFrame),
                n => Ok(n),
            };
        };
        loop {
            if !records.raw.is_empty() {
                // A record already partly buffered: finish and open it there.
                if self.fill().await? == 0 {
                    return Err(Error::ClosedMidFrame);
                }
                let n = dst.len().min(self.buf.len());
                dst[..n].copy_from_slice(&self.buf[..n]);
                self.buf.advance(n);
                return Ok(n);
            }
            if records.head_filled < RECORD_HEADER {
                let n = bounded(stall, self.inner.read(&mut records.head[records.head_filled..])).await?;
                if n == 0 {
                    return Err(Error::ClosedMidFrame);
                }
                records.head_filled += n;
                continue;
            }
            let len = Opener::record_len(records.head)?;
            if len == 0 {
                // The close record, inside a payload: a frame cut short.
                return Err(Error::ClosedMidFrame);
            }
            if len > dst.len() {
                // The record runs past this matrix: open it in the buffer.
                records.raw.extend_from_slice(&records.head);
                records.head_filled = 0;
                continue;
            }
            while records.body_filled < len {
                if let Some(mark) = &mut self.low_water {
                    mark.set(len - records.body_filled + TAG_LEN);
                }
                let n = bounded(stall, self.inner.read(&mut dst[records.body_filled..len])).await?;
                if n == 0 {
                    return Err(Error::ClosedMidFrame);
                }
                records.body_filled += n;
            }
            while records.tag_filled < TAG_LEN {
                if let Some(mark) = &mut self.low_water {
                    mark.set(TAG_LEN - records.tag_filled);
                }
                let n = bounded(stall, self.inner.read(&mut records.tag[records.tag_filled..])).await?;
                if n == 0 {
                    return Err(Error::ClosedMidFrame);
                }
                records.tag_filled += n;
            }
            let (head, tag) = (records.head, records.tag);
            records.head_filled = 0;
            records.body_filled = 0;
            records.tag_filled = 0;
            records.opener.open(head, &mut dst[..len], &tag)?;
            return Ok(len);
        }
    }
}

/// Reads frames from a byte stream.
///
/// [`FrameReader::read_frame`] is cancel-safe: all partial state lives in
/// the reader, so it can be raced against other events in `select!`.
#[derive(Debug)]
pub struct FrameReader<R> {
    src: Source<R>,
    max_frame_len: usize,
    pending: Option<PendingBlocks>,
    /// When the frame being read began to arrive.
    began: Option<tokio::time::Instant>,
    /// The server's budget for frames in flight, and this frame's share of it.
    budget: Option<FrameBudget>,
    reserved: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Says whether a blocks frame may be read, from its header alone.
    admit: Option<Admit>,
}

/// A frame read by [`FrameReader::read_frame_into`].
#[derive(Debug)]
pub enum FrameInto {
    /// A control message, not yet decoded.
    Control(frame::ControlBody),
    /// A blocks frame, whose payload is now in the caller's memory.
    Blocks(BlocksHeader),
}

/// A check of a blocks frame's header, made before anything is reserved
/// or allocated for its payload (see [`FrameReader::set_admit`]).
#[derive(Clone)]
pub struct Admit(pub Arc<AdmitFn>);

/// What an [`Admit`] calls: `Err` refuses the frame.
pub type AdmitFn = dyn Fn(&BlocksHeader) -> Result<()> + Send + Sync;

impl std::fmt::Debug for Admit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admit(..)")
    }
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps `inner`, refusing frames longer than `max_frame_len` bytes.
    pub fn new(inner: R, max_frame_len: usize) -> Self {
        let src = Source {
            inner,
            buf: BytesMut::with_capacity(READ_CHUNK),
            low_water: None,
            stall_timeout: None,
            idle_timeout: None,
            records: None,
        };
        Self { src, max_frame_len, pending: None, began: None, budget: None, reserved: None, admit: None }
    }

    /// Checks each blocks frame's header with `admit` before reserving or
    /// allocating anything for its payload: the frame's error is `admit`'s
    /// (a worker refuses a task it cannot hold, unread). `None` admits all.
    pub fn set_admit(&mut self, admit: Option<Admit>) {
        self.admit = admit;
    }

    /// Fails once the frame being read, of `len` bytes, has taken longer
    /// than the stall timeout plus its length at [`MIN_FRAME_RATE`].
    fn check_frame_deadline(&self, len: usize) -> Result<()> {
        let (Some(began), Some(stall)) = (self.began, self.src.stall_timeout) else { return Ok(()) };
        let after = stall + Duration::from_secs_f64(len as f64 / MIN_FRAME_RATE);
        if began.elapsed() > after {
            return Err(Error::Timeout { what: "a whole frame (arriving at under 1 MiB/s on average)", after });
        }
        Ok(())
    }

    /// Reserves room for a blocks frame of `len` bytes in the server's
    /// budget, waiting at most as long as the frame itself may take.
    async fn reserve(&mut self, len: usize) -> Result<()> {
        let Some(budget) = &self.budget else { return Ok(()) };
        if self.reserved.is_some() {
            return Ok(());
        }
        let kib = len.div_ceil(1024).clamp(1, budget.total_kib) as u32;
        let after = self.src.stall_timeout.unwrap_or(Duration::from_secs(10))
            + Duration::from_secs_f64(len as f64 / MIN_FRAME_RATE);
        let reserved = tokio::time::timeout(after, budget.kib.clone().acquire_many_owned(kib))
            .await
            .map_err(|_| Error::Timeout {
                what: "room for the frame in this server's budget of bytes in flight",
                after,
            })?
            .map_err(|_| Error::Closed("the frame budget"))?;
        self.reserved = Some(reserved);
        Ok(())
    }

    /// Sets the largest frame accepted from now on (a connection accepted
    /// before its use was known, e.g. a peer that dialled back).
    pub fn set_max_frame_len(&mut self, max: usize) {
        self.max_frame_len = max;
    }

    /// Closes the connection (with [`Error::Timeout`]) when a frame that has
    /// begun goes this long without a byte arriving; `None` waits forever.
    /// Between frames the reader waits as long as its caller does.
    pub fn set_stall_timeout(&mut self, timeout: Option<Duration>) {
        self.src.stall_timeout = timeout;
    }

    /// Closes the connection (with [`Error::Timeout`], "it went silent")
    /// when the reader waits this long between frames without a byte
    /// arriving; `None` (the default) waits as long as the caller does. For
    /// peers that promise to talk at least this often (a worker's
    /// [`crate::proto::WorkerReply::Working`]).
    pub fn set_idle_timeout(&mut self, timeout: Option<Duration>) {
        self.src.idle_timeout = timeout;
    }

    /// On an encrypted connection that has ended: whether the peer closed it
    /// with its authenticated close record (`Some(false)`: it was cut, or
    /// dropped without [`FrameWriter::shutdown`]); `None` without encryption.
    pub fn closed_cleanly(&self) -> Option<bool> {
        self.src.records.as_ref().map(|r| r.closed)
    }

    /// Reads the next frame: `Ok(None)` on a clean close between frames.
    ///
    /// Matrix payloads are read from the socket straight into their final
    /// arrays (one copy, the kernel's; encrypted records are opened in place).
    ///
    /// # Errors
    /// [`Error::ClosedMidFrame`] if the peer closes inside a frame, the
    /// decoding errors of [`frame::decode`], [`Error::Timeout`] when a frame
    /// stalls past the stall timeout, [`Error::BadFrame`] for an encrypted
    /// record that does not authenticate, or [`Error::Io`].
    pub async fn read_frame(&mut self) -> Result<Option<Frame>> {
        self.read_frame_with(&mut |_: &[Matrix], _: usize| {}).await
    }

    /// [`FrameReader::read_frame`], calling `progress(mats, filled)` each
    /// time more of a blocks payload has arrived: `mats` are the frame's
    /// matrices and the first `filled` bytes of their payload (in order) are
    /// final (and, on an encrypted connection, authenticated). A caller can
    /// so work on a matrix's first rows while the rest is still on the wire,
    /// and while they are still in cache.
    ///
    /// # Errors
    /// As [`FrameReader::read_frame`].
    pub async fn read_frame_with(
        &mut self,
        progress: &mut (dyn FnMut(&[Matrix], usize) + Send),
    ) -> Result<Option<Frame>> {
        loop {
            if let Some(pending) = &mut self.pending {
                match pending.unfilled() {
                    Some(dst) => {
                        pending.filled += self.src.read_payload(dst).await?;
                        progress(&pending.mats, pending.payload_filled());
                        let len = pending.header.payload_len().unwrap_or(usize::MAX);
                        self.check_frame_deadline(len)?;
                    }
                    None => {
                        self.src.set_low_water(1);
                        let PendingBlocks { header, mats, .. } = self.pending.take().expect("checked above");
                        self.reserved = None;
                        self.began = (!self.src.buf.is_empty()).then(tokio::time::Instant::now);
                        return Ok(Some(Frame::Blocks(Blocks { task_id: header.task_id, op: header.op, mats })));
                    }
                }
                continue;
            }
            // A blocks frame is admitted (or refused) from its header, even
            // one whose payload is all buffered already.
            let blocks_len = self.blocks_header()?.map(|(len, _)| len);
            if let Some((frame, used)) = frame::decode(&self.src.buf, self.max_frame_len)? {
                self.src.buf.advance(used);
                self.began = (!self.src.buf.is_empty()).then(tokio::time::Instant::now);
                return Ok(Some(frame));
            }
            if let Some(len) = blocks_len {
                self.reserve(len).await?;
            }
            if self.start_direct_read()? {
                continue;
            }
            if !self.fill_more().await? {
                return Ok(None);
            }
        }
    }

    /// Reads the next frame like [`FrameReader::read_frame_with`], except
    /// that a blocks frame's payload goes into `dst`, memory the caller
    /// owns (a file-backed map, so that a large product never sits in the
    /// process's anonymous memory), not into matrices of its own. The
    /// frame's header is shown to `accept` first, and is refused with
    /// `accept`'s error, or when its payload is not exactly `dst`'s length,
    /// before a byte of payload is read (as is one of another dtype).
    /// `progress(done)` is called with the part of `dst` that is final so
    /// far, each time it grows.
    ///
    /// Not cancel-safe inside a payload: a caller that gives up on a frame
    /// half read (a timeout) must drop the reader with it.
    ///
    /// # Errors
    /// As [`FrameReader::read_frame`], and `accept`'s.
    pub async fn read_frame_into<T: Element>(
        &mut self,
        dst: &mut [T],
        accept: &(dyn Fn(&BlocksHeader) -> Result<()> + Send + Sync),
        progress: &mut (dyn FnMut(&[T]) + Send),
    ) -> Result<Option<FrameInto>> {
        if self.pending.is_some() {
            return Err(Error::Invalid("a frame is half read into matrices".into()));
        }
        loop {
            let blocks = self.blocks_header()?;
            if blocks.is_none() {
                if let Some((frame, used)) = frame::decode(&self.src.buf, self.max_frame_len)? {
                    self.src.buf.advance(used);
                    self.began = (!self.src.buf.is_empty()).then(tokio::time::Instant::now);
                    return Ok(Some(match frame {
                        Frame::Control(body) => FrameInto::Control(body),
                        // (Only a blocks frame of no header at all could
                        // decode here; there is none.)
                        Frame::Blocks(b) => {
                            return Err(Error::BadFrame(format!("{:?} blocks of no header", b.op)));
                        }
                    }));
                }
            }
            if let Some((len, header)) = blocks {
                accept(&header)?;
                let want = std::mem::size_of_val(dst);
                if header.dtype != T::DTYPE || header.payload_len() != Some(want) {
                    return Err(Error::BadFrame(format!(
                        "a payload of {} {} bytes where {want} {} bytes were expected",
                        header.payload_len().map_or("too many".into(), |n| n.to_string()),
                        header.dtype,
                        T::DTYPE,
                    )));
                }
                self.reserve(len).await?;
                self.src.buf.advance(LEN_PREFIX + 1 + header.encoded_len());
                let mut filled = 0;
                while filled < want {
                    filled += self.src.read_payload(&mut frame::as_bytes_mut(dst)[filled..]).await?;
                    progress(&dst[..filled / std::mem::size_of::<T>()]);
                    self.check_frame_deadline(len)?;
                }
                self.src.set_low_water(1);
                self.reserved = None;
                self.began = (!self.src.buf.is_empty()).then(tokio::time::Instant::now);
                return Ok(Some(FrameInto::Blocks(header)));
            }
            if !self.fill_more().await? {
                return Ok(None);
            }
        }
    }

    /// Reads more of a frame that is not whole yet (within its deadline):
    /// `false` on a clean close between frames.
    async fn fill_more(&mut self) -> Result<bool> {
        let declared = frame::parse_prefix(&self.src.buf, self.max_frame_len)?.map_or(0, |(len, _)| len);
        self.check_frame_deadline(declared)?;
        if self.src.fill().await? == 0 {
            return if self.src.buf.is_empty() { Ok(false) } else { Err(Error::ClosedMidFrame) };
        }
        if self.began.is_none() {
            self.began = Some(tokio::time::Instant::now());
        }
        Ok(true)
    }

    /// The frame length and header of a blocks frame whose header is
    /// buffered (admitted, or refused with the admit check's error).
    fn blocks_header(&self) -> Result<Option<(usize, BlocksHeader)>> {
        let buf = &self.src.buf;
        let Some((len, KIND_BLOCKS)) = frame::parse_prefix(buf, self.max_frame_len)? else {
            return Ok(None);
        };
        let Some(header) = frame::parse_blocks_header(&buf[LEN_PREFIX + 1..], len)? else { return Ok(None) };
        if let Some(Admit(admit)) = &self.admit {
            admit(&header)?;
        }
        Ok(Some((len, header)))
    }

    /// Once a blocks header is buffered, allocates the matrices and moves the
    /// buffered part of the payload into them, so the rest can be read in place.
    fn start_direct_read(&mut self) -> Result<bool> {
        let buf = &mut self.src.buf;
        let Some((len, KIND_BLOCKS)) = frame::parse_prefix(buf, self.max_frame_len)? else {
            return Ok(false);
        };
        let Some(header) = frame::parse_blocks_header(&buf[LEN_PREFIX + 1..], len)? else {
            return Ok(false);
        };
        buf.advance(LEN_PREFIX + 1 + header.encoded_len());
        let mats = header.allocate();
        let mut pending = PendingBlocks { header, mats, index: 0, filled: 0 };
        while !buf.is_empty() {
            let Some(dst) = pending.unfilled() else { break };
            let n = dst.len().min(buf.len());
            dst[..n].copy_from_slice(&buf[..n]);
            buf.advance(n);
            pending.filled += n;
        }
        self.pending = Some(pending);
        Ok(true)
    }

    /// Reads the next frame, which must be a control message, and decodes
    /// it as a `T` (the type this side of the conversation expects).
    ///
    /// # Errors
    /// [`Error::Closed`] on a clean close, [`Error::Unexpected`] for a
    /// blocks frame, [`Error::Decode`] or [`Error::BadFrame`] for a body
    /// that is not one `T`, or any error of [`FrameReader::read_frame`].
    pub async fn read_message<T: DeserializeOwned>(&mut self, expected: &'static str) -> Result<T> {
        match self.read_frame().await? {
            Some(Frame::Control(body)) => body.decode(),
            Some(Frame::Blocks(b)) => Err(Error::Unexpected { expected, got: format!("{:?} blocks", b.op) }),
            None => Err(Error::Closed(expected)),
        }
    }
}

/// The send side of an encrypted connection: the record being filled.
#[derive(Debug)]
struct SealBuf {
    sealer: Sealer,
    /// A record's length field, then up to [`MAX_RECORD`] bytes of plaintext.
    record: Vec<u8>,
}

/// Writes frames to a byte stream.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    seal: Option<SealBuf>,
    /// Counts bytes as the stream takes them (see [`FrameWriter::set_meter`]).
    meter: Option<Arc<AtomicU64>>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self { inner, seal: None, meter: None }
    }

    /// Counts every byte the stream takes from now on into `meter` (with
    /// encryption, the records' bytes, as each is written), so another
    /// task can watch how a large frame's write progresses.
    pub fn set_meter(&mut self, meter: Option<Arc<AtomicU64>>) {
        self.meter = meter;
    }

    /// The stream frames are written to.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// `write_all`, counting into the meter as the stream takes the bytes.
    async fn write_metered(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        let Some(meter) = &self.meter else { return self.inner.write_all(bytes).await };
        while !bytes.is_empty() {
            let n = self.inner.write(bytes).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            meter.fetch_add(n as u64, Ordering::Relaxed);
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Queues `bytes`: written at once in the clear, or gathered into
    /// records of up to [`MAX_RECORD`] bytes, each sealed and written as it fills.
    async fn put(&mut self, mut bytes: &[u8]) -> Result<()> {
        if self.seal.is_none() {
            return Ok(self.write_metered(bytes).await?);
        }
        let seal = self.seal.as_mut().expect("checked");
        while !bytes.is_empty() {
            let take = (RECORD_HEADER + MAX_RECORD - seal.record.len()).min(bytes.len());
            seal.record.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if seal.record.len() == RECORD_HEADER + MAX_RECORD {
                emit(&mut self.inner, seal, self.meter.as_deref()).await?;
            }
        }
        Ok(())
    }

    /// Queues many slices: one vectored write after another in the clear.
    async fn put_all(&mut self, parts: &[&[u8]]) -> Result<()> {
        if self.seal.is_none() {
            return Ok(write_all_vectored(&mut self.inner, parts, self.meter.as_deref()).await?);
        }
        for part in parts {
            self.put(part).await?;
        }
        Ok(())
    }

    /// Ends a frame: seals what is gathered and flushes.
    async fn finish(&mut self) -> Result<()> {
        if let Some(seal) = &mut self.seal {
            emit(&mut self.inner, seal, self.meter.as_deref()).await?;
        }
        self.inner.flush().await?;
        Ok(())
    }

    /// Sends one control message, of any conversation's type.
    ///
    /// # Errors
    /// [`Error::Io`] or [`Error::Encode`].
    pub async fn send<T: Serialize + ?Sized>(&mut self, msg: &T) -> Result<()> {
        let bytes = frame::encode_control(msg)?;
        self.put(&bytes).await?;
        self.finish().await
    }

    /// Sends a blocks frame straight from the matrices' memory: contiguous
    /// matrices in one write, row-strided views (quadrants) with vectored
    /// writes of their rows, and anything else after one copy.
    ///
    /// # Errors
    /// [`Error::DtypeMismatch`] if the views differ in dtype, [`Error::Invalid`]
    /// if a dimension exceeds `u32`, or [`Error::Io`].
    pub async fn send_blocks(&mut self, task_id: TaskId, op: BlockOp, mats: &[MatrixView<'_>]) -> Result<()> {
        let parts: Vec<WirePart<'_>> = mats.iter().map(|m| WirePart::View(*m)).collect();
        self.send_parts(task_id, op, &parts).await
    }

    /// [`FrameWriter::send_blocks`] where a matrix may also be a sum of two
    /// others, formed as it is written: a quarter-megabyte of rows at a
    /// time goes from the terms, through cache, to the socket, instead of
    /// a whole sum being written to memory and read back by the kernel.
    ///
    /// # Errors
    /// [`Error::DtypeMismatch`] if the parts differ in dtype,
    /// [`Error::ShapeMismatch`] if a sum's terms differ in shape,
    /// [`Error::Invalid`] if a dimension exceeds `u32`, or [`Error::Io`].
    pub async fn send_parts(&mut self, task_id: TaskId, op: BlockOp, parts: &[WirePart<'_>]) -> Result<()> {
        let dtype = parts.first().map(WirePart::dtype).unwrap_or(crate::Dtype::F64);
        for part in parts {
            let (d, terms) = match part {
                WirePart::View(v) => (v.dtype(), None),
                WirePart::Sum { a, b, .. } => (a.dtype(), Some((a, b))),
            };
            if d != dtype {
                return Err(Error::DtypeMismatch { left: dtype, right: d });
            }
            if let Some((a, b)) = terms {
                if b.dtype() != dtype {
                    return Err(Error::DtypeMismatch { left: dtype, right: b.dtype() });
                }
                if a.shape() != b.shape() {
                    return Err(Error::ShapeMismatch { left: a.shape(), right: b.shape() });
                }
            }
        }
        let header = BlocksHeader { task_id, op, dtype, shapes: parts.iter().map(WirePart::shape).collect() };
        self.put(&header.encode_prefix()?).await?;
        for part in parts {
            match *part {
                WirePart::View(MatrixView::F64(a)) => write_matrix(self, &a).await?,
                WirePart::View(MatrixView::F32(a)) => write_matrix(self, &a).await?,
                WirePart::Sum { a: MatrixView::F64(a), b: MatrixView::F64(b), subtract } => {
                    write_sum(self, a, b, subtract).await?
                }
                WirePart::Sum { a: MatrixView::F32(a), b: MatrixView::F32(b), subtract } => {
                    write_sum(self, a, b, subtract).await?
                }
                WirePart::Sum { .. } => unreachable!("dtypes checked above"),
            }
        }
        self.finish().await
    }

    /// Writes bytes as they are, outside any framing (but inside the
    /// encryption, if any): only for fault injection and raw-protocol tests.
    ///
    /// # Errors
    /// [`Error::Io`].
    #[doc(hidden)]
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.put(bytes).await?;
        self.finish().await
    }

    /// Shuts down the write side.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub async fn shutdown(&mut self) -> Result<()> {
        if let Some(seal) = &mut self.seal {
            // Whatever is gathered, then the authenticated close record.
            emit(&mut self.inner, seal, self.meter.as_deref()).await?;
            let mut close = Vec::with_capacity(RECORD_HEADER + TAG_LEN);
            seal.sealer.seal_close(&mut close)?;
            self.inner.write_all(&close).await?;
        }
        Ok(self.inner.shutdown().await?)
    }
}

/// Seals the record gathered in `seal` (if any) and writes it.
async fn emit<W: AsyncWrite + Unpin>(inner: &mut W, seal: &mut SealBuf, meter: Option<&AtomicU64>) -> Result<()> {
    if seal.record.len() > RECORD_HEADER {
        seal.sealer.seal(&mut seal.record)?;
        inner.write_all(&seal.record).await?;
        if let Some(meter) = meter {
            meter.fetch_add(seal.record.len() as u64, Ordering::Relaxed);
        }
        seal.record.truncate(RECORD_HEADER);
    }
    Ok(())
}

async fn write_matrix<W: AsyncWrite + Unpin, T: Element>(w: &mut FrameWriter<W>, a: &ArrayView2<'_, T>) -> Result<()> {
    if let Some(slice) = a.as_slice() {
        w.put(frame::as_bytes(slice)).await?;
    } else if a.ncols() <= 1 || a.strides()[1] == 1 {
        let rows: Vec<&[u8]> = a
            .rows()
            .into_iter()
            .map(|r| frame::as_bytes(r.to_slice().expect("rows are contiguous")))
            .filter(|r| !r.is_empty())
            .collect();
        w.put_all(&rows).await?;
    } else {
        let owned = a.as_standard_layout();
        w.put(frame::as_bytes(owned.as_slice().expect("standard layout"))).await?;
    }
    Ok(())
}

/// Writes `a ± b` row-major, forming [`SUM_CHUNK`] bytes of rows at a time
/// into one reused buffer (hot in cache when the kernel copies it).
async fn write_sum<W: AsyncWrite + Unpin, T: Element>(
    w: &mut FrameWriter<W>,
    a: ArrayView2<'_, T>,
    b: ArrayView2<'_, T>,
    subtract: bool,
) -> Result<()> {
    let (rows, cols) = a.dim();
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let chunk_rows = (SUM_CHUNK / (cols * std::mem::size_of::<T>())).max(1);
    let mut buf: Vec<T> = Vec::with_capacity(chunk_rows.min(rows) * cols);
    let mut start = 0;
    while start < rows {
        let end = (start + chunk_rows).min(rows);
        buf.clear();
        for i in start..end {
            let (ra, rb) = (a.row(i), b.row(i));
            match (ra.to_slice(), rb.to_slice(), subtract) {
                (Some(x), Some(y), false) => buf.extend(x.iter().zip(y).map(|(x, y)| *x + *y)),
                (Some(x), Some(y), true) => buf.extend(x.iter().zip(y).map(|(x, y)| *x - *y)),
                (_, _, false) => buf.extend(ra.iter().zip(rb.iter()).map(|(x, y)| *x + *y)),
                (_, _, true) => buf.extend(ra.iter().zip(rb.iter()).map(|(x, y)| *x - *y)),
            }
        }
        w.put(frame::as_bytes(&buf)).await?;
        start = end;
    }
    Ok(())
}

/// `write_all` for many slices, `IOV_BATCH` at a time, coping with partial writes.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    parts: &[&[u8]],
    meter: Option<&AtomicU64>,
) -> std::io::Result<()> {
    let (mut index, mut offset) = (0, 0);
    while index < parts.len() {
        let end = (index + IOV_BATCH).min(parts.len());
        let mut slices = Vec::with_capacity(end - index);
        slices.push(IoSlice::new(&parts[index][offset..]));
        slices.extend(parts[index + 1..end].iter().map(|p| IoSlice::new(p)));
        let mut written = w.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        if let Some(meter) = meter {
            meter.fetch_add(written as u64, Ordering::Relaxed);
        }
        while written > 0 {
            let left = parts[index].len() - offset;
            if written >= left {
                written -= left;
                index += 1;
                offset = 0;
            } else {
                offset += written;
                written = 0;
            }
        }
    }
    Ok(())
}

/// The slowest average rate at which a frame may arrive once it has begun:
/// a frame of `len` bytes must be complete within the stall timeout plus
/// `len` / this rate, or the connection is closed — so a peer trickling a
/// byte every few seconds cannot keep a large frame (and its buffer)
/// reserved for long. 1 MiB/s (8 Mbit/s): a 1 GiB frame gets 17 minutes.
pub const MIN_FRAME_RATE: f64 = (1u64 << 20) as f64;

/// A server's budget of bytes reserved for frames being received, shared
/// by all its connections: a blocks frame reserves its length (at most the
/// whole budget) before anything is allocated for it and gives it back once
/// complete; past the budget a new frame waits, within its own deadline,
/// and is refused if no room comes.
#[derive(Debug, Clone)]
pub struct FrameBudget {
    kib: Arc<tokio::sync::Semaphore>,
    total_kib: usize,
}

impl FrameBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        let total_kib = bytes.div_ceil(1024).clamp(1, u32::MAX as usize);
        Self { kib: Arc::new(tokio::sync::Semaphore::new(total_kib)), total_kib }
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> usize {
        (self.total_kib - self.kib.available_permits()) * 1024
    }
}

/// Limits and security that apply to one connection.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Largest frame accepted once the handshake is done.
    pub max_frame_len: usize,
    /// Deadline for connecting and for the whole handshake.
    pub handshake_timeout: Duration,
    /// How long a frame that has begun may go without a byte arriving
    /// before the connection is closed; `None` waits as long as the caller.
    pub stall_timeout: Option<Duration>,
    /// How long the reader may wait between frames without a byte arriving
    /// (see [`FrameReader::set_idle_timeout`]); `None` waits as long as the caller.
    pub idle_timeout: Option<Duration>,
    /// The cluster secret and whether to encrypt.
    pub security: Security,
    /// The server's budget for frames in flight, shared by its connections; `None`: unbounded.
    pub budget: Option<FrameBudget>,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_frame_len: frame::MAX_CONTROL_FRAME_LEN,
            handshake_timeout: Duration::from_secs(5),
            stall_timeout: Some(Duration::from_secs(10)),
            idle_timeout: None,
            security: Security::default(),
            budget: None,
        }
    }
}

/// A TCP connection that has completed the handshake (see [`crate::secure`]).
#[derive(Debug)]
pub struct Connection {
    /// The read side.
    pub reader: FrameReader<OwnedReadHalf>,
    /// The write side.
    pub writer: FrameWriter<OwnedWriteHalf>,
    /// The other end's address.
    pub peer: SocketAddr,
}

impl Connection {
    fn wrap(stream: TcpStream, limits: &ConnLimits, cipher: Option<(Sealer, Opener)>) -> Result<Self> {
        let peer = stream.peer_addr()?;
        #[cfg(unix)]
        let low_water = LowWater { fd: std::os::fd::AsRawFd::as_raw_fd(&stream), current: 1 };
        #[cfg(not(unix))]
        let low_water = LowWater { current: 1 };
        let (r, w) = stream.into_split();
        let mut reader = FrameReader::new(r, limits.max_frame_len);
        reader.src.low_water = Some(low_water);
        reader.src.stall_timeout = limits.stall_timeout;
        reader.src.idle_timeout = limits.idle_timeout;
        reader.budget = limits.budget.clone();
        let mut writer = FrameWriter::new(w);
        if let Some((sealer, opener)) = cipher {
            writer.seal = Some(SealBuf { sealer, record: vec![0; RECORD_HEADER] });
            reader.src.records = Some(Records {
                opener,
                raw: BytesMut::new(),
                head: [0; RECORD_HEADER],
                head_filled: 0,
                body_filled: 0,
                tag: [0; TAG_LEN],
                tag_filled: 0,
                closed: false,
            });
        }
        Ok(Self { reader, writer, peer })
    }

    /// Connects to `addr` and runs the client side of the handshake as `role`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if connecting or the handshake takes longer than
    /// the handshake timeout, [`Error::Handshake`] naming "the server at
    /// ADDR" and the cause if either side refuses the other (see
    /// [`Error::naming`] to name it better), [`Error::VersionMismatch`], or
    /// [`Error::Io`] if the connection fails.
    pub async fn connect(addr: impl ToSocketAddrs, role: Role, limits: ConnLimits) -> Result<Self> {
        deadline(limits.handshake_timeout, "the connection and handshake", async {
            let stream = TcpStream::connect(addr).await?;
            Self::client_side(stream, role, &limits, "the server").await
        })
        .await
    }

    /// Runs the client side of the handshake as `role` on a stream this
    /// side connected (a dial back, perhaps through a splicing tracker).
    ///
    /// # Errors
    /// As [`Connection::connect`].
    pub async fn handshake_as_client(stream: TcpStream, role: Role, limits: ConnLimits) -> Result<Self> {
        deadline(limits.handshake_timeout, "the handshake", Self::client_side(stream, role, &limits, "the peer")).await
    }

    /// The client side of the handshake on `stream`, naming the other end
    /// `who` at its address.
    async fn client_side(mut stream: TcpStream, role: Role, limits: &ConnLimits, who: &str) -> Result<Self> {
        // Control messages are tiny request/replies; Nagle would add 40 ms stalls.
        stream.set_nodelay(true)?;
        let name = format!("{who} at {}", stream.peer_addr()?);
        let done = secure::client(&mut stream, role, &limits.security, &name).await?;
        Self::wrap(stream, limits, done.cipher)
    }

    /// Connects to the tracker at `addr` that splices link `splice` (see
    /// [`crate::proto::SPLICE_MAGIC`]) and runs the server side of the
    /// handshake (this end was to be dialled) with whoever is at the other
    /// end of the splice: its role comes with the connection.
    ///
    /// # Errors
    /// As [`Connection::accept`].
    pub async fn accept_spliced(
        addr: impl ToSocketAddrs,
        splice: crate::proto::SpliceId,
        limits: ConnLimits,
    ) -> Result<(Self, Role)> {
        deadline(limits.handshake_timeout, "the spliced connection and handshake", async {
            let mut stream = Self::dial(addr, Some(crate::proto::Rendezvous::Splice(splice))).await?;
            let name = format!("the peer spliced through {}", stream.peer_addr()?);
            let done = secure::server(&mut stream, &limits.security, &name).await?;
            Ok((Self::wrap(stream, &limits, done.cipher)?, done.role))
        })
        .await
    }

    /// A TCP connection to `addr`, before any handshake; with `via`,
    /// `addr` is the meeting tracker, and the connection has asked it for
    /// that rendezvous.
    ///
    /// # Errors
    /// [`Error::Io`] if the connection fails.
    pub async fn dial(addr: impl ToSocketAddrs, via: Option<crate::proto::Rendezvous>) -> Result<TcpStream> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        if let Some(via) = via {
            stream.write_all(&via.hello()).await?;
        }
        Ok(stream)
    }

    /// Runs the server side of the handshake on an accepted stream, within
    /// the handshake timeout. Until it succeeds the connection holds only
    /// the handshake's fixed-size buffers.
    ///
    /// # Errors
    /// [`Error::Handshake`] naming "the client at ADDR" and the cause,
    /// [`Error::VersionMismatch`], [`Error::Timeout`], [`Error::Closed`] or
    /// [`Error::Io`].
    pub async fn accept(mut stream: TcpStream, limits: ConnLimits) -> Result<(Self, Role)> {
        stream.set_nodelay(true)?;
        let name = format!("the client at {}", stream.peer_addr()?);
        let done =
            deadline(limits.handshake_timeout, "the handshake", secure::server(&mut stream, &limits.security, &name))
                .await?;
        Ok((Self::wrap(stream, &limits, done.cipher)?, done.role))
    }

    /// Best effort: tells the peer why it is being dropped, as an error
    /// reply of the conversation's reply type `R`.
    pub async fn refuse<R: Reply>(&mut self, err: &Error) {
        if matches!(err, Error::Io(_) | Error::Closed(_) | Error::ClosedMidFrame) {
            return;
        }
        let msg = R::failure(Failure::from_error(err, None));
        let _ = tokio::time::timeout(Duration::from_secs(1), self.writer.send(&msg)).await;
    }

    /// Sends `msg` and reads one reply of type `R` within `timeout`. An
    /// error reply becomes [`Error::Remote`].
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::Remote`], or any read/write error.
    pub async fn request<Q: Serialize + ?Sized, R: Reply>(
        &mut self,
        msg: &Q,
        expected: &'static str,
        timeout: Duration,
    ) -> Result<R> {
        deadline(timeout, expected, async {
            self.writer.send(msg).await?;
            self.reader.read_message::<R>(expected).await?.into_result().map_err(Failure::into_error)
        })
        .await
    }
}

/// What the kernel says of a TCP socket's sending side (Linux's `TCP_INFO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendInfo {
    /// Bytes the peer has acknowledged (`tcpi_bytes_acked`): what really
    /// reached it, where a writer's own count also holds what waits in the
    /// socket's buffers.
    pub bytes_acked: u64,
    /// The smoothed round-trip time (`tcpi_rtt`): it grows with the queue
    /// in front of the connection's bottleneck, so a flow behind a slow
    /// link of its own shows a longer one than flows that share the
    /// sender's.
    pub rtt: Duration,
    /// Segments sent and not yet acknowledged (`tcpi_unacked`). A peer that
    /// stops reading closes its window and acknowledges what it buffered,
    /// so this is none once its buffers are full.
    pub unacked: u32,
    /// Time since the last acknowledgement arrived (`tcpi_last_ack_recv`):
    /// with segments unacknowledged, a time far past the round trip means
    /// the peer's host no longer answers at all (it died, or its link was
    /// cut), however busy or slow its process.
    pub since_ack: Duration,
}

impl SendInfo {
    /// The peer's host has answered nothing for `limit` (and for twenty
    /// round trips) while segments wait for its acknowledgement: it is
    /// unreachable. A live peer's kernel acknowledges what arrives whether
    /// or not its process reads, and a slow link still delivers something
    /// within a few round trips.
    pub fn unreachable(&self, limit: Duration) -> bool {
        self.unacked > 0 && self.since_ack >= limit && self.since_ack >= self.rtt * 20
    }
}

/// [`SendInfo`] for TCP socket `fd`; `None` where the kernel does not say.
pub fn send_info(fd: std::os::fd::BorrowedFd<'_>) -> Option<SendInfo> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: tcp_info is plain integers, for which all zeros is a value.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: `fd` is a live descriptor for the borrow; the kernel
        // writes at most `len` bytes into `info`, which has that many.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        // An older kernel fills less of the struct: the field must be in it.
        let has = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + std::mem::size_of::<u64>();
        (rc == 0 && len as usize >= has).then(|| SendInfo {
            bytes_acked: info.tcpi_bytes_acked,
            rtt: Duration::from_micros(u64::from(info.tcpi_rtt)),
            unacked: info.tcpi_unacked,
            since_ack: Duration::from_millis(u64::from(info.tcpi_last_ack_recv)),
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = fd;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::ControlBody;
    use crate::proto::{PeerId, TaskId, TrackerReply, TrackerRequest};
    use ndarray::{s, Array2};
    use tokio::io::duplex;

    #[tokio::test]
    async fn strided_quadrants_travel_without_a_copy_and_arrive_intact() {
        let (a, b) = duplex(1 << 10); // small pipe: forces partial reads and writes
        let big = Array2::from_shape_fn((9, 11), |(i, j)| (i * 11 + j) as f64);
        let col = Array2::from_shape_fn((4, 6), |(i, j)| (i + 10 * j) as f32);
        let (x, y) = (big.slice(s![1..6, 2..9]).to_owned(), big.slice(s![0..7, 3..5]).to_owned());
        let (x2, y2) = (x.clone(), y.clone());
        let writer = tokio::spawn(async move {
            let mut w = FrameWriter::new(a);
            w.send(&TrackerRequest::ListPeers).await.unwrap();
            w.send_blocks(TaskId(5), BlockOp::Multiply, &[MatrixView::F64(x2.view()), MatrixView::F64(y2.view())])
                .await
                .unwrap();
            w.send_blocks(TaskId(6), BlockOp::Product, &[MatrixView::F32(col.t())]).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut r = FrameReader::new(b, 1 << 20);
        let list = ControlBody::encode(&TrackerRequest::ListPeers).unwrap();
        assert_eq!(r.read_frame().await.unwrap(), Some(Frame::Control(list)));
        match r.read_frame().await.unwrap() {
            Some(Frame::Blocks(blk)) => {
                assert_eq!((blk.task_id, blk.op), (TaskId(5), BlockOp::Multiply));
                assert_eq!(blk.mats, vec![Matrix::F64(x), Matrix::F64(y)]);
            }
            other => panic!("expected blocks, got {other:?}"),
        }
        let col_t = Array2::from_shape_fn((6, 4), |(i, j)| (j + 10 * i) as f32);
        match r.read_frame().await.unwrap() {
            Some(Frame::Blocks(blk)) => assert_eq!(blk.mats, vec![Matrix::F32(col_t)]),
            other => panic!("expected blocks, got {other:?}"),
        }
        assert_eq!(r.read_frame().await.unwrap(), None);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn streamed_sums_arrive_as_the_materialised_sums() {
        let (a, b) = duplex(1 << 12); // small pipe: partial writes mid-chunk
                                      // Quadrants of a wide matrix (strided rows), and one with rows longer than a chunk.
        let big = Array2::from_shape_fn((300, 500), |(i, j)| (i * 500 + j) as f64);
        let wide = Array2::from_shape_fn((3, 40_000), |(i, j)| (i + j) as f32);
        let (q1, q2) = (big.slice(s![..150, ..250]), big.slice(s![150.., 250..]));
        let (sum, diff) = (&q1 + &q2, &q2 - &q1);
        let wide_sum = &wide + &wide;
        let writer = tokio::spawn(async move {
            let mut w = FrameWriter::new(a);
            let (q1, q2) = (big.slice(s![..150, ..250]), big.slice(s![150.., 250..]));
            let parts = [
                WirePart::Sum { a: MatrixView::F64(q1), b: MatrixView::F64(q2), subtract: false },
                WirePart::Sum { a: MatrixView::F64(q2), b: MatrixView::F64(q1), subtract: true },
            ];
            w.send_parts(TaskId(1), BlockOp::Multiply, &parts).await.unwrap();
            let wide_part =
                [WirePart::Sum { a: MatrixView::F32(wide.view()), b: MatrixView::F32(wide.view()), subtract: false }];
            w.send_parts(TaskId(2), BlockOp::Product, &wide_part).await.unwrap();
            let empty = Array2::<f64>::zeros((0, 4));
            let empty_part =
                [WirePart::Sum { a: MatrixView::F64(empty.view()), b: MatrixView::F64(empty.view()), subtract: true }];
            w.send_parts(TaskId(3), BlockOp::Product, &empty_part).await.unwrap();
            // Terms of different shapes or dtypes are refused before anything is written.
            let bad = [WirePart::Sum {
                a: MatrixView::F64(q1),
                b: MatrixView::F64(big.slice(s![..2, ..2])),
                subtract: false,
            }];
            assert!(matches!(w.send_parts(TaskId(4), BlockOp::Product, &bad).await, Err(Error::ShapeMismatch { .. })));
            let mixed = [WirePart::Sum { a: MatrixView::F64(q1), b: MatrixView::F32(wide.view()), subtract: false }];
            assert!(matches!(
                w.send_parts(TaskId(5), BlockOp::Product, &mixed).await,
                Err(Error::DtypeMismatch { .. })
            ));
            w.shutdown().await.unwrap();
        });
        let mut r = FrameReader::new(b, 1 << 24);
        let expect = [
            (1, vec![Matrix::F64(sum), Matrix::F64(diff)]),
            (2, vec![Matrix::F32(wide_sum)]),
            (3, vec![Matrix::F64(Array2::zeros((0, 4)))]),
        ];
        for (task, mats) in expect {
            match r.read_frame().await.unwrap() {
                Some(Frame::Blocks(blk)) => assert_eq!((blk.task_id, blk.mats), (TaskId(task), mats)),
                other => panic!("expected blocks, got {other:?}"),
            }
        }
        assert_eq!(r.read_frame().await.unwrap(), None, "refused parts wrote nothing");
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn row_strided_views_use_vectored_writes() {
        let (a, b) = duplex(333);
        let big = Array2::from_shape_fn((40, 30), |(i, j)| (i * 30 + j) as f64);
        let expected = big.slice(s![20..40, 15..30]).to_owned();
        let writer = tokio::spawn(async move {
            let mut w = FrameWriter::new(a);
            w.send_blocks(TaskId(1), BlockOp::Product, &[MatrixView::F64(big.slice(s![20..40, 15..30]))])
                .await
                .unwrap();
        });
        let mut r = FrameReader::new(b, 1 << 20);
        match r.read_frame().await.unwrap() {
            Some(Frame::Blocks(blk)) => assert_eq!(blk.mats, vec![Matrix::F64(expected)]),
            other => panic!("expected blocks, got {other:?}"),
        }
        writer.await.unwrap();
    }

    /// Over real TCP, where the reader raises the socket's low-water mark
    /// while a payload is missing: payload tails shorter than the mark, and
    /// the control messages after them, must still wake the reader. Each
    /// frame is answered before the next is sent, so no later bytes ever
    /// push the receive queue past the mark.
    #[tokio::test]
    async fn payload_tails_below_the_low_water_mark_still_arrive() {
        payload_tails_arrive(Security::default()).await;
    }

    /// The same over an encrypted connection: records read straight into
    /// payloads, records spanning a matrix's end, and the marks set for them.
    #[tokio::test]
    async fn payload_tails_arrive_over_an_encrypted_connection() {
        payload_tails_arrive(Security::with_secret(crate::secure::Secret::generate(), true)).await;
    }

    /// An encrypted connection ended with `shutdown` ends with the
    /// authenticated close record; one dropped (or cut) does not, and the
    /// reader can tell. Neither loses a frame sent before.
    #[tokio::test]
    async fn an_encrypted_close_is_authenticated_and_a_cut_is_told_apart() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ConnLimits {
            security: Security::with_secret(crate::secure::Secret::generate(), true),
            ..Default::default()
        };
        for clean in [true, false] {
            let client_limits = limits.clone();
            let sender = tokio::spawn(async move {
                let mut conn = Connection::connect(addr, Role::Client, client_limits).await.unwrap();
                conn.writer.send(&TrackerRequest::ListPeers).await.unwrap();
                if clean {
                    conn.writer.shutdown().await.unwrap();
                }
            });
            let (stream, _) = listener.accept().await.unwrap();
            let (mut conn, _) = Connection::accept(stream, limits.clone()).await.unwrap();
            assert_eq!(
                conn.reader.read_message::<TrackerRequest>("a request").await.unwrap(),
                TrackerRequest::ListPeers
            );
            sender.await.unwrap();
            assert!(conn.reader.read_frame().await.unwrap().is_none());
            assert_eq!(conn.reader.closed_cleanly(), Some(clean));
        }
    }

    /// A blocks frame read into the caller's memory lands there exactly,
    /// over plain and encrypted connections, with control frames read as
    /// usual around it; a frame `accept` refuses, or whose payload is not
    /// the destination's length, is refused before its payload is read.
    #[tokio::test]
    async fn a_payload_read_into_the_callers_memory_lands_there_or_is_refused_unread() {
        for security in [Security::default(), Security::with_secret(crate::secure::Secret::generate(), true)] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let limits = ConnLimits { max_frame_len: 64 << 20, security, ..ConnLimits::default() };
            let client_limits = limits.clone();
            // 1.5 MiB and a few bytes: several records and reads.
            let m = Array2::from_shape_fn((3, (1 << 16) + 5), |(i, j)| (i * 100_003 + j) as f64);
            let sent = m.clone();
            let sender = tokio::spawn(async move {
                let mut conn = Connection::connect(addr, Role::Client, client_limits).await.unwrap();
                conn.writer.send(&TrackerRequest::ListPeers).await.unwrap();
                conn.writer.send_blocks(TaskId(0), BlockOp::Product, &[MatrixView::F64(sent.view())]).await.unwrap();
                // (The reader hangs up on this one.)
                let _ = conn.writer.send_blocks(TaskId(1), BlockOp::Product, &[MatrixView::F64(sent.view())]).await;
            });
            let (stream, _) = listener.accept().await.unwrap();
            let (mut conn, _) = Connection::accept(stream, limits).await.unwrap();
            let mut dst = vec![0f64; m.len()];
            let accept = |h: &BlocksHeader| {
                if h.task_id == TaskId(1) {
                    return Err(Error::Invalid("not task 1".into()));
                }
                Ok(())
            };
            let mut seen = Vec::new();
            let mut progress = |done: &[f64]| seen.push(done.len());
            match conn.reader.read_frame_into(&mut dst, &accept, &mut progress).await.unwrap() {
                Some(FrameInto::Control(body)) => {
                    assert_eq!(body.decode::<TrackerRequest>().unwrap(), TrackerRequest::ListPeers);
                }
                other => panic!("expected the control frame, got {other:?}"),
            }
            match conn.reader.read_frame_into(&mut dst, &accept, &mut progress).await.unwrap() {
                Some(FrameInto::Blocks(h)) => {
                    assert_eq!((h.task_id, h.op, h.shapes.clone()), (TaskId(0), BlockOp::Product, vec![m.dim()]));
                }
                other => panic!("expected blocks, got {other:?}"),
            }
            assert!(dst == m.as_slice().unwrap(), "the payload landed intact");
            assert!(seen.windows(2).all(|w| w[0] < w[1]) && seen.last() == Some(&dst.len()), "{seen:?}");
            let refused = conn.reader.read_frame_into(&mut dst, &accept, &mut |_| {}).await.unwrap_err();
            assert!(refused.to_string().contains("not task 1"), "{refused}");
            drop(conn);
            sender.await.unwrap();
        }
        // A payload of another length: refused from its header.
        let (a, b) = duplex(1 << 16);
        let mut writer = FrameWriter::new(a);
        let small = Array2::<f64>::zeros((2, 3));
        writer.send_blocks(TaskId(0), BlockOp::Product, &[MatrixView::F64(small.view())]).await.unwrap();
        let mut reader = FrameReader::new(b, 1 << 20);
        let mut dst = vec![0f64; 2 * 2];
        let refused = reader.read_frame_into(&mut dst, &|_| Ok(()), &mut |_| {}).await.unwrap_err();
        assert!(refused.to_string().contains("48 f64 bytes where 32 f64 bytes were expected"), "{refused}");
    }

    async fn payload_tails_arrive(security: Security) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ConnLimits { max_frame_len: 64 << 20, security, ..ConnLimits::default() };
        let client_limits = limits.clone();
        let row = |n: usize, seed: f64| Array2::from_shape_fn((1, n), |(_, j)| seed + j as f64);
        // 1 MiB + 8 bytes; 1.5 MiB then 24 bytes in one frame; 8 bytes; 3 MiB.
        let frames = vec![
            vec![row((1 << 17) + 1, 0.0)],
            vec![row(3 << 16, 1.0), row(3, 2.0)],
            vec![row(1, 3.0)],
            vec![row(3 << 17, 4.0)],
        ];
        let op = |mats: &[Array2<f64>]| if mats.len() == 2 { BlockOp::Multiply } else { BlockOp::Product };
        let sent = frames.clone();
        let sender = tokio::spawn(async move {
            let mut conn = Connection::connect(addr, Role::Client, client_limits).await.unwrap();
            for (i, mats) in sent.iter().enumerate() {
                let views: Vec<MatrixView<'_>> = mats.iter().map(|m| MatrixView::F64(m.view())).collect();
                conn.writer.send_blocks(TaskId(i as u64), op(mats), &views).await.unwrap();
                assert_eq!(
                    conn.reader.read_message::<TrackerReply>("ack").await.unwrap(),
                    TrackerReply::HeartbeatAck { now_ms: 1 }
                );
                conn.writer.send(&TrackerRequest::ListPeers).await.unwrap();
                assert_eq!(
                    conn.reader.read_message::<TrackerReply>("ack").await.unwrap(),
                    TrackerReply::HeartbeatAck { now_ms: 1 }
                );
            }
        });
        let (stream, _) = listener.accept().await.unwrap();
        let (mut conn, _) = Connection::accept(stream, limits).await.unwrap();
        for (i, mats) in frames.into_iter().enumerate() {
            let frame = tokio::time::timeout(Duration::from_secs(10), conn.reader.read_frame()).await;
            match frame.expect("a payload tail never woke the reader").unwrap() {
                Some(Frame::Blocks(b)) => {
                    assert_eq!(b.task_id, TaskId(i as u64));
                    assert_eq!(b.mats, mats.into_iter().map(Matrix::F64).collect::<Vec<_>>());
                }
                other => panic!("expected blocks, got {other:?}"),
            }
            conn.writer.send(&TrackerReply::HeartbeatAck { now_ms: 1 }).await.unwrap();
            let next = tokio::time::timeout(Duration::from_secs(10), conn.reader.read_frame()).await;
            let next = next.expect("a control message after a payload never woke the reader");
            let list = ControlBody::encode(&TrackerRequest::ListPeers).unwrap();
            assert_eq!(next.unwrap(), Some(Frame::Control(list)));
            conn.writer.send(&TrackerReply::HeartbeatAck { now_ms: 1 }).await.unwrap();
        }
        sender.await.unwrap();
    }

    #[tokio::test]
    async fn close_inside_a_frame_is_an_error_and_between_frames_is_not() {
        let bytes = frame::encode_control(&TrackerRequest::Heartbeat { peer_id: PeerId(3) }).unwrap();
        for cut in 1..bytes.len() {
            let mut r = FrameReader::new(&bytes[..cut], 1 << 20);
            assert!(matches!(r.read_frame().await, Err(Error::ClosedMidFrame)), "cut at {cut}");
        }
        let mut r = FrameReader::new(&[][..], 1 << 20);
        assert!(r.read_frame().await.unwrap().is_none());
        let blocks = frame::encode(&Frame::Blocks(Blocks {
            task_id: TaskId(1),
            op: BlockOp::Product,
            mats: vec![Matrix::F64(Array2::ones((3, 3)))],
        }))
        .unwrap();
        let mut r = FrameReader::new(&blocks[..blocks.len() - 1], 1 << 20);
        assert!(matches!(r.read_frame().await, Err(Error::ClosedMidFrame)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_that_stops_arriving_times_out_but_silence_between_frames_does_not() {
        use tokio::io::AsyncWriteExt;
        let blocks = frame::encode(&Frame::Blocks(Blocks {
            task_id: TaskId(1),
            op: BlockOp::Product,
            mats: vec![Matrix::F64(Array2::ones((64, 64)))],
        }))
        .unwrap();
        for cut in [2, 20, blocks.len() / 2] {
            let (mut tx, rx) = duplex(1 << 16);
            let mut r = FrameReader::new(rx, 1 << 20);
            r.set_stall_timeout(Some(Duration::from_secs(3)));
            tx.write_all(&blocks[..cut]).await.unwrap();
            let started = tokio::time::Instant::now();
            let got = r.read_frame().await;
            assert!(matches!(got, Err(Error::Timeout { .. })), "cut at {cut}: {got:?}");
            assert!(started.elapsed() >= Duration::from_secs(3), "cut at {cut}");
            drop(tx); // the sender stays open until the reader gave up
        }
        // Between frames an idle peer is the caller's business: still
        // waiting long after the stall timeout, then the frame arrives.
        let (mut tx, rx) = duplex(1 << 16);
        let mut r = FrameReader::new(rx, 1 << 20);
        r.set_stall_timeout(Some(Duration::from_secs(3)));
        let reader = tokio::spawn(async move { r.read_frame().await });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!reader.is_finished());
        tx.write_all(&blocks).await.unwrap();
        assert!(matches!(reader.await.unwrap(), Ok(Some(Frame::Blocks(_)))));
    }

    /// A peer that keeps a frame alive with a byte now and then, never
    /// stalling past the stall timeout, is cut off once the frame took
    /// longer than the stall timeout plus its length at the minimum rate.
    #[tokio::test(start_paused = true)]
    async fn a_trickled_frame_is_cut_off_at_its_deadline() {
        use tokio::io::AsyncWriteExt;
        let blocks = frame::encode(&Frame::Blocks(Blocks {
            task_id: TaskId(1),
            op: BlockOp::Product,
            mats: vec![Matrix::F64(Array2::ones((512, 1024)))], // 4 MiB
        }))
        .unwrap();
        let (mut tx, rx) = duplex(1 << 16);
        let mut r = FrameReader::new(rx, 8 << 20);
        r.set_stall_timeout(Some(Duration::from_secs(1)));
        let trickle = tokio::spawn(async move {
            tx.write_all(&blocks[..4096]).await.unwrap();
            for byte in &blocks[4096..] {
                tokio::time::sleep(Duration::from_millis(900)).await;
                if tx.write_all(std::slice::from_ref(byte)).await.is_err() {
                    return;
                }
            }
        });
        let started = tokio::time::Instant::now();
        let got = r.read_frame().await;
        assert!(matches!(got, Err(Error::Timeout { what, .. }) if what.contains("whole frame")), "{got:?}");
        // 1 s of stall allowance plus 4 MiB at 1 MiB/s, then the next byte.
        let took = started.elapsed();
        assert!(took > Duration::from_secs(5) && took < Duration::from_secs(6), "{took:?}");
        drop(r);
        trickle.await.unwrap();
    }

    /// A server's budget of bytes in flight: a frame that does not fit
    /// waits, and is refused if no room comes within its deadline; room
    /// comes back when the frame holding it is complete.
    #[tokio::test(start_paused = true)]
    async fn frames_past_the_budget_wait_and_are_refused_never_allocated() {
        use tokio::io::AsyncWriteExt;
        let blocks = frame::encode(&Frame::Blocks(Blocks {
            task_id: TaskId(1),
            op: BlockOp::Product,
            mats: vec![Matrix::F64(Array2::ones((128, 1024)))], // 1 MiB
        }))
        .unwrap();
        let budget = FrameBudget::new(1 << 20);
        let reader = |rx, stall| {
            let mut r = FrameReader::new(rx, 8 << 20);
            r.set_stall_timeout(Some(Duration::from_secs(stall)));
            r.budget = Some(budget.clone());
            r
        };
        let (mut tx1, rx1) = duplex(1 << 22);
        let (mut tx2, rx2) = duplex(1 << 22);
        // The first waits longer than the second's deadline for the rest.
        let (mut r1, mut r2) = (reader(rx1, 120), reader(rx2, 30));
        tx1.write_all(&blocks[..blocks.len() / 2]).await.unwrap();
        let first = tokio::spawn(async move { (r1.read_frame().await.map(|f| f.is_some()), r1) });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(budget.in_use(), 1 << 20, "the first frame reserved its length");
        // The second, whole on the wire, waits for room and gets none.
        tx2.write_all(&blocks).await.unwrap();
        let got = r2.read_frame().await;
        assert!(matches!(&got, Err(Error::Timeout { what, .. }) if what.contains("budget")), "{got:?}");
        // The first completes and gives its room back.
        tx1.write_all(&blocks[blocks.len() / 2..]).await.unwrap();
        let (done, _r1) = first.await.unwrap();
        assert!(done.unwrap());
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_timeout_ends_a_read_when_the_peer_says_nothing_between_frames() {
        use tokio::io::AsyncWriteExt;
        let (mut tx, rx) = duplex(1 << 16);
        let mut r = FrameReader::new(rx, 1 << 20);
        r.set_idle_timeout(Some(Duration::from_secs(4)));
        let hello = frame::encode_control(&crate::proto::WorkerReply::Working).unwrap();
        // A peer that talks every 3 s is never idle for 4 s.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            tx.write_all(&hello).await.unwrap();
            assert!(matches!(r.read_frame().await, Ok(Some(Frame::Control(_)))));
        }
        let started = tokio::time::Instant::now();
        let got = r.read_frame().await;
        assert!(matches!(got, Err(Error::Timeout { .. })), "{got:?}");
        assert!(got.unwrap_err().to_string().contains("went silent"));
        assert!(started.elapsed() >= Duration::from_secs(4));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn acknowledged_bytes_count_what_the_peer_took_not_what_waits_in_buffers() {
        use std::os::fd::AsFd;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut tx = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut rx, _) = listener.accept().await.unwrap();
        fn bytes_acked(fd: std::os::fd::BorrowedFd<'_>) -> Option<u64> {
            send_info(fd).map(|i| i.bytes_acked)
        }
        let before = bytes_acked(tx.as_fd()).expect("Linux reports TCP_INFO");
        // Nobody reads: the receiver's window and the sender's buffer fill,
        // and the writer stalls with bytes written but not acknowledged.
        let chunk = vec![7u8; 1 << 20];
        let mut written = 0u64;
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), tx.write(&chunk)).await {
            written += n as u64;
        }
        let stalled = bytes_acked(tx.as_fd()).unwrap() - before;
        assert!(stalled < written, "acknowledged {stalled} of {written} written while nothing was read");
        // A peer that does not read is not unreachable: its kernel took and
        // acknowledged what fits in its buffers, and closed its window.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let info = send_info(tx.as_fd()).unwrap();
        assert!(!info.unreachable(Duration::from_millis(200)), "{info:?}");
        // Once everything is read, every byte is acknowledged.
        let mut sink = vec![0u8; 1 << 20];
        let mut read = 0u64;
        while read < written {
            read += rx.read(&mut sink).await.unwrap() as u64;
        }
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while bytes_acked(tx.as_fd()).unwrap() - before < written {
            assert!(std::time::Instant::now() < until, "the acknowledgements never came");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Data went both ways and back: the kernel has timed a round trip.
        assert!(send_info(tx.as_fd()).unwrap().rtt > Duration::ZERO);
    }
}
