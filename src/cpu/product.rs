//! Small products against one matrix used many times: `y (+)= x · M` for a few rows of `x`,
//! with `M [k, n]` packed once into panels of 64 columns (`[panel][k][64]`, so each `k`'s
//! columns of a panel are one contiguous 256-byte row) and register tiles of AVX-512 or
//! AVX2/FMA. The training step loops multiply each step's few batch rows by the recurrent
//! kernel (forward) and its transpose (backward) thousands of times per call; a general GEMM
//! repacks or walks `M` in its own order each time, and at one row (batch 1) runs one
//! register chain per output vector. Here a call packs `M` once, and a one- or two-row
//! product walks two panels at once (eight independent chains on AVX-512).
//!
//! Each output is the sum over `k` in order, one fused multiply-add per term, the same as a
//! GEMM's innermost loop; columns past `n` in the last panel are zeros, computed and never
//! stored (an infinite `x` meets them only there).

#[cfg(target_arch = "x86_64")]
use super::simd::x86;
use super::simd::{Isa, Lanes};
use crate::element::Element;
use ndarray::{ArrayView2, ArrayViewMut2};

/// Columns per panel.
const COLS: usize = 64;

/// `M [k, n]` packed for [`PackedMatrix::product`].
#[derive(Debug, Clone)]
pub(crate) struct PackedMatrix {
    isa: Isa,
    k: usize,
    n: usize,
    panels: usize,
    /// `[panel][k][64]`, zero past `n`.
    data: Vec<f32>,
}

impl PackedMatrix {
    /// Packs `m` into `buffer`'s memory (its contents are overwritten; it grows when short)
    /// when `T` is f32 and the CPU has AVX-512 or AVX2/FMA ([`Isa::detect`]); None otherwise
    /// (the caller then runs its general product). A caller packing a matrix of the same size again and again hands back
    /// the buffer of [`PackedMatrix::into_buffer`].
    pub(crate) fn new_in<T: Element>(
        m: ArrayView2<'_, T>,
        buffer: Vec<f32>,
    ) -> Option<PackedMatrix> {
        Self::with_isa(m, Isa::detect()?, buffer)
    }

    /// The length of the packed form of a `[k, n]` matrix.
    pub(crate) fn packed_len(k: usize, n: usize) -> usize {
        n.div_ceil(COLS) * k * COLS
    }

    /// The packed values' memory, for a later [`PackedMatrix::new_in`].
    pub(crate) fn into_buffer(self) -> Vec<f32> {
        self.data
    }

    /// [`PackedMatrix::new_in`] for a given instruction set, which the CPU must have.
    fn with_isa<T: Element>(
        m: ArrayView2<'_, T>,
        isa: Isa,
        mut data: Vec<f32>,
    ) -> Option<PackedMatrix> {
        if !T::is_f32() {
            return None;
        }
        let (k, n) = m.dim();
        let panels = n.div_ceil(COLS);
        data.clear();
        data.resize(Self::packed_len(k, n), 0.0);
        for ((row, col), &v) in m.indexed_iter() {
            let (p, lane) = (col / COLS, col % COLS);
            // (T is f32: checked above, so the conversion is exact)
            data[(p * k + row) * COLS + lane] = v.to_f64() as f32;
        }
        Some(PackedMatrix {
            isa,
            k,
            n,
            panels,
            data,
        })
    }

    /// `[k, n]`.
    #[cfg(test)]
    pub(crate) fn dim(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// `y = x · M`, or `y += x · M` with `accumulate`, for `x [m, k]` and `y [m, n]` of f32
    /// whose rows are contiguous (any row stride). Returns false, touching nothing, when `T`
    /// is not f32, the shapes do not match or a row is not contiguous (the caller then runs
    /// its general product).
    pub(crate) fn product<T: Element>(
        &self,
        x: ArrayView2<'_, T>,
        mut y: ArrayViewMut2<'_, T>,
        accumulate: bool,
    ) -> bool {
        let (m, k) = x.dim();
        let fits = T::is_f32()
            && k == self.k
            && y.dim() == (m, self.n)
            && (x.strides()[1] == 1 || k <= 1)
            && (y.strides()[1] == 1 || self.n <= 1)
            && x.strides()[0] >= 0
            && y.strides()[0] >= 0;
        if !fits {
            return false;
        }
        if m == 0 || self.n == 0 {
            return true;
        }
        let (xs, ys) = (x.strides()[0] as usize, y.strides()[0] as usize);
        let (xs, ys) = (
            if m == 1 { k } else { xs },
            if m == 1 { self.n } else { ys },
        );
        let a = x.as_ptr() as *const f32;
        let c = y.as_mut_ptr() as *mut f32;
        #[cfg(target_arch = "x86_64")]
        // SAFETY: T is f32 (checked above), so the pointers are f32 arrays; row r of x is
        // `k` contiguous values from `a + r·xs` and row r of y `n` from `c + r·ys` (the
        // views' shapes and strides, checked above); `self.isa` was detected on this CPU.
        unsafe {
            let rows = Rows {
                a,
                xs,
                c,
                ys,
                m,
                accumulate,
            };
            match self.isa {
                Isa::Avx512 => product_avx512(self, rows),
                Isa::Avx2 => product_avx2(self, rows),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (a, c, xs, ys, accumulate);
            unreachable!("no packed products on this architecture ({self:?} was never built)")
        }
        true
    }
}

/// The rows of one product: `x` from `a` (rows `xs` apart), `y` at `c` (rows `ys` apart).
#[derive(Clone, Copy)]
struct Rows {
    a: *const f32,
    xs: usize,
    c: *mut f32,
    ys: usize,
    m: usize,
    accumulate: bool,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn product_avx512(w: &PackedMatrix, r: Rows) {
    rows_of::<x86::Avx512, 4>(w, r)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn product_avx2(w: &PackedMatrix, r: Rows) {
    rows_of::<x86::Avx2, 8>(w, r)
}

/// Terms of `k` per pass over a panel: a panel's slice of `KC · 64` values (128 KiB) stays
/// in the core's L2 cache while every row tile of the call runs over it.
const KC: usize = 512;

/// All rows of `r`: for each slice of `KC` terms and each pair of panels, every tile of up
/// to `V::MAX_ROWS` rows, so a panel slice is read from memory once per call rather than
/// once per row tile; tiles of one or two rows take both panels of the pair at once where
/// the registers hold them (AVX-512). Each output still sums its terms in order: a later
/// slice adds into the sums the earlier ones stored.
#[inline(always)]
unsafe fn rows_of<V: Lanes, const NV: usize>(w: &PackedMatrix, r: Rows) {
    // (one pass even when k is 0: y = 0 then)
    let mut k0 = 0;
    loop {
        let kc = (w.k - k0).min(KC);
        let slice = Slice {
            k0,
            kc,
            accumulate: r.accumulate || k0 > 0,
        };
        let mut p = 0;
        while p < w.panels {
            let pair = p + 1 < w.panels;
            let mut r0 = 0;
            while r0 < r.m {
                let rows = (r.m - r0).min(V::MAX_ROWS);
                // (AVX-512's 32 registers: 2·2·4 accumulators and 2·4 panel values at most)
                match (rows, pair && V::N == 16) {
                    (1, true) => tile::<V, 1, NV, 2>(w, r, slice, r0, p),
                    (2, true) => tile::<V, 2, NV, 2>(w, r, slice, r0, p),
                    // (a loop, not a closure: a closure would not inherit the caller's
                    // target features, and its intrinsics would become calls)
                    _ => {
                        for q in p..p + 1 + usize::from(pair) {
                            one_panel::<V, NV>(w, r, slice, (r0, rows), q);
                        }
                    }
                }
                r0 += rows;
            }
            p += 1 + usize::from(pair);
        }
        k0 += kc;
        if k0 >= w.k {
            return;
        }
    }
}

/// Rows `r0..r0+rows` (`rows` at most `V::MAX_ROWS`) times panel `q` alone.
#[inline(always)]
unsafe fn one_panel<V: Lanes, const NV: usize>(
    w: &PackedMatrix,
    r: Rows,
    slice: Slice,
    (r0, rows): (usize, usize),
    q: usize,
) {
    match rows {
        1 => tile::<V, 1, NV, 1>(w, r, slice, r0, q),
        2 => tile::<V, 2, NV, 1>(w, r, slice, r0, q),
        3 => tile::<V, 3, NV, 1>(w, r, slice, r0, q),
        4 => tile::<V, 4, NV, 1>(w, r, slice, r0, q),
        5 => tile::<V, 5, NV, 1>(w, r, slice, r0, q),
        _ => tile::<V, 6, NV, 1>(w, r, slice, r0, q),
    }
}

/// The terms `k0..k0+kc` of one pass; `accumulate`: add into `y` (the call asked for it,
/// or an earlier slice stored its partial sums there).
#[derive(Clone, Copy)]
struct Slice {
    k0: usize,
    kc: usize,
    accumulate: bool,
}

/// Rows `r0..r0+R` times panels `p0..p0+P` over the slice's terms: `R·P·NV` accumulators.
#[inline(always)]
unsafe fn tile<V: Lanes, const R: usize, const NV: usize, const P: usize>(
    w: &PackedMatrix,
    r: Rows,
    s: Slice,
    r0: usize,
    p0: usize,
) {
    let mut acc = [[[V::splat(0.0); NV]; P]; R];
    if s.accumulate {
        for (row, acc_r) in acc.iter_mut().enumerate() {
            for (p, acc_p) in acc_r.iter_mut().enumerate() {
                let mut buf = [0.0f32; COLS];
                let (dst, cols) = panel_of(w, r, r0 + row, p0 + p);
                std::ptr::copy_nonoverlapping(dst, buf.as_mut_ptr(), cols);
                for (v, reg) in acc_p.iter_mut().enumerate() {
                    *reg = V::load(buf.as_ptr().add(v * V::N));
                }
            }
        }
    }
    let pstride = w.k * COLS;
    let b = w.data.as_ptr().add(p0 * pstride + s.k0 * COLS);
    let a = r.a.add(r0 * r.xs + s.k0);
    for kk in 0..s.kc {
        let mut bv = [[V::splat(0.0); NV]; P];
        for (p, bv_p) in bv.iter_mut().enumerate() {
            for (v, reg) in bv_p.iter_mut().enumerate() {
                *reg = V::load(b.add(p * pstride + kk * COLS + v * V::N));
            }
        }
        for (row, acc_r) in acc.iter_mut().enumerate() {
            let av = V::splat(*a.add(row * r.xs + kk));
            for (acc_p, bv_p) in acc_r.iter_mut().zip(&bv) {
                for (reg, &bw) in acc_p.iter_mut().zip(bv_p) {
                    *reg = V::fma(av, bw, *reg);
                }
            }
        }
    }
    for (row, acc_r) in acc.iter().enumerate() {
        for (p, acc_p) in acc_r.iter().enumerate() {
            let mut buf = [0.0f32; COLS];
            for (v, reg) in acc_p.iter().enumerate() {
                reg.store(buf.as_mut_ptr().add(v * V::N));
            }
            let (dst, cols) = panel_of(w, r, r0 + row, p0 + p);
            std::ptr::copy_nonoverlapping(buf.as_ptr(), dst, cols);
        }
    }
}

/// Where row `row`'s columns of panel `p` start in `y`, and how many of the panel's 64 are
/// inside `n`.
#[inline(always)]
unsafe fn panel_of(w: &PackedMatrix, r: Rows, row: usize, p: usize) -> (*mut f32, usize) {
    (r.c.add(row * r.ys + p * COLS), (w.n - p * COLS).min(COLS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{s, Array2};

    fn matrix(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
        let mut state = seed;
        Array2::from_shape_fn((rows, cols), |_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
    }

    /// Every row count of a tile (1..=7, so a second tile too), column counts inside one
    /// panel, across an odd number of panels and past a pair, both modes, strided rows, and
    /// each instruction set this CPU has: within rounding of an f64 product.
    #[test]
    fn packed_products_match_f64_on_every_tile_shape() {
        let isas: Vec<Isa> = match Isa::detect() {
            Some(Isa::Avx512) => vec![Isa::Avx512, Isa::Avx2],
            Some(Isa::Avx2) => vec![Isa::Avx2],
            None => return,
        };
        for isa in isas {
            for (k, n) in [
                (1, 1),
                (8, 5),
                (16, 64),
                (33, 130),
                (64, 200),
                (128, 512),
                (3, 257),
                (0, 70),
                (1100, 130),
            ] {
                let mm = matrix(k, n, (k * 1000 + n) as u64);
                let packed = PackedMatrix::with_isa(mm.view(), isa, Vec::new()).expect("f32");
                assert_eq!(packed.dim(), (k, n));
                for m in (1..=7).chain([13]) {
                    // rows of a wider array: strided rows
                    let wide = matrix(m, k + 3, m as u64);
                    let x = wide.slice(s![.., 1..k + 1]);
                    for accumulate in [false, true] {
                        let start = matrix(m, n + 2, 7);
                        let mut out = start.clone();
                        // (a reused buffer: the old contents never leak into the product)
                        let packed =
                            PackedMatrix::with_isa(mm.view(), isa, vec![f32::NAN; 7]).expect("f32");
                        let y = out.slice_mut(s![.., ..n]);
                        assert!(packed.product(x, y, accumulate));
                        for row in 0..m {
                            for col in 0..n + 2 {
                                // one f32 fused multiply-add per term in order (across
                                // the call's slices of KC terms too), and the f64 sum
                                let init = if col >= n || accumulate {
                                    start[[row, col]]
                                } else {
                                    0.0
                                };
                                let (mut exact, mut want) = (init, f64::from(init));
                                for kk in (0..k).filter(|_| col < n) {
                                    let (xv, mv) = (x[[row, kk]], mm[[kk, col]]);
                                    exact = xv.mul_add(mv, exact);
                                    want += f64::from(xv) * f64::from(mv);
                                }
                                let got = f64::from(out[[row, col]]);
                                assert_eq!(
                                    out[[row, col]].to_bits(),
                                    exact.to_bits(),
                                    "{isa:?} k={k} n={n} m={m} acc={accumulate} [{row}, {col}]"
                                );
                                assert!(
                                    (got - want).abs() <= 1e-5 * (1.0 + want.abs()) * (k as f64).sqrt(),
                                    "{isa:?} k={k} n={n} m={m} acc={accumulate} [{row}, {col}]: {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// f64, mismatched shapes and non-contiguous rows are declined, with `y` untouched; a NaN
    /// or infinity reaches only the columns whose terms have it.
    #[test]
    fn declines_what_it_does_not_run_and_keeps_nan_in_place() {
        let Some(isa) = Isa::detect() else { return };
        assert!(
            PackedMatrix::with_isa(Array2::<f64>::zeros((2, 2)).view(), isa, Vec::new()).is_none()
        );
        let mut mm = matrix(4, 70, 3);
        let packed = PackedMatrix::with_isa(mm.view(), isa, Vec::new()).expect("f32");
        let x = matrix(2, 5, 1);
        let mut y = Array2::<f32>::from_elem((2, 70), 9.0);
        assert!(!packed.product(x.view(), y.view_mut(), false));
        let x = matrix(2, 4, 1);
        assert!(!packed.product(x.t(), y.view_mut(), false));
        let mut yt = Array2::<f32>::zeros((70, 2));
        assert!(!packed.product(x.view(), yt.view_mut().reversed_axes(), false));
        assert!(y.iter().all(|&v| v == 9.0));
        // an infinite input: every column times a nonzero weight is infinite, a zero weight
        // gives NaN (inf · 0) exactly where a plain sum does
        mm[[0, 3]] = 0.0;
        let packed = PackedMatrix::with_isa(mm.view(), isa, Vec::new()).expect("f32");
        let mut x = Array2::<f32>::zeros((1, 4));
        x[[0, 0]] = f32::INFINITY;
        let mut y = Array2::<f32>::zeros((1, 70));
        assert!(packed.product(x.view(), y.view_mut(), false));
        for col in 0..70 {
            let want: f32 = (0..4).map(|kk| x[[0, kk]] * mm[[kk, col]]).sum();
            assert_eq!(y[[0, col]].is_nan(), want.is_nan(), "column {col}");
            assert!(y[[0, col]].is_nan() || y[[0, col]] == want, "column {col}");
        }
    }
}
