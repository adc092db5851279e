//! The fast f32 kernels of the CPU path: weights packed once into panels, a register-tiled
//! product with AVX-512 or AVX2/FMA (chosen at run time), and the cell update fused into the
//! recurrent product so each step's gates never leave the cache.
//!
//! The work is split as in [`crate::cpu`] and on the GPU: `project_rows` is the input
//! projection of all timesteps (the twin of `shaders/projection.wgsl`), `step_panels` one
//! timestep's recurrent product plus the cell update (the twin of `shaders/step.wgsl`). For
//! batches of at least `FUSED_MIN_BATCH` rows the step also does its own input projection
//! (one product over `[x_t, h]`), which measured faster than a separate pass. The generic
//! path in [`crate::cpu`] stays the reference (and runs f64 and CPUs without these
//! instructions); a test holds the two within rounding of each other.
//!
//! **Cells.** LSTM, GRU with `reset_after` and SimpleRNN. A panel has four gate slots of 16
//! columns: an LSTM's i, f, c, o; a GRU's candidate input part (slot 0, from the kernel), z,
//! r, and the candidate's recurrent part (slot 3, from the recurrent kernel), kept apart
//! because the reset gate scales only the latter; a SimpleRNN's one gate in slot 0. Each
//! product covers only the slots its weights fill (slots 0-2 for a GRU's input, 1-3 for its
//! recurrent product, 0 for a SimpleRNN), so an infinite input never meets a padding zero
//! (NaN where Keras has no such term), and a SimpleRNN does a quarter of an LSTM's work. A GRU
//! without `reset_after` needs r·h before its candidate's product and runs the generic path.
//!
//! **Layout.** A *panel* holds the four gate slots of 16 consecutive units: 64 columns. Packed weights are `[panel][k][64]`, so one panel's columns for one `k` are one
//! contiguous 256-byte row. The state (`h`, `c`, the last output) is kept panel-major,
//! `[panel][B][16]`, so that the panels a thread owns are one contiguous slice of each buffer.
//! Units past H (the last panel's padding) have zero weights; they are computed and never read.

mod threads;
mod tiles;

use super::reference::StepRule;
use super::simd::{in_registers, Isa};
use crate::config::Cell;
use crate::element::Element;
use crate::output::LstmState;
use crate::weights::LstmWeights;
use ndarray::{Array2, Array3, ArrayView2, ArrayView3};
use rayon::prelude::*;
use threads::{SharedPtr, Tickets};
use tiles::{project_chunk, step_chunk, StepInput, StepOutput};

/// Units per panel.
const UNITS: usize = 16;
/// Columns per panel: the four gates of `UNITS` units.
const COLS: usize = 4 * UNITS;
/// Rows of the input projection one block works on (the block's rows stay in L2 while each
/// panel is applied to them).
const ROW_BLOCK: usize = 96;
/// Multiply-adds per timestep below which a step runs on one thread. Splitting a step costs
/// a spin-wait on a shared counter (well under a microsecond); measured on 2 cores, batch 1:
/// H = 128 (65 536 per step) ran 1.5-1.8x faster split, H = 64 (16 384) no faster.
const STEP_PARALLEL_MIN_MACS: usize = 1 << 15;
/// Batches at least this big project each step's input inside the step (the tile is then
/// full, and the `[B·T, 4H]` projection never goes through memory); smaller ones project all
/// timesteps first, as one product with T·B rows. Measured on 2 cores: fused 1.05-1.3x
/// faster at B = 32, 64 and 256.
const FUSED_MIN_BATCH: usize = 6;
/// Multiply-adds below which the projection runs on the calling thread.
const PROJECTION_PARALLEL_MIN_MACS: usize = 1 << 20;

/// One layer's f32 weights in panels, built once when the layer is built.
#[derive(Debug)]
pub(crate) struct PackedWeights {
    isa: Isa,
    cell: Cell,
    units: usize,
    input: usize,
    panels: usize,
    /// `[panel][input][64]`.
    kernel: Vec<f32>,
    /// `[panel][units][64]`.
    recurrent: Vec<f32>,
    /// `[panel][64]` (zeros without a bias).
    bias: Vec<f32>,
    /// A GRU's recurrent bias `[panel][64]` (slots z, r, -, h; zeros otherwise).
    rbias: Vec<f32>,
}

/// Which of a Keras matrix's gate blocks fills each slot of a panel (None: zero).
type Slots = [Option<usize>; 4];

/// The slots of (kernel and input bias, recurrent kernel and recurrent bias) for `cell`, or
/// None when the packed kernels do not run it.
fn slots(cell: Cell) -> Option<(Slots, Slots)> {
    match cell {
        Cell::Lstm => {
            let all = [Some(0), Some(1), Some(2), Some(3)];
            Some((all, all))
        }
        // slots: the candidate's input part, z, r, the candidate's recurrent part
        Cell::Gru { reset_after: true } => Some((
            [Some(2), Some(0), Some(1), None],
            [None, Some(0), Some(1), Some(2)],
        )),
        Cell::Gru { reset_after: false } => None,
        Cell::SimpleRnn => {
            let first = [Some(0), None, None, None];
            Some((first, first))
        }
    }
}

/// Reorders a Keras `[k, G·H]` matrix (G gate blocks) into `[panel][k][64]`, slot s of each
/// panel holding gate block `slots[s]`.
fn pack_matrix(m: ArrayView2<f32>, units: usize, panels: usize, slots: Slots) -> Vec<f32> {
    let k = m.nrows();
    let mut out = vec![0.0f32; panels * k * COLS];
    for p in 0..panels {
        for row in 0..k {
            let dst = &mut out[(p * k + row) * COLS..][..COLS];
            for (slot, gate) in slots.iter().enumerate() {
                let Some(gate) = gate else { continue };
                for lane in 0..UNITS {
                    let unit = p * UNITS + lane;
                    if unit < units {
                        dst[slot * UNITS + lane] = m[[row, gate * units + unit]];
                    }
                }
            }
        }
    }
    out
}

/// Views `a` as f32 when `T` is f32.
fn f32_slice<T: Element>(a: &[T]) -> Option<&[f32]> {
    T::is_f32().then(|| bytemuck::cast_slice(a))
}

/// Mutable twin of [`f32_slice`].
fn f32_slice_mut<T: Element>(a: &mut [T]) -> Option<&mut [f32]> {
    T::is_f32().then(|| bytemuck::cast_slice_mut(a))
}

impl PackedWeights {
    /// Packs `weights` of a `cell` layer when `T` is f32, the CPU has one of the instruction
    /// sets and the kernels run the cell; None otherwise (the layer then runs on the generic
    /// path).
    pub(crate) fn new<T: Element>(weights: &LstmWeights<T>, cell: Cell) -> Option<PackedWeights> {
        Self::with_isa(weights, cell, Isa::detect()?)
    }

    /// [`PackedWeights::new`] for a given instruction set, which the CPU must have.
    fn with_isa<T: Element>(
        weights: &LstmWeights<T>,
        cell: Cell,
        isa: Isa,
    ) -> Option<PackedWeights> {
        let (input_slots, recurrent_slots) = slots(cell)?;
        let kernel = weights.kernel.as_standard_layout();
        let recurrent = weights.recurrent_kernel.as_standard_layout();
        let kernel = ArrayView2::from_shape(kernel.dim(), f32_slice(kernel.as_slice()?)?).ok()?;
        let recurrent =
            ArrayView2::from_shape(recurrent.dim(), f32_slice(recurrent.as_slice()?)?).ok()?;
        let units = recurrent.nrows();
        let panels = units.div_ceil(UNITS);
        let gh = cell.gates() * units;
        let (bias, rbias) = match &weights.bias {
            Some(b) => {
                let b = b.as_standard_layout();
                let b = f32_slice(b.as_slice()?)?;
                let input = ArrayView2::from_shape((1, gh), &b[..gh]).ok()?;
                let rbias = match cell {
                    // the second half of a reset_after GRU's [6H] bias
                    Cell::Gru { reset_after: true } => {
                        let r = ArrayView2::from_shape((1, gh), &b[gh..]).ok()?;
                        pack_matrix(r, units, panels, recurrent_slots)
                    }
                    _ => vec![0.0; panels * COLS],
                };
                (pack_matrix(input, units, panels, input_slots), rbias)
            }
            None => (vec![0.0; panels * COLS], vec![0.0; panels * COLS]),
        };
        Some(PackedWeights {
            isa,
            cell,
            units,
            input: kernel.nrows(),
            panels,
            kernel: pack_matrix(kernel, units, panels, input_slots),
            recurrent: pack_matrix(recurrent, units, panels, recurrent_slots),
            bias,
            rbias,
        })
    }
}

/// `[B, H]` to panel-major `[panels][B][16]` (padding zero).
fn to_panels(a: ArrayView2<f32>, panels: usize) -> Vec<f32> {
    let (b, h) = a.dim();
    let mut out = vec![0.0f32; panels * b * UNITS];
    for ((row, unit), &v) in a.indexed_iter() {
        out[((unit / UNITS) * b + row) * UNITS + unit % UNITS] = v;
    }
    debug_assert!(h <= panels * UNITS);
    out
}

/// Panel-major `[panels][B][16]` into `dst [B, H]`.
fn from_panels(src: &[f32], dst: &mut [f32], batch: usize, units: usize) {
    for row in 0..batch {
        for unit in 0..units {
            dst[row * units + unit] = src[((unit / UNITS) * batch + row) * UNITS + unit % UNITS];
        }
    }
}

/// The packed twin of [`super::reference::run`]: the same results (within rounding), f32 only.
/// Returns None when `T` is not f32 (the caller then runs the generic path). `scratch` holds
/// the projection between calls, so repeated calls allocate nothing for it.
#[allow(clippy::type_complexity)]
pub(crate) fn run<T: Element>(
    w: &PackedWeights,
    rule: StepRule,
    go_backwards: bool,
    x: ArrayView3<T>,
    start: &LstmState<T>,
    mask: Option<ArrayView2<bool>>,
    scratch: &mut Vec<f32>,
) -> Option<(Array3<T>, Array2<T>, LstmState<T>)> {
    let (batch, steps, input) = x.dim();
    let units = w.units;
    let x = x.as_standard_layout();
    let xs = f32_slice(x.as_slice()?)?;
    let h0 = start.h.as_standard_layout();
    let h0 = ArrayView2::from_shape((batch, units), f32_slice(h0.as_slice()?)?).ok()?;
    // (a GRU or SimpleRNN carries no c: its `[B, 0]` becomes zeros the kernels ignore)
    let lstm = w.cell == Cell::Lstm;
    let c0 = if lstm {
        start.c.as_standard_layout().into_owned()
    } else {
        Array2::zeros((batch, units))
    };
    let c0 = ArrayView2::from_shape((batch, units), f32_slice(c0.as_slice()?)?).ok()?;
    // (`f32_slice` returned Some above, so T is f32.)
    if input != w.input {
        return None;
    }
    let width = w.panels * COLS;
    let rows = batch * steps;
    let macs = batch * units * width;
    let tasks = if macs >= STEP_PARALLEL_MIN_MACS {
        rayon::current_num_threads().min(w.panels)
    } else {
        1
    };
    let parallel_projection =
        rows * input * width >= PROJECTION_PARALLEL_MIN_MACS && rayon::current_num_threads() > 1;
    let fused = batch >= FUSED_MIN_BATCH;
    let proj_len = if fused { 0 } else { rows * width };
    scratch.resize(proj_len, 0.0);
    let proj = &mut scratch[..proj_len];
    let mut sequence = Array3::<T>::uninit((batch, steps, units));
    // (T is f32.)
    let seq_ptr = SharedPtr(sequence.as_mut_ptr().cast());
    // The two buffers of h: step s reads `h_a` when s is even and writes the other.
    let mut h_a = to_panels(h0, w.panels);
    let mut c = to_panels(c0, w.panels);
    let state_len = w.panels * batch * UNITS;
    let mut h_b = vec![0.0f32; state_len];
    let mut out = vec![0.0f32; state_len];

    // Fused steps project their own input; otherwise all timesteps are projected first.
    if !fused && parallel_projection {
        let chunk = rows.div_ceil(rayon::current_num_threads() * 4).max(1);
        proj.par_chunks_mut(chunk * width)
            .zip(xs.par_chunks(chunk * input))
            .for_each(|(out, x)| project_chunk(w, x, out));
    } else if !fused {
        project_chunk(w, xs, proj);
    }
    let proj = &*proj;
    let fast = in_registers(rule.activation) && in_registers(rule.recurrent_activation);
    let per_task = w.panels.div_ceil(tasks);
    let chunks = w.panels.div_ceil(per_task);
    let chunk_len = per_task * batch * UNITS;
    let hs = [SharedPtr(h_a.as_mut_ptr()), SharedPtr(h_b.as_mut_ptr())];
    let (c_ptr, out_ptr) = (SharedPtr(c.as_mut_ptr()), SharedPtr(out.as_mut_ptr()));
    let run_item = |step: usize, chunk: usize| {
        let time = if go_backwards { steps - 1 - step } else { step };
        let start = chunk * chunk_len;
        let len = chunk_len.min(state_len - start);
        // SAFETY: step `step` reads h buffer `step % 2` whole and writes chunk `chunk` of
        // the other, of c and of out; no other item of this step touches that chunk, and
        // items of other steps are ordered before or after this one (`Tickets`, or the
        // plain loop below), so no slice here aliases a live mutable one.
        let (h_old, h_new, c, out) = unsafe {
            (
                std::slice::from_raw_parts(hs[step % 2].get(), state_len),
                std::slice::from_raw_parts_mut(hs[(step + 1) % 2].get().add(start), len),
                std::slice::from_raw_parts_mut(c_ptr.get().add(start), len),
                std::slice::from_raw_parts_mut(out_ptr.get().add(start), len),
            )
        };
        let input = StepInput {
            w,
            rule,
            batch,
            steps,
            step,
            time,
            proj,
            x: xs,
            h_old,
            mask,
            fast,
        };
        let mut output = StepOutput {
            p0: chunk * per_task,
            h_new,
            c,
            out,
            sequence: seq_ptr,
        };
        step_chunk(&input, &mut output);
    };
    if chunks == 1 {
        for step in 0..steps {
            run_item(step, 0);
        }
    } else {
        let tickets = Tickets::new(steps, chunks);
        rayon::scope(|scope| {
            for _ in 1..chunks.min(rayon::current_num_threads()) {
                scope.spawn(|_| tickets.work(&run_item));
            }
            tickets.work(&run_item);
        });
    }
    // SAFETY: every step wrote every batch row's H columns of its row of the sequence.
    let sequence = unsafe { sequence.assume_init() };

    let mut last = Array2::<T>::zeros((batch, units));
    let mut h = Array2::<T>::zeros((batch, units));
    let mut c_out = Array2::<T>::zeros((batch, if lstm { units } else { 0 }));
    from_panels(&out, f32_slice_mut(last.as_slice_mut()?)?, batch, units);
    let h_last = if steps % 2 == 0 { &h_a } else { &h_b };
    from_panels(h_last, f32_slice_mut(h.as_slice_mut()?)?, batch, units);
    if lstm {
        from_panels(&c, f32_slice_mut(c_out.as_slice_mut()?)?, batch, units);
    }
    Some((sequence, last, LstmState { h, c: c_out }))
}

#[cfg(test)]
mod tests;
