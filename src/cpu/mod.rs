//! The CPU path: one Keras LSTM layer on ndarray, for `f32` and `f64`.
//!
//! The work is split exactly as on the GPU so the two can be read side by side:
//! [`project_inputs`] is the twin of `shaders/projection.wgsl`, `reference::cell_update` the
//! twin of the element-wise part of `shaders/step.wgsl`, and `reference::run` of the time loop.
//!
//! - `cells.rs`: the GRU and SimpleRNN cells and their time loop (generic path).
//! - `lstm.rs`: the [`Lstm`] layer (validation, stateful state, the choice of path).
//! - `reference.rs`: the generic path, the reference the fast path is tested against; f64 and
//!   f32 on CPUs without AVX2/FMA run it.
//! - `simd.rs`: the one instruction-set detection ([`LSTM_WGPU_CPU_ISA`](self) is read once,
//!   by it) and the vector operations of the packed kernels.
//! - `product.rs`: small products by one matrix packed once (the training step loops'
//!   products by the recurrent kernel and its transpose, a few batch rows at a time).
//! - `packed/`: f32 on x86-64 with AVX-512 or AVX2/FMA (weights packed once when the layer is
//!   built, the cell update fused into each step's product). `LSTM_WGPU_CPU_ISA=generic` forces
//!   the generic path (`avx2` caps the packed kernels at AVX2).

pub(crate) mod attention;
pub(crate) mod cells;
mod lstm;
mod packed;
pub(crate) mod product;
pub(crate) mod reference;
pub(crate) mod simd;

pub use crate::output::{LstmOutput, LstmState};
pub use lstm::Lstm;
pub use reference::project_inputs;
