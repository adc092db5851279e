//! # lstm-wgpu
//!
//! Keras-compatible LSTM layers on any GPU through wgpu, with a CPU path on ndarray that gives
//! the same numbers.
//!
//! The layers behave exactly like `keras.layers.LSTM` (Keras 3): the same weight layout
//! (`kernel [I, 4H]`, `recurrent_kernel [H, 4H]`, `bias [4H]`, gates i, f, c, o), the same
//! activations (including both `hard_sigmoid` definitions), `return_sequences`,
//! `return_state`, `go_backwards`, initial states, stateful layers, masks, `Bidirectional`
//! and stacks.
//!
//! ```
//! use lstm_wgpu::{Lstm, LstmConfig, LstmWeights};
//! use ndarray::Array3;
//!
//! let config = LstmConfig::new(1).return_sequences(true).return_state(true);
//! let weights = LstmWeights::<f32>::random(&config, 1, 7)?;
//! let mut layer = Lstm::new(config, weights)?;
//! let x = Array3::from_shape_vec((1, 3, 1), vec![0.1f32, 0.2, 0.3]).unwrap();
//! let out = layer.forward(x.view(), None, None)?;
//! assert_eq!(out.output.shape(), &[1, 3, 1]);
//! assert!(out.state.is_some());
//! # Ok::<(), lstm_wgpu::LstmError>(())
//! ```
#![warn(missing_docs)]

mod activation;
pub mod archive;
mod config;
pub mod cpu;
mod element;
mod error;
pub mod golden;
pub mod gpu;
pub mod hdf5;
mod layouts;
pub mod model;
mod network;
pub mod onnx;
mod output;
pub mod perf;
mod validate;
mod weights;

pub use activation::Activation;
pub use config::{BidirectionalConfig, Cell, Initializer, LayerConfig, LstmConfig, MergeMode};
pub use cpu::{Lstm, LstmOutput, LstmState};
pub use element::Element;
pub use error::{LstmError, Result};
pub use layouts::{OnnxLstmWeights, PytorchLstmWeights};
pub use network::{Bidirectional, Network};
pub use weights::LstmWeights;

/// The README's examples run as doc-tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
