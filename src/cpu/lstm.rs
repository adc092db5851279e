//! One Keras `LSTM` layer on the CPU ([`Lstm`]): validates its inputs, keeps the state of
//! stateful layers, and runs the generic reference path (`reference.rs`) or, for f32 on x86-64
//! with AVX-512 or AVX2/FMA, the packed kernels (`packed/`).

use super::packed::PackedWeights;
use super::reference;
use crate::config::LstmConfig;
use crate::element::Element;
use crate::error::{LstmError, Result};
use crate::output::{LstmOutput, LstmState};
use crate::validate::{check_inputs, check_state};
use crate::weights::LstmWeights;
use ndarray::{Array2, ArrayView2, ArrayView3};
use std::sync::Arc;

/// One Keras `LSTM` layer on the CPU.
///
/// ```
/// use lstm_wgpu::{Lstm, LstmConfig, LstmWeights};
/// use ndarray::Array3;
///
/// let config = LstmConfig::new(4).return_sequences(true).return_state(true);
/// let weights = LstmWeights::<f32>::random(&config, 3, 0).unwrap();
/// let mut layer = Lstm::new(config, weights).unwrap();
/// let x = Array3::<f32>::ones((2, 5, 3));
/// let out = layer.forward(x.view(), None, None).unwrap();
/// assert_eq!(out.output.shape(), &[2, 5, 4]);
/// let state = out.state.unwrap();
/// // the final h is the last step's output
/// assert_eq!(state.h.row(1), out.output.slice(ndarray::s![1, 4, ..]));
/// ```
#[derive(Debug, Clone)]
pub struct Lstm<T> {
    config: LstmConfig,
    weights: LstmWeights<T>,
    /// The carried state of a stateful layer (None until the first call or after a fresh build).
    state: Option<LstmState<T>>,
    /// The weights packed for the fast f32 kernels (None: the generic path runs).
    packed: Option<Arc<PackedWeights>>,
    /// Scratch memory of the packed kernels, kept between calls.
    scratch: Vec<f32>,
}

impl<T: Element> Lstm<T> {
    /// Builds a layer, checking the weights against the configuration.
    pub fn new(config: LstmConfig, weights: LstmWeights<T>) -> Result<Self> {
        weights.validate(&config, weights.input_dim())?;
        // (None where the packed kernels do not run the cell or the type: the generic path)
        let packed = PackedWeights::new(&weights, config.cell).map(Arc::new);
        Ok(Lstm {
            config,
            weights,
            state: None,
            packed,
            scratch: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LstmConfig {
        &self.config
    }

    /// The weights.
    pub fn weights(&self) -> &LstmWeights<T> {
        &self.weights
    }

    /// The input width I.
    pub fn input_dim(&self) -> usize {
        self.weights.input_dim()
    }

    /// The state a stateful layer carries into its next call (None before the first call).
    pub fn state(&self) -> Option<&LstmState<T>> {
        self.state.as_ref()
    }

    /// Zeroes the carried state of a stateful layer (Keras `reset_states`). The batch size it
    /// was built for stays.
    ///
    /// ```
    /// use lstm_wgpu::{Lstm, LstmConfig, LstmWeights};
    /// let config = LstmConfig::new(2).stateful(true);
    /// let w = LstmWeights::<f32>::random(&config, 1, 0).unwrap();
    /// let mut layer = Lstm::new(config, w).unwrap();
    /// let x = ndarray::Array3::<f32>::ones((1, 3, 1));
    /// let first = layer.forward(x.view(), None, None).unwrap();
    /// let second = layer.forward(x.view(), None, None).unwrap();
    /// assert_ne!(first, second); // the state was carried
    /// layer.reset_states();
    /// assert_eq!(layer.forward(x.view(), None, None).unwrap(), first);
    /// ```
    pub fn reset_states(&mut self) {
        if let Some(s) = &mut self.state {
            s.h.fill(T::zero());
            s.c.fill(T::zero());
        }
    }

    /// Runs an LSTM layer on `x [B, T, I]` with an optional initial state (h0, c0), each
    /// `[B, H]`, and an optional mask `[B, T]` (true = step present). A GRU or SimpleRNN
    /// layer (one state tensor) takes its initial state through [`Lstm::forward_states`].
    ///
    /// A stateful layer starts from its carried state unless `initial_state` is given, and
    /// keeps the final state for the next call.
    pub fn forward(
        &mut self,
        x: ArrayView3<T>,
        initial_state: Option<(ArrayView2<T>, ArrayView2<T>)>,
        mask: Option<ArrayView2<bool>>,
    ) -> Result<LstmOutput<T>> {
        match initial_state {
            None => self.forward_states(x, None, mask),
            Some((h0, c0)) => self.forward_states(x, Some(&[h0, c0]), mask),
        }
    }

    /// Runs the layer on `x [B, T, I]` with an optional initial state given as Keras takes
    /// it, `[h0, c0]` for an LSTM and `[h0]` for a GRU or SimpleRNN (each `[B, H]`), and an
    /// optional mask `[B, T]` (true = step present).
    ///
    /// ```
    /// use lstm_wgpu::{Lstm, LstmConfig, LstmWeights};
    /// let config = LstmConfig::gru(4).return_state(true);
    /// let w = LstmWeights::<f32>::random(&config, 3, 0).unwrap();
    /// let mut gru = Lstm::new(config, w).unwrap();
    /// let x = ndarray::Array3::<f32>::ones((2, 5, 3));
    /// let h0 = ndarray::Array2::<f32>::zeros((2, 4));
    /// let out = gru.forward_states(x.view(), Some(&[h0.view()]), None).unwrap();
    /// assert_eq!(out.into_keras().len(), 2); // [output, h]
    /// assert!(gru.forward_states(x.view(), Some(&[h0.view(), h0.view()]), None).is_err());
    /// ```
    pub fn forward_states(
        &mut self,
        x: ArrayView3<T>,
        initial_state: Option<&[ArrayView2<T>]>,
        mask: Option<ArrayView2<bool>>,
    ) -> Result<LstmOutput<T>> {
        let (batch, _, _) = check_inputs(self.input_dim(), x, mask)?;
        let units = self.config.units;
        let names = self.config.cell.state_names();
        if let Some(init) = initial_state {
            if init.len() != names.len() {
                return Err(LstmError::invalid(
                    "initial_state",
                    format!(
                        "{} layer {} takes {} tensors {names:?}, got {}",
                        self.config.cell.class_name(),
                        self.config.name,
                        names.len(),
                        init.len()
                    ),
                ));
            }
            for (name, s) in names.iter().zip(init) {
                check_state(name, *s, batch, units)?;
            }
        }
        let c_units = if names.len() == 2 { units } else { 0 };
        let start = match (initial_state, &self.state) {
            (Some(init), _) => LstmState {
                h: init[0].to_owned(),
                c: match init.get(1) {
                    Some(c) => c.to_owned(),
                    None => Array2::zeros((batch, 0)),
                },
            },
            (None, Some(s)) if self.config.stateful => s.clone(),
            _ => LstmState {
                h: Array2::zeros((batch, units)),
                c: Array2::zeros((batch, c_units)),
            },
        };
        if self.config.stateful {
            if let Some(s) = &self.state {
                if s.h.nrows() != batch {
                    return Err(LstmError::StatefulBatchChanged {
                        expected: s.h.nrows(),
                        actual: batch,
                    });
                }
            }
        }
        let fast = self.packed.as_ref().and_then(|w| {
            let rule = reference::StepRule::of(&self.config);
            super::packed::run(
                w,
                rule,
                self.config.go_backwards,
                x,
                &start,
                mask,
                &mut self.scratch,
            )
        });
        let (sequence, last, final_state) = match fast {
            Some(result) => result,
            None => reference::run(&self.config, &self.weights, x, start, mask),
        };
        if self.config.stateful {
            self.state = Some(final_state.clone());
        }
        Ok(LstmOutput {
            output: if self.config.return_sequences {
                sequence.into_dyn()
            } else {
                last.into_dyn()
            },
            state: self.config.return_state.then_some(final_state),
        })
    }
}
