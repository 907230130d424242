//! Matrix blocks as they travel and as they are multiplied: element types,
//! owned matrices and borrowed views over ndarray memory, and the faer leaf
//! product that works on that memory without copying it.

use std::fmt;

use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut2};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Element type of a matrix on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dtype {
    /// IEEE 754 double precision.
    F64,
    /// IEEE 754 single precision.
    F32,
}

impl Dtype {
    /// Wire code of the dtype in a block header.
    pub fn code(self) -> u8 {
        match self {
            Dtype::F64 => 1,
            Dtype::F32 => 2,
        }
    }

    /// Inverse of [`Dtype::code`].
    pub fn from_code(code: u8) -> Option<Dtype> {
        match code {
            1 => Some(Dtype::F64),
            2 => Some(Dtype::F32),
            _ => None,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 => 8,
            Dtype::F32 => 4,
        }
    }

    /// Unit roundoff (half the machine epsilon).
    pub fn unit_roundoff(self) -> f64 {
        match self {
            Dtype::F64 => f64::EPSILON / 2.0,
            Dtype::F32 => f32::EPSILON as f64 / 2.0,
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dtype::F64 => "f64",
            Dtype::F32 => "f32",
        })
    }
}

impl std::str::FromStr for Dtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f64" | "float64" => Ok(Dtype::F64),
            "f32" | "float32" => Ok(Dtype::F32),
            other => Err(Error::Invalid(format!("unknown dtype {other:?} (expected f64 or f32)"))),
        }
    }
}

/// A floating-point element septet can multiply: f64 or f32.
pub trait Element:
    faer::traits::ComplexField
    + faer::traits::RealField
    + ndarray::LinalgScalar
    + ndarray::ScalarOperand
    + Copy
    + Send
    + Sync
    + PartialOrd
    + fmt::Debug
    + fmt::Display
    + 'static
{
    /// The wire dtype of this element type.
    const DTYPE: Dtype;
    /// Little-endian bytes of one element.
    type Bytes: AsRef<[u8]>;
    /// Converts to f64 (exact for f32).
    fn to_f64(self) -> f64;
    /// Converts from f64 (rounding for f32).
    fn from_f64(v: f64) -> Self;
    /// Wraps an owned array into the dynamic [`Matrix`].
    fn into_matrix(a: Array2<Self>) -> Matrix;
    /// Borrows the array out of a [`Matrix`] of this dtype.
    fn matrix_ref(m: &Matrix) -> Option<&Array2<Self>>;
    /// Takes the array out of a [`Matrix`] of this dtype.
    fn from_matrix(m: Matrix) -> std::result::Result<Array2<Self>, Matrix>;
    /// Wraps a view into the dynamic [`MatrixView`].
    fn view(a: ArrayView2<'_, Self>) -> MatrixView<'_>;
    /// This process's pool of recycled buffers of this element type.
    fn pool() -> &'static Mutex<Vec<Vec<Self>>>;
}

static POOL_F64: Mutex<Vec<Vec<f64>>> = Mutex::new(Vec::new());
static POOL_F32: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

impl Element for f64 {
    const DTYPE: Dtype = Dtype::F64;
    type Bytes = [u8; 8];
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn into_matrix(a: Array2<Self>) -> Matrix {
        Matrix::F64(a)
    }
    fn matrix_ref(m: &Matrix) -> Option<&Array2<Self>> {
        match m {
            Matrix::F64(a) => Some(a),
            Matrix::F32(_) => None,
        }
    }
    fn from_matrix(m: Matrix) -> std::result::Result<Array2<Self>, Matrix> {
        match m {
            Matrix::F64(a) => Ok(a),
            other => Err(other),
        }
    }
    fn view(a: ArrayView2<'_, Self>) -> MatrixView<'_> {
        MatrixView::F64(a)
    }
    fn pool() -> &'static Mutex<Vec<Vec<Self>>> {
        &POOL_F64
    }
}

impl Element for f32 {
    const DTYPE: Dtype = Dtype::F32;
    type Bytes = [u8; 4];
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn into_matrix(a: Array2<Self>) -> Matrix {
        Matrix::F32(a)
    }
    fn matrix_ref(m: &Matrix) -> Option<&Array2<Self>> {
        match m {
            Matrix::F32(a) => Some(a),
            Matrix::F64(_) => None,
        }
    }
    fn from_matrix(m: Matrix) -> std::result::Result<Array2<Self>, Matrix> {
        match m {
            Matrix::F32(a) => Ok(a),
            other => Err(other),
        }
    }
    fn view(a: ArrayView2<'_, Self>) -> MatrixView<'_> {
        MatrixView::F32(a)
    }
    fn pool() -> &'static Mutex<Vec<Vec<Self>>> {
        &POOL_F32
    }
}

/// An owned row-major matrix of either dtype.
#[derive(Debug, Clone, PartialEq)]
pub enum Matrix {
    /// f64 elements.
    F64(Array2<f64>),
    /// f32 elements.
    F32(Array2<f32>),
}

impl Matrix {
    /// The element type.
    pub fn dtype(&self) -> Dtype {
        match self {
            Matrix::F64(_) => Dtype::F64,
            Matrix::F32(_) => Dtype::F32,
        }
    }

    /// (rows, cols).
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Matrix::F64(a) => a.dim(),
            Matrix::F32(a) => a.dim(),
        }
    }

    /// A borrowed view of the whole matrix.
    pub fn view(&self) -> MatrixView<'_> {
        match self {
            Matrix::F64(a) => MatrixView::F64(a.view()),
            Matrix::F32(a) => MatrixView::F32(a.view()),
        }
    }
}

/// A borrowed matrix of either dtype; rows may be strided (a quadrant of a
/// larger matrix), which the frame writer sends without copying.
#[derive(Debug, Clone, Copy)]
pub enum MatrixView<'a> {
    /// f64 elements.
    F64(ArrayView2<'a, f64>),
    /// f32 elements.
    F32(ArrayView2<'a, f32>),
}

impl MatrixView<'_> {
    /// The element type.
    pub fn dtype(&self) -> Dtype {
        match self {
            MatrixView::F64(_) => Dtype::F64,
            MatrixView::F32(_) => Dtype::F32,
        }
    }

    /// (rows, cols).
    pub fn shape(&self) -> (usize, usize) {
        match self {
            MatrixView::F64(a) => a.dim(),
            MatrixView::F32(a) => a.dim(),
        }
    }
}

/// Buffers smaller than this (in bytes) are not worth pooling.
const POOL_MIN_BYTES: usize = 1 << 20;
/// Most bytes a pool keeps per element type.
const POOL_MAX_BYTES: usize = 1 << 30;

/// A row-major array whose contents are **unspecified** (a recycled buffer's
/// old values, or zeros): for callers that overwrite every element, such as
/// a frame payload being read or a product being computed.
///
/// Large blocks come in a few sizes per job (the quadrant shapes), and a
/// recycled buffer costs neither page faults nor zeroing, which on this
/// workload cost more than the copies themselves. Buffers come back through
/// [`recycle`]. The pooled buffer taken is the smallest that holds the
/// array (it keeps its whole length, so it goes back whole), so buffers
/// recycled from bigger jobs, or set aside by [`prefault`], serve smaller
/// ones too.
pub fn alloc_uninit<T: Element>(shape: (usize, usize)) -> Array2<T> {
    let len = shape.0.checked_mul(shape.1).expect("matrix size overflows usize");
    if len * std::mem::size_of::<T>() >= POOL_MIN_BYTES {
        let mut pool = T::pool().lock();
        let best = pool.iter().enumerate().filter(|(_, v)| v.len() >= len).min_by_key(|(_, v)| v.len()).map(|(i, _)| i);
        if let Some(at) = best {
            let v = pool.swap_remove(at);
            drop(pool);
            // The first `len` elements, owning the whole buffer.
            return Array1::from_vec(v)
                .slice_move(ndarray::s![..len])
                .into_shape_with_order(shape)
                .expect("a contiguous prefix of the right length");
        }
    }
    alloc_zeroed(shape)
}

/// Gives a large array's buffer back for [`alloc_uninit`] to reuse.
pub fn recycle<T: Element>(a: Array2<T>) {
    if !a.is_standard_layout() || a.len() * std::mem::size_of::<T>() < POOL_MIN_BYTES {
        return;
    }
    let (v, offset) = a.into_raw_vec_and_offset();
    if offset.unwrap_or(0) == 0 {
        pool_push(v);
    }
}

/// Pools `v` unless that would take the pool past [`POOL_MAX_BYTES`];
/// says whether it did.
fn pool_push<T: Element>(v: Vec<T>) -> bool {
    let mut pool = T::pool().lock();
    let fits = held(&pool) + v.len() * std::mem::size_of::<T>() <= POOL_MAX_BYTES;
    if fits {
        pool.push(v);
    }
    fits
}

fn held<T>(pool: &[Vec<T>]) -> usize {
    pool.iter().map(|b| b.len() * std::mem::size_of::<T>()).sum()
}

/// Bytes of recycled `T` buffers this process holds for reuse.
pub fn pooled_bytes<T: Element>() -> usize {
    held(&T::pool().lock())
}

/// Sets aside `count` buffers of `len` elements for [`alloc_uninit`], each
/// page already backed by memory, as far as the pool's limit (1 GiB per
/// element type) allows; returns how many it set aside. Buffers under
/// 1 MiB are not pooled, so none are made.
///
/// A fresh buffer's pages are faulted in, and zeroed by the kernel, on
/// first write, in the middle of whatever writes it first (a socket read,
/// a product). A server that calls this at start pays that before its
/// first job instead of during it: the buffers of every job whose blocks
/// are at most `len` elements then come from the pool, as they do for
/// later jobs.
pub fn prefault<T: Element>(len: usize, count: usize) -> usize {
    let bytes = len.saturating_mul(std::mem::size_of::<T>());
    if bytes < POOL_MIN_BYTES {
        return 0;
    }
    let mut made = 0;
    while made < count && pooled_bytes::<T>() + bytes <= POOL_MAX_BYTES {
        let mut v = vec![T::zero(); len];
        advise_huge_pages(&v);
        // One write per 4 KiB page backs it (a read would only map the
        // shared zero page). Pooled contents are unspecified, so the value
        // does not matter; it is not zero, which the compiler may know is
        // there already and skip writing.
        let step = (4096 / std::mem::size_of::<T>()).max(1);
        v.iter_mut().step_by(step).for_each(|x| *x = T::one());
        if !pool_push(v) {
            break;
        }
        made += 1;
    }
    made
}

/// [`recycle`] for a dynamic matrix.
pub fn recycle_matrix(m: Matrix) {
    match m {
        Matrix::F64(a) => recycle(a),
        Matrix::F32(a) => recycle(a),
    }
}

/// A zero-filled row-major array, allocated for fast first touch.
///
/// Every large block septet handles (received operands, products, formed
/// sums, C) is fresh memory that is written once. With 4 KiB pages, the
/// page faults of that first write cost more than the write itself (a 2 MiB
/// huge page is one fault where 4 KiB pages are 512; `cargo bench --bench
/// wire` shows the transfer rate), so on Linux the allocation is advised to
/// use transparent huge pages before it is touched.
/// Elsewhere, or if the kernel declines, this is plain `Array2::zeros`.
pub fn alloc_zeroed<T: Element>(shape: (usize, usize)) -> Array2<T> {
    let len = shape.0.checked_mul(shape.1).expect("matrix size overflows usize");
    let data = vec![T::zero(); len];
    advise_huge_pages(&data);
    Array2::from_shape_vec(shape, data).expect("length matches shape")
}

#[cfg(target_os = "linux")]
fn advise_huge_pages<T>(data: &[T]) {
    const HUGE: usize = 2 << 20;
    let start = data.as_ptr() as usize;
    let (first, last) = (start.next_multiple_of(HUGE), (start + std::mem::size_of_val(data)) & !(HUGE - 1));
    if last > first {
        // SAFETY: the range lies inside `data`'s allocation; MADV_HUGEPAGE
        // only changes how the kernel backs the pages, never their contents.
        unsafe {
            libc::madvise(first as *mut libc::c_void, last - first, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages<T>(_data: &[T]) {}

/// A faer view over an ndarray view, sharing its memory.
fn faer_ref<'a, T: Element>(a: &ArrayView2<'a, T>) -> faer::MatRef<'a, T> {
    let (rows, cols) = a.dim();
    let strides = a.strides();
    // SAFETY: the pointer, shape and strides all come from a live ndarray view
    // with lifetime 'a, so every (i, j) within the shape addresses an
    // initialised element that outlives the returned view.
    unsafe { faer::MatRef::from_raw_parts(a.as_ptr(), rows, cols, strides[0], strides[1]) }
}

/// A mutable faer view over an ndarray view, sharing its memory.
fn faer_mut<'a, T: Element>(a: &mut ArrayViewMut2<'a, T>) -> faer::MatMut<'a, T> {
    let (rows, cols) = a.dim();
    let strides = a.strides().to_owned();
    // SAFETY: as in `faer_ref`; the mutable borrow of the ndarray view is
    // exclusive for 'a, so nothing else aliases the elements.
    unsafe { faer::MatMut::from_raw_parts_mut(a.as_mut_ptr(), rows, cols, strides[0], strides[1]) }
}

/// Parallelism for faer leaf products: `threads == 0` means every thread of
/// the current rayon pool.
pub fn parallelism(threads: usize) -> faer::Par {
    if threads == 1 {
        faer::Par::Seq
    } else {
        faer::Par::rayon(threads)
    }
}

/// `out = x · y` (or `out += x · y` when `accumulate`) with faer, reading and
/// writing ndarray memory in place.
///
/// # Errors
/// [`Error::ShapeMismatch`] when `x`'s cols differ from `y`'s rows, or `out`
/// is not `x.rows × y.cols`.
pub fn matmul_into<T: Element>(
    out: ArrayViewMut2<'_, T>,
    x: ArrayView2<'_, T>,
    y: ArrayView2<'_, T>,
    accumulate: bool,
    par: faer::Par,
) -> Result<()> {
    let mut out = out;
    if x.ncols() != y.nrows() {
        return Err(Error::ShapeMismatch { left: x.dim(), right: y.dim() });
    }
    if out.dim() != (x.nrows(), y.ncols()) {
        return Err(Error::ShapeMismatch { left: out.dim(), right: (x.nrows(), y.ncols()) });
    }
    let accum = if accumulate { faer::Accum::Add } else { faer::Accum::Replace };
    faer::linalg::matmul::matmul(faer_mut(&mut out), accum, faer_ref(&x), faer_ref(&y), T::one(), par);
    Ok(())
}

/// `x · y` into a new row-major array, with faer.
///
/// # Errors
/// [`Error::ShapeMismatch`] when `x`'s cols differ from `y`'s rows.
pub fn matmul<T: Element>(x: ArrayView2<'_, T>, y: ArrayView2<'_, T>, par: faer::Par) -> Result<Array2<T>> {
    if x.ncols() != y.nrows() {
        return Err(Error::ShapeMismatch { left: x.dim(), right: y.dim() });
    }
    // `Accum::Replace` never reads the output, so a recycled buffer will do.
    let mut out = alloc_uninit::<T>((x.nrows(), y.ncols()));
    matmul_into(out.view_mut(), x, y, false, par)?;
    Ok(out)
}

/// Multiplies two dynamic matrices of the same dtype.
///
/// # Errors
/// [`Error::DtypeMismatch`] or [`Error::ShapeMismatch`].
pub fn matmul_dyn(x: &Matrix, y: &Matrix, par: faer::Par) -> Result<Matrix> {
    match (x, y) {
        (Matrix::F64(x), Matrix::F64(y)) => Ok(Matrix::F64(matmul(x.view(), y.view(), par)?)),
        (Matrix::F32(x), Matrix::F32(y)) => Ok(Matrix::F32(matmul(x.view(), y.view(), par)?)),
        _ => Err(Error::DtypeMismatch { left: x.dtype(), right: y.dtype() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, s};

    #[test]
    fn faer_product_on_strided_views_matches_ndarray() {
        let a = Array2::from_shape_fn((6, 8), |(i, j)| (i * 8 + j) as f64 % 7.0 - 3.0);
        let b = Array2::from_shape_fn((8, 6), |(i, j)| (i + 2 * j) as f64 % 5.0 - 2.0);
        let (x, y) = (a.slice(s![1..5, 2..7]), b.slice(s![3..8, 0..3]));
        let got = matmul(x, y, faer::Par::Seq).unwrap();
        assert_eq!(got, x.dot(&y));
        let mut acc = Array2::from_elem((4, 3), 1.0);
        matmul_into(acc.view_mut(), x, y, true, faer::Par::Seq).unwrap();
        assert_eq!(acc, x.dot(&y) + 1.0);
    }

    #[test]
    fn replace_overwrites_every_element_of_a_recycled_buffer() {
        let x = Array2::from_shape_fn((300, 200), |(i, j)| ((i + j) % 7) as f64);
        let y = Array2::from_shape_fn((200, 700), |(i, j)| ((i * j) % 5) as f64);
        // A NaN-filled buffer of the product's size, handed back for reuse.
        recycle(Array2::from_elem((300, 700), f64::NAN));
        let got = matmul(x.view(), y.view(), faer::Par::Seq).unwrap();
        assert_eq!(got, x.dot(&y));
        let again = alloc_uninit::<f64>((300, 700));
        assert_eq!(again.dim(), (300, 700));
    }

    #[test]
    fn mismatched_inner_dimensions_are_an_error_not_a_panic() {
        let x = array![[1.0f32, 2.0]];
        let y = array![[1.0f32, 2.0]];
        match matmul(x.view(), y.view(), faer::Par::Seq) {
            Err(Error::ShapeMismatch { left, right }) => assert_eq!((left, right), ((1, 2), (1, 2))),
            other => panic!("expected a shape mismatch, got {other:?}"),
        }
    }
}
