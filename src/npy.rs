//! Reading and writing `.npy` files for `septet multiply`, with the header
//! checked before anything is allocated: a 2-D float64/float32 array whose
//! file holds exactly the bytes its shape declares.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use ndarray::{Array2, ArrayView2};
use ndarray_npy::{read_npy, write_npy};
use septet_client::Store;
use septet_common::{Dtype, Element};

/// A bad input file: reported on one line, exit status 2, before any lease.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct InputError {
    /// The file.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

fn bad(path: &Path, reason: impl Into<String>) -> InputError {
    InputError { path: path.display().to_string(), reason: reason.into() }
}

/// What an `.npy` header declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NpyInfo {
    /// Element type.
    pub dtype: Dtype,
    /// (rows, cols).
    pub shape: (usize, usize),
    /// Where the data starts in the file.
    pub offset: usize,
    /// Little-endian, row-major data: it can be used in place (mapped).
    pub in_place: bool,
}

/// The value of `key` in the header dict: from after `'key':` to the next
/// top-level comma or closing brace.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let start = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[start..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') { rest.find(')')? + 1 } else { rest.find([',', '}'])? };
    Some(rest[..end].trim())
}

/// Reads and checks an `.npy` header.
///
/// # Errors
/// [`InputError`] when the file cannot be read, is not `.npy`, is not a
/// 2-D float64/float32 array, or its size does not match its shape.
pub fn inspect(path: &Path) -> Result<NpyInfo, InputError> {
    let mut file = File::open(path).map_err(|e| bad(path, format!("cannot open: {e}")))?;
    let size = file.metadata().map_err(|e| bad(path, format!("cannot stat: {e}")))?.len();
    let mut prefix = [0u8; 10];
    file.read_exact(&mut prefix).map_err(|_| bad(path, "too short to be an .npy file"))?;
    if &prefix[..6] != b"\x93NUMPY" {
        return Err(bad(path, "not an .npy file (bad magic bytes)"));
    }
    let (header_len, skip) = match prefix[6] {
        1 => (u16::from_le_bytes([prefix[8], prefix[9]]) as usize, 0),
        2 | 3 => {
            let mut more = [0u8; 2];
            file.read_exact(&mut more).map_err(|_| bad(path, "truncated header"))?;
            (u32::from_le_bytes([prefix[8], prefix[9], more[0], more[1]]) as usize, 2)
        }
        v => return Err(bad(path, format!("unsupported .npy version {v}"))),
    };
    if header_len > 1 << 20 {
        return Err(bad(path, format!("header of {header_len} bytes is implausibly large")));
    }
    let mut header = vec![0u8; header_len];
    file.read_exact(&mut header).map_err(|_| bad(path, "truncated header"))?;
    let header = String::from_utf8_lossy(&header);
    let descr =
        dict_value(&header, "descr").ok_or_else(|| bad(path, "header has no 'descr'"))?.trim_matches(['\'', '"']);
    let dtype = match descr {
        "<f8" | "=f8" | ">f8" => Dtype::F64,
        "<f4" | "=f4" | ">f4" => Dtype::F32,
        other => {
            return Err(bad(
                path,
                format!(
                    "holds {other} elements; septet multiplies float64 or float32: convert it first, e.g. in Python \
                     np.save(path, np.load(path).astype(np.float64))"
                ),
            ))
        }
    };
    let shape_text = dict_value(&header, "shape").ok_or_else(|| bad(path, "header has no 'shape'"))?;
    let dims: Vec<usize> = shape_text
        .trim_matches(['(', ')'])
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|d| d.parse().map_err(|_| bad(path, format!("bad shape {shape_text}"))))
        .collect::<Result<_, _>>()?;
    let [rows, cols] = dims[..] else {
        return Err(bad(
            path,
            format!("is a {}-D array with shape {shape_text}; septet needs a 2-D matrix", dims.len()),
        ));
    };
    let data =
        rows.checked_mul(cols).and_then(|e| e.checked_mul(dtype.size())).ok_or_else(|| bad(path, "shape overflows"))?;
    let expected = (10 + skip + header_len) as u64 + data as u64;
    if size != expected {
        let what = if size < expected { "truncated" } else { "has trailing bytes" };
        return Err(bad(
            path,
            format!("{what}: a {rows}×{cols} {dtype} array needs {expected} bytes, the file has {size}"),
        ));
    }
    let little = !descr.starts_with('>') || cfg!(target_endian = "big");
    let fortran = dict_value(&header, "fortran_order").is_some_and(|v| v == "True");
    Ok(NpyInfo { dtype, shape: (rows, cols), offset: 10 + skip + header_len, in_place: little && !fortran })
}

/// Reads a checked `.npy` file as `T`.
///
/// # Errors
/// [`InputError`] as [`inspect`], or when the file's dtype is not `T`.
pub fn load<T: Element + ndarray_npy::ReadableElement>(path: &Path) -> Result<Array2<T>, InputError> {
    let info = inspect(path)?;
    if info.dtype != T::DTYPE {
        return Err(bad(path, format!("holds {} but {} was asked for", info.dtype, T::DTYPE)));
    }
    read_npy(path).map_err(|e| bad(path, e.to_string()))
}

/// Refuses a matrix holding NaN or ±inf, naming the first such element (in
/// row-major order): the grid's Freivalds check cannot tell a right product
/// of such inputs from a wrong one.
///
/// # Errors
/// [`InputError`] naming `path`, the element's (row, col) and its value.
pub fn check_finite<T: Element>(path: &Path, x: ArrayView2<'_, T>) -> Result<(), InputError> {
    match x.indexed_iter().find(|(_, v)| !v.to_f64().is_finite()) {
        None => Ok(()),
        Some(((row, col), v)) => Err(bad(
            path,
            format!(
                "element ({row}, {col}) is {}; products of non-finite values cannot be verified \
                 (pass --verify off to multiply them unchecked)",
                v.to_f64()
            ),
        )),
    }
}

/// [`load`], then [`check_finite`] unless `allow_non_finite`.
///
/// # Errors
/// As [`load`] and [`check_finite`].
pub fn load_input<T: Element + ndarray_npy::ReadableElement>(
    path: &Path,
    allow_non_finite: bool,
) -> Result<Array2<T>, InputError> {
    let x = load(path)?;
    if !allow_non_finite {
        check_finite(path, x.view())?;
    }
    Ok(x)
}

/// A checked `.npy` file as a [`Store`] of `T`: mapped in place (nothing
/// of it read into the requester's memory) when its data is little-endian
/// and row-major, else loaded. Non-finite elements are refused as in
/// [`load_input`], in one pass over the mapping.
///
/// # Errors
/// As [`load_input`], or when the file cannot be mapped.
pub fn map_input<T: Element + ndarray_npy::ReadableElement>(
    path: &Path,
    allow_non_finite: bool,
) -> Result<Store<T>, InputError> {
    let info = inspect(path)?;
    if info.dtype != T::DTYPE {
        return Err(bad(path, format!("holds {} but {} was asked for", info.dtype, T::DTYPE)));
    }
    if !info.in_place {
        return load_input::<T>(path, allow_non_finite).map(Store::from);
    }
    let x = Store::<T>::open(path, info.offset, info.shape).map_err(|e| bad(path, format!("cannot map: {e}")))?;
    if !allow_non_finite {
        check_finite(path, x.view())?;
    }
    Ok(x)
}

/// The header of a `.npy` version 1 file holding a row-major
/// little-endian `shape` array of `dtype`, padded (as NumPy pads) so the
/// data starts at a multiple of 64 bytes.
pub fn header(dtype: Dtype, shape: (usize, usize)) -> Vec<u8> {
    let descr = match dtype {
        Dtype::F64 => "<f8",
        Dtype::F32 => "<f4",
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({}, {}), }}", shape.0, shape.1);
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// A zeroed `shape` C of `T` mapped from a new `.npy` file at `path`
/// (header first, the data written in place as the job delivers it).
///
/// # Errors
/// The file cannot be created, sized or mapped, with the path.
pub fn create_output<T: Element>(path: &Path, shape: (usize, usize)) -> anyhow::Result<Store<T>> {
    use anyhow::Context;
    Store::create(path, &header(T::DTYPE, shape), shape).with_context(|| format!("could not create {}", path.display()))
}

/// Writes C.
///
/// # Errors
/// Any write error, with the path.
pub fn save<T: Element + ndarray_npy::WritableElement>(path: &Path, c: &Array2<T>) -> anyhow::Result<()> {
    use anyhow::Context;
    write_npy(path, c).with_context(|| format!("could not write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test's scratch directory, removed when dropped.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new() -> Self {
            // One directory per test: tests run in parallel, and each removes its own.
            static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("septet-npy-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn write(&self, name: &str, bytes: &[u8]) -> std::path::PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn npy(descr: &str, shape: &str, data_len: usize) -> Vec<u8> {
        let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend(std::iter::repeat_n(0u8, data_len));
        out
    }

    #[test]
    fn headers_are_checked_before_reading_data() {
        let dir = Scratch::new();
        let ok = dir.write("ok.npy", &npy("<f8", "(3, 4)", 96));
        assert_eq!(inspect(&ok).unwrap(), NpyInfo { dtype: Dtype::F64, shape: (3, 4), offset: 128, in_place: true });
        assert_eq!(load::<f64>(&ok).unwrap().dim(), (3, 4));
        assert!(load::<f32>(&ok).unwrap_err().reason.contains("holds f64"));
        let f32s = dir.write("f32.npy", &npy("<f4", "(2, 2)", 16));
        assert_eq!(inspect(&f32s).unwrap().dtype, Dtype::F32);
        for (name, bytes, needle) in [
            ("short.npy", npy("<f8", "(3, 4)", 95), "truncated"),
            ("long.npy", npy("<f8", "(3, 4)", 97), "trailing"),
            ("int.npy", npy("<i8", "(3, 4)", 96), "<i8"),
            ("cube.npy", npy("<f8", "(2, 2, 2)", 64), "3-D"),
            ("vec.npy", npy("<f8", "(4,)", 32), "1-D"),
            ("huge.npy", npy("<f8", "(4000000000, 4000000000)", 8), "overflows"),
            ("text.npy", b"rows,cols\n1,2\n".to_vec(), "magic"),
            ("empty.npy", Vec::new(), "too short"),
        ] {
            let err = inspect(&dir.write(name, &bytes)).unwrap_err();
            assert!(err.reason.contains(needle), "{name}: {err}");
        }
        assert!(inspect(Path::new("/nonexistent/septet.npy")).unwrap_err().reason.contains("cannot open"));
    }

    #[test]
    fn c_is_written_in_place_as_a_file_numpy_reads_and_inputs_are_mapped_only_when_they_can_be() {
        let dir = Scratch::new();
        let path = dir.0.join("c.npy");
        let mut c = create_output::<f64>(&path, (3, 5)).unwrap();
        c.view_mut().indexed_iter_mut().for_each(|((i, j), v)| *v = (i * 5 + j) as f64);
        c.flush().unwrap();
        drop(c);
        let back: Array2<f64> = ndarray_npy::read_npy(&path).unwrap();
        assert_eq!(back, Array2::from_shape_fn((3, 5), |(i, j)| (i * 5 + j) as f64));
        let info = inspect(&path).unwrap();
        assert_eq!((info.offset % 64, info.in_place), (0, true));
        assert_eq!(map_input::<f64>(&path, false).unwrap().view(), back.view());
        // Big-endian or column-major data cannot be used in place: loaded instead.
        let big = dir.write("big.npy", &npy(">f8", "(3, 4)", 96));
        assert!(!inspect(&big).unwrap().in_place);
        assert!(!map_input::<f64>(&big, false).unwrap().is_mapped());
        let mut fortran = npy("<f8", "(3, 4)", 96);
        let at = fortran.windows(5).position(|w| w == b"False").unwrap();
        fortran.splice(at..at + 5, b"True ".iter().copied());
        let fortran = dir.write("fortran.npy", &fortran);
        assert!(!inspect(&fortran).unwrap().in_place);
    }

    #[test]
    fn non_finite_elements_are_named_with_their_position_and_value() {
        let path = Path::new("a.npy");
        let mut x = Array2::<f64>::zeros((3, 4));
        assert!(check_finite(path, x.view()).is_ok());
        x[[2, 1]] = f64::NEG_INFINITY;
        x[[2, 3]] = f64::NAN;
        let err = check_finite(path, x.view()).unwrap_err().to_string();
        assert!(err.starts_with("a.npy: element (2, 1) is -inf;"), "{err}");
        x[[1, 3]] = f64::NAN;
        assert!(check_finite(path, x.view()).unwrap_err().to_string().contains("element (1, 3) is NaN"));
        let y = Array2::<f32>::from_elem((1, 2), f32::INFINITY);
        assert!(check_finite(path, y.view()).unwrap_err().to_string().contains("element (0, 0) is inf"));
    }
}
