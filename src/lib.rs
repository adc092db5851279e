//! # lstm-wgpu
//!
//! Keras-compatible recurrent layers (`LSTM`, `GRU`, `SimpleRNN`) on any GPU through wgpu,
//! with a CPU path on ndarray that gives the same numbers.
//!
//! The layers behave exactly like Keras 3's: the same weight layout (an LSTM's
//! `kernel [I, 4H]`, `recurrent_kernel [H, 4H]`, `bias [4H]`, gates i, f, c, o; a GRU's z, r,
//! h), the same activations (including both `hard_sigmoid` definitions), `return_sequences`,
//! `return_state`, `go_backwards`, initial states, stateful layers, masks, `Bidirectional`
//! and stacks.
//!
//! ## Three ways in
//!
//! 1. **A layer from a config and weights** ([`Lstm`], [`Network`]): build one with
//!    [`LstmConfig`] (or read Keras's `get_config()` with [`LayerConfig::from_keras`]) and
//!    give it weights in Keras's layout ([`LstmWeights`], or [`Network::from_keras_weights`]
//!    with the `get_weights()` list; PyTorch and ONNX layouts convert, see [`onnx`]).
//! 2. **A Keras file** ([`model::KerasModel`]): `KerasModel::load("model.keras")`, then
//!    `predict` on the CPU.
//! 3. **The GPU** ([`gpu`]): [`gpu::GpuContext::new`] once, then [`gpu::GpuNetwork::new`] (a
//!    network) or [`gpu::GpuNetwork::from_model`] (a loaded model): weights uploaded once, one
//!    submission and one readback per forward.
//!
//! Diagnostics go through the [`log`](https://docs.rs/log) facade; the library never prints,
//! and bad input is an [`LstmError`] naming what was wrong, never a panic.
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
pub mod ctc;
pub mod custom;
mod element;
mod error;
pub mod generate;
pub mod golden;
pub mod gpu;
mod graph;
pub mod hdf5;
mod initializer;
mod layouts;
mod legacy_config;
pub mod model;
mod network;
pub mod onnx;
mod output;
pub mod perf;
pub mod train;
mod validate;
mod weight_match;
mod weight_source;
mod weights;

pub use activation::Activation;
pub use config::{
    BidirectionalConfig, Cell, Distribution, FanMode, Initializer, LayerConfig, LstmConfig,
    MergeMode,
};
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
