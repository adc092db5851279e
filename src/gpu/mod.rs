//! The GPU path: WGSL compute kernels on wgpu (Vulkan, Metal, DX12, GL).
//!
//! - [`GpuContext`]: the device, chosen once and shared (`Arc`); or wrap your own
//!   `wgpu::Device`/`Queue` with [`GpuContext::from_device`].
//! - [`GpuNetwork`] / [`GpuLstm`]: a network's weights on the GPU and its forward pass, one
//!   submission and one readback per call.
//! - The kernels (`shaders/*.wgsl`): the input projection for all timesteps as one register-tiled GEMM,
//!   then one fused dispatch per timestep (recurrent product, gates, cell update, mask rule),
//!   or, for small layers, dispatches running many timesteps each in one workgroup (the whole
//!   time loop in one where the adapter allows; see [`GpuContext::loop_limit`]).

mod context;
mod exec;
mod kernels;
mod loops;
mod lstm;
mod network;
mod params;
pub(crate) mod plan;
mod scope;
mod stats;
mod train;
mod upload;

pub use context::{GpuContext, GpuOptions};
pub use kernels::kernel_sources;
pub use lstm::GpuLstm;
pub use network::GpuNetwork;
pub use network::PendingForward;
pub use params::PERSISTENT_MAX_STATE;
pub(crate) use plan::{GpuInput, GpuNode, GpuStage, Src};
pub use plan::{RecurrentKernel, DEFAULT_PLAN_CAPACITY};
pub use stats::{ForwardProfile, ForwardStats};
pub use train::{GpuRecurrentTrainer, GpuTape};
pub(crate) use upload::Uploader;

/// A model graph lowered for the GPU (`Graph::to_gpu`).
pub(crate) struct GpuGraph {
    pub stages: Vec<Box<dyn GpuStage>>,
    pub nodes: Vec<GpuNode>,
    pub inputs: Vec<GpuInput>,
    pub outputs: Vec<(usize, Option<usize>)>,
    /// The model's output names (Keras's `output_names`), one per entry of `outputs`.
    pub output_names: Vec<String>,
}
#[cfg(test)]
mod twins;
