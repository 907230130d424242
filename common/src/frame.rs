//! Bytes ⇄ [`Frame`]: pure functions over a buffer, no sockets.
//!
//! Every frame is a little-endian `u32` length (of everything after it), a
//! one-byte kind, and a body:
//!
//! ```text
//! frame   := len:u32 kind:u8 body
//! kind 1  := control: bincode(one control message), standard config
//! kind 2  := blocks:  task_id:u64 op:u8 dtype:u8 order:u8 count:u8
//!                     (rows:u32 cols:u32){count}
//!                     data: count matrices, row-major, little-endian
//! ```
//!
//! Blocks carry matrix payloads as raw bytes after that small header, never
//! element by element through serde: `op` 1 is a multiply task (two
//! matrices, X then Y), `op` 2 its product (one matrix) and `op` 3 one
//! panel of a relayed job's block (one matrix, [`crate::relay`]); `order` 0 is
//! little-endian, the only byte order defined. Decoding checks the declared
//! length against a maximum before allocating anything for it, and checks that
//! the declared shapes account for exactly the declared length.
//!
//! A control frame's body is kept as bytes ([`ControlBody`]) until the
//! receiver decodes it as the message type its conversation expects
//! ([`crate::proto`]): the frame layer does not know which that is.

use bytes::{Buf, BufMut};
use serde::de::DeserializeOwned;
use serde::de::{DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};

use crate::matrix::{alloc_uninit, Dtype, Element, Matrix};
use crate::proto::TaskId;
use crate::{Error, Result};

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

/// bincode's standard config with a limit of [`MAX_CONTROL_FRAME_LEN`].
///
/// bincode's limit counts the in-memory sizes its decoder claims (8 bytes for
/// every `u64`, a string's declared length), not input bytes, and serde
/// sequences claim nothing: it is a backstop, not what ties allocation to a
/// frame's bytes (that is [`decode_control`]'s `Bounded` adapter).
fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_CONTROL_FRAME_LEN>()
}

/// One unit of the protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A control message, not yet decoded.
    Control(ControlBody),
    /// Matrix blocks of one task.
    Blocks(Blocks),
}

/// The body of a control frame: one bincode-encoded control message, of
/// whichever type the conversation carries, decoded on demand with
/// [`ControlBody::decode`]. Its `Debug` shows only the length (a body may
/// hold a lease token).
#[derive(Clone, PartialEq, Eq)]
pub struct ControlBody(Vec<u8>);

impl std::fmt::Debug for ControlBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ControlBody({} bytes)", self.0.len())
    }
}

impl ControlBody {
    /// Encodes `msg`.
    ///
    /// # Errors
    /// As [`encode_control`].
    pub fn encode<T: serde::Serialize + ?Sized>(msg: &T) -> Result<ControlBody> {
        let body = bincode::serde::encode_to_vec(msg, bincode_config())?;
        if body.len() >= MAX_CONTROL_FRAME_LEN {
            return Err(Error::Invalid(format!(
                "a control message of {} bytes exceeds the {MAX_CONTROL_FRAME_LEN}-byte limit receivers enforce",
                body.len()
            )));
        }
        Ok(ControlBody(body))
    }

    /// Decodes the body as a `T`, as [`decode_control`] does.
    ///
    /// # Errors
    /// As [`decode_control`].
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        decode_control(&self.0)
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// What a blocks frame is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockOp {
    /// Requester → worker: compute X·Y; carries X and Y.
    Multiply,
    /// Worker → requester: the product; carries one matrix.
    Product,
    /// Relay: one panel of a block of a relayed job (a quadrant of A or B,
    /// a product, a quadrant of C, a product's fingerprint, or the job's
    /// public vectors); `task_id` carries its [`crate::relay::PartId`].
    /// Carries one matrix.
    Part,
}

impl BlockOp {
    fn code(self) -> u8 {
        match self {
            BlockOp::Multiply => 1,
            BlockOp::Product => 2,
            BlockOp::Part => 3,
        }
    }

    fn from_code(code: u8) -> Option<BlockOp> {
        match code {
            1 => Some(BlockOp::Multiply),
            2 => Some(BlockOp::Product),
            3 => Some(BlockOp::Part),
            _ => None,
        }
    }

    /// How many matrices a frame of this op carries.
    pub fn matrix_count(self) -> usize {
        match self {
            BlockOp::Multiply => 2,
            BlockOp::Product | BlockOp::Part => 1,
        }
    }
}

/// The matrices of one task, all of one dtype.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocks {
    /// Requester-chosen id that pairs a product with its task.
    pub task_id: TaskId,
    /// Task or product.
    pub op: BlockOp,
    /// The matrices, `op.matrix_count()` of them.
    pub mats: Vec<Matrix>,
}

/// The parsed header of a blocks frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlocksHeader {
    /// Task id.
    pub task_id: TaskId,
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
        out.put_u64_le(self.task_id.0);
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

/// Encodes a control message (of any conversation's type) as a complete frame.
///
/// # Errors
/// [`Error::Encode`] if bincode fails (it does not for septet's messages),
/// [`Error::Invalid`] for a message longer than [`MAX_CONTROL_FRAME_LEN`]
/// (receivers would refuse it).
pub fn encode_control<T: serde::Serialize + ?Sized>(msg: &T) -> Result<Vec<u8>> {
    Ok(control_frame(&ControlBody::encode(msg)?))
}

/// A complete frame around an encoded control body.
fn control_frame(body: &ControlBody) -> Vec<u8> {
    let body = body.as_bytes();
    let mut out = Vec::with_capacity(LEN_PREFIX + 1 + body.len());
    out.put_u32_le((body.len() + 1) as u32);
    out.put_u8(KIND_CONTROL);
    out.extend_from_slice(body);
    out
}

/// Encodes any frame into one buffer (blocks frames copy their payload; the
/// socket writer in [`crate::conn`] sends them without this copy).
///
/// # Errors
/// As [`encode_control`] and [`BlocksHeader::encode_prefix`].
pub fn encode(frame: &Frame) -> Result<Vec<u8>> {
    match frame {
        Frame::Control(body) => {
            if body.as_bytes().len() >= MAX_CONTROL_FRAME_LEN {
                return Err(Error::Invalid(format!(
                    "a control body of {} bytes exceeds the {MAX_CONTROL_FRAME_LEN}-byte limit receivers enforce",
                    body.as_bytes().len()
                )));
            }
            Ok(control_frame(body))
        }
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
/// header is there. Bytes of `body` past the frame's end (the next frame)
/// are never read as header.
///
/// # Errors
/// [`Error::BadFrame`] for an unknown op, dtype or byte order, a matrix
/// count that does not fit the op, a `frame_len` too short to hold the
/// header (decided as soon as the count is known, before the shapes
/// arrive), a shape whose size overflows, or shapes whose payload does not
/// match `frame_len` exactly.
pub fn parse_blocks_header(body: &[u8], frame_len: usize) -> Result<Option<BlocksHeader>> {
    let short = |need: usize| {
        Error::BadFrame(format!("a blocks frame of {frame_len} bytes cannot hold its {need}-byte kind and header"))
    };
    if frame_len < 1 + BLOCKS_FIXED {
        return Err(short(1 + BLOCKS_FIXED));
    }
    let body = &body[..body.len().min(frame_len - 1)];
    if body.len() < BLOCKS_FIXED {
        return Ok(None);
    }
    let mut b = body;
    let task_id = TaskId(b.get_u64_le());
    let (op, dtype, order, count) = (b.get_u8(), b.get_u8(), b.get_u8(), b.get_u8() as usize);
    let op = BlockOp::from_code(op).ok_or_else(|| Error::BadFrame(format!("unknown block op {op}")))?;
    let dtype = Dtype::from_code(dtype).ok_or_else(|| Error::BadFrame(format!("unknown dtype code {dtype}")))?;
    if order != ORDER_LITTLE_ENDIAN {
        return Err(Error::BadFrame(format!("unsupported byte order code {order}")));
    }
    if count != op.matrix_count() {
        return Err(Error::BadFrame(format!("{op:?} frame with {count} matrices")));
    }
    if frame_len < 1 + BLOCKS_FIXED + SHAPE_LEN * count {
        return Err(short(1 + BLOCKS_FIXED + SHAPE_LEN * count));
    }
    if b.len() < SHAPE_LEN * count {
        return Ok(None);
    }
    let shapes: Vec<(usize, usize)> = (0..count).map(|_| (b.get_u32_le() as usize, b.get_u32_le() as usize)).collect();
    // An array may span at most isize::MAX bytes, counting a zero-length
    // axis as 1 (ndarray's rule): on a 32-bit host (0, u32::MAX) holds no
    // data yet would make `alloc_zeroed` panic, so it is refused here.
    let fits = |&(r, c): &(usize, usize)| {
        r.max(1)
            .checked_mul(c.max(1))
            .and_then(|n| n.checked_mul(dtype.size()))
            .is_some_and(|n| n <= isize::MAX as usize)
    };
    if let Some(shape) = shapes.iter().find(|s| !fits(s)) {
        return Err(Error::BadFrame(format!("blocks header declares a {dtype} matrix of shape {shape:?}, too large")));
    }
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
/// Nothing a peer sends makes this panic, and nothing is allocated for a
/// frame beyond what its bytes account for: a blocks frame allocates only
/// the payload its header declares and its length field confirms (at most
/// `max_len`), and a control frame's body is copied as it is (at most
/// [`MAX_CONTROL_FRAME_LEN`] bytes), to be decoded by [`decode_control`]
/// once the receiver knows which message type to expect.
///
/// # Errors
/// As [`parse_prefix`] and [`parse_blocks_header`].
pub fn decode(buf: &[u8], max_len: usize) -> Result<Option<(Frame, usize)>> {
    let Some((len, kind)) = parse_prefix(buf, max_len)? else { return Ok(None) };
    if kind == KIND_BLOCKS {
        // Validate the header as soon as it is there, not after the payload.
        parse_blocks_header(&buf[LEN_PREFIX + 1..], len)?;
    }
    let total = LEN_PREFIX
        .checked_add(len)
        .ok_or_else(|| Error::BadFrame(format!("a frame of {len} bytes overflows the address space")))?;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[LEN_PREFIX + 1..total];
    let frame = match kind {
        KIND_CONTROL => Frame::Control(ControlBody(body.to_vec())),
        _ => {
            let header = parse_blocks_header(body, len)?
                .ok_or_else(|| Error::BadFrame(format!("a blocks frame of {len} bytes ends inside its header")))?;
            let mut mats = header.allocate();
            let mut data = &body[header.encoded_len()..];
            for m in &mut mats {
                let bytes = matrix_bytes_mut(m);
                let src = data
                    .get(..bytes.len())
                    .ok_or_else(|| Error::BadFrame("blocks payload shorter than its shapes".into()))?;
                bytes.copy_from_slice(src);
                data = &data[bytes.len()..];
            }
            Frame::Blocks(Blocks { task_id: header.task_id, op: header.op, mats })
        }
    };
    Ok(Some((frame, total)))
}

/// Decodes the body of a control frame (the bytes after the kind byte),
/// which must be exactly one bincode-encoded `T` — one of the message types
/// of [`crate::proto`], whichever the receiver's conversation carries.
///
/// Decoding allocates in proportion to the bytes of `body`, never to a
/// length a peer declares: bincode's serde decoder would allocate a whole
/// string as soon as it read the string's length prefix (up to the config's
/// limit, 16 MiB, from a frame of a few bytes), and serde's `Vec` visitor
/// reserves room for up to 1 MiB of elements from a declared count. Through
/// `Bounded`, strings are instead borrowed from `body` (so a length beyond
/// its end fails before anything is allocated) and copied once they are
/// known to be there, and sequences report no size hint, so a `Vec` grows
/// only as elements are actually decoded — each of which consumes at least
/// one byte of `body`.
///
/// # Errors
/// [`Error::Decode`] for a body that is not a known `T` (an unknown variant
/// index included), [`Error::BadFrame`] for trailing bytes after one.
pub fn decode_control<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    let seed = Bounded(std::marker::PhantomData::<T>);
    let (msg, used) = bincode::serde::seed_decode_from_slice(seed, body, bincode_config())?;
    if used != body.len() {
        return Err(Error::BadFrame(format!("{} trailing bytes after a control message", body.len() - used)));
    }
    Ok(msg)
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

/// A serde adapter around bincode's deserializer (and everything it hands
/// out: visitors, sequence, map and enum accesses, seeds) that changes two
/// things and forwards everything else unchanged:
///
/// * owned strings and byte buffers are requested as borrowed ones, so
///   bincode checks that the declared length is there in the input before
///   anything is allocated; the visitor then copies exactly those bytes;
/// * sequences and maps report no size hint, so collections grow with the
///   elements decoded instead of reserving for a declared count.
///
/// The wire format is bincode's own: only allocation changes.
struct Bounded<T>(T);

/// Forwards `deserialize_*` methods that take only a visitor.
macro_rules! forward_visitor {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> std::result::Result<V::Value, D::Error> {
            self.0.$method(Bounded(visitor))
        }
    )*};
}

/// Forwards `visit_*` methods that take one plain value.
macro_rules! forward_value {
    ($($method:ident($ty:ty))*) => {$(
        fn $method<E: serde::de::Error>(self, v: $ty) -> std::result::Result<V::Value, E> {
            self.0.$method(v)
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Bounded<D> {
    type Error = D::Error;

    forward_visitor! {
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64 deserialize_char deserialize_str deserialize_bytes deserialize_option
        deserialize_unit deserialize_seq deserialize_map deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> std::result::Result<V::Value, D::Error> {
        self.0.deserialize_str(Bounded(visitor))
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> std::result::Result<V::Value, D::Error> {
        self.0.deserialize_bytes(Bounded(visitor))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> std::result::Result<V::Value, D::Error> {
        self.0.deserialize_unit_struct(name, Bounded(visitor))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> std::result::Result<V::Value, D::Error> {
        self.0.deserialize_newtype_struct(name, Bounded(visitor))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> std::result::Result<V::Value, D::Error> {
        self.0.deserialize_tuple(len, Bounded(visitor))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> std::result::Result<V::Value, D::Error> {
        self.0.deserialize_tuple_struct(name, len, Bounded(visitor))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> std::result::Result<V::Value, D::Error> {
        self.0.deserialize_struct(name, fields, Bounded(visitor))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> std::result::Result<V::Value, D::Error> {
        self.0.deserialize_enum(name, variants, Bounded(visitor))
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Bounded<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.expecting(f)
    }

    forward_value! {
        visit_bool(bool) visit_i8(i8) visit_i16(i16) visit_i32(i32) visit_i64(i64) visit_i128(i128)
        visit_u8(u8) visit_u16(u16) visit_u32(u32) visit_u64(u64) visit_u128(u128) visit_f32(f32) visit_f64(f64)
        visit_char(char) visit_str(&str) visit_borrowed_str(&'de str) visit_string(String)
        visit_bytes(&[u8]) visit_borrowed_bytes(&'de [u8]) visit_byte_buf(Vec<u8>)
    }

    fn visit_none<E: serde::de::Error>(self) -> std::result::Result<V::Value, E> {
        self.0.visit_none()
    }

    fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<V::Value, E> {
        self.0.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<V::Value, D::Error> {
        self.0.visit_some(Bounded(d))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> std::result::Result<V::Value, D::Error> {
        self.0.visit_newtype_struct(Bounded(d))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> std::result::Result<V::Value, A::Error> {
        self.0.visit_seq(Bounded(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<V::Value, A::Error> {
        self.0.visit_map(Bounded(map))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> std::result::Result<V::Value, A::Error> {
        self.0.visit_enum(Bounded(data))
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Bounded<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<S::Value, D::Error> {
        self.0.deserialize(Bounded(d))
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Bounded<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> std::result::Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(Bounded(seed))
    }

    /// No hint: the declared count is the peer's claim, not bytes received.
    fn size_hint(&self) -> Option<usize> {
        None
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Bounded<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> std::result::Result<Option<K::Value>, A::Error> {
        self.0.next_key_seed(Bounded(seed))
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> std::result::Result<T::Value, A::Error> {
        self.0.next_value_seed(Bounded(seed))
    }

    /// No hint, as for sequences.
    fn size_hint(&self) -> Option<usize> {
        None
    }
}

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for Bounded<A> {
    type Error = A::Error;
    type Variant = Bounded<A::Variant>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> std::result::Result<(S::Value, Self::Variant), A::Error> {
        let (value, variant) = self.0.variant_seed(Bounded(seed))?;
        Ok((value, Bounded(variant)))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Bounded<A> {
    type Error = A::Error;

    fn unit_variant(self) -> std::result::Result<(), A::Error> {
        self.0.unit_variant()
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> std::result::Result<S::Value, A::Error> {
        self.0.newtype_variant_seed(Bounded(seed))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> std::result::Result<V::Value, A::Error> {
        self.0.tuple_variant(len, Bounded(visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> std::result::Result<V::Value, A::Error> {
        self.0.struct_variant(fields, Bounded(visitor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{
        Control, Failure, FederationReply, FederationRequest, LeaseGrant, LeaseId, PeerAddr, PeerId, PeerRow,
        Rendezvous, TaskId, TrackerReply, TrackerRequest, WorkerReply,
    };
    use crate::ErrorCode;
    use ndarray::Array2;

    fn requests() -> Vec<TrackerRequest> {
        let token = Some("ab".repeat(32));
        vec![
            TrackerRequest::Register { listen: "0.0.0.0:7000".into(), slots: 2, memory_mib: 4096 },
            TrackerRequest::Heartbeat { peer_id: PeerId(4) },
            TrackerRequest::Deregister { peer_id: PeerId(4) },
            TrackerRequest::ListPeers,
            TrackerRequest::Lease { count: 7, detached: true },
            TrackerRequest::Renew { lease_id: LeaseId(9), token: None },
            TrackerRequest::Renew { lease_id: LeaseId(9), token: token.clone() },
            TrackerRequest::Release { lease_id: LeaseId(9), token: token.clone() },
            TrackerRequest::ReportFailure {
                lease_id: LeaseId(9),
                peer_id: PeerId(3),
                reason: "reset".into(),
                replace: true,
                token: token.clone(),
            },
            TrackerRequest::Hedge { lease_id: LeaseId(9), peer_id: PeerId(2), token: token.clone() },
            TrackerRequest::Speed { lease_id: LeaseId(9), beaten: vec![PeerId(2)], proven: vec![PeerId(1)], token },
            TrackerRequest::Federation(FederationRequest::Status {
                cluster: "lab".into(),
                listen: "10.0.0.1:7700".into(),
            }),
            TrackerRequest::Federation(FederationRequest::Lend { count: 5, cluster: "lab".into() }),
            TrackerRequest::ListFederation,
            TrackerRequest::Federation(FederationRequest::LinkBack { cluster: "dept".into() }),
            TrackerRequest::Broker {
                lease_id: LeaseId(9),
                peer_id: PeerId(2),
                addr: "10.0.0.2:4000".into(),
                nonce: 7,
                token: None,
                via: None,
            },
            TrackerRequest::Broker {
                lease_id: LeaseId(9),
                peer_id: PeerId(2),
                addr: String::new(),
                nonce: 8,
                token: Some("t".into()),
                via: Some(Rendezvous::Splice([7; 16])),
            },
            TrackerRequest::Broker {
                lease_id: LeaseId(9),
                peer_id: PeerId(2),
                addr: String::new(),
                nonce: 9,
                token: Some("t".into()),
                via: Some(Rendezvous::Punch([8; 16])),
            },
        ]
    }

    fn tracker_replies() -> Vec<TrackerReply> {
        let grant = LeaseGrant {
            lease_id: LeaseId(9),
            peers: vec![PeerAddr { peer_id: PeerId(3), addr: "127.0.0.1:9000".into(), ticket: None }],
            ttl_ms: 60_000,
            token: "cd".repeat(32),
        };
        let row = PeerRow {
            peer_id: PeerId(1),
            addr: "10.0.0.1:1".into(),
            slots: 3,
            memory_mib: 2048,
            in_use: 1,
            leases_total: 7,
            failures: 0,
            slow: 1,
            joined_at: 5,
            last_seen: 6,
            state: "alive".into(),
            cluster: "lab".into(),
        };
        vec![
            TrackerReply::Error(Failure { code: ErrorCode::UnknownLease, message: "no lease 4".into(), task_id: None }),
            TrackerReply::Registered {
                peer_id: PeerId(4),
                addr: "127.0.0.1:7000".into(),
                heartbeat_ms: 2000,
                ticket_key: vec![1; 32],
                now_ms: 5,
            },
            TrackerReply::HeartbeatAck { now_ms: 1 },
            TrackerReply::Deregistered,
            TrackerReply::Peers { table: "shape: (1, 9)".into(), rows: vec![row] },
            TrackerReply::Waiting { position: 2, free: 3, needed: 7 },
            TrackerReply::Leased(grant),
            TrackerReply::Renewed { lease_id: LeaseId(9), ttl_ms: 100, peers: Vec::new() },
            TrackerReply::Released { lease_id: LeaseId(9) },
            TrackerReply::FailureRecorded { lease_id: LeaseId(9), replacement: None },
            TrackerReply::HedgeSlot {
                lease_id: LeaseId(9),
                slot: Some(PeerAddr { peer_id: PeerId(5), addr: "127.0.0.1:9005".into(), ticket: None }),
            },
            TrackerReply::SpeedRecorded { lease_id: LeaseId(9) },
            TrackerReply::Federation(FederationReply::Status {
                cluster: "dept".into(),
                free: 4,
                slots: 9,
                queued: 1,
                reverse: false,
            }),
            TrackerReply::Federation(FederationReply::LinkedBack),
            TrackerReply::Brokered,
        ]
    }

    fn worker_replies() -> Vec<WorkerReply> {
        vec![
            WorkerReply::Error(Failure {
                code: ErrorCode::ShapeMismatch,
                message: "2×3 by 4×5".into(),
                task_id: Some(TaskId(2)),
            }),
            WorkerReply::Computed { task_id: TaskId(3), compute_us: 1234 },
        ]
    }

    fn controls<T: Control>(msgs: Vec<T>) -> impl Iterator<Item = Frame> {
        msgs.into_iter().map(|m| Frame::Control(ControlBody::encode(&m).unwrap()))
    }

    /// Every control message of every conversation, as frames.
    fn all_messages() -> Vec<Frame> {
        controls(requests()).chain(controls(tracker_replies())).chain(controls(worker_replies())).collect()
    }

    /// Each message decodes back as itself from its frame's body.
    fn typed_round_trip<T: Control + PartialEq>(msgs: Vec<T>) {
        for msg in msgs {
            let bytes = encode_control(&msg).unwrap();
            match decode(&bytes, DEFAULT_MAX_FRAME_LEN).unwrap() {
                Some((Frame::Control(body), used)) => {
                    assert_eq!(used, bytes.len());
                    assert_eq!(body.decode::<T>().unwrap(), msg);
                }
                other => panic!("expected a control frame, got {other:?}"),
            }
        }
    }

    fn sample_blocks() -> Vec<Frame> {
        let x = Array2::from_shape_fn((3, 5), |(i, j)| (i * 5 + j) as f64 - 4.5);
        let y = Array2::from_shape_fn((5, 2), |(i, j)| (i as f64) * 0.25 - j as f64);
        let p = Array2::from_shape_fn((1, 4), |(_, j)| j as f32 * 1.5);
        vec![
            Frame::Blocks(Blocks {
                task_id: TaskId(7),
                op: BlockOp::Multiply,
                mats: vec![Matrix::F64(x), Matrix::F64(y)],
            }),
            Frame::Blocks(Blocks { task_id: TaskId(u64::MAX), op: BlockOp::Product, mats: vec![Matrix::F32(p)] }),
            Frame::Blocks(Blocks {
                task_id: TaskId(0),
                op: BlockOp::Product,
                mats: vec![Matrix::F64(Array2::zeros((0, 3)))],
            }),
        ]
    }

    #[test]
    fn every_message_and_block_frame_round_trips() {
        typed_round_trip(requests());
        typed_round_trip(tracker_replies());
        typed_round_trip(worker_replies());
        let frames: Vec<Frame> = all_messages().into_iter().chain(sample_blocks()).collect();
        for frame in frames {
            let bytes = encode(&frame).unwrap();
            let (back, used) = decode(&bytes, DEFAULT_MAX_FRAME_LEN).unwrap().unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(back, frame);
        }
    }

    #[test]
    fn a_frame_cut_at_every_offset_is_incomplete_until_its_last_byte() {
        let frames: Vec<Frame> = all_messages().into_iter().chain(sample_blocks()).collect();
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
        // Control frame with a variant index no version defines: a frame,
        // whose body decodes as no message of any conversation, and is
        // answered as a bad frame.
        let Some((Frame::Control(body), _)) = decode(&[2, 0, 0, 0, KIND_CONTROL, 200], 100).unwrap() else {
            panic!("expected a control frame")
        };
        for err in [
            body.decode::<TrackerRequest>().unwrap_err(),
            body.decode::<TrackerReply>().unwrap_err(),
            body.decode::<WorkerReply>().unwrap_err(),
        ] {
            assert!(matches!(err, Error::Decode(_)), "{err:?}");
            assert_eq!(err.code(), ErrorCode::BadFrame);
        }
        // One past each type's last variant.
        assert!(matches!(decode_control::<TrackerRequest>(&[8]), Err(Error::Decode(_))));
        assert!(matches!(decode_control::<TrackerReply>(&[10]), Err(Error::Decode(_))));
        assert!(matches!(decode_control::<WorkerReply>(&[3]), Err(Error::Decode(_))));
        // Control body with trailing garbage after a valid message.
        let mut ok = encode_control(&TrackerRequest::ListPeers).unwrap();
        ok[0] += 1;
        ok.push(0xff);
        let Some((Frame::Control(body), _)) = decode(&ok, 100).unwrap() else { panic!("expected a control frame") };
        assert!(matches!(body.decode::<TrackerRequest>(), Err(Error::BadFrame(_))));

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

    /// A frame from its length field, kind byte and body.
    fn raw_frame(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = ((body.len() + 1) as u32).to_le_bytes().to_vec();
        out.push(kind);
        out.extend_from_slice(body);
        out
    }

    fn assert_bad_frame(result: Result<Option<(Frame, usize)>>, what: &str) {
        assert!(matches!(result, Err(Error::BadFrame(_))), "{what}: expected BadFrame, got {result:?}");
    }

    #[test]
    fn a_blocks_frame_shorter_than_its_header_is_a_bad_frame() {
        // The five bytes of the security report: length 1, kind blocks, no header.
        // Rejected from the prefix alone, whatever follows.
        assert_bad_frame(decode(&[1, 0, 0, 0, 2], DEFAULT_MAX_FRAME_LEN), "01 00 00 00 02");
        assert_bad_frame(decode(&[1, 0, 0, 0, 2, 7, 7, 7], DEFAULT_MAX_FRAME_LEN), "01 00 00 00 02 + 3 bytes");
        // Every length too short for a Product header (1 + 12 + 8 bytes),
        // each with its body complete, and followed by another frame whose
        // bytes must not be read as the rest of the header.
        let good = encode(&sample_blocks()[1]).unwrap();
        let next = encode_control(&TrackerRequest::ListPeers).unwrap();
        for len in 1..1 + BLOCKS_FIXED + SHAPE_LEN {
            let mut bytes = raw_frame(KIND_BLOCKS, &good[LEN_PREFIX + 1..LEN_PREFIX + len]);
            assert_bad_frame(decode(&bytes, DEFAULT_MAX_FRAME_LEN), &format!("length {len}"));
            bytes.extend_from_slice(&next);
            assert_bad_frame(decode(&bytes, DEFAULT_MAX_FRAME_LEN), &format!("length {len} then a frame"));
        }
    }

    /// A blocks frame body: fixed header, the given shapes, `payload` bytes.
    fn blocks_body(op: u8, dtype: u8, shapes: &[(u32, u32)], payload: usize) -> Vec<u8> {
        let mut body = Vec::new();
        body.put_u64_le(1);
        body.extend_from_slice(&[op, dtype, ORDER_LITTLE_ENDIAN, shapes.len() as u8]);
        for &(r, c) in shapes {
            body.put_u32_le(r);
            body.put_u32_le(c);
        }
        body.resize(body.len() + payload, 0);
        body
    }

    #[test]
    fn dims_whose_products_overflow_are_bad_frames() {
        let f64_code = Dtype::F64.code();
        let max = u32::MAX;
        // rows × cols × 8 overflows usize on every host.
        let overflow = raw_frame(KIND_BLOCKS, &blocks_body(2, f64_code, &[(max, max)], 0));
        assert_bad_frame(decode(&overflow, DEFAULT_MAX_FRAME_LEN), "u32::MAX squared");
        // Two shapes whose sizes are each representable but whose sum is not
        // what the length says.
        let lying = raw_frame(KIND_BLOCKS, &blocks_body(1, f64_code, &[(max, 1), (1, max)], 16));
        assert_bad_frame(decode(&lying, DEFAULT_MAX_FRAME_LEN), "shapes larger than the frame");
        // Shapes that account for one byte fewer, or more, than the frame holds.
        for payload in [15, 17] {
            let off = raw_frame(KIND_BLOCKS, &blocks_body(1, f64_code, &[(1, 1), (1, 1)], payload));
            assert_bad_frame(decode(&off, DEFAULT_MAX_FRAME_LEN), &format!("{payload}-byte payload"));
        }
        // A zero-row matrix holds no data whatever its column count: valid,
        // and decoded without allocating for the columns.
        let empty = raw_frame(KIND_BLOCKS, &blocks_body(2, f64_code, &[(0, max)], 0));
        match decode(&empty, DEFAULT_MAX_FRAME_LEN).unwrap() {
            Some((Frame::Blocks(b), _)) => assert_eq!(b.mats[0].shape(), (0, max as usize)),
            other => panic!("expected a blocks frame, got {other:?}"),
        }
    }

    /// The bincode varint encoding of a u64 above `u32::MAX`.
    fn varint_u64(n: u64) -> Vec<u8> {
        let mut out = vec![253];
        out.extend_from_slice(&n.to_le_bytes());
        out
    }

    #[test]
    fn huge_declared_string_and_sequence_lengths_are_decode_errors() {
        let decode_error = |result: Result<()>, what: &str| {
            assert!(matches!(result, Err(Error::Decode(_))), "{what}: {result:?}");
        };
        let request = |body: &[u8]| decode_control::<TrackerRequest>(body).map(drop);
        let reply = |body: &[u8]| decode_control::<TrackerReply>(body).map(drop);
        // TrackerRequest::Register { listen: <2^60-byte string>, .. }: variant 0.
        let mut body = vec![0];
        body.extend_from_slice(&varint_u64(1 << 60));
        decode_error(request(&body), "2^60-byte string");
        // A string length just inside bincode's 16 MiB limit, with 3 bytes of it.
        let mut body = vec![0, 252];
        body.extend_from_slice(&((16u32 << 20) - 64).to_le_bytes());
        body.extend_from_slice(b"abc");
        decode_error(request(&body), "16 MiB string");
        // TrackerReply::Peers { table: "", rows: <2^60 rows> }: variant 4.
        let mut body = vec![4, 0];
        body.extend_from_slice(&varint_u64(1 << 60));
        decode_error(reply(&body), "2^60 rows");
        // TrackerReply::Leased(LeaseGrant { lease_id: LeaseId(1), peers: <2^60 peers>, .. }): variant 6.
        let mut body = vec![6, 1];
        body.extend_from_slice(&varint_u64(1 << 60));
        decode_error(reply(&body), "2^60 peers");
        // A lease token of 2^60 bytes: Release { lease_id: LeaseId(1), token: Some(..) }, variant 6.
        let mut body = vec![6, 1, 1];
        body.extend_from_slice(&varint_u64(1 << 60));
        decode_error(request(&body), "2^60-byte token");
        // A string that is not UTF-8.
        decode_error(request(&[0, 2, 0xff, 0xfe, 1]), "invalid UTF-8");
    }

    #[test]
    fn control_messages_above_the_receivers_limit_are_refused_when_encoded() {
        let msg = TrackerRequest::Register { listen: "x".repeat(MAX_CONTROL_FRAME_LEN), slots: 1, memory_mib: 1 };
        assert!(matches!(encode_control(&msg), Err(Error::Invalid(_))));
        let msg = TrackerRequest::Register { listen: "x".repeat(MAX_CONTROL_FRAME_LEN - 24), slots: 1, memory_mib: 1 };
        let bytes = encode_control(&msg).unwrap();
        let (back, _) = decode(&bytes, DEFAULT_MAX_FRAME_LEN).unwrap().unwrap();
        let Frame::Control(body) = back else { panic!("expected a control frame") };
        assert_eq!(body.decode::<TrackerRequest>().unwrap(), msg);
    }

    #[test]
    fn debug_output_never_shows_a_lease_token() {
        let token = "ab".repeat(32);
        let grant = LeaseGrant { lease_id: LeaseId(1), peers: Vec::new(), ttl_ms: 5, token: token.clone() };
        let some = Some(token.clone());
        let shown = [
            format!("{grant:?}"),
            format!("{:?}", TrackerReply::Leased(grant.clone())),
            format!("{:?}", TrackerRequest::Renew { lease_id: LeaseId(1), token: some.clone() }),
            format!("{:?}", TrackerRequest::Release { lease_id: LeaseId(1), token: some.clone() }),
            format!(
                "{:?}",
                TrackerRequest::ReportFailure {
                    lease_id: LeaseId(1),
                    peer_id: PeerId(2),
                    reason: "x".into(),
                    replace: false,
                    token: some.clone()
                }
            ),
            format!("{:?}", TrackerRequest::Hedge { lease_id: LeaseId(1), peer_id: PeerId(2), token: some.clone() }),
            format!(
                "{:?}",
                TrackerRequest::Speed { lease_id: LeaseId(1), beaten: vec![], proven: vec![PeerId(2)], token: some }
            ),
            format!("{:?}", Frame::Control(ControlBody::encode(&TrackerReply::Leased(grant)).unwrap())),
        ];
        for text in shown {
            assert!(!text.contains(&token), "{text}");
        }
    }
}
