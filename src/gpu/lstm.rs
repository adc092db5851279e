//! [`GpuLstm`]: one Keras recurrent layer (`LSTM`, `GRU`, `SimpleRNN`) on the GPU, with the
//! CPU layer's interface.

use super::context::GpuContext;
use super::network::GpuNetwork;
use super::plan::RecurrentKernel;
use super::stats::{ForwardProfile, ForwardStats};
use crate::cpu::Lstm;
use crate::element::Element;
use crate::error::{LstmError, Result};
use crate::network::Network;
use crate::output::{LstmOutput, LstmState};
use ndarray::{Array2, ArrayView2, ArrayView3};
use std::sync::Arc;

/// One Keras recurrent layer (`LSTM`, `GRU`, `SimpleRNN`) on the GPU, with the CPU layer's
/// interface.
///
/// ```no_run
/// use lstm_wgpu::gpu::{GpuContext, GpuLstm};
/// use lstm_wgpu::{Lstm, LstmConfig, LstmWeights};
/// let config = LstmConfig::new(16).return_state(true);
/// let cpu = Lstm::new(config.clone(), LstmWeights::<f32>::random(&config, 8, 0)?)?;
/// let mut gpu = GpuLstm::new(GpuContext::new()?, &cpu)?;
/// let x = ndarray::Array3::<f32>::ones((4, 10, 8));
/// let out = gpu.forward(x.view(), None, None)?;
/// assert_eq!(out.output.shape(), &[4, 16]);
/// # Ok::<(), lstm_wgpu::LstmError>(())
/// ```
#[derive(Debug)]
pub struct GpuLstm {
    inner: GpuNetwork,
    return_state: bool,
    /// Whether the state has a c (an LSTM).
    has_c: bool,
}

impl GpuLstm {
    /// Uploads the layer's weights.
    pub fn new<T: Element>(ctx: Arc<GpuContext>, layer: &Lstm<T>) -> Result<Self> {
        let return_state = layer.config().return_state;
        Ok(GpuLstm {
            inner: GpuNetwork::new(ctx, &Network::Lstm(layer.clone()))?,
            return_state,
            has_c: layer.config().cell.states() == 2,
        })
    }

    /// Runs the layer; the same contract as [`Lstm::forward`].
    pub fn forward(
        &mut self,
        x: ArrayView3<f32>,
        initial_state: Option<(ArrayView2<f32>, ArrayView2<f32>)>,
        mask: Option<ArrayView2<bool>>,
    ) -> Result<LstmOutput<f32>> {
        let init = initial_state.map(|(h, c)| [h, c]);
        self.forward_states(x, init.as_ref().map(|a| a.as_slice()), mask)
    }

    /// Runs the layer; the same contract as [`Lstm::forward_states`] (`[h0, c0]` for an
    /// LSTM, `[h0]` for a GRU or SimpleRNN).
    pub fn forward_states(
        &mut self,
        x: ArrayView3<f32>,
        initial_state: Option<&[ArrayView2<f32>]>,
        mask: Option<ArrayView2<bool>>,
    ) -> Result<LstmOutput<f32>> {
        let outs = self.inner.forward(x, initial_state, mask)?;
        let expected = 1 + usize::from(self.return_state) * (1 + usize::from(self.has_c));
        if outs.len() != expected {
            return Err(LstmError::invalid(
                "outputs",
                format!("expected {expected} tensors, got {}", outs.len()),
            ));
        }
        let mut outs = outs.into_iter();
        let output = outs.next().expect("counted above");
        let mut state2 = || -> Result<Array2<f32>> {
            outs.next()
                .expect("counted above")
                .into_dimensionality()
                .map_err(|_| LstmError::invalid("outputs", "a state is not 2-D"))
        };
        let state = if self.return_state {
            let h = state2()?;
            let c = if self.has_c {
                state2()?
            } else {
                Array2::zeros((h.nrows(), 0))
            };
            Some(LstmState { h, c })
        } else {
            None
        };
        Ok(LstmOutput { output, state })
    }

    /// Zeroes the carried state of a stateful layer.
    pub fn reset_states(&mut self) {
        self.inner.reset_states()
    }

    /// See [`GpuNetwork::set_recurrent_kernel`].
    pub fn set_recurrent_kernel(&mut self, kernel: RecurrentKernel) {
        self.inner.set_recurrent_kernel(kernel)
    }

    /// One timestep of a stateful layer; see [`GpuNetwork::step`].
    pub fn step(&mut self, x_t: ArrayView2<f32>) -> Result<Array2<f32>> {
        self.inner.step(x_t)
    }

    /// See [`GpuNetwork::set_profiling`].
    pub fn set_profiling(&mut self, on: bool) {
        self.inner.set_profiling(on)
    }

    /// See [`GpuNetwork::profile`].
    pub fn profile(&self) -> Option<ForwardProfile> {
        self.inner.profile()
    }

    /// The statistics of the last forward.
    pub fn stats(&self) -> ForwardStats {
        self.inner.stats()
    }

    /// Device memory the layer holds.
    pub fn gpu_bytes(&self) -> u64 {
        self.inner.gpu_bytes()
    }
}
