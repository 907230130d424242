//! Freivalds' check of the products workers return, before any is used.
//!
//! For product i with operands X = Σ±A_q and Y = Σ±B_q, a correct M
//! satisfies M·r = X·(Y·r) for any vector r. The requester never keeps X or
//! Y: Y·R is formed from the products B_q·R of B's quadrants, and X·(Y·R)
//! from one pass over each quadrant of A with all the vectors that need it,
//! so the whole precomputation reads A and B once (their norms come from the
//! same pass) and can run while the operands are on the wire. Checking a
//! returned M then costs one product M·R: O(m·n) per round — which the
//! requester forms row block by row block while M arrives (R is drawn
//! first, [`Verifier::draw`]), so M is read while still in cache.
//!
//! R has `rounds` columns of entries ±U(½, 1) — random signs and sizes,
//! never near zero — drawn fresh for every job from the thread RNG, so a
//! worker cannot know them. A single wrong element off by more than twice
//! the tolerance is therefore always caught; several wrong elements in one
//! row could only cancel by a coincidence of the random signs and sizes.
//!
//! Tolerance. In floating point, fl(X·Y) differs from X·Y by at most
//! γ_k·|X|·|Y| elementwise, with γ_k ≈ k·u (u the dtype's unit roundoff, k
//! the inner dimension); computing M·R and X·(Y·R) adds errors of the same
//! kind. So a correct product satisfies, row by row,
//!
//! ```text
//! |M·r − X·(Y·r)| ≤ c·(k + n + 2)·u·‖X‖∞·‖Y‖∞·‖r‖∞
//! ```
//!
//! with ‖X‖∞ ≤ Σ‖A_q‖∞ (max row sum of |A_q|) and likewise for Y, and c = 4
//! for safety. Errors larger than that are not rounding: the product is
//! rejected. (Errors below rounding level cannot be told from rounding by
//! any check and do not change the answer beyond the dtype's precision.)
//!
//! Non-finite values. With NaN or ±inf in A, B or a product (or values so
//! large that the bound overflows), the check's arithmetic means nothing:
//! it could pass a wrong product or fail a right one. Such a check returns
//! [`CheckError::NonFinite`], never a pass and never a
//! [`Error::Verification`] that would blame the worker.

use ndarray::{s, Array2, ArrayView2, Axis};
use rand::RngExt;
use septet_common::matrix::{matmul, matmul_into, parallelism};

use septet_common::strassen::{quadrant, Product, Quad, Sign, Split, PRODUCTS};
use septet_common::{Element, Error, Result};

/// Why a product was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The product is wrong or malformed ([`Error::Verification`],
    /// [`Error::ShapeMismatch`]): the worker that sent it is at fault.
    #[error(transparent)]
    Rejected(#[from] Error),
    /// Non-finite values make the check undecidable: nobody can be blamed,
    /// and asking another worker would not help.
    #[error("{product}: {cause}; cannot verify")]
    NonFinite {
        /// "M1".."M7".
        product: &'static str,
        /// Where the non-finite values are.
        cause: NonFinite,
    },
}

/// Where the values that defeat the check are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NonFinite {
    /// The reference X·(Y·r) or the tolerance is not finite: A or B holds
    /// NaN or ±inf, or values so large that the bound overflows.
    #[error("the check's reference or tolerance is not finite (A or B holds NaN or ±inf, or values so large that the bound overflows)")]
    Inputs,
    /// The reference and tolerance are finite but M·r is not: the product
    /// holds NaN or ±inf.
    #[error("the product contains non-finite values (NaN or ±inf)")]
    Product,
}

/// How a check's `got` (a product times the check's vectors) differs from
/// what the requester expects: [`compare`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Compare {
    /// Non-finite values make it undecidable.
    NonFinite(NonFinite),
    /// Off by more than the tolerance: the worst |got − want| and its row
    /// (infinite for shapes that differ).
    Off {
        /// The worst absolute difference.
        worst: f64,
        /// Its row in `got`.
        row: usize,
    },
}

/// Compares `got` with `want` elementwise within `tolerance`: the one rule
/// for every check of a product, the requester's ([`Verifier`], its relay)
/// and a reducer's of the panels it is sent.
///
/// # Errors
/// [`Compare::NonFinite`] when the tolerance or `want` is not finite
/// ([`NonFinite::Inputs`]) or `got` is not ([`NonFinite::Product`]);
/// [`Compare::Off`] when the shapes differ or a difference passes the
/// tolerance.
pub fn compare<T: Element>(got: ArrayView2<'_, T>, want: ArrayView2<'_, T>, tolerance: f64) -> Result<(), Compare> {
    if got.dim() != want.dim() {
        return Err(Compare::Off { worst: f64::INFINITY, row: 0 });
    }
    if !tolerance.is_finite() || want.iter().any(|x| !x.to_f64().is_finite()) {
        return Err(Compare::NonFinite(NonFinite::Inputs));
    }
    if got.iter().any(|x| !x.to_f64().is_finite()) {
        return Err(Compare::NonFinite(NonFinite::Product));
    }
    let mut worst = (0.0f64, 0);
    for (((row, _), g), w) in got.indexed_iter().zip(want.iter()) {
        let d = (g.to_f64() - w.to_f64()).abs();
        if d > worst.0 || d.is_nan() {
            worst = (d, row);
        }
    }
    // Both sides are finite, so the difference is too (or +inf when it
    // overflows, which is far above any finite tolerance).
    if worst.0.is_nan() || worst.0 > tolerance {
        return Err(Compare::Off { worst: worst.0, row: worst.1 });
    }
    Ok(())
}

/// Safety factor on the rounding bound.
const SAFETY: f64 = 4.0;
const QUADS: [Quad; 4] = [Quad::Q11, Quad::Q12, Quad::Q21, Quad::Q22];

fn index(q: Quad) -> usize {
    match q {
        Quad::Q11 => 0,
        Quad::Q12 => 1,
        Quad::Q21 => 2,
        Quad::Q22 => 3,
    }
}

/// `x · v[..c, ..]` for `x` r×c (r ≤ `rows`), zero-padded to `rows` rows,
/// and the largest row sum of |x| (its ∞-norm), reading `x` from memory
/// **once**: a block of rows at a time is summed (which brings it into
/// cache), then multiplied by every column of `v` at once with faer while
/// still cached. All the vectors that multiply one quadrant go in one call,
/// so verification reads A and B once.
fn product_and_norm<T: Element>(x: ArrayView2<'_, T>, v: ArrayView2<'_, T>, rows: usize) -> (Array2<T>, f64) {
    /// Rows per block: 32 rows of 2048 f64 are 512 KiB, well inside L2.
    const BLOCK_BYTES: usize = 512 << 10;
    let mut out = Array2::<T>::zeros((rows, v.ncols()));
    let (r, c) = x.dim();
    let v = v.slice(s![..c, ..]);
    let block = (BLOCK_BYTES / (c.max(1) * std::mem::size_of::<T>())).max(1);
    let mut norm = 0.0f64;
    let mut copy: Vec<T> = Vec::new();
    let mut start = 0;
    while start < r {
        let end = (start + block).min(r);
        let xb = x.slice(s![start..end, ..]);
        for row in xb.rows() {
            let row = match row.to_slice() {
                Some(r) => r,
                None => {
                    copy.clear();
                    copy.extend(row.iter().copied());
                    &copy
                }
            };
            norm = norm.max(abs_sum(row));
        }
        matmul_into(out.slice_mut(s![start..end, ..]), xb, v, false, parallelism(1))
            .expect("shapes fit: x block is b×c, v is c×k, out block is b×k");
        start = end;
    }
    (out, norm)
}

/// Σ|x|, with eight independent accumulators so it is not latency-bound.
#[inline(always)]
fn abs_sum<T: Element>(x: &[T]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = x.chunks_exact(8);
    let rest: f64 = chunks.remainder().iter().map(|v| v.to_f64().abs()).sum();
    for c in chunks {
        for k in 0..8 {
            acc[k] += c[k].to_f64().abs();
        }
    }
    acc.iter().sum::<f64>() + rest
}

fn signed_sum<T: Element>(terms: &[(Sign, Quad)], parts: &[Array2<T>; 4]) -> Array2<T> {
    let mut out = Array2::<T>::zeros(parts[0].dim());
    for &(sign, q) in terms {
        match sign {
            Sign::Plus => out += &parts[index(q)],
            Sign::Minus => out -= &parts[index(q)],
        }
    }
    out
}

/// Expected M·R for each of the seven products, and their tolerances.
#[derive(Debug)]
pub struct Verifier<T> {
    r: Array2<T>,
    expected: Vec<Array2<T>>,
    tolerance: Vec<f64>,
}

impl<T: Element> Verifier<T> {
    /// Prepares the check of all seven products of A·B with `rounds` random vectors.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if A and B do not fit `split`.
    pub fn new(a: ArrayView2<'_, T>, b: ArrayView2<'_, T>, split: Split, rounds: usize) -> Result<Self> {
        Self::with_vectors(a, b, split, Self::draw(split, rounds))
    }

    /// Draws R for a job: `rounds` columns of entries ±U(½, 1), one row per
    /// column of the products. Drawn first so that each product's M·R can
    /// be formed while the product arrives, before the rest of the check is
    /// ready.
    pub fn draw(split: Split, rounds: usize) -> Array2<T> {
        let mut rng = rand::rng();
        Array2::from_shape_simple_fn((split.half().2, rounds.max(1)), || {
            let size = rng.random_range(0.5..=1.0);
            T::from_f64(if rng.random_bool(0.5) { size } else { -size })
        })
    }

    /// [`Verifier::new`] with R given (from [`Verifier::draw`]).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if A and B do not fit `split`, or R does not fit the products.
    pub fn with_vectors(a: ArrayView2<'_, T>, b: ArrayView2<'_, T>, split: Split, r: Array2<T>) -> Result<Self> {
        let (m1, k1, n1) = split.half();
        if r.nrows() != n1 || r.ncols() == 0 {
            return Err(Error::ShapeMismatch { left: r.dim(), right: (n1, 1) });
        }
        let r_max = r.iter().fold(0.0f64, |m, v| m.max(v.to_f64().abs()));
        let a_q = QUADS.map(|q| quadrant(a, q, m1, k1));
        let b_q = QUADS.map(|q| quadrant(b, q, k1, n1));

        // B_q·R for each quadrant (and ‖B_q‖∞), then Y_i·R for each product.
        let mut b_norm = [0.0; 4];
        let br: [Array2<T>; 4] = std::array::from_fn(|q| {
            let (p, norm) = product_and_norm(b_q[q], r.view(), k1);
            b_norm[q] = norm;
            p
        });
        let yr: Vec<Array2<T>> = PRODUCTS.iter().map(|p| signed_sum(p.right, &br)).collect();

        // One pass per A quadrant over every Y_i·R that it multiplies.
        let mut a_norm = [0.0; 4];
        let mut expected: Vec<Array2<T>> = vec![Array2::zeros((m1, r.ncols())); 7];
        for q in QUADS {
            let users: Vec<(usize, Sign)> = PRODUCTS
                .iter()
                .enumerate()
                .filter_map(|(i, p)| p.left.iter().find(|(_, lq)| *lq == q).map(|(sign, _)| (i, *sign)))
                .collect();
            let views: Vec<ArrayView2<'_, T>> = users.iter().map(|(i, _)| yr[*i].view()).collect();
            let stacked = ndarray::concatenate(Axis(1), &views).map_err(|e| Error::Invalid(e.to_string()))?;
            let (av, norm) = product_and_norm(a_q[index(q)], stacked.view(), m1);
            a_norm[index(q)] = norm;
            for (slot, (i, sign)) in users.iter().enumerate() {
                let part = av.slice(s![.., slot * r.ncols()..(slot + 1) * r.ncols()]);
                match sign {
                    Sign::Plus => expected[*i] += &part,
                    Sign::Minus => expected[*i] -= &part,
                }
            }
        }
        let u = T::DTYPE.unit_roundoff();
        let tolerance = PRODUCTS
            .iter()
            .map(|p: &Product| {
                let x: f64 = p.left.iter().map(|(_, q)| a_norm[index(*q)]).sum();
                let y: f64 = p.right.iter().map(|(_, q)| b_norm[index(*q)]).sum();
                SAFETY * (k1 + n1 + 2) as f64 * u * x * y * r_max
            })
            .collect();
        Ok(Self { r, expected, tolerance })
    }

    /// X·(Y·R) for product `i` (⌈m/2⌉ × the columns of R).
    pub fn expected(&self, i: usize) -> ArrayView2<'_, T> {
        self.expected[i].view()
    }

    /// The tolerance on |M·r − X·(Y·r)| for product `i`.
    pub fn tolerance(&self, i: usize) -> f64 {
        self.tolerance[i]
    }

    /// Checks product `i` (M1 = 0).
    ///
    /// # Errors
    /// [`CheckError::Rejected`] with [`Error::Verification`] naming the worst
    /// row, its error and the tolerance, or [`Error::ShapeMismatch`] for a
    /// product of the wrong shape; [`CheckError::NonFinite`] when non-finite
    /// values make the check meaningless.
    pub fn check(&self, i: usize, m: ArrayView2<'_, T>) -> Result<(), CheckError> {
        self.check_mr(i, matmul(m, self.r.view(), parallelism(1))?.view())
    }

    /// Checks product `i` from its M·R, formed by the caller with this
    /// job's R (e.g. row block by row block as M arrives).
    ///
    /// # Errors
    /// As [`Verifier::check`].
    pub fn check_mr(&self, i: usize, mr: ArrayView2<'_, T>) -> Result<(), CheckError> {
        if mr.dim() != self.expected[i].dim() {
            return Err(Error::ShapeMismatch { left: mr.dim(), right: self.expected[i].dim() }.into());
        }
        compare(mr, self.expected[i].view(), self.tolerance[i]).map_err(|e| match e {
            Compare::NonFinite(cause) => CheckError::NonFinite { product: PRODUCTS[i].name, cause },
            Compare::Off { worst, row } => Error::Verification(format!(
                "{}: |M·r − X·(Y·r)| is {worst:.3e} in row {row} (tolerance {:.3e})",
                PRODUCTS[i].name, self.tolerance[i]
            ))
            .into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use septet_common::strassen::{naive_matmul, operands};

    fn products<T: Element>(a: &Array2<T>, b: &Array2<T>, split: Split) -> Vec<Array2<T>> {
        PRODUCTS
            .iter()
            .map(|p| {
                let (x, y) = operands(a.view(), b.view(), p, split);
                naive_matmul(x.view(), y.view())
            })
            .collect()
    }

    fn check_all<T: Element>(m: usize, k: usize, n: usize) {
        let mut rng = rand::rng();
        let a = Array2::from_shape_simple_fn((m, k), || T::from_f64(rng.random_range(-1.0..1.0)));
        let b = Array2::from_shape_simple_fn((k, n), || T::from_f64(rng.random_range(-1.0..1.0)));
        let split = Split::of(a.dim(), b.dim()).unwrap();
        let v = Verifier::new(a.view(), b.view(), split, 2).unwrap();
        let all = products(&a, &b, split);
        for (i, mut p) in all.clone().into_iter().enumerate() {
            v.check(i, p.view()).unwrap_or_else(|e| panic!("{m}x{k}x{n} {}: {e}", PRODUCTS[i].name));
            // One element off by a visible amount is caught.
            let (r, c) = (p.nrows() / 2, p.ncols() / 3);
            // r's entries are at least ½ in size: 6× the tolerance must show.
            let bump = if v.tolerance(i) > 0.0 { 6.0 * v.tolerance(i) } else { 1.0 };
            p[[r, c]] = T::from_f64(p[[r, c]].to_f64() + bump);
            assert!(
                matches!(v.check(i, p.view()), Err(CheckError::Rejected(Error::Verification(_)))),
                "{m}x{k}x{n} {}",
                PRODUCTS[i].name
            );
            // So is another task's product, wherever the two really differ.
            let other = &all[(i + 1) % 7];
            if other.iter().zip(all[i].iter()).any(|(x, y)| (x.to_f64() - y.to_f64()).abs() > 1e-2) {
                assert!(
                    v.check(i, other.view()).is_err(),
                    "{m}x{k}x{n} {} took {}",
                    PRODUCTS[i].name,
                    PRODUCTS[(i + 1) % 7].name
                );
            }
        }
    }

    #[test]
    fn compare_names_the_worst_row_and_tells_undecidable_from_wrong() {
        let want = ndarray::array![[1.0f64, 2.0], [3.0, 4.0], [5.0, 6.0]];
        let mut got = want.clone();
        assert_eq!(compare(got.view(), want.view(), 0.0), Ok(()));
        got[[1, 0]] += 0.5;
        got[[2, 1]] -= 0.25;
        assert_eq!(compare(got.view(), want.view(), 0.5), Ok(()));
        assert_eq!(compare(got.view(), want.view(), 0.4), Err(Compare::Off { worst: 0.5, row: 1 }));
        let short = want.slice(ndarray::s![..2, ..]);
        assert_eq!(compare(short, want.view(), 1.0), Err(Compare::Off { worst: f64::INFINITY, row: 0 }));
        assert_eq!(compare(want.view(), want.view(), f64::INFINITY), Err(Compare::NonFinite(NonFinite::Inputs)));
        got[[0, 0]] = f64::NAN;
        assert_eq!(compare(got.view(), want.view(), 1.0), Err(Compare::NonFinite(NonFinite::Product)));
        assert_eq!(compare(want.view(), got.view(), 1.0), Err(Compare::NonFinite(NonFinite::Inputs)));
    }

    #[test]
    fn correct_products_pass_and_wrong_ones_fail() {
        for (m, k, n) in [(1, 1, 1), (3, 5, 7), (2, 1, 2), (64, 64, 64), (129, 257, 65), (100, 3, 1)] {
            check_all::<f64>(m, k, n);
            check_all::<f32>(m, k, n);
        }
    }

    /// A product holding NaN or ±inf is never passed and never blamed on
    /// the worker as a wrong product: the check says it cannot decide.
    #[test]
    fn non_finite_products_are_unverifiable_not_wrong() {
        let a = Array2::from_shape_fn((6, 5), |(i, j)| (i + 2 * j) as f64 - 4.0);
        let b = Array2::from_shape_fn((5, 7), |(i, j)| (3 * i + j) as f64 - 6.0);
        let split = Split::of(a.dim(), b.dim()).unwrap();
        let v = Verifier::new(a.view(), b.view(), split, 2).unwrap();
        let all = products(&a, &b, split);
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            for (i, p) in all.iter().enumerate() {
                let mut p = p.clone();
                p[[1, 2]] = bad;
                match v.check(i, p.view()) {
                    Err(CheckError::NonFinite { product, cause: NonFinite::Product }) => {
                        assert_eq!(product, PRODUCTS[i].name);
                        let text = v.check(i, p.view()).unwrap_err().to_string();
                        assert!(text.contains(PRODUCTS[i].name) && text.contains("cannot verify"), "{text}");
                    }
                    other => panic!("{} with {bad}: {other:?}", PRODUCTS[i].name),
                }
            }
        }
    }

    /// Non-finite inputs make the reference and tolerance non-finite: a
    /// product that reads them, right or wrong, is unverifiable rather than
    /// passed or failed; products that do not read them are checked as usual.
    #[test]
    fn non_finite_inputs_make_the_products_that_read_them_unverifiable() {
        let base = Array2::from_shape_fn((4, 4), |(i, j)| (i * 4 + j) as f64 - 7.0);
        let b = Array2::from_shape_fn((4, 4), |(i, j)| (i + j) as f64 - 3.0);
        let split = Split::of(base.dim(), b.dim()).unwrap();
        let good = products(&base, &b, split);
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut a = base.clone();
            a[[0, 0]] = bad; // in A11
            let v = Verifier::new(a.view(), b.view(), split, 2).unwrap();
            let all = products(&a, &b, split);
            for i in 0..7 {
                let reads_a11 = PRODUCTS[i].left.iter().any(|(_, q)| *q == Quad::Q11);
                for p in [&all[i], &good[i]] {
                    let got = v.check(i, p.view());
                    if reads_a11 {
                        assert!(
                            matches!(got, Err(CheckError::NonFinite { cause: NonFinite::Inputs, .. })),
                            "{} with {bad}: {got:?}",
                            PRODUCTS[i].name
                        );
                    } else {
                        assert!(got.is_ok(), "{} with {bad}: {got:?}", PRODUCTS[i].name);
                    }
                }
            }
        }
        // Finite inputs so large that the bound overflows (f64), or that
        // X·(Y·r) overflows the dtype (f32): unverifiable, not wrong.
        let (huge_a, huge_b) = (base.mapv(|x| x * 1e300), b.mapv(|x| x * 1e300));
        let v = Verifier::new(huge_a.view(), huge_b.view(), split, 2).unwrap();
        let got = v.check(0, Array2::<f64>::zeros((2, 2)).view());
        assert!(matches!(got, Err(CheckError::NonFinite { cause: NonFinite::Inputs, .. })), "{got:?}");
        let (a, b) = (base.mapv(|x| x as f32 * 1e20), b.mapv(|x| x as f32 * 1e20));
        let v = Verifier::new(a.view(), b.view(), split, 2).unwrap();
        let got = v.check(0, Array2::<f32>::zeros((2, 2)).view());
        assert!(matches!(got, Err(CheckError::NonFinite { cause: NonFinite::Inputs, .. })), "{got:?}");
    }
}
