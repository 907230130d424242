//! One level of Strassen's algorithm as pure functions over ndarray views:
//! split A and B into quadrants, form the seven operand pairs, and fold the
//! seven products M1..M7 back into C.
//!
//! Shapes: A is m×k, B is k×n, C = A·B is m×n, all row-major (or any
//! strides). Odd sizes are handled by **virtual zero padding**: A is treated
//! as if padded to 2⌈m/2⌉×2⌈k/2⌉ (B likewise), so every quadrant is
//! ⌈m/2⌉×⌈k/2⌉ (resp. ⌈k/2⌉×⌈n/2⌉), and a quadrant that is really smaller
//! is its real part followed by zero rows/columns. Nothing is copied to
//! pad: sums add the smaller quadrant into the top-left corner of the
//! operand, and the products are cropped to the real quadrants of C when
//! they are accumulated. Any shape works, including 1×1, 1×n and k = 1.
//!
//! The formulas:
//!
//! ```text
//! M1 = (A11+A22)(B11+B22)   C11 = M1 + M4 − M5 + M7
//! M2 = (A21+A22) B11        C12 = M3 + M5
//! M3 = A11 (B12−B22)        C21 = M2 + M4
//! M4 = A22 (B21−B11)        C22 = M1 − M2 + M3 + M6
//! M5 = (A11+A12) B22
//! M6 = (A21−A11)(B11+B12)
//! M7 = (A12−A22)(B21+B22)
//! ```

use ndarray::{s, Array2, ArrayView2, ArrayViewMut2, Zip};

use crate::matrix::{alloc_uninit, alloc_zeroed, matmul_into, Element};
use crate::{Error, Result};

/// A quadrant of a matrix split in two both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quad {
    /// Top left.
    Q11,
    /// Top right.
    Q12,
    /// Bottom left.
    Q21,
    /// Bottom right.
    Q22,
}

impl Quad {
    /// The four quadrants, in the order [`Quad::index`] numbers them.
    pub const ALL: [Quad; 4] = [Quad::Q11, Quad::Q12, Quad::Q21, Quad::Q22];

    /// 0..4 in the order 11, 12, 21, 22.
    pub fn index(self) -> usize {
        match self {
            Quad::Q11 => 0,
            Quad::Q12 => 1,
            Quad::Q21 => 2,
            Quad::Q22 => 3,
        }
    }

    /// "11", "12", "21" or "22".
    pub fn suffix(self) -> &'static str {
        ["11", "12", "21", "22"][self.index()]
    }
}

/// A signed quadrant in a sum.
pub type Term = (Sign, Quad);

/// +1 or −1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sign {
    /// Add.
    Plus,
    /// Subtract.
    Minus,
}

use Quad::*;
use Sign::*;

/// One of the seven products: the terms of its left and right operands,
/// and where it goes in C.
#[derive(Debug, Clone, Copy)]
pub struct Product {
    /// Name, "M1".."M7".
    pub name: &'static str,
    /// Quadrants of A summed into the left operand.
    pub left: &'static [Term],
    /// Quadrants of B summed into the right operand.
    pub right: &'static [Term],
    /// Quadrants of C the product is added to or subtracted from.
    pub into: &'static [Term],
}

/// M1..M7, in order.
pub const PRODUCTS: [Product; 7] = [
    Product {
        name: "M1",
        left: &[(Plus, Q11), (Plus, Q22)],
        right: &[(Plus, Q11), (Plus, Q22)],
        into: &[(Plus, Q11), (Plus, Q22)],
    },
    Product {
        name: "M2",
        left: &[(Plus, Q21), (Plus, Q22)],
        right: &[(Plus, Q11)],
        into: &[(Plus, Q21), (Minus, Q22)],
    },
    Product {
        name: "M3",
        left: &[(Plus, Q11)],
        right: &[(Plus, Q12), (Minus, Q22)],
        into: &[(Plus, Q12), (Plus, Q22)],
    },
    Product {
        name: "M4",
        left: &[(Plus, Q22)],
        right: &[(Plus, Q21), (Minus, Q11)],
        into: &[(Plus, Q11), (Plus, Q21)],
    },
    Product {
        name: "M5",
        left: &[(Plus, Q11), (Plus, Q12)],
        right: &[(Plus, Q22)],
        into: &[(Minus, Q11), (Plus, Q12)],
    },
    Product {
        name: "M6",
        left: &[(Plus, Q21), (Minus, Q11)],
        right: &[(Plus, Q11), (Plus, Q12)],
        into: &[(Plus, Q22)],
    },
    Product {
        name: "M7",
        left: &[(Plus, Q12), (Minus, Q22)],
        right: &[(Plus, Q21), (Plus, Q22)],
        into: &[(Plus, Q11)],
    },
];

/// How A (m×k) and B (k×n) split: the padded half sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// Rows of A and C.
    pub m: usize,
    /// Inner dimension.
    pub k: usize,
    /// Columns of B and C.
    pub n: usize,
}

impl Split {
    /// The split of A·B.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when A's cols differ from B's rows.
    pub fn of(a: (usize, usize), b: (usize, usize)) -> Result<Split> {
        if a.1 != b.0 {
            return Err(Error::ShapeMismatch { left: a, right: b });
        }
        Ok(Split { m: a.0, k: a.1, n: b.1 })
    }

    /// ⌈m/2⌉, ⌈k/2⌉, ⌈n/2⌉: the shape of every (padded) quadrant.
    pub fn half(&self) -> (usize, usize, usize) {
        (self.m.div_ceil(2), self.k.div_ceil(2), self.n.div_ceil(2))
    }

    /// Shape of the left operands (⌈m/2⌉×⌈k/2⌉).
    pub fn left_shape(&self) -> (usize, usize) {
        let (m, k, _) = self.half();
        (m, k)
    }

    /// Shape of the right operands (⌈k/2⌉×⌈n/2⌉).
    pub fn right_shape(&self) -> (usize, usize) {
        let (_, k, n) = self.half();
        (k, n)
    }

    /// Shape of the products (⌈m/2⌉×⌈n/2⌉).
    pub fn product_shape(&self) -> (usize, usize) {
        let (m, _, n) = self.half();
        (m, n)
    }

    /// Multiply-adds of the seven half-size products, ×2 for flops.
    pub fn strassen_flops(&self) -> f64 {
        let (m, k, n) = self.half();
        7.0 * 2.0 * m as f64 * k as f64 * n as f64
    }

    /// Flops of the classical product, 2·m·k·n.
    pub fn classical_flops(&self) -> f64 {
        2.0 * self.m as f64 * self.k as f64 * self.n as f64
    }
}

/// The real (unpadded) part of quadrant `q` of `a`, split at (`rows`, `cols`).
pub fn quadrant<'a, T>(a: ArrayView2<'a, T>, q: Quad, rows: usize, cols: usize) -> ArrayView2<'a, T> {
    match q {
        Q11 => a.slice_move(s![..rows, ..cols]),
        Q12 => a.slice_move(s![..rows, cols..]),
        Q21 => a.slice_move(s![rows.., ..cols]),
        Q22 => a.slice_move(s![rows.., cols..]),
    }
}

/// A mutable quadrant of `c`, split at (`rows`, `cols`) (its real part).
pub fn quadrant_mut<'a, T>(c: ArrayViewMut2<'a, T>, q: Quad, rows: usize, cols: usize) -> ArrayViewMut2<'a, T> {
    match q {
        Q11 => c.slice_move(s![..rows, ..cols]),
        Q12 => c.slice_move(s![..rows, cols..]),
        Q21 => c.slice_move(s![rows.., ..cols]),
        Q22 => c.slice_move(s![rows.., cols..]),
    }
}

/// An operand: a plain full-size quadrant is lent as a (strided) view of
/// the input — no copy — and anything else is formed into a new array.
#[derive(Debug)]
pub enum Operand<'a, T> {
    /// A quadrant of the input, used in place.
    View(ArrayView2<'a, T>),
    /// A sum, difference or padded quadrant, materialised.
    Owned(Array2<T>),
}

impl<T> Operand<'_, T> {
    /// The operand's elements.
    pub fn view(&self) -> ArrayView2<'_, T> {
        match self {
            Operand::View(v) => v.view(),
            Operand::Owned(a) => a.view(),
        }
    }

    /// Bytes this operand allocated.
    pub fn owned_bytes(&self) -> usize {
        match self {
            Operand::View(_) => 0,
            Operand::Owned(a) => a.len() * std::mem::size_of::<T>(),
        }
    }
}

/// Forms Σ ±quadrant of `x` as a `shape` (= padded quadrant) operand.
pub fn operand<'a, T: Element>(x: ArrayView2<'a, T>, terms: &[Term], shape: (usize, usize)) -> Operand<'a, T> {
    let quads: Vec<(Sign, ArrayView2<'a, T>)> =
        terms.iter().map(|&(sign, q)| (sign, quadrant(x, q, shape.0, shape.1))).collect();
    if let [(Plus, only)] = quads.as_slice() {
        if only.dim() == shape {
            return Operand::View(*only);
        }
    }
    let out = match quads.as_slice() {
        // The common case, full-size a ± b: one pass over a recycled buffer.
        [(Plus, a), (sb, b)] if a.dim() == shape && b.dim() == shape => {
            let mut out = alloc_uninit::<T>(shape);
            let neg = *sb == Minus;
            Zip::from(&mut out).and(a).and(b).for_each(|o, &a, &b| *o = if neg { a - b } else { a + b });
            out
        }
        // Padding: the short quadrants leave zeros in the rest.
        _ => {
            let mut out = alloc_zeroed::<T>(shape);
            add_terms(out.view_mut(), x, terms);
            out
        }
    };
    Operand::Owned(out)
}

/// Adds the signed quadrants `terms` of `x` into the top-left corners of
/// `out` (an operand of the padded shape, zeroed: short quadrants leave
/// zeros in the rest). `out` may be anywhere, e.g. a file-backed map.
pub fn add_terms<T: Element>(mut out: ArrayViewMut2<'_, T>, x: ArrayView2<'_, T>, terms: &[Term]) {
    let (rows, cols) = out.dim();
    for &(sign, q) in terms {
        let q = quadrant(x, q, rows, cols);
        let (r, c) = q.dim();
        let mut corner = out.slice_mut(s![..r, ..c]);
        match sign {
            Plus => corner += &q,
            Minus => corner -= &q,
        }
    }
}

/// The left and right operands of `product` for A·B.
pub fn operands<'a, T: Element>(
    a: ArrayView2<'a, T>,
    b: ArrayView2<'a, T>,
    product: &Product,
    split: Split,
) -> (Operand<'a, T>, Operand<'a, T>) {
    (operand(a, product.left, split.left_shape()), operand(b, product.right, split.right_shape()))
}

/// Adds (or subtracts) `m`, a product of shape ⌈m/2⌉×⌈n/2⌉, into the
/// quadrants of `c` that `product.into` names, cropped to their real size.
///
/// # Errors
/// [`Error::ShapeMismatch`] when `m` is not the product shape or `c` is not m×n.
pub fn accumulate<T: Element>(
    c: ArrayViewMut2<'_, T>,
    m: ArrayView2<'_, T>,
    product: &Product,
    split: Split,
) -> Result<()> {
    let mut c = c;
    if m.dim() != split.product_shape() || c.dim() != (split.m, split.n) {
        return Err(Error::ShapeMismatch { left: m.dim(), right: split.product_shape() });
    }
    let (rows, _, cols) = split.half();
    for &(sign, q) in product.into {
        let mut target = quadrant_mut(c.view_mut(), q, rows, cols);
        let (r, cc) = target.dim();
        let part = m.slice(s![..r, ..cc]);
        match sign {
            Plus => target += &part,
            Minus => target -= &part,
        }
    }
    Ok(())
}

/// One Strassen level computed locally, with faer leaf products: the same
/// algebra the grid distributes, for tests and the `kernel` benchmark.
///
/// # Errors
/// [`Error::ShapeMismatch`] when A's cols differ from B's rows.
pub fn strassen_local<T: Element>(a: ArrayView2<'_, T>, b: ArrayView2<'_, T>, par: faer::Par) -> Result<Array2<T>> {
    let split = Split::of(a.dim(), b.dim())?;
    let mut c = alloc_zeroed::<T>((split.m, split.n));
    let mut m = alloc_zeroed::<T>(split.product_shape());
    for product in &PRODUCTS {
        let (x, y) = operands(a, b, product, split);
        matmul_into(m.view_mut(), x.view(), y.view(), false, par)?;
        accumulate(c.view_mut(), m.view(), product, split)?;
    }
    Ok(c)
}

/// The textbook triple loop, the reference the tests compare against.
///
/// # Panics
/// If A's cols differ from B's rows.
pub fn naive_matmul<T: Element>(a: ArrayView2<'_, T>, b: ArrayView2<'_, T>) -> Array2<T> {
    assert_eq!(a.ncols(), b.nrows(), "inner dimensions differ");
    let mut c = Array2::<T>::zeros((a.nrows(), b.ncols()));
    for i in 0..a.nrows() {
        for j in 0..b.ncols() {
            let mut acc = T::zero();
            for p in 0..a.ncols() {
                acc += a[[i, p]] * b[[p, j]];
            }
            c[[i, j]] = acc;
        }
    }
    c
}

/// A block of a matrix split in two both ways twice: quadrant `.0` of the
/// matrix, then quadrant `.1` of that (A\[q1\]\[q2\], 1/16 of the matrix).
pub type SubQuad = (Quad, Quad);

/// One of the 49 products of Strassen's step applied twice (`--depth 2`):
/// product `j` of the split of product `i` (named `M{i}.{j}`, 1-based). Its
/// left operand is Σ s·s′·A\[q\]\[q′\] over the terms (s, q) of M_i's left
/// operand and (s′, q′) of M_j's, and so on for the right operand and for
/// where it goes in C — the same table, [`PRODUCTS`], read at both levels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product2 {
    /// 0-based first-level product (M1..M7).
    pub outer: usize,
    /// 0-based second-level product within it.
    pub inner: usize,
    /// Blocks of A summed into the left operand, with their signs.
    pub left: Vec<(Sign, SubQuad)>,
    /// Blocks of B summed into the right operand.
    pub right: Vec<(Sign, SubQuad)>,
    /// Blocks of C the product is added to or subtracted from.
    pub into: Vec<(Sign, SubQuad)>,
}

impl Product2 {
    /// "M3.5": product 5 of M3's split.
    pub fn name(&self) -> String {
        format!("{}.{}", PRODUCTS[self.outer].name, self.inner + 1)
    }
}

fn times(a: Sign, b: Sign) -> Sign {
    if a == b {
        Plus
    } else {
        Minus
    }
}

/// Every pair of terms of `outer` and `inner`, signs multiplied.
fn nest(outer: &[Term], inner: &[Term]) -> Vec<(Sign, SubQuad)> {
    outer.iter().flat_map(|&(s, q)| inner.iter().map(move |&(s2, q2)| (times(s, s2), (q, q2)))).collect()
}

/// The 49 products of two Strassen levels, M1.1..M7.7 in order: the plan
/// a depth-2 job hands its 49 slots (each 1/64 of the classical work).
/// Shapes: A, B and C are split into 4×4 grids of blocks, each
/// ⌈⌈m/2⌉/2⌉×⌈⌈k/2⌉/2⌉ (and so on) with virtual zero padding at each level.
pub fn products2() -> Vec<Product2> {
    (0..7)
        .flat_map(|outer| {
            (0..7).map(move |inner| {
                let (o, i) = (&PRODUCTS[outer], &PRODUCTS[inner]);
                Product2 {
                    outer,
                    inner,
                    left: nest(o.left, i.left),
                    right: nest(o.right, i.right),
                    into: nest(o.into, i.into),
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 49 two-level products, each formed from 1/16 blocks of A and B
    /// and added into 1/16 blocks of C, give A·B exactly (small integers).
    #[test]
    fn two_levels_of_products_reassemble_the_classical_product() {
        let table = products2();
        assert_eq!(table.len(), 49);
        assert_eq!(table[2 * 7 + 4].name(), "M3.5");
        for (m, k, n) in [(4, 4, 4), (8, 12, 16), (12, 4, 8)] {
            let a = Array2::from_shape_fn((m, k), |(i, j)| ((i * 7 + j * 3) % 11) as f64 - 5.0);
            let b = Array2::from_shape_fn((k, n), |(i, j)| ((i * 5 + j * 2) % 7) as f64 - 3.0);
            let (bm, bk, bn) = (m / 4, k / 4, n / 4);
            let block = |x: &Array2<f64>, (q1, q2): SubQuad, r: usize, c: usize| {
                let (r1, c1) = ((q1.index() / 2) * 2 * r, (q1.index() % 2) * 2 * c);
                let (r2, c2) = (r1 + (q2.index() / 2) * r, c1 + (q2.index() % 2) * c);
                x.slice(s![r2..r2 + r, c2..c2 + c]).to_owned()
            };
            let sum = |x: &Array2<f64>, terms: &[(Sign, SubQuad)], r: usize, c: usize| {
                terms.iter().fold(Array2::<f64>::zeros((r, c)), |acc, &(sign, q)| match sign {
                    Plus => acc + block(x, q, r, c),
                    Minus => acc - block(x, q, r, c),
                })
            };
            // Every block of C is fed by some product: a block left at zero
            // where A·B is not would fail the comparison.
            let mut c = Array2::<f64>::zeros((m, n));
            for p in &table {
                let product = naive_matmul(sum(&a, &p.left, bm, bk).view(), sum(&b, &p.right, bk, bn).view());
                for &(sign, (q1, q2)) in &p.into {
                    let (r1, c1) = ((q1.index() / 2) * 2 * bm, (q1.index() % 2) * 2 * bn);
                    let (r2, c2) = (r1 + (q2.index() / 2) * bm, c1 + (q2.index() % 2) * bn);
                    let mut dst = c.slice_mut(s![r2..r2 + bm, c2..c2 + bn]);
                    match sign {
                        Plus => dst += &product,
                        Minus => dst -= &product,
                    }
                }
            }
            assert_eq!(c, naive_matmul(a.view(), b.view()), "{m}×{k}·{k}×{n}");
        }
    }

    /// Small integer entries: every f64 product and sum here is exact.
    fn ints<T: Element>(rows: usize, cols: usize, seed: u64) -> Array2<T> {
        Array2::from_shape_fn((rows, cols), |(i, j)| {
            let h = (i as u64 * 31 + j as u64 * 17 + seed * 7919) % 13;
            T::from_f64(h as f64 - 6.0)
        })
    }

    const SHAPES: [(usize, usize, usize); 9] =
        [(1, 1, 1), (1, 5, 1), (3, 5, 7), (64, 64, 64), (129, 257, 65), (2, 1, 2), (1, 1, 9), (7, 1, 1), (5, 4, 3)];

    /// Distributed-style: operands formed one product at a time and each
    /// product accumulated into a NaN-free C (C starts at zero by contract,
    /// so a product not accumulated would show as a wrong value).
    fn grid_style<T: Element>(a: &Array2<T>, b: &Array2<T>) -> Array2<T> {
        let split = Split::of(a.dim(), b.dim()).unwrap();
        let mut c = Array2::<T>::zeros((split.m, split.n));
        for product in &PRODUCTS {
            let (x, y) = operands(a.view(), b.view(), product, split);
            assert_eq!((x.view().dim(), y.view().dim()), (split.left_shape(), split.right_shape()));
            let m = naive_matmul(x.view(), y.view());
            accumulate(c.view_mut(), m.view(), product, split).unwrap();
        }
        c
    }

    #[test]
    fn strassen_equals_the_triple_loop_exactly_for_every_shape_in_f64() {
        for (seed, &(m, k, n)) in SHAPES.iter().enumerate() {
            let (a, b) = (ints::<f64>(m, k, seed as u64), ints::<f64>(k, n, seed as u64 + 100));
            let expected = naive_matmul(a.view(), b.view());
            assert_eq!(grid_style(&a, &b), expected, "{m}x{k}x{n}");
            assert_eq!(strassen_local(a.view(), b.view(), faer::Par::Seq).unwrap(), expected, "{m}x{k}x{n}");
        }
    }

    #[test]
    fn strassen_matches_within_tolerance_for_random_f32() {
        use rand::{RngExt, SeedableRng};
        let seed = 0x5e97e7;
        println!("seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for &(m, k, n) in &SHAPES {
            let a = Array2::from_shape_fn((m, k), |_| rng.random_range(-1.0f32..1.0));
            let b = Array2::from_shape_fn((k, n), |_| rng.random_range(-1.0f32..1.0));
            let expected = naive_matmul(a.view(), b.view());
            let got = strassen_local(a.view(), b.view(), faer::Par::Seq).unwrap();
            let scale = (k as f32).sqrt().max(1.0);
            for (g, e) in got.iter().zip(&expected) {
                assert!((g - e).abs() <= 1e-5 * 8.0 * scale * (1.0 + e.abs()), "{m}x{k}x{n}: {g} vs {e}");
            }
        }
    }

    #[test]
    fn plain_full_quadrants_are_lent_not_copied() {
        let a = ints::<f64>(4, 6, 1);
        let split = Split::of((4, 6), (6, 2)).unwrap();
        assert!(matches!(operand(a.view(), &[(Plus, Q22)], split.left_shape()), Operand::View(_)));
        assert!(matches!(operand(a.view(), &[(Plus, Q11), (Plus, Q22)], split.left_shape()), Operand::Owned(_)));
        // An odd split pads: the short quadrant is copied into a zeroed corner.
        let odd = ints::<f64>(5, 6, 1);
        let split = Split::of((5, 6), (6, 2)).unwrap();
        match operand(odd.view(), &[(Plus, Q22)], split.left_shape()) {
            Operand::Owned(x) => {
                assert_eq!(x.dim(), (3, 3));
                assert_eq!(x.slice(s![..2, ..]), odd.slice(s![3.., 3..]));
                assert!(x.row(2).iter().all(|v| *v == 0.0));
            }
            Operand::View(_) => panic!("a short quadrant needs padding"),
        }
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        assert!(matches!(Split::of((2, 3), (4, 2)), Err(Error::ShapeMismatch { left: (2, 3), right: (4, 2) })));
        let split = Split::of((4, 4), (4, 4)).unwrap();
        let mut c = Array2::<f64>::zeros((4, 4));
        let wrong = Array2::<f64>::zeros((3, 2));
        assert!(accumulate(c.view_mut(), wrong.view(), &PRODUCTS[0], split).is_err());
    }
}
