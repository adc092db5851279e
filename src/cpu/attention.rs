//! The two products of one attention head on the CPU (`graph::mha`'s inner loop), written for
//! the small head widths of attention layers (8-64 values), where a general GEMM spends more
//! time packing and dispatching than multiplying:
//!
//! - [`scores`]: a block of query rows against the head's keys, `q · kᵀ`, from the keys
//!   transposed in panels of [`PANEL`] steps ([`pack_keys`]);
//! - [`weighted_sum`]: softmax weights `[rows, s]` times the head's values `[s, hv]`.
//!
//! Both are one small product, `out = (a · b) · scale`, computed in register tiles of rows x
//! vector registers of columns (2 x 4 registers, or 4 x 2 or 4 x 1 where there are fewer
//! columns: eight independent sums in flight, each loaded column vector used by every row of
//! the tile). Each output value is one sum over the reduction axis in index order, one
//! multiply-add per term, then the scale; in vector registers where the CPU has AVX2/FMA or
//! AVX-512 ([`Isa`]), else the same sums in scalar code.

use super::simd::{Isa, Lanes};

/// Key steps per panel of [`pack_keys`]: a panel's `[h, PANEL]` block is the column operand
/// of one pass over the query rows (a few KiB, contiguous, so it stays in L1 while every row
/// uses it).
pub(crate) const PANEL: usize = 32;

/// The head's keys `k` (step `j` at `k[j * k_stride ..][..h]`, `s` steps) transposed into
/// `packed` as panels of [`PANEL`] steps: panel `p` holds `[h, w]` (its `w` steps, the last
/// panel's fewer) at `p · PANEL · h` (every value of `packed[..s·h]` written), `packed[p·PANEL·h + d·w + (j - p·PANEL)] = k[j, d]`.
pub(crate) fn pack_keys(k: &[f32], k_stride: usize, (s, h): (usize, usize), packed: &mut [f32]) {
    assert!(
        packed.len() >= s * h,
        "packed keys: {} for [{s}, {h}]",
        packed.len()
    );
    for j0 in (0..s).step_by(PANEL) {
        let w = PANEL.min(s - j0);
        let panel = &mut packed[j0 * h..(j0 + w) * h];
        for j in 0..w {
            for (d, &x) in k[(j0 + j) * k_stride..][..h].iter().enumerate() {
                panel[d * w + j] = x;
            }
        }
    }
}

/// `out[r, j] = (Σ_d q[r, d] · k[j, d]) · scale` for the `rows` query rows `q` (row `r` at
/// `q[r * q_stride ..][..h]`) and the keys packed by [`pack_keys`]; `out` is `[rows, s]`,
/// contiguous. One product per panel.
pub(crate) fn scores(
    q: &[f32],
    q_stride: usize,
    packed: &[f32],
    (rows, h, s): (usize, usize, usize),
    scale: f32,
    out: &mut [f32],
) {
    assert!(
        packed.len() >= s * h && out.len() >= rows * s,
        "attention scores: [{rows}, {h}] x [{h}, {s}]"
    );
    for j0 in (0..s).step_by(PANEL) {
        let w = PANEL.min(s - j0);
        product(
            (q, q_stride),
            (&packed[j0 * h..(j0 + w) * h], w),
            (rows, h, w),
            scale,
            (&mut out[j0..], s),
            "attention scores",
        );
    }
}

/// `out[r, :] = Σ_j w[r, j] · v[j, :]` for the weights `w` (`[rows, s]`, contiguous) and the
/// values `v` (row `j` at `v[j * v_stride ..][..hv]`); `out` row `r` at
/// `out[r * out_stride ..][..hv]`.
pub(crate) fn weighted_sum(
    w: &[f32],
    v: &[f32],
    v_stride: usize,
    (rows, s, hv): (usize, usize, usize),
    out: &mut [f32],
    out_stride: usize,
) {
    product(
        (w, s),
        (v, v_stride),
        (rows, s, hv),
        1.0,
        (out, out_stride),
        "attention weighted sum",
    )
}

/// `out = (a · b) · scale` for `a` `[m, k]`, `b` `[k, n]` and `out` `[m, n]`, each given as
/// a slice and its row stride.
fn product(
    (a, sa): (&[f32], usize),
    (b, sb): (&[f32], usize),
    (m, k, n): (usize, usize, usize),
    scale: f32,
    (out, so): (&mut [f32], usize),
    what: &str,
) {
    let fits = |len: usize, rows: usize, stride: usize, cols: usize| {
        rows == 0 || cols == 0 || len >= (rows - 1) * stride + cols
    };
    assert!(
        fits(a.len(), m, sa, k) && fits(b.len(), k, sb, n) && fits(out.len(), m, so, n),
        "{what}: [{m}, {k}] x [{k}, {n}]"
    );
    let dims = Dims { sa, sb, so, k };
    #[cfg(target_arch = "x86_64")]
    match Isa::detect() {
        // SAFETY: `detect` returns only a set this CPU has; the lengths are checked above.
        Some(Isa::Avx512) => unsafe { product_avx512(a, b, (m, n), dims, scale, out) },
        // SAFETY: as above (AVX2 and FMA).
        Some(Isa::Avx2) => unsafe { product_avx2(a, b, (m, n), dims, scale, out) },
        None => product_scalar(a, b, (m, n), dims, scale, out, 0),
    }
    #[cfg(not(target_arch = "x86_64"))]
    product_scalar(a, b, (m, n), dims, scale, out, 0)
}

/// The row strides of a product's operands and its reduction length.
#[derive(Clone, Copy)]
struct Dims {
    sa: usize,
    sb: usize,
    so: usize,
    k: usize,
}

/// The scalar form of [`product`] for the columns from `from` on.
fn product_scalar(
    a: &[f32],
    b: &[f32],
    (m, n): (usize, usize),
    Dims { sa, sb, so, k }: Dims,
    scale: f32,
    out: &mut [f32],
    from: usize,
) {
    for r in 0..m {
        let ar = &a[r * sa..r * sa + k];
        for j in from..n {
            let mut acc = 0.0f32;
            for (d, &x) in ar.iter().enumerate() {
                acc = x.mul_add(b[d * sb + j], acc);
            }
            out[r * so + j] = acc * scale;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn product_avx512(
    a: &[f32],
    b: &[f32],
    mn: (usize, usize),
    dims: Dims,
    scale: f32,
    out: &mut [f32],
) {
    product_lanes::<super::simd::x86::Avx512>(a, b, mn, dims, scale, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn product_avx2(
    a: &[f32],
    b: &[f32],
    mn: (usize, usize),
    dims: Dims,
    scale: f32,
    out: &mut [f32],
) {
    product_lanes::<super::simd::x86::Avx2>(a, b, mn, dims, scale, out)
}

/// [`product`] in vector registers: column chunks of 4 registers (tiles of 2 rows), then of
/// 2 and of 1 register (tiles of 4 rows), the leftover rows one at a time, then the scalar
/// tail of the columns.
#[inline(always)]
unsafe fn product_lanes<V: Lanes>(
    a: &[f32],
    b: &[f32],
    (m, n): (usize, usize),
    dims: Dims,
    scale: f32,
    out: &mut [f32],
) {
    let lanes = V::N;
    let (ap, bp, op) = (a.as_ptr(), b.as_ptr(), out.as_mut_ptr());
    let sc = V::splat(scale);
    let mut c = 0;
    while c + 4 * lanes <= n {
        let mut r = 0;
        while r + 2 <= m {
            tile::<V, 2, 4>(ap, bp, op, (r, c), dims, sc);
            r += 2;
        }
        if r < m {
            tile::<V, 1, 4>(ap, bp, op, (r, c), dims, sc);
        }
        c += 4 * lanes;
    }
    while c + lanes <= n {
        let two = c + 2 * lanes <= n;
        let mut r = 0;
        while r + 4 <= m {
            if two {
                tile::<V, 4, 2>(ap, bp, op, (r, c), dims, sc);
            } else {
                tile::<V, 4, 1>(ap, bp, op, (r, c), dims, sc);
            }
            r += 4;
        }
        while r < m {
            if two {
                tile::<V, 1, 2>(ap, bp, op, (r, c), dims, sc);
            } else {
                tile::<V, 1, 1>(ap, bp, op, (r, c), dims, sc);
            }
            r += 1;
        }
        c += if two { 2 * lanes } else { lanes };
    }
    if c < n {
        product_scalar(a, b, (m, n), dims, scale, out, c);
    }
}

/// One register tile: rows `r0..r0 + R`, columns `c0..c0 + C · N` of `out`, each the `k`
/// multiply-adds of `a[r, d]` (broadcast) with `b[d, columns]`, then the scale.
///
/// # Safety
/// The rows and columns lie inside the operands of `dims` (checked by [`product`]).
#[inline(always)]
unsafe fn tile<V: Lanes, const R: usize, const C: usize>(
    a: *const f32,
    b: *const f32,
    out: *mut f32,
    (r0, c0): (usize, usize),
    Dims { sa, sb, so, k }: Dims,
    scale: V,
) {
    let mut acc = [[V::splat(0.0); C]; R];
    for d in 0..k {
        let brow = b.add(d * sb + c0);
        let mut bv = [V::splat(0.0); C];
        for (j, v) in bv.iter_mut().enumerate() {
            *v = V::load(brow.add(j * V::N));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let x = V::splat(*a.add((r0 + r) * sa + d));
            for (acc, &v) in row.iter_mut().zip(&bv) {
                *acc = V::fma(x, v, *acc);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (j, acc) in row.iter().enumerate() {
            V::mul(*acc, scale).store(out.add((r0 + r) * so + c0 + j * V::N));
        }
    }
}

#[cfg(test)]
mod tests {
    /// Both kernels against f64 sums, over widths that exercise the register tiles, single
    /// registers and the scalar tails, with strided rows; NaN and inf in one term reach
    /// exactly the sums that hold it.
    #[test]
    fn attention_products_match_f64_sums() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        for &(rows, h, s) in &[
            (1, 1, 1),
            (3, 16, 128),
            (5, 7, 37),
            (2, 64, 71),
            (4, 9, 8),
            (3, 16, 3001),
        ] {
            let q_stride = h + 3;
            let q: Vec<f32> = (0..rows * q_stride).map(|_| next()).collect();
            // the keys [s, h] with a row stride of h + 1
            let keys: Vec<f32> = (0..s * (h + 1)).map(|_| next()).collect();
            let kt = |d: usize, j: usize| keys[j * (h + 1) + d];
            let mut packed = vec![0.0; s * h];
            super::pack_keys(&keys, h + 1, (s, h), &mut packed);
            let mut out = vec![0.0; rows * s];
            super::scores(&q, q_stride, &packed, (rows, h, s), 0.25, &mut out);
            for r in 0..rows {
                for j in 0..s {
                    let want: f64 = (0..h)
                        .map(|d| f64::from(q[r * q_stride + d]) * f64::from(kt(d, j)))
                        .sum::<f64>()
                        * 0.25;
                    let got = f64::from(out[r * s + j]);
                    assert!((got - want).abs() < 1e-5, "scores {r},{j}: {got} vs {want}");
                }
            }
            let hv = h;
            let v_stride = hv + 5;
            let v: Vec<f32> = (0..s * v_stride).map(|_| next()).collect();
            let out_stride = hv + 2;
            let mut ctx = vec![0.0; rows * out_stride];
            super::weighted_sum(&out, &v, v_stride, (rows, s, hv), &mut ctx, out_stride);
            for r in 0..rows {
                for c in 0..hv {
                    let want: f64 = (0..s)
                        .map(|j| f64::from(out[r * s + j]) * f64::from(v[j * v_stride + c]))
                        .sum();
                    let got = f64::from(ctx[r * out_stride + c]);
                    assert!((got - want).abs() < 1e-4, "sum {r},{c}: {got} vs {want}");
                }
            }
        }
        // one poisoned key step: only its column of scores is NaN / inf
        let (rows, h, s) = (2, 16, 40);
        let q = vec![0.5f32; rows * h];
        let mut keys = vec![0.1f32; s * h];
        keys[9 * h + 3] = f32::NAN;
        keys[33 * h + 5] = f32::INFINITY;
        let mut packed = vec![0.0; s * h];
        super::pack_keys(&keys, h, (s, h), &mut packed);
        let mut out = vec![0.0; rows * s];
        super::scores(&q, h, &packed, (rows, h, s), 1.0, &mut out);
        for r in 0..rows {
            for j in 0..s {
                let x = out[r * s + j];
                match j {
                    9 => assert!(x.is_nan()),
                    33 => assert!(x == f32::INFINITY),
                    _ => assert!((x - 0.8).abs() < 1e-6, "{x}"),
                }
            }
        }
    }
}
