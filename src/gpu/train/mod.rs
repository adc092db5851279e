//! Training on the GPU: one recurrent layer's forward pass with its tape and its backward
//! pass through time in one submission ([`GpuRecurrentTrainer`]), the twin of
//! [`crate::train::lstm_gradients`] on the CPU.
//!
//! The pass, in order (kernels `train_gemm.wgsl`, `train_forward.wgsl`,
//! `train_backward.wgsl`; their header comments give the layouts and formulas):
//! 1. the input projection of every timestep, `X·W + b`, as one product (`[X | 1]·[W; b]`:
//!    x is uploaded with a trailing 1 per row, the bias kept as the kernel's last row);
//! 2. one forward dispatch per timestep: the recurrent product, the tape (`h·U`, `h_prev`,
//!    `c_prev`), the cell and Keras's mask rule;
//! 3. one backward dispatch per timestep, last first: the transpose of the recurrent product
//!    for the later step (`dh_prev = dZh·Uᵀ`), then the gate gradients and the cell backward;
//!    one more for the first step's `dh_prev` (the initial state's gradient);
//! 4. every weight gradient and `dX` as products over all timesteps at once
//!    (`[X | 1]ᵀ·dZx`: the kernel's and bias's; `[H_prev | 1]ᵀ·dZh`: the recurrent kernel's,
//!    and a GRU's recurrent bias's; `dZx·Wᵀ`).
//!
//! Each product is a register-tiled GEMM; a reduction longer than a software rasterizer's
//! loop limit allows runs as several accumulating dispatches.
//!
//! Activation memory on the device: the projection and the tape, `B·T·(2G + 1)·H` floats
//! (`G` gates; `B·T·H` more for an LSTM's `c_prev`), and `dZ`, `B·T·G·H` (twice that for a
//! GRU, whose input and recurrent sides differ), besides `x`, `dX` and the output sequence.

mod record;
mod submit;

use super::context::GpuContext;
use super::kernels::Kernel;
use super::loops;
use super::params::{TrainStepParams, TRAIN_STEP_ROWS, TRAIN_STEP_THREADS};
use crate::config::{Cell, LstmConfig};
use crate::cpu::Lstm;
use crate::error::{LstmError, Result};
use crate::train::recurrent::{check_cotangents, check_inputs, time_of};
use crate::train::{LstmCall, LstmCotangents, LstmGrads};
use crate::weights::LstmWeights;
use ndarray::{Array1, Array2, Array3, ArrayD, ArrayView2, ArrayView3, IxDyn};
use record::{u32_of, Read, Recorder, View, Work};
use std::sync::Arc;

/// One `LSTM`, `GRU` (with `reset_after`, Keras 3's default) or `SimpleRNN` layer's weights
/// on the GPU, and its gradients there: [`gradients`](Self::gradients) runs the forward
/// pass with its tape and the backward pass through time in one submission and one
/// readback, with Keras's semantics (masks, `go_backwards`, `zero_output_for_mask`,
/// `return_sequences`, initial states and their gradients), and gives what
/// [`crate::train::lstm_gradients`] gives on the CPU (within 1e-4).
///
/// The weights are uploaded once; [`set_weights`](Self::set_weights) replaces them in place
/// after an optimizer step. A GRU without `reset_after` is refused
/// ([`LstmError::UnsupportedOnPath`]; its reset gate needs a second product per step).
///
/// ```no_run
/// use lstm_wgpu::gpu::{GpuContext, GpuRecurrentTrainer};
/// use lstm_wgpu::train::LstmCotangents;
/// use lstm_wgpu::{Lstm, LstmConfig, LstmWeights};
/// use ndarray::{Array3, ArrayD};
/// # fn main() -> lstm_wgpu::Result<()> {
/// let cfg = LstmConfig::new(8).return_sequences(true);
/// let layer = Lstm::new(cfg.clone(), LstmWeights::random(&cfg, 3, 7)?)?;
/// let trainer = GpuRecurrentTrainer::new(GpuContext::new()?, &layer)?;
/// let x = Array3::<f32>::from_elem((2, 5, 3), 0.5);
/// let cot = LstmCotangents { output: ArrayD::from_elem(vec![2, 5, 8], 1.0), h: None, c: None };
/// let (call, grads) = trainer.gradients(x.view(), None, None, &cot)?;
/// assert_eq!(call.output.shape(), &[2, 5, 8]);
/// assert_eq!(grads.kernel.dim(), (3, 32));
/// # Ok(()) }
/// ```
pub struct GpuRecurrentTrainer {
    ctx: Arc<GpuContext>,
    cfg: LstmConfig,
    input: usize,
    /// `W [I, G·H]`, then the input-side bias `[G·H]` (a GRU's first half) as one more
    /// row: the input is uploaded with a trailing 1 per row, so that the projection is one
    /// product and `[X | 1]ᵀ·dZx` gives the bias's gradient as its last row.
    kernel: wgpu::Buffer,
    /// The layer has a bias.
    has_bias: bool,
    /// `U [H, G·H]`, then a GRU's recurrent bias `[G·H]`.
    rk: wgpu::Buffer,
    /// `Uᵀ [G·H, H]`.
    rkt: wgpu::Buffer,
    /// The bias is `[2·G·H]` (a GRU with reset_after): its gradient has both halves.
    two_biases: bool,
    /// Which trainer recorded a [`GpuTape`].
    id: u64,
}

impl std::fmt::Debug for GpuRecurrentTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuRecurrentTrainer")
            .field("layer", &self.cfg.name)
            .field("cell", &self.cfg.cell)
            .field("units", &self.cfg.units)
            .field("input", &self.input)
            .field("device", &self.ctx.describe())
            .finish()
    }
}

/// The id of the next trainer.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl GpuRecurrentTrainer {
    /// Uploads `layer`'s weights to `ctx`'s device.
    pub fn new(ctx: Arc<GpuContext>, layer: &Lstm<f32>) -> Result<Self> {
        let cfg = layer.config().clone();
        if matches!(cfg.cell, Cell::Gru { reset_after: false }) {
            return Err(LstmError::UnsupportedOnPath {
                what: format!("training the GRU {} with reset_after=false", cfg.name),
                path: "gpu".into(),
                hint: "its reset gate needs a second product per step; train it with \
                       lstm_wgpu::train on the CPU"
                    .into(),
            });
        }
        let w = layer.weights();
        let n = cfg.cell.gates() * cfg.units;
        let device = ctx.device();
        let make = |label: &str, size: usize| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: (4 * size.max(4)) as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let input = w.kernel.nrows();
        let two_biases = w.bias.as_ref().is_some_and(|b| b.len() == 2 * n);
        let trainer = GpuRecurrentTrainer {
            kernel: make("train kernel", (input + 1) * n),
            has_bias: w.bias.is_some(),
            rk: make("train recurrent kernel", cfg.units * n + n),
            rkt: make("train recurrent kernel (transposed)", cfg.units * n),
            ctx: ctx.clone(),
            cfg,
            input,
            two_biases,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        trainer.write_weights(w)?;
        Ok(trainer)
    }

    /// Replaces the weights on the device (the same shapes as at [`new`](Self::new)), e.g.
    /// after an optimizer step.
    pub fn set_weights(&mut self, w: &LstmWeights<f32>) -> Result<()> {
        let n = self.cfg.cell.gates() * self.cfg.units;
        let mut want: Vec<Vec<usize>> = vec![vec![self.input, n], vec![self.cfg.units, n]];
        if self.has_bias {
            want.push(vec![if self.two_biases { 2 * n } else { n }]);
        }
        let mut got: Vec<&[usize]> = vec![w.kernel.shape(), w.recurrent_kernel.shape()];
        got.extend(w.bias.as_ref().map(|b| b.shape()));
        let want: Vec<&[usize]> = want.iter().map(|v| v.as_slice()).collect();
        crate::train::check_shapes(&format!("weights of layer {}", self.cfg.name), &want, &got)?;
        self.write_weights(w)
    }

    pub(crate) fn write_weights(&self, w: &LstmWeights<f32>) -> Result<()> {
        let n = self.cfg.cell.gates() * self.cfg.units;
        let q = self.ctx.queue();
        let flat = |a: &Array2<f32>| a.as_standard_layout().iter().copied().collect::<Vec<_>>();
        let mut kernel = flat(&w.kernel);
        let mut rk = flat(&w.recurrent_kernel);
        rk.resize(rk.len() + n, 0.0);
        if let Some(b) = &w.bias {
            let b: Vec<f32> = b.iter().copied().collect();
            kernel.extend_from_slice(&b[..n]);
            if self.two_biases {
                let at = rk.len() - n;
                rk[at..].copy_from_slice(&b[n..]);
            }
        }
        q.write_buffer(&self.kernel, 0, bytemuck::cast_slice(&kernel));
        q.write_buffer(&self.rk, 0, bytemuck::cast_slice(&rk));
        let t = flat(&w.recurrent_kernel.t().to_owned());
        q.write_buffer(&self.rkt, 0, bytemuck::cast_slice(&t));
        Ok(())
    }

    /// The layer's configuration.
    pub fn config(&self) -> &LstmConfig {
        &self.cfg
    }

    /// The layer's call on `x [B, T, I]` (with `mask [B, T]` and initial states `(h0, c0)`;
    /// zeros when None, `c0` unused by a GRU or SimpleRNN) and its gradients for the
    /// cotangents `cot` of its outputs: the forward and backward passes in one submission.
    pub fn gradients(
        &self,
        x: ArrayView3<'_, f32>,
        mask: Option<ArrayView2<'_, bool>>,
        init: Option<(ArrayView2<'_, f32>, ArrayView2<'_, f32>)>,
        cot: &LstmCotangents<f32>,
    ) -> Result<(LstmCall<f32>, LstmGrads<f32>)> {
        let tape = self.upload_forward(x, mask, init)?;
        check_cotangents(&self.cfg, tape.b, tape.t, cot)?;
        let back = self.upload_backward(&tape, cot)?;
        let mut rec = self.recorder()?;
        self.record_forward(&mut rec, &tape)?;
        self.record_backward(&mut rec, &tape, &back)?;
        let mut reads = self.forward_reads(&tape);
        reads.extend(self.backward_reads(&tape, &back));
        let mut parts = self.submit(rec, &tape, Some(&back), &reads)?.into_iter();
        let call = self.call_from(&tape, &mut parts);
        Ok((call, self.grads_from(&tape, &mut parts)))
    }

    /// The forward pass alone (one submission): the call's outputs, and its tape kept on the
    /// device for [`backward`](Self::backward), e.g. when the cotangents come from layers
    /// above it.
    pub fn forward(
        &self,
        x: ArrayView3<'_, f32>,
        mask: Option<ArrayView2<'_, bool>>,
        init: Option<(ArrayView2<'_, f32>, ArrayView2<'_, f32>)>,
    ) -> Result<(LstmCall<f32>, GpuTape)> {
        let tape = self.upload_forward(x, mask, init)?;
        let mut rec = self.recorder()?;
        self.record_forward(&mut rec, &tape)?;
        let reads = self.forward_reads(&tape);
        let mut parts = self.submit(rec, &tape, None, &reads)?.into_iter();
        Ok((self.call_from(&tape, &mut parts), tape))
    }

    /// The backward pass (one submission) of a forward pass of this trainer, for the
    /// cotangents `cot` of its outputs, with the weights on the device now.
    pub fn backward(&self, tape: &GpuTape, cot: &LstmCotangents<f32>) -> Result<LstmGrads<f32>> {
        if tape.trainer != self.id {
            return Err(LstmError::invalid(
                "tape",
                format!(
                    "was recorded by another trainer than that of layer {}",
                    self.cfg.name
                ),
            ));
        }
        check_cotangents(&self.cfg, tape.b, tape.t, cot)?;
        let back = self.upload_backward(tape, cot)?;
        let mut rec = self.recorder()?;
        self.record_backward(&mut rec, tape, &back)?;
        let reads = self.backward_reads(tape, &back);
        let mut parts = self.submit(rec, tape, Some(&back), &reads)?.into_iter();
        Ok(self.grads_from(tape, &mut parts))
    }

    /// A storage buffer of `floats` values for the call, within the adapter's limits.
    fn storage(&self, what: &str, floats: usize) -> Result<wgpu::Buffer> {
        let limits = self.ctx.limits();
        let max = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let need = (4 * floats.max(4)) as u64;
        if need > max {
            return Err(LstmError::Limit {
                what: format!("{what} of layer {}", self.cfg.name),
                need,
                max,
                limit: "max_storage_buffer_binding_size".into(),
                hint: "train on fewer batch rows or shorter sequences per call, or on the CPU"
                    .into(),
            });
        }
        Ok(self.ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size: need.next_multiple_of(16),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        }))
    }

    /// Checks the call, makes its forward buffers and writes x, the mask and the states.
    fn upload_forward(
        &self,
        x: ArrayView3<'_, f32>,
        mask: Option<ArrayView2<'_, bool>>,
        init: Option<(ArrayView2<'_, f32>, ArrayView2<'_, f32>)>,
    ) -> Result<GpuTape> {
        let cfg = &self.cfg;
        let (b, t, i) = x.dim();
        let (h, n) = (cfg.units, cfg.cell.gates() * cfg.units);
        let name = &cfg.name;
        check_inputs(cfg, self.input, x, mask, init)?;
        if b == 0 || t == 0 {
            return Err(LstmError::invalid(
                "x",
                format!(
                    "training layer {name} on the GPU needs at least one batch row and one \
                     timestep (got {b} x {t}); the CPU's lstm_gradients takes empty inputs"
                ),
            ));
        }
        loops::check(
            &format!("GPU training of layer {name} ({h} units)"),
            loops::train_step_iterations(h, cfg.cell.gates()),
            self.ctx.loop_limit()?,
        )?;
        let bt = b * t;
        let lstm = matches!(cfg.cell, Cell::Lstm);
        let (ki, hp) = (
            i + usize::from(self.has_bias),
            h + usize::from(self.two_biases),
        );
        let tape_len = bt * n + bt * hp + if lstm { bt * h } else { 0 };
        let tape = GpuTape {
            trainer: self.id,
            b,
            t,
            has_mask: mask.is_some(),
            x: self.storage("x", bt * ki)?,
            proj: self.storage("projection", bt * n)?,
            mask: self.storage("mask", if mask.is_some() { bt } else { 1 })?,
            state: self.storage("states", 4 * b * h)?,
            tape: self.storage("tape", tape_len)?,
            seq: self.storage(
                "output sequence",
                if cfg.return_sequences { bt * h } else { 1 },
            )?,
        };
        let q = self.ctx.queue();
        // x with a trailing 1 per row for the bias
        let mut xs: Vec<f32> = Vec::with_capacity(bt * ki);
        for row in x.to_shape((bt, i)).expect("[B, T, I] as [B·T, I]").rows() {
            xs.extend(row.iter());
            if self.has_bias {
                xs.push(1.0);
            }
        }
        q.write_buffer(&tape.x, 0, bytemuck::cast_slice(&xs));
        if let Some(m) = mask {
            let ms: Vec<u32> = m.iter().map(|&v| u32::from(v)).collect();
            q.write_buffer(&tape.mask, 0, bytemuck::cast_slice(&ms));
        }
        let bh = b * h;
        let mut st = vec![0.0f32; 4 * bh];
        if let Some((h0, c0)) = init {
            fill(&mut st[..bh], h0.iter());
            if lstm {
                fill(&mut st[2 * bh..3 * bh], c0.iter());
            }
        }
        q.write_buffer(&tape.state, 0, bytemuck::cast_slice(&st));
        Ok(tape)
    }

    /// Makes the backward buffers and writes the cotangents.
    fn upload_backward(&self, tape: &GpuTape, cot: &LstmCotangents<f32>) -> Result<Backward> {
        let cfg = &self.cfg;
        let (b, t, i) = (tape.b, tape.t, self.input);
        let (h, n) = (cfg.units, cfg.cell.gates() * cfg.units);
        let bt = b * t;
        let gru = matches!(cfg.cell, Cell::Gru { .. });
        let back = Backward {
            cot: self.storage(
                "output cotangent",
                if cfg.return_sequences { bt * h } else { 1 },
            )?,
            bstate: self.storage("state cotangents", 3 * b * h)?,
            dz: self.storage("gate gradients", if gru { 2 * bt * n } else { bt * n })?,
            gk: self.storage("kernel gradient", (i + 1) * n)?,
            gr: self.storage("recurrent kernel gradient", (h + 1) * n)?,
            gx: self.storage("input gradient", bt * i)?,
        };
        let q = self.ctx.queue();
        let bh = b * h;
        let mut bs = vec![0.0f32; 3 * bh];
        if let Some(dh) = &cot.h {
            fill(&mut bs[..bh], dh.iter());
        }
        if cfg.return_sequences {
            let cs: Vec<f32> = cot.output.iter().copied().collect();
            q.write_buffer(&back.cot, 0, bytemuck::cast_slice(&cs));
        } else {
            fill(&mut bs[bh..2 * bh], cot.output.iter());
        }
        if let (Some(dc), Cell::Lstm) = (&cot.c, cfg.cell) {
            fill(&mut bs[2 * bh..], dc.iter());
        }
        q.write_buffer(&back.bstate, 0, bytemuck::cast_slice(&bs));
        Ok(back)
    }

    fn recorder(&self) -> Result<Recorder<'_>> {
        let limits = self.ctx.limits();
        Ok(Recorder {
            align: limits.min_uniform_buffer_offset_alignment as usize,
            uniforms: Vec::new(),
            work: Vec::new(),
            k_per_dispatch: loops::gemm_k_per_dispatch(loops::budget(self.ctx.loop_limit()?)),
            max_groups: limits.max_compute_workgroups_per_dimension,
        })
    }

    /// The parameter block of processing step `s` (`prev`: the step the previous backward
    /// dispatch ran; `finish`: dh0 only).
    fn step_block(
        &self,
        tape: &GpuTape,
        s: usize,
        prev: Option<usize>,
        finish: bool,
    ) -> Result<TrainStepParams> {
        let t = tape.t;
        let when = |s: usize| time_of(self.cfg.go_backwards, t, s);
        Ok(TrainStepParams {
            batch: u32_of("batch", tape.b)?,
            units: u32_of("units", self.cfg.units)?,
            steps: u32_of("steps", t)?,
            s: u32_of("step", s)?,
            t: u32_of("step", when(s))?,
            t_prev: u32_of("step", prev.map_or(0, when))?,
            has_prev: u32::from(prev.is_some()),
            finish: u32::from(finish),
        })
    }

    fn step_groups(&self, rec: &Recorder<'_>, tape: &GpuTape) -> Result<(u32, u32)> {
        rec.groups(
            &format!("GPU training of layer {}", self.cfg.name),
            self.cfg.units.div_ceil(TRAIN_STEP_THREADS),
            tape.b.div_ceil(TRAIN_STEP_ROWS),
        )
    }

    /// The input projection of every step, then the forward steps.
    fn record_forward<'a>(&'a self, rec: &mut Recorder<'a>, tape: &'a GpuTape) -> Result<()> {
        let (bt, i) = (tape.b * tape.t, self.input);
        let n = self.cfg.cell.gates() * self.cfg.units;
        let ki = i + usize::from(self.has_bias);
        rec.gemm(
            "the input projection",
            (bt, n, ki),
            View::new(&tape.x, 0, ki, 1),
            View::new(&self.kernel, 0, n, 1),
            (&tape.proj, 0),
            false,
        )?;
        let groups = self.step_groups(rec, tape)?;
        for s in 0..tape.t {
            let at = rec.block(bytemuck::bytes_of(&self.step_block(tape, s, None, false)?));
            rec.work.push(Work::Step {
                kernel: Kernel::TrainForward,
                at,
                groups,
            });
        }
        Ok(())
    }

    /// The backward steps (last first) and dh0, then every weight gradient and dX over all
    /// steps at once.
    fn record_backward<'a>(
        &'a self,
        rec: &mut Recorder<'a>,
        tape: &'a GpuTape,
        back: &'a Backward,
    ) -> Result<()> {
        let (t, bt, i, h) = (tape.t, tape.b * tape.t, self.input, self.cfg.units);
        let n = self.cfg.cell.gates() * h;
        let groups = self.step_groups(rec, tape)?;
        for s in (0..t).rev() {
            let prev = (s + 1 < t).then_some(s + 1);
            let at = rec.block(bytemuck::bytes_of(&self.step_block(tape, s, prev, false)?));
            rec.work.push(Work::Step {
                kernel: Kernel::TrainBackward,
                at,
                groups,
            });
        }
        let at = rec.block(bytemuck::bytes_of(&self.step_block(
            tape,
            0,
            Some(0),
            true,
        )?));
        rec.work.push(Work::Step {
            kernel: Kernel::TrainBackward,
            at,
            groups,
        });
        if std::env::var("ZZ_SKIP").is_ok() {
            return Ok(());
        }
        let dzx = if matches!(self.cfg.cell, Cell::Gru { .. }) {
            bt * n
        } else {
            0
        };
        // with the trailing ones of x and h_prev, the biases' gradients are the last rows
        let (ki, hp) = (
            i + usize::from(self.has_bias),
            h + usize::from(self.two_biases),
        );
        rec.gemm(
            "the kernel's gradient",
            (ki, n, bt),
            View::new(&tape.x, 0, 1, ki),
            View::new(&back.dz, dzx, n, 1),
            (&back.gk, 0),
            false,
        )?;
        rec.gemm(
            "the recurrent kernel's gradient",
            (hp, n, bt),
            View::new(&tape.tape, bt * n, 1, hp),
            View::new(&back.dz, 0, n, 1),
            (&back.gr, 0),
            false,
        )?;
        rec.gemm(
            "the input's gradient",
            (bt, i, n),
            View::new(&back.dz, dzx, n, 1),
            View::new(&self.kernel, 0, 1, n),
            (&back.gx, 0),
            false,
        )?;
        Ok(())
    }

    /// What the forward pass reads back: the output, the final h and c.
    fn forward_reads<'a>(&self, tape: &'a GpuTape) -> Vec<Read<'a>> {
        let (b, t, h) = (tape.b, tape.t, self.cfg.units);
        let bh = b * h;
        let out = if self.cfg.return_sequences {
            (&tape.seq, 0, b * t * h)
        } else {
            (&tape.state, 3 * bh, bh)
        };
        // step s writes h into half 1 - s % 2
        let h_final = (1 - (t - 1) % 2) * bh;
        vec![out, (&tape.state, h_final, bh), (&tape.state, 2 * bh, bh)]
    }

    /// What the backward pass reads back: the weight gradients, dX, dh0 and dc0.
    fn backward_reads<'a>(&self, tape: &GpuTape, back: &'a Backward) -> Vec<Read<'a>> {
        let (b, t, i, h) = (tape.b, tape.t, self.input, self.cfg.units);
        let n = self.cfg.cell.gates() * h;
        let (ki, hp) = (
            i + usize::from(self.has_bias),
            h + usize::from(self.two_biases),
        );
        vec![
            (&back.gk, 0, ki * n),
            (&back.gr, 0, hp * n),
            (&back.gx, 0, b * t * i),
            (&back.bstate, 0, b * h),
            (&back.bstate, 2 * b * h, b * h),
        ]
    }

    fn call_from(
        &self,
        tape: &GpuTape,
        parts: &mut impl Iterator<Item = Vec<f32>>,
    ) -> LstmCall<f32> {
        let (b, t, h) = (tape.b, tape.t, self.cfg.units);
        let shape: Vec<usize> = if self.cfg.return_sequences {
            vec![b, t, h]
        } else {
            vec![b, h]
        };
        let mut next = || parts.next().expect("one part per read");
        LstmCall {
            output: ArrayD::from_shape_vec(IxDyn(&shape), next()).expect("its size"),
            h: Array2::from_shape_vec((b, h), next()).expect("its size"),
            c: Array2::from_shape_vec((b, h), next()).expect("its size"),
        }
    }

    fn grads_from(
        &self,
        tape: &GpuTape,
        parts: &mut impl Iterator<Item = Vec<f32>>,
    ) -> LstmGrads<f32> {
        let (b, t, i, h) = (tape.b, tape.t, self.input, self.cfg.units);
        let n = self.cfg.cell.gates() * h;
        let mut next = || parts.next().expect("one part per read");
        let arr2 = |r, c, v: Vec<f32>| Array2::from_shape_vec((r, c), v).expect("its size");
        // the bias rows after the kernels'
        let mut kernel = next();
        let mut recurrent_kernel = next();
        let mut bias = kernel.split_off(i * n);
        bias.extend(recurrent_kernel.split_off(h * n));
        LstmGrads {
            kernel: arr2(i, n, kernel),
            recurrent_kernel: arr2(h, n, recurrent_kernel),
            bias: self.has_bias.then(|| Array1::from_vec(bias)),
            x: Array3::from_shape_vec((b, t, i), next()).expect("its size"),
            h0: arr2(b, h, next()),
            c0: arr2(b, h, next()),
        }
    }
}

/// A forward pass of a [`GpuRecurrentTrainer`] kept on the device: its input, projection,
/// mask, states, tape and output sequence, for [`GpuRecurrentTrainer::backward`].
pub struct GpuTape {
    trainer: u64,
    b: usize,
    t: usize,
    has_mask: bool,
    x: wgpu::Buffer,
    proj: wgpu::Buffer,
    mask: wgpu::Buffer,
    state: wgpu::Buffer,
    tape: wgpu::Buffer,
    seq: wgpu::Buffer,
}

impl std::fmt::Debug for GpuTape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuTape")
            .field("batch", &self.b)
            .field("steps", &self.t)
            .field("mask", &self.has_mask)
            .finish()
    }
}

/// A backward pass's buffers: the output cotangent, the state cotangents, dZ, the
/// gradients.
struct Backward {
    cot: wgpu::Buffer,
    bstate: wgpu::Buffer,
    dz: wgpu::Buffer,
    gk: wgpu::Buffer,
    gr: wgpu::Buffer,
    gx: wgpu::Buffer,
}

/// Copies `src` into `dst` value by value.
fn fill<'a>(dst: &mut [f32], src: impl Iterator<Item = &'a f32>) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = *s;
    }
}
