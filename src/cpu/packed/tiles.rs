//! The register tiles of the packed kernels: the projection and the fused step (product and
//! cell update), generic over the instruction set ([`Lanes`]), and the target-feature entry
//! points that instantiate them.

use super::threads::SharedPtr;
use super::{PackedWeights, COLS, ROW_BLOCK, UNITS};
use crate::config::Cell;
use crate::cpu::cells::{gru_cell, rnn_cell};
use crate::cpu::reference::{cell_update_impl, StepRule};
#[cfg(target_arch = "x86_64")]
use crate::cpu::simd::x86;
use crate::cpu::simd::{activate, Isa, Lanes};
use ndarray::ArrayView2;

/// What one timestep reads: everything but the slices a thread writes.
pub(super) struct StepInput<'a> {
    pub(super) w: &'a PackedWeights,
    pub(super) rule: StepRule,
    pub(super) batch: usize,
    pub(super) steps: usize,
    /// The step's position in the sequence (processing order).
    pub(super) step: usize,
    /// The timestep of `x` this step reads.
    pub(super) time: usize,
    /// `[B·T, panels·64]`, row `b·T + t`; empty when each step projects its own input.
    pub(super) proj: &'a [f32],
    /// The input `[B, T, I]`.
    pub(super) x: &'a [f32],
    /// The previous hidden state, `[panels][B][16]`.
    pub(super) h_old: &'a [f32],
    /// The mask `[B, T]` (None: every step present).
    pub(super) mask: Option<ArrayView2<'a, bool>>,
    /// Both activations are computed in registers (see [`in_registers`]).
    pub(super) fast: bool,
}

impl StepInput<'_> {
    /// Batch row `b` is present at this step.
    #[inline(always)]
    fn present(&self, b: usize) -> bool {
        self.mask.is_none_or(|m| m[[b, self.time]])
    }
}

/// `acc[r] += Σ_k a(r, k) · b[k]` for `R` rows and one panel (`NV` registers = 64 columns).
/// Row r's `k`-th value is at `a + r·rs + (k / 16)·ps + k % 16` (row-major input: `rs` = K,
/// `ps` = 16; panel-major state: `rs` = 16, `ps` = 16·B); `b` is the panel, `[k][64]`.
///
/// # Safety
/// The CPU has `V`'s instructions, `NV · V::N = 64`, and every address above is in bounds.
/// Which gate slots of a panel a product covers (`tile`'s `PART`): the slots a cell's
/// weights fill, so that a slot is never the sum of an input times a padding zero (which is
/// NaN for an infinite input, where Keras's product has no such term).
const ALL_SLOTS: u8 = 0;
/// Slots 0-2: a GRU's input product (candidate, z, r).
const SLOTS_0_TO_2: u8 = 1;
/// Slots 1-3: a GRU's recurrent product (z, r, candidate).
const SLOTS_1_TO_3: u8 = 2;
/// Slot 0: a SimpleRNN.
const SLOT_0: u8 = 3;

/// The registers `[lo, hi)` of the slots `PART` covers (NV registers, four slots).
#[inline(always)]
const fn part<const NV: usize, const PART: u8>() -> (usize, usize) {
    match PART {
        ALL_SLOTS => (0, NV),
        SLOTS_0_TO_2 => (0, 3 * NV / 4),
        SLOTS_1_TO_3 => (NV / 4, NV),
        _ => (0, NV / 4),
    }
}

/// The parts of the (input, recurrent) products of a cell (see `PackedWeights` slots).
#[inline(always)]
fn parts(cell: Cell) -> (u8, u8) {
    match cell {
        Cell::Lstm => (ALL_SLOTS, ALL_SLOTS),
        Cell::Gru { .. } => (SLOTS_0_TO_2, SLOTS_1_TO_3),
        Cell::SimpleRnn => (SLOT_0, SLOT_0),
    }
}

/// [`tile`] over the slots `part` covers.
#[inline(always)]
unsafe fn tile_part<V: Lanes, const R: usize, const NV: usize>(
    part: u8,
    acc: [[V; NV]; R],
    k: usize,
    a: *const f32,
    rs: usize,
    ps: usize,
    b: *const f32,
) -> [[V; NV]; R] {
    match part {
        ALL_SLOTS => tile::<V, R, NV, ALL_SLOTS>(acc, k, a, rs, ps, b),
        SLOTS_0_TO_2 => tile::<V, R, NV, SLOTS_0_TO_2>(acc, k, a, rs, ps, b),
        SLOTS_1_TO_3 => tile::<V, R, NV, SLOTS_1_TO_3>(acc, k, a, rs, ps, b),
        _ => tile::<V, R, NV, SLOT_0>(acc, k, a, rs, ps, b),
    }
}

#[inline(always)]
unsafe fn tile<V: Lanes, const R: usize, const NV: usize, const PART: u8>(
    mut acc: [[V; NV]; R],
    k: usize,
    a: *const f32,
    rs: usize,
    ps: usize,
    b: *const f32,
) -> [[V; NV]; R] {
    let (lo, hi) = part::<NV, PART>();
    let mut bp = b;
    let mut k0 = 0;
    while k0 < k {
        let a0 = a.add((k0 / UNITS) * ps);
        for kk in 0..(k - k0).min(UNITS) {
            let mut bv = [V::splat(0.0); NV];
            #[allow(clippy::needless_range_loop)] // (constant bounds: unrolled)
            for v in lo..hi {
                bv[v] = V::load(bp.add(v * V::N));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let av = V::splat(*a0.add(r * rs + kk));
                for v in lo..hi {
                    row[v] = V::fma(av, bv[v], row[v]);
                }
            }
            bp = bp.add(COLS);
        }
        k0 += UNITS;
    }
    acc
}

/// Loads `R` rows of one panel (64 values each, rows `stride` apart).
#[inline(always)]
unsafe fn load_rows<V: Lanes, const R: usize, const NV: usize>(
    p: *const f32,
    stride: usize,
) -> [[V; NV]; R] {
    let mut acc = [[V::splat(0.0); NV]; R];
    for (r, row) in acc.iter_mut().enumerate() {
        for (v, reg) in row.iter_mut().enumerate() {
            *reg = V::load(p.add(r * stride + v * V::N));
        }
    }
    acc
}

/// Stores `R` rows of one panel (64 values each, rows `stride` apart).
#[inline(always)]
unsafe fn store_rows<V: Lanes, const R: usize, const NV: usize>(
    acc: [[V; NV]; R],
    p: *mut f32,
    stride: usize,
) {
    for (r, row) in acc.iter().enumerate() {
        for (v, reg) in row.iter().enumerate() {
            reg.store(p.add(r * stride + v * V::N));
        }
    }
}

/// Calls `$f::<V, R, NV>($args)` with the const row count R = `$rows` (1..=6).
macro_rules! by_rows {
    ($rows:expr, $f:ident::<$v:ident, $nv:ident>($($arg:expr),*)) => {
        match $rows {
            1 => $f::<$v, 1, $nv>($($arg),*),
            2 => $f::<$v, 2, $nv>($($arg),*),
            3 => $f::<$v, 3, $nv>($($arg),*),
            4 => $f::<$v, 4, $nv>($($arg),*),
            5 => $f::<$v, 5, $nv>($($arg),*),
            _ => $f::<$v, 6, $nv>($($arg),*),
        }
    };
}

/// One tile of the projection: rows `r0..r0+R` of `x [rows, I]`, panel `p`, plus the bias,
/// into `out [rows, panels·64]`.
#[inline(always)]
unsafe fn project_tile<V: Lanes, const R: usize, const NV: usize>(
    w: &PackedWeights,
    x: &[f32],
    out: &mut [f32],
    r0: usize,
    p: usize,
) {
    let i = w.input;
    let width = w.panels * COLS;
    debug_assert!((r0 + R) * i <= x.len() && (r0 + R) * width <= out.len());
    let mut acc = load_rows::<V, R, NV>(w.bias.as_ptr().add(p * COLS), 0);
    acc = tile_part::<V, R, NV>(
        parts(w.cell).0,
        acc,
        i,
        x.as_ptr().add(r0 * i),
        i,
        UNITS,
        w.kernel.as_ptr().add(p * i * COLS),
    );
    store_rows::<V, R, NV>(acc, out.as_mut_ptr().add(r0 * width + p * COLS), width);
}

/// The projection of `x [rows, I]` into `out [rows, panels·64]` (bias included), on the
/// calling thread.
#[inline(always)]
unsafe fn project_rows<V: Lanes, const NV: usize>(w: &PackedWeights, x: &[f32], out: &mut [f32]) {
    let rows = out.len() / (w.panels * COLS);
    for b0 in (0..rows).step_by(ROW_BLOCK) {
        let b1 = (b0 + ROW_BLOCK).min(rows);
        for p in 0..w.panels {
            let mut r0 = b0;
            while r0 < b1 {
                let r = (b1 - r0).min(V::MAX_ROWS);
                by_rows!(r, project_tile::<V, NV>(w, x, out, r0, p));
                r0 += r;
            }
        }
    }
}

/// The slices of the panels `p0..` one thread writes, each panel-major, and the output
/// sequence.
pub(super) struct StepOutput<'a> {
    pub(super) p0: usize,
    /// `[n][B][16]` each.
    pub(super) h_new: &'a mut [f32],
    pub(super) c: &'a mut [f32],
    pub(super) out: &'a mut [f32],
    /// The output sequence `[B, T, H]` (processing order): this thread writes the columns of
    /// its panels at row `step` of every batch row, and no other thread writes those.
    pub(super) sequence: SharedPtr,
}

/// Rows `b0..b0+R` of panel `p` (the `pl`-th of `o`): `z = proj + h_old · R`, then the cell
/// update of those rows' 16 units.
#[inline(always)]
unsafe fn step_tile<V: Lanes, const R: usize, const NV: usize>(
    s: &StepInput,
    o: &mut StepOutput,
    pl: usize,
    b0: usize,
) {
    let w = s.w;
    let p = o.p0 + pl;
    let width = w.panels * COLS;
    let bsz = s.batch;
    let mut acc = if s.proj.is_empty() {
        // Fused: this step's input projection, `bias + x[b, time] · kernel`, first.
        debug_assert!(((b0 + R - 1) * s.steps + s.time + 1) * w.input <= s.x.len());
        let acc = load_rows::<V, R, NV>(w.bias.as_ptr().add(p * COLS), 0);
        tile_part::<V, R, NV>(
            parts(w.cell).0,
            acc,
            w.input,
            s.x.as_ptr().add((b0 * s.steps + s.time) * w.input),
            s.steps * w.input,
            UNITS,
            w.kernel.as_ptr().add(p * w.input * COLS),
        )
    } else {
        debug_assert!(((b0 + R - 1) * s.steps + s.time + 1) * width <= s.proj.len());
        load_rows::<V, R, NV>(
            s.proj
                .as_ptr()
                .add((b0 * s.steps + s.time) * width + p * COLS),
            s.steps * width,
        )
    };
    acc = tile_part::<V, R, NV>(
        parts(w.cell).1,
        acc,
        w.units,
        s.h_old.as_ptr().add(b0 * UNITS),
        UNITS,
        UNITS * bsz,
        w.recurrent.as_ptr().add(p * w.units * COLS),
    );
    let n = (w.units - p * UNITS).min(UNITS);
    if s.fast && (b0..b0 + R).all(|b| s.present(b)) {
        // Every row present and both activations in registers: the cell update of the
        // panel's 16 units in vector registers, slots as `PackedWeights` lays them out.
        let rule = s.rule;
        let q = NV / 4;
        let rb = w.rbias.as_ptr().add(p * COLS);
        let bias = |k: usize| V::load(rb.add(k * V::N));
        let (one, minus) = (V::splat(1.0), V::splat(-1.0));
        for (r, z) in acc.iter().enumerate() {
            let b = b0 + r;
            let at = (pl * bsz + b) * UNITS;
            let c = o.c.as_mut_ptr().add(at);
            let h_prev = s.h_old.as_ptr().add((p * bsz + b) * UNITS);
            let h = o.h_new.as_mut_ptr().add(at);
            let out = o.out.as_mut_ptr().add(at);
            let seq = o
                .sequence
                .0
                .add((b * s.steps + s.step) * w.units + p * UNITS);
            for j in 0..q {
                let hn = match w.cell {
                    Cell::Lstm => {
                        let i = activate(rule.recurrent_activation, z[j]);
                        let f = activate(rule.recurrent_activation, z[q + j]);
                        let g = activate(rule.activation, z[2 * q + j]);
                        let og = activate(rule.recurrent_activation, z[3 * q + j]);
                        let cj = c.add(j * V::N);
                        let cn = V::fma(f, V::load(cj), V::mul(i, g));
                        cn.store(cj);
                        V::mul(og, activate(rule.activation, cn))
                    }
                    Cell::SimpleRnn => activate(rule.activation, z[j]),
                    Cell::Gru { .. } => {
                        // slots: 0 the candidate's input part, 1 z, 2 r, 3 its recurrent part
                        let zg = activate(rule.recurrent_activation, V::add(z[q + j], bias(q + j)));
                        let rg = activate(
                            rule.recurrent_activation,
                            V::add(z[2 * q + j], bias(2 * q + j)),
                        );
                        let rec_h = V::add(z[3 * q + j], bias(3 * q + j));
                        let hh = activate(rule.activation, V::add(z[j], V::mul(rg, rec_h)));
                        // z·h + (1 - z)·hh, as the generic path rounds it
                        let keep = V::mul(zg, V::load(h_prev.add(j * V::N)));
                        V::add(keep, V::mul(V::add(one, V::mul(minus, zg)), hh))
                    }
                };
                hn.store(h.add(j * V::N));
                hn.store(out.add(j * V::N));
                if n == UNITS {
                    // SAFETY: as below (a whole panel of this row: 16 columns inside H).
                    hn.store(seq.add(j * V::N));
                }
            }
            if n < UNITS {
                // SAFETY: as below.
                std::ptr::copy_nonoverlapping(out, seq, n);
            }
        }
        return;
    }
    let mut z = [[0.0f32; COLS]; R];
    store_rows::<V, R, NV>(acc, z.as_mut_ptr().cast(), COLS);
    for (r, zr) in z.iter_mut().enumerate() {
        let b = b0 + r;
        let at = (pl * bsz + b) * UNITS;
        let h = &mut o.h_new[at..at + UNITS];
        let present = s.present(b);
        if !present {
            h.copy_from_slice(&s.h_old[(p * bsz + b) * UNITS..][..UNITS]);
        }
        let out = &mut o.out[at..at + UNITS];
        if w.cell == Cell::Lstm {
            cell_update_impl(s.rule, zr, h, &mut o.c[at..at + UNITS], out, present);
        } else {
            let h_prev = &s.h_old[(p * bsz + b) * UNITS..][..UNITS];
            let rb = &w.rbias[p * COLS..][..COLS];
            other_cell_update(w.cell, s.rule, zr, rb, h_prev, h, out, present);
        }
        let seq = (b * s.steps + s.step) * w.units + p * UNITS;
        // SAFETY: `seq + n` ≤ B·T·H (b < B, step < T, p·16 + n ≤ H), and these elements
        // belong to this panel (see `StepOutput::sequence`).
        std::ptr::copy_nonoverlapping(out.as_ptr(), o.sequence.0.add(seq), n);
    }
}

/// The GRU (`reset_after`) and SimpleRNN update of one row of one panel, from its slots
/// `z` (`x·K + b + h·R`, see the module's layout), the recurrent bias slots `rb` and the
/// previous h: the twins of `gru_cell` and `rnn_cell` (`cpu/cells.rs`) with Keras's mask rule.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn other_cell_update(
    cell: Cell,
    rule: StepRule,
    z: &[f32],
    rb: &[f32],
    h_prev: &[f32],
    h: &mut [f32],
    out: &mut [f32],
    present: bool,
) {
    if !present {
        // h was carried by the caller; the output repeats, or is zero.
        if rule.zero_output_for_mask {
            out.fill(0.0);
        }
        return;
    }
    for j in 0..UNITS {
        let new = match cell {
            // slot 0 holds x_h, slot 1 x_z + h·R_z (+ biases), slot 2 r's, slot 3 h·R_h
            Cell::Gru { .. } => gru_cell(
                rule,
                [
                    z[UNITS + j] + rb[UNITS + j],
                    z[2 * UNITS + j] + rb[2 * UNITS + j],
                    z[j],
                ],
                [0.0, 0.0, z[3 * UNITS + j] + rb[3 * UNITS + j]],
                h_prev[j],
            ),
            _ => rnn_cell(rule, z[j], 0.0),
        };
        h[j] = new;
        out[j] = new;
    }
}

/// One timestep for the panels of `o`, all batch rows.
#[inline(always)]
unsafe fn step_panels<V: Lanes, const NV: usize>(s: &StepInput, o: &mut StepOutput) {
    let n = o.c.len() / (s.batch * UNITS);
    for pl in 0..n {
        let mut b0 = 0;
        while b0 < s.batch {
            let r = (s.batch - b0).min(V::MAX_ROWS);
            by_rows!(r, step_tile::<V, NV>(s, o, pl, b0));
            b0 += r;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn project_avx512(w: &PackedWeights, x: &[f32], out: &mut [f32]) {
    project_rows::<x86::Avx512, 4>(w, x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn project_avx2(w: &PackedWeights, x: &[f32], out: &mut [f32]) {
    project_rows::<x86::Avx2, 8>(w, x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn step_avx512(s: &StepInput, o: &mut StepOutput) {
    step_panels::<x86::Avx512, 4>(s, o)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn step_avx2(s: &StepInput, o: &mut StepOutput) {
    step_panels::<x86::Avx2, 8>(s, o)
}

/// Runs the projection of `x [rows, I]` into `out [rows, panels·64]` with the packed kernel.
pub(super) fn project_chunk(w: &PackedWeights, x: &[f32], out: &mut [f32]) {
    let rows = out.len() / (w.panels * COLS);
    assert!(x.len() == rows * w.input, "projection input is [rows, I]");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `w.isa` was detected on this CPU, and the slices' lengths were checked above
    // (every address the tiles touch is inside `x`, `out` and the packed weights).
    unsafe {
        match w.isa {
            Isa::Avx512 => project_avx512(w, x, out),
            Isa::Avx2 => project_avx2(w, x, out),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no packed kernels on this architecture ({w:?} was never built)")
}

/// One timestep for the panels of `o`.
pub(super) fn step_chunk(s: &StepInput, o: &mut StepOutput) {
    let n = o.c.len() / (s.batch * UNITS);
    assert!(
        o.p0 + n <= s.w.panels
            && o.h_new.len() == o.c.len()
            && o.out.len() == o.c.len()
            && s.h_old.len() == s.w.panels * s.batch * UNITS
            && (s.proj.is_empty() || s.proj.len() == s.batch * s.steps * s.w.panels * COLS)
            && s.x.len() == s.batch * s.steps * s.w.input
            && s.mask.is_none_or(|m| m.dim() == (s.batch, s.steps))
            && s.step < s.steps
            && s.time < s.steps,
        "step buffers match the layer"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `w.isa` was detected on this CPU; the buffer sizes were checked above.
    unsafe {
        match s.w.isa {
            Isa::Avx512 => step_avx512(s, o),
            Isa::Avx2 => step_avx2(s, o),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!(
        "no packed kernels on this architecture ({:?} was never built)",
        s.w
    )
}
