//! Where a chain's recurrent layers run: the CPU's `recurrent` passes or the GPU's
//! trainers, behind one trait, with the tape each records.

use super::dropout::GateMasks;
use super::{recurrent, LstmCall, LstmCotangents, LstmGrads};
use crate::config::LstmConfig;
use crate::element::Element;
use crate::error::{LstmError, Result};
use crate::weights::LstmWeights;
use ndarray::{ArrayView2, ArrayView3};

/// A recurrent layer's recorded forward pass, where it ran.
pub(crate) enum Tape<T: Element> {
    /// On the CPU (`recurrent::forward`).
    Cpu(Box<recurrent::LstmTape<T>>),
    /// On the CPU in recompute mode (`recurrent::forward_recomputed`: checkpoints only).
    CpuRecomputed(Box<recurrent::Checkpoints<T>>),
    /// On the GPU ([`crate::gpu::GpuRecurrentTrainer::forward`]).
    Gpu(Box<crate::gpu::GpuTape>),
}

/// Where a chain's recurrent layers run their forward pass with its tape and their
/// backward pass; the other layers and the loss run on the CPU. `at` is the layer's index in
/// the chain and its direction (0, or 1 for a Bidirectional's backward one); `drop` the
/// per-gate dropout masks of a call in training mode with `recurrent_dropout`; `init` the
/// initial h and c (`initial_state`; zeros when None).
pub(crate) trait RecurrentPath<T: Element> {
    fn forward(
        &self,
        at: (usize, usize),
        layer: (&LstmConfig, &LstmWeights<T>),
        x: ArrayView3<'_, T>,
        mask: Option<ArrayView2<'_, bool>>,
        init: Option<(ArrayView2<'_, T>, ArrayView2<'_, T>)>,
        drop: Option<&GateMasks<T>>,
    ) -> Result<(LstmCall<T>, Tape<T>)>;

    fn backward(
        &self,
        at: (usize, usize),
        layer: (&LstmConfig, &LstmWeights<T>),
        x: ArrayView3<'_, T>,
        tape: &Tape<T>,
        cot: &LstmCotangents<T>,
    ) -> Result<LstmGrads<T>>;
}

/// The CPU: `recurrent::forward` and `backward`.
pub(crate) struct CpuPath;

impl<T: Element> RecurrentPath<T> for CpuPath {
    fn forward(
        &self,
        _: (usize, usize),
        layer: (&LstmConfig, &LstmWeights<T>),
        x: ArrayView3<'_, T>,
        mask: Option<ArrayView2<'_, bool>>,
        init: Option<(ArrayView2<'_, T>, ArrayView2<'_, T>)>,
        drop: Option<&GateMasks<T>>,
    ) -> Result<(LstmCall<T>, Tape<T>)> {
        let (call, tape) = recurrent::forward(layer, x, mask, init, drop)?;
        Ok((call, Tape::Cpu(Box::new(tape))))
    }

    fn backward(
        &self,
        _: (usize, usize),
        layer: (&LstmConfig, &LstmWeights<T>),
        x: ArrayView3<'_, T>,
        tape: &Tape<T>,
        cot: &LstmCotangents<T>,
    ) -> Result<LstmGrads<T>> {
        match tape {
            Tape::Cpu(tape) => recurrent::backward(layer, x, tape, cot),
            Tape::CpuRecomputed(ck) => recurrent::backward_recomputed(layer, x, ck, cot),
            Tape::Gpu(_) => Err(LstmError::invalid(
                format!("layer {}", layer.0.name),
                "a GPU tape reached the CPU's backward pass",
            )),
        }
    }
}

/// The CPU in recompute mode: each recurrent call keeps only its states every `.0`
/// processing steps, and its backward pass runs each segment's forward again
/// ([`recurrent::forward_recomputed`]); about one more forward pass of time for a tape of one
/// segment.
pub(crate) struct CpuRecompute(pub(crate) usize);

impl<T: Element> RecurrentPath<T> for CpuRecompute {
    fn forward(
        &self,
        _: (usize, usize),
        layer: (&LstmConfig, &LstmWeights<T>),
        x: ArrayView3<'_, T>,
        mask: Option<ArrayView2<'_, bool>>,
        init: Option<(ArrayView2<'_, T>, ArrayView2<'_, T>)>,
        drop: Option<&GateMasks<T>>,
    ) -> Result<(LstmCall<T>, Tape<T>)> {
        let (call, ck) = recurrent::forward_recomputed(layer, x, mask, init, drop, self.0)?;
        Ok((call, Tape::CpuRecomputed(Box::new(ck))))
    }

    fn backward(
        &self,
        at: (usize, usize),
        layer: (&LstmConfig, &LstmWeights<T>),
        x: ArrayView3<'_, T>,
        tape: &Tape<T>,
        cot: &LstmCotangents<T>,
    ) -> Result<LstmGrads<T>> {
        CpuPath.backward(at, layer, x, tape, cot)
    }
}
