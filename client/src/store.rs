//! [`Store`]: where a job's matrices live — in memory, or mapped from a
//! file so that a job larger than the requester's memory still runs.
//!
//! A mapped matrix is row-major elements at an offset in a file (an `.npy`
//! file's data, after its header). Its pages belong to the page cache: the
//! kernel reads them in as the job reads them and drops (or, for C, writes
//! back) the ones it needs room for, so none of it counts as the
//! requester's anonymous memory. The requester reads A and B through
//! [`Store::view`] and writes C through [`Store::view_mut`] whatever the
//! variant; parsing headers is the caller's (the CLI's `npy` module).
//!
//! Why mapping rather than chunked reads: the relay and the direct plan
//! both read A and B in blocks of rows of one quadrant (a strided window
//! of the file), verification reads every quadrant once more, and C is
//! written panel by panel in four places at once; a mapping serves all of
//! them with the code that serves an in-memory array, and the page cache
//! does the read-ahead and write-back that chunked I/O would do by hand.
//!
//! A borrowed matrix ([`Store::borrowed`]) is someone else's memory — a
//! NumPy array's buffer, read in place — kept alive by an owner value the
//! store drops last; the caller promises that nobody writes it meanwhile.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;

use memmap2::{Mmap, MmapMut};
use ndarray::{Array2, ArrayView2, ArrayViewMut2};
use septet_common::Element;

/// Where a matrix's elements are.
enum Inner<T> {
    /// An array of the caller's, shared.
    Shared(Arc<Array2<T>>),
    /// An array owned here.
    Owned(Array2<T>),
    /// Read-only, mapped from a file at `offset`.
    Mapped(Mmap, usize),
    /// Writable, mapped from a file at `offset` (changes go to the file).
    MappedMut(MmapMut, usize),
    /// Read-only, someone else's row-major elements (see [`Store::borrowed`]).
    Borrowed(Borrowed<T>),
}

/// Elements lent by the caller of [`Store::borrowed`], and what keeps them.
struct Borrowed<T> {
    ptr: *const T,
    /// Dropped after `ptr`'s last use: the store is dropped whole.
    _owner: Box<dyn Send + Sync>,
}

// SAFETY: the elements are only read, from any thread (the contract of
// `Store::borrowed`: valid and unwritten while the store lives); `T` is a
// float, itself `Send + Sync`, and the owner is `Send + Sync` by its type.
unsafe impl<T: Send + Sync> Send for Borrowed<T> {}
// SAFETY: as for `Send`: shared access is reads only.
unsafe impl<T: Send + Sync> Sync for Borrowed<T> {}

/// A row-major `rows × cols` matrix of `T`, in memory or in a file.
pub struct Store<T> {
    inner: Inner<T>,
    shape: (usize, usize),
    _t: PhantomData<T>,
}

impl<T> std::fmt::Debug for Store<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.inner {
            Inner::Shared(_) | Inner::Owned(_) => "memory",
            Inner::Mapped(..) | Inner::MappedMut(..) => "mapped",
            Inner::Borrowed(_) => "borrowed",
        };
        f.debug_struct("Store").field("shape", &self.shape).field("kind", &kind).finish()
    }
}

impl<T: Element> From<Array2<T>> for Store<T> {
    fn from(a: Array2<T>) -> Self {
        let a = if a.is_standard_layout() { a } else { a.as_standard_layout().into_owned() };
        Store { shape: a.dim(), inner: Inner::Owned(a), _t: PhantomData }
    }
}

impl<T: Element> From<Arc<Array2<T>>> for Store<T> {
    fn from(a: Arc<Array2<T>>) -> Self {
        if !a.is_standard_layout() {
            return Store::from(a.as_standard_layout().into_owned());
        }
        Store { shape: a.dim(), inner: Inner::Shared(a), _t: PhantomData }
    }
}

/// Bytes of a `shape` matrix of `T`, if they fit in memory's address space.
fn data_len<T>(shape: (usize, usize)) -> std::io::Result<usize> {
    shape
        .0
        .checked_mul(shape.1)
        .and_then(|e| e.checked_mul(std::mem::size_of::<T>()))
        .ok_or_else(|| std::io::Error::other("the matrix's size overflows"))
}

impl<T: Element> Store<T> {
    /// A zeroed matrix in memory.
    pub fn zeros(shape: (usize, usize)) -> Self {
        Store::from(septet_common::matrix::alloc_zeroed::<T>(shape))
    }

    /// The `shape` matrix of row-major elements at `ptr`, read in place (no
    /// copy); `owner` is kept until the store is dropped, after every read.
    ///
    /// # Safety
    /// `ptr` must be aligned for `T` and point to `shape.0 × shape.1`
    /// initialised elements, row after row, that stay allocated and that
    /// nobody writes for as long as the store lives (however long a job
    /// keeps it: tasks hold it by `Arc`). Making that hold is the caller's:
    /// `owner` can keep the memory allocated, and the caller must not let
    /// it be written before it sees the owner dropped.
    pub unsafe fn borrowed(ptr: *const T, shape: (usize, usize), owner: Box<dyn Send + Sync>) -> Self {
        debug_assert!(ptr.is_aligned(), "borrowed elements are aligned");
        Store { inner: Inner::Borrowed(Borrowed { ptr, _owner: owner }), shape, _t: PhantomData }
    }

    /// Maps the `shape` matrix at `offset` in the file at `path`, read-only.
    /// The file must hold little-endian `T`s there, and must not change
    /// while the store lives (nothing here can stop another process from
    /// truncating it; reading past a truncated end would fault).
    ///
    /// # Errors
    /// The file cannot be opened or mapped, is too short, or `offset` is
    /// not aligned for `T`.
    pub fn open(path: &Path, offset: usize, shape: (usize, usize)) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let len = data_len::<T>(shape)?;
        let need = offset.checked_add(len).ok_or_else(|| std::io::Error::other("the file's size overflows"))?;
        if (file.metadata()?.len() as u128) < need as u128 {
            return Err(std::io::Error::other(format!("holds fewer than the {need} bytes its shape needs")));
        }
        check_aligned::<T>(offset)?;
        // SAFETY: the map is read-only and lives as long as the store; the
        // file must not be truncated meanwhile (documented above).
        let map = unsafe { Mmap::map(&file)? };
        Ok(Store { inner: Inner::Mapped(map, offset), shape, _t: PhantomData })
    }

    /// Creates (or truncates) the file at `path`, writes `header` at its
    /// start and maps a zeroed `shape` matrix right after it, writable: what
    /// the job writes into [`Store::view_mut`] goes to the file. The data
    /// part is a hole until written (no disk, no memory).
    ///
    /// # Errors
    /// The file cannot be created, sized or mapped, or the header's length
    /// is not aligned for `T`.
    pub fn create(path: &Path, header: &[u8], shape: (usize, usize)) -> std::io::Result<Self> {
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        file.write_all(header)?;
        Self::map_new(&file, header.len(), shape)
    }

    /// A zeroed `shape` matrix in a file of its own in `dir`, removed at once
    /// (the mapping keeps its pages until the store is dropped): scratch
    /// space that the kernel can write back instead of the requester
    /// holding it in memory.
    ///
    /// # Errors
    /// The file cannot be created, sized or mapped.
    pub fn scratch(dir: &Path, shape: (usize, usize)) -> std::io::Result<Self> {
        let path = dir.join(format!(".septet-scratch-{}-{}", std::process::id(), rand::random::<u64>()));
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        let _ = std::fs::remove_file(&path);
        Self::map_new(&file, 0, shape)
    }

    /// A zeroed `shape` matrix: a [`Store::scratch`] file in `dir` if one
    /// is given (a job out of core), else in memory.
    ///
    /// # Errors
    /// As [`Store::scratch`].
    pub fn zeroed_in(dir: Option<&Path>, shape: (usize, usize)) -> std::io::Result<Self> {
        match dir {
            Some(dir) => Self::scratch(dir, shape),
            None => Ok(Self::zeros(shape)),
        }
    }

    fn map_new(file: &File, offset: usize, shape: (usize, usize)) -> std::io::Result<Self> {
        check_aligned::<T>(offset)?;
        let len = data_len::<T>(shape)?;
        file.set_len((offset + len) as u64)?;
        if len == 0 {
            // A zero-length mapping is refused by mmap(2): keep it in memory.
            return Ok(Store::zeros(shape));
        }
        // SAFETY: the file is this process's own (created or truncated
        // just now); the map lives as long as the store.
        let map = unsafe { MmapMut::map_mut(file)? };
        Ok(Store { inner: Inner::MappedMut(map, offset), shape, _t: PhantomData })
    }

    /// Whether the matrix is mapped from a file.
    pub fn is_mapped(&self) -> bool {
        matches!(self.inner, Inner::Mapped(..) | Inner::MappedMut(..))
    }

    /// (rows, cols).
    pub fn dim(&self) -> (usize, usize) {
        self.shape
    }

    /// Rows.
    pub fn nrows(&self) -> usize {
        self.shape.0
    }

    /// Columns.
    pub fn ncols(&self) -> usize {
        self.shape.1
    }

    /// The elements, wherever they are.
    pub fn view(&self) -> ArrayView2<'_, T> {
        let (bytes, offset) = match &self.inner {
            Inner::Shared(a) => return a.view(),
            Inner::Owned(a) => return a.view(),
            Inner::Mapped(m, o) => (&m[..], *o),
            Inner::MappedMut(m, o) => (&m[..], *o),
            Inner::Borrowed(b) => {
                // SAFETY: `Store::borrowed`'s contract: `len` aligned,
                // initialised elements that nobody writes while we live.
                let data = unsafe { std::slice::from_raw_parts(b.ptr, self.shape.0 * self.shape.1) };
                return ArrayView2::from_shape(self.shape, data).expect("the length matches the shape");
            }
        };
        let len = self.shape.0 * self.shape.1;
        // SAFETY: `open`/`map_new` checked that the map holds `len` elements
        // from the aligned `offset`; any bit pattern is a valid float.
        let data = unsafe { std::slice::from_raw_parts(bytes.as_ptr().add(offset).cast::<T>(), len) };
        ArrayView2::from_shape(self.shape, data).expect("the length matches the shape")
    }

    /// The elements, writable.
    ///
    /// # Panics
    /// On a read-only mapping, a shared or a borrowed array: a job writes only the C it
    /// created, never its inputs.
    pub fn view_mut(&mut self) -> ArrayViewMut2<'_, T> {
        let (bytes, offset) = match &mut self.inner {
            Inner::Owned(a) => return a.view_mut(),
            Inner::MappedMut(m, o) => (&mut m[..], *o),
            Inner::Shared(_) | Inner::Mapped(..) | Inner::Borrowed(_) => {
                panic!("a job writes only the C it created")
            }
        };
        let len = self.shape.0 * self.shape.1;
        // SAFETY: as in `view`, and the map is exclusively borrowed.
        let data = unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().add(offset).cast::<T>(), len) };
        ArrayViewMut2::from_shape(self.shape, data).expect("the length matches the shape")
    }

    /// The matrix as an array in memory: an owned one is moved out, any
    /// other copied.
    pub fn into_owned(self) -> Array2<T> {
        match self.inner {
            Inner::Owned(a) => a,
            Inner::Shared(a) => Arc::try_unwrap(a).unwrap_or_else(|a| (*a).clone()),
            _ => self.view().to_owned(),
        }
    }

    /// Writes a mapped C's changes to its file and waits for the write.
    ///
    /// # Errors
    /// The kernel's, from msync(2).
    pub fn flush(&self) -> std::io::Result<()> {
        match &self.inner {
            Inner::MappedMut(m, _) => m.flush(),
            _ => Ok(()),
        }
    }
}

fn check_aligned<T>(offset: usize) -> std::io::Result<()> {
    if offset % std::mem::align_of::<T>() != 0 {
        return Err(std::io::Error::other(format!(
            "its data starts at byte {offset}, not aligned for {}-byte elements",
            std::mem::align_of::<T>()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapped_matrix_reads_and_writes_like_one_in_memory() {
        let dir = std::env::temp_dir().join(format!("septet-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.bin");
        let header = [7u8; 16];
        let mut c = Store::<f64>::create(&path, &header, (3, 5)).unwrap();
        assert!(c.is_mapped());
        assert!(c.view().iter().all(|&v| v == 0.0), "a new C is zeroed");
        c.view_mut()[[2, 4]] = 1.5;
        c.view_mut()[[0, 1]] = -2.0;
        c.flush().unwrap();
        drop(c);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 16 + 15 * 8);
        assert_eq!(&bytes[..16], &header);
        let a = Store::<f64>::open(&path, 16, (3, 5)).unwrap();
        assert_eq!(a.view()[[2, 4]], 1.5);
        assert_eq!(a.view()[[0, 1]], -2.0);
        assert_eq!(a.into_owned().sum(), -0.5);
        assert!(Store::<f64>::open(&path, 16, (4, 5)).is_err(), "too short for its shape");
        assert!(Store::<f64>::open(&path, 12, (1, 1)).is_err(), "unaligned");
        let mut s = Store::<f32>::scratch(&dir, (4, 4)).unwrap();
        s.view_mut().fill(3.0);
        assert_eq!(s.view().sum(), 48.0);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "scratch files are unlinked at once");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_borrowed_matrix_is_read_in_place_and_drops_its_owner_last() {
        let data: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        // SAFETY: `data` outlives the store (dropped below, before `data`)
        // and is not written meanwhile.
        let s = Arc::new(unsafe { Store::borrowed(data.as_ptr(), (3, 4), Box::new(tx)) });
        assert_eq!(s.view().as_ptr(), data.as_ptr(), "no copy");
        assert_eq!(s.view()[[2, 1]], 9.0);
        assert_eq!(format!("{s:?}"), "Store { shape: (3, 4), kind: \"borrowed\" }");
        let reader = {
            let s = s.clone();
            std::thread::spawn(move || s.view().sum())
        };
        assert_eq!(reader.join().unwrap(), 66.0);
        assert!(rx.try_recv().is_err(), "the owner lives while the store does");
        drop(s);
        assert_eq!(rx.recv(), Err(std::sync::mpsc::RecvError), "dropping the store drops the owner");
    }
}
