//! Bytes ⇄ [`Frame`]: pure functions over a buffer, no sockets.
//!
//! Every frame is a little-endian `u32` length (of everything after it), a
//! one-byte kind, and a body:
//!
//! ```text
//! frame   := len:u32 kind:u8 body
//! kind 1  := control: bincode(Message), standard config
//! kind 2  := blocks:  task_id:u64 op:u8 dtype:u8 order:u8 count:u8
//!                     (rows:u32 cols:u32){count}
//!                     data: count matrices, row-major, little-endian
//! ```
//!
//! Blocks carry matrix payloads as raw bytes after that small header, never
//! element by element through serde: `op` 1 is a multiply task (two
//! matrices, X then Y) and `op` 2 its product (one matrix); `order` 0 is
//! little-endian, the only byte order defined. Decoding checks the declared
//! length against a maximum before allocating anything for it, and checks that
//! the declared shapes account for exactly the declared length.

use bytes::{Buf, BufMut};

use crate::matrix::{alloc_uninit, Dtype, Element, Matrix};
use crate::{Error, Message, Result};

#[cfg(target_endian = "big")]
compile_error!("septet sends matrices as raw little-endian memory and needs a little-endian host");

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;
/// Frame kind byte of a control frame.
pub const KIND_CONTROL: u8 = 1;
/// Frame kind byte of a blocks frame.
pub const KIND_BLOCKS: u8 = 2;
/// Byte-order code for little-endian payloads (the only one defined).
pub const ORDER_LITTLE_ENDIAN: u8 = 0;
/// Largest control message accepted, whatever the frame maximum: control
/// messages are small, so a larger one is garbage or an attack.
pub const MAX_CONTROL_FRAME_LEN: usize = 16 << 20;
/// Default maximum frame length for servers that take matrices: 1 GiB, room
/// for two 8192×8192 f64 operands.
pub const DEFAULT_MAX_FRAME_LEN: usize = 1 << 30;
/// Fixed part of a blocks header, before the shapes.
const BLOCKS_FIXED: usize = 12;
/// Bytes per (rows, cols) entry in a blocks header.
const SHAPE_LEN: usize = 8;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_CONTROL_FRAME_LEN>()
}

/// One unit of the protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A typed control message.
    Control(Message),
    /// Matrix blocks of one task.
    Blocks(Blocks),
}

/// What a blocks frame is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockOp {
    /// Requester → worker: compute X·Y; carries X and Y.
    Multiply,
    /// Worker → requester: the product; carries one matrix.
    Product,
}

impl BlockOp {
    fn code(self) -> u8 {
        match self {
            BlockOp::Multiply => 1,
            BlockOp::Product => 2,
        }
    }

    fn from_code(code: u8) -> Option<BlockOp> {
        match code {
            1 => Some(BlockOp::Multiply),
            2 => Some(BlockOp::Product),
            _ => None,
        }
    }

    /// How many matrices a frame of this op carries.
    pub fn matrix_count(self) -> usize {
        match self {
            BlockOp::Multiply => 2,
            BlockOp::Product => 1,
        }
    }
}

/// The matrices of one task, all of one dtype.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocks {
    /// Requester-chosen id that pairs a product with its task.
    pub task_id: u64,
    /// Task or product.
    pub op: BlockOp,
    /// The matrices, `op.matrix_count()` of them.
    pub mats: Vec<Matrix>,
}

/// The parsed header of a blocks frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlocksHeader {
    /// Task id.
    pub task_id: u64,
    /// Task or product.
    pub op: BlockOp,
    /// Element type of every matrix.
    pub dtype: Dtype,
    /// (rows, cols) of each matrix.
    pub shapes: Vec<(usize, usize)>,
}

impl BlocksHeader {
    /// Bytes of the header after the kind byte.
    pub fn encoded_len(&self) -> usize {
        BLOCKS_FIXED + SHAPE_LEN * self.shapes.len()
    }

    /// Bytes of payload after the header, or `None` on overflow.
    pub fn payload_len(&self) -> Option<usize> {
        self.shapes.iter().try_fold(0usize, |acc, &(r, c)| {
            r.checked_mul(c)?.checked_mul(self.dtype.size()).and_then(|b| acc.checked_add(b))
        })
    }

    /// The whole frame's bytes before the payload: length prefix, kind and
    /// header.
    ///
    /// # Errors
    /// [`Error::Invalid`] when a dimension does not fit in `u32` or the frame
    /// would exceed `u32::MAX` bytes.
    pub fn encode_prefix(&self) -> Result<Vec<u8>> {
        let payload = self.payload_len().ok_or_else(|| Error::Invalid("matrix too large".into()))?;
        let len = 1 + self.encoded_len() + payload;
        let len = u32::try_from(len)
            .map_err(|_| Error::Invalid(format!("a frame of {len} bytes exceeds the protocol's 4 GiB limit")))?;
        let mut out = Vec::with_capacity(LEN_PREFIX + 1 + self.encoded_len());
        out.put_u32_le(len);
        out.put_u8(KIND_BLOCKS);
        out.put_u64_le(self.task_id);
        out.put_u8(self.op.code());
        out.put_u8(self.dtype.code());
        out.put_u8(ORDER_LITTLE_ENDIAN);
        out.put_u8(self.shapes.len() as u8);
        for &(r, c) in &self.shapes {
            let dim =
                |d: usize| u32::try_from(d).map_err(|_| Error::Invalid(format!("dimension {d} does not fit in u32")));
            out.put_u32_le(dim(r)?);
            out.put_u32_le(dim(c)?);
        }
        Ok(out)
    }

    /// Bytes of the whole frame on the wire, or `None` on overflow.
    pub fn frame_len(&self) -> Option<usize> {
        self.payload_len()?.checked_add(LEN_PREFIX + 1 + self.encoded_len())
    }

    /// Matrices of the declared shapes, ready to be read into (their
    /// contents are unspecified until every byte has been read).
    pub fn allocate(&self) -> Vec<Matrix> {
        self.shapes
            .iter()
            .map(|&shape| match self.dtype {
                Dtype::F64 => Matrix::F64(alloc_uninit(shape)),
                Dtype::F32 => Matrix::F32(alloc_uninit(shape)),
            })
            .collect()
    }
}

/// Encodes a control message as a complete frame.
///
/// # Errors
/// [`Error::Encode`] if bincode fails (it does not for septet's messages).
pub fn encode_control(msg: &Message) -> Result<Vec<u8>> {
    let body = bincode::serde::encode_to_vec(msg, bincode_config())?;
    let mut out = Vec::with_capacity(LEN_PREFIX + 1 + body.len());
    out.put_u32_le((body.len() + 1) as u32);
    out.put_u8(KIND_CONTROL);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Encodes any frame into one buffer (blocks frames copy their payload; the
/// socket writer in [`crate::conn`] sends them without this copy).
///
/// # Errors
/// As [`encode_control`] and [`BlocksHeader::encode_prefix`].
pub fn encode(frame: &Frame) -> Result<Vec<u8>> {
    match frame {
        Frame::Control(msg) => encode_control(msg),
        Frame::Blocks(blocks) => {
            let header = header_of(blocks)?;
            let mut out = header.encode_prefix()?;
            for m in &blocks.mats {
                match m {
                    Matrix::F64(a) => {
                        out.extend_from_slice(as_bytes(a.as_standard_layout().as_slice().expect("standard")))
                    }
                    Matrix::F32(a) => {
                        out.extend_from_slice(as_bytes(a.as_standard_layout().as_slice().expect("standard")))
                    }
                }
            }
            Ok(out)
        }
    }
}

fn header_of(blocks: &Blocks) -> Result<BlocksHeader> {
    let dtype = blocks.mats.first().map(Matrix::dtype).unwrap_or(Dtype::F64);
    if let Some(other) = blocks.mats.iter().map(Matrix::dtype).find(|d| *d != dtype) {
        return Err(Error::DtypeMismatch { left: dtype, right: other });
    }
    Ok(BlocksHeader {
        task_id: blocks.task_id,
        op: blocks.op,
        dtype,
        shapes: blocks.mats.iter().map(Matrix::shape).collect(),
    })
}

/// Reads the length prefix and kind byte: `Ok(None)` until 5 bytes are there.
///
/// # Errors
/// [`Error::FrameTooLarge`] above `max_len` (or above
/// [`MAX_CONTROL_FRAME_LEN`] for a control frame), [`Error::BadFrame`] for an
/// empty frame or an unknown kind.
pub fn parse_prefix(buf: &[u8], max_len: usize) -> Result<Option<(usize, u8)>> {
    if buf.len() < LEN_PREFIX {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max_len {
        return Err(Error::FrameTooLarge { len: len as u64, max: max_len as u64 });
    }
    if len == 0 {
        return Err(Error::BadFrame("empty frame".into()));
    }
    let Some(&kind) = buf.get(LEN_PREFIX) else { return Ok(None) };
    match kind {
        KIND_CONTROL if len > MAX_CONTROL_FRAME_LEN => {
            Err(Error::FrameTooLarge { len: len as u64, max: MAX_CONTROL_FRAME_LEN as u64 })
        }
        KIND_CONTROL | KIND_BLOCKS => Ok(Some((len, kind))),
        other => Err(Error::BadFrame(format!("unknown frame kind {other}"))),
    }
}

/// Parses a blocks header from `body` (the bytes after the kind byte) of a
/// frame whose length field is `frame_len`: `Ok(None)` until the whole
/// header is there.
///
/// # Errors
/// [`Error::BadFrame`] for an unknown op, dtype or byte order, a matrix
/// count that does not fit the op, or shapes whose payload does not match
/// `frame_len` exactly.
pub fn parse_blocks_header(body: &[u8], frame_len: usize) -> Result<Option<BlocksHeader>> {
    if body.len() < BLOCKS_FIXED {
        return Ok(None);
    }
    let mut b = body;
    let task_id = b.get_u64_le();
    let (op, dtype, order, count) = (b.get_u8(), b.get_u8(), b.get_u8(), b.get_u8() as usize);
    let op = BlockOp::from_code(op).ok_or_else(|| Error::BadFrame(format!("unknown block op {op}")))?;
    let dtype = Dtype::from_code(dtype).ok_or_else(|| Error::BadFrame(format!("unknown dtype code {dtype}")))?;
    if order != ORDER_LITTLE_ENDIAN {
        return Err(Error::BadFrame(format!("unsupported byte order code {order}")));
    }
    if count != op.matrix_count() {
        return Err(Error::BadFrame(format!("{op:?} frame with {count} matrices")));
    }
    if b.len() < SHAPE_LEN * count {
        return Ok(None);
    }
    let shapes = (0..count).map(|_| (b.get_u32_le() as usize, b.get_u32_le() as usize)).collect();
    let header = BlocksHeader { task_id, op, dtype, shapes };
    let expected = header.payload_len().and_then(|p| p.checked_add(1 + header.encoded_len()));
    if expected != Some(frame_len) {
        return Err(Error::BadFrame(format!(
            "blocks header declares shapes {:?} of {} but the frame holds {} bytes",
            header.shapes, header.dtype, frame_len
        )));
    }
    Ok(Some(header))
}

/// Decodes one frame from the front of `buf`: `Ok(None)` until the whole
/// frame is there, else the frame and how many bytes it used.
///
/// # Errors
/// As [`parse_prefix`] and [`parse_blocks_header`], and [`Error::Decode`]
/// for a control body that is not a known message or has trailing bytes.
pub fn decode(buf: &[u8], max_len: usize) -> Result<Option<(Frame, usize)>> {
    let Some((len, kind)) = parse_prefix(buf, max_len)? else { return Ok(None) };
    if kind == KIND_BLOCKS {
        // Validate the header as soon as it is there, not after the payload.
        parse_blocks_header(&buf[LEN_PREFIX + 1..], len)?;
    }
    let total = LEN_PREFIX + len;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[LEN_PREFIX + 1..total];
    let frame = match kind {
        KIND_CONTROL => {
            let (msg, used): (Message, usize) = bincode::serde::decode_from_slice(body, bincode_config())?;
            if used != body.len() {
                return Err(Error::BadFrame(format!("{} trailing bytes after a control message", body.len() - used)));
            }
            Frame::Control(msg)
        }
        _ => {
            let header = parse_blocks_header(body, len)?.expect("the whole frame is in the buffer");
            let mut mats = header.allocate();
            let mut data = &body[header.encoded_len()..];
            for m in &mut mats {
                let bytes = matrix_bytes_mut(m);
                bytes.copy_from_slice(&data[..bytes.len()]);
                data = &data[bytes.len()..];
            }
            Frame::Blocks(Blocks { task_id: header.task_id, op: header.op, mats })
        }
    };
    Ok(Some((frame, total)))
}

/// The raw bytes of a contiguous element slice.
pub fn as_bytes<T: Element>(s: &[T]) -> &[u8] {
    // SAFETY: f32 and f64 (the only `Element`s) have no padding and no
    // invalid bit patterns; the byte slice covers exactly the same memory.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), std::mem::size_of_val(s)) }
}

/// The raw bytes of a contiguous element slice, writable.
pub fn as_bytes_mut<T: Element>(s: &mut [T]) -> &mut [u8] {
    // SAFETY: as in `as_bytes`; every bit pattern written is a valid f32/f64.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(s)) }
}

/// The bytes of an owned (standard-layout) matrix, writable.
pub fn matrix_bytes_mut(m: &mut Matrix) -> &mut [u8] {
    match m {
        Matrix::F64(a) => as_bytes_mut(a.as_slice_mut().expect("owned matrices are in standard layout")),
        Matrix::F32(a) => as_bytes_mut(a.as_slice_mut().expect("owned matrices are in standard layout")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{LeaseGrant, PeerAddr, PeerRow, Role};
    use crate::ErrorCode;
    use ndarray::Array2;

    fn all_messages() -> Vec<Message> {
        let grant = LeaseGrant {
            lease_id: 9,
            peers: vec![PeerAddr { peer_id: 3, addr: "127.0.0.1:9000".into() }],
            ttl_ms: 60_000,
        };
        let row = PeerRow {
            peer_id: 1,
            addr: "10.0.0.1:1".into(),
            slots: 3,
            in_use: 1,
            leases_total: 7,
            failures: 0,
            joined_at: 5,
            last_seen: 6,
            state: "alive".into(),
        };
        vec![
            Message::Hello { version: 1, role: Role::Worker },
            Message::Welcome { version: 1 },
            Message::Error { code: ErrorCode::UnknownLease, message: "no lease 4".into(), task_id: Some(2) },
            Message::Register { listen: "0.0.0.0:7000".into(), slots: 2 },
            Message::Registered { peer_id: 4, addr: "127.0.0.1:7000".into(), heartbeat_ms: 2000 },
            Message::Heartbeat { peer_id: 4 },
            Message::HeartbeatAck,
            Message::Deregister { peer_id: 4 },
            Message::Deregistered,
            Message::ListPeers,
            Message::Peers { table: "shape: (1, 9)".into(), rows: vec![row] },
            Message::Lease { count: 7, detached: true },
            Message::Waiting { position: 2, free: 3, needed: 7 },
            Message::Leased(grant),
            Message::Renew { lease_id: 9 },
            Message::Renewed { lease_id: 9, ttl_ms: 100 },
            Message::Release { lease_id: 9 },
            Message::Released { lease_id: 9 },
            Message::ReportFailure { lease_id: 9, peer_id: 3, reason: "reset".into(), replace: true },
            Message::FailureRecorded { lease_id: 9, replacement: None },
            Message::Computed { task_id: 3, compute_us: 1234 },
        ]
    }

    fn sample_blocks() -> Vec<Frame> {
        let x = Array2::from_shape_fn((3, 5), |(i, j)| (i * 5 + j) as f64 - 4.5);
        let y = Array2::from_shape_fn((5, 2), |(i, j)| (i as f64) * 0.25 - j as f64);
        let p = Array2::from_shape_fn((1, 4), |(_, j)| j as f32 * 1.5);
        vec![
            Frame::Blocks(Blocks { task_id: 7, op: BlockOp::Multiply, mats: vec![Matrix::F64(x), Matrix::F64(y)] }),
            Frame::Blocks(Blocks { task_id: u64::MAX, op: BlockOp::Product, mats: vec![Matrix::F32(p)] }),
            Frame::Blocks(Blocks { task_id: 0, op: BlockOp::Product, mats: vec![Matrix::F64(Array2::zeros((0, 3)))] }),
        ]
    }

    #[test]
    fn every_message_and_block_frame_round_trips() {
        let frames: Vec<Frame> = all_messages().into_iter().map(Frame::Control).chain(sample_blocks()).collect();
        for frame in frames {
            let bytes = encode(&frame).unwrap();
            let (back, used) = decode(&bytes, DEFAULT_MAX_FRAME_LEN).unwrap().unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(back, frame);
        }
    }

    #[test]
    fn a_frame_cut_at_every_offset_is_incomplete_until_its_last_byte() {
        let frames: Vec<Frame> = all_messages().into_iter().map(Frame::Control).chain(sample_blocks()).collect();
        for frame in frames {
            let bytes = encode(&frame).unwrap();
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut], DEFAULT_MAX_FRAME_LEN).unwrap().is_none(), "cut at {cut}");
            }
            // Two frames back to back decode one at a time.
            let mut two = bytes.clone();
            two.extend_from_slice(&bytes);
            let (first, used) = decode(&two, DEFAULT_MAX_FRAME_LEN).unwrap().unwrap();
            assert_eq!((first, used), (frame, bytes.len()));
        }
    }

    #[test]
    fn oversized_lengths_are_rejected_from_the_prefix_alone() {
        let mut bytes = [0u8; 5];
        bytes[..4].copy_from_slice(&(1u32 << 31).to_le_bytes());
        bytes[4] = KIND_BLOCKS;
        match decode(&bytes[..4], 1 << 20) {
            Err(Error::FrameTooLarge { len, max }) => assert_eq!((len, max), (1 << 31, 1 << 20)),
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        // A control frame may not use the blocks allowance.
        let big = (MAX_CONTROL_FRAME_LEN + 1) as u32;
        let mut ctl = big.to_le_bytes().to_vec();
        ctl.push(KIND_CONTROL);
        assert!(matches!(decode(&ctl, DEFAULT_MAX_FRAME_LEN), Err(Error::FrameTooLarge { .. })));
    }

    #[test]
    fn unknown_kinds_ops_dtypes_and_messages_are_errors() {
        assert!(matches!(decode(&[2, 0, 0, 0, 9, 0], 100), Err(Error::BadFrame(_))));
        assert!(matches!(decode(&[0, 0, 0, 0], 100), Err(Error::BadFrame(_))));
        // Control frame with a variant index no version defines.
        assert!(matches!(decode(&[2, 0, 0, 0, KIND_CONTROL, 200], 100), Err(Error::Decode(_))));
        // Control frame with trailing garbage after a valid message.
        let mut ok = encode_control(&Message::ListPeers).unwrap();
        ok[0] += 1;
        ok.push(0xff);
        assert!(matches!(decode(&ok, 100), Err(Error::BadFrame(_))));

        let frame = &sample_blocks()[0];
        let good = encode(frame).unwrap();
        for (offset, value) in [(13, 9u8), (14, 7), (15, 1), (16, 1)] {
            let mut bad = good.clone();
            bad[offset] = value;
            assert!(matches!(decode(&bad, DEFAULT_MAX_FRAME_LEN), Err(Error::BadFrame(_))), "byte {offset}");
        }
        // Shapes that claim more data than the frame holds: rejected from the
        // header alone, before the payload arrives.
        let mut lying = good.clone();
        lying[17..21].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&lying[..33], DEFAULT_MAX_FRAME_LEN), Err(Error::BadFrame(_))));
    }
}
