//! Building a [`GpuNetwork`]: a CPU network or a loaded Keras model turned into the stages and
//! nodes of a [`GpuModel`], with every weight uploaded once.

use super::{float64_error, GpuNetwork};
use crate::element::Element;
use crate::error::Result;
use crate::gpu::context::GpuContext;
use crate::gpu::plan::{BufferPool, GpuModel, RecurrentKernel, DEFAULT_PLAN_CAPACITY};
use crate::gpu::stats::ForwardStats;
use crate::gpu::upload::Uploader;
use crate::model::KerasModel;
use crate::network::Network;
use std::sync::Arc;

impl GpuNetwork {
    /// Uploads `network`'s weights to the GPU. Only `f32` networks run on the GPU; an `f64`
    /// network gives an error that says so.
    pub fn new<T: Element>(ctx: Arc<GpuContext>, network: &Network<T>) -> Result<Self> {
        if !T::is_f32() {
            return Err(float64_error());
        }
        let mut up = Uploader::new(&ctx);
        let stages = up.recurrent(network)?;
        let bytes = up.bytes;
        let model = GpuModel::chain(ctx, stages, network.input_dim(), bytes)?;
        Ok(Self::assemble(model))
    }

    /// Uploads a loaded Keras model so that the whole graph runs in one submission with one
    /// readback: every layer of [`KerasModel::layer_classes`] the GPU path has a kernel for
    /// (all the layers the CPU path runs, except nested models), in the graph's order, masks
    /// and `initial_state` wiring included. [`GpuNetwork::forward`] (one float input) or
    /// [`GpuNetwork::forward_inputs`] (several, or token ids) then return the model's outputs
    /// in its output order.
    ///
    /// ```no_run
    /// use lstm_wgpu::gpu::{GpuContext, GpuNetwork};
    /// use lstm_wgpu::model::KerasModel;
    /// let model = KerasModel::load("model.keras".as_ref())?;
    /// let mut gpu = GpuNetwork::from_model(GpuContext::new()?, &model)?;
    /// let x = ndarray::Array3::<f32>::zeros((4, 20, 3));
    /// let predictions = gpu.forward(x.view(), None, None)?;
    /// # Ok::<(), lstm_wgpu::LstmError>(())
    /// ```
    pub fn from_model(ctx: Arc<GpuContext>, model: &KerasModel) -> Result<Self> {
        let mut up = Uploader::new(&ctx);
        let parts = model.graph().to_gpu(&mut up).map_err(|e| match e {
            crate::LstmError::UnsupportedOnPath { what, path, hint } => {
                crate::LstmError::UnsupportedOnPath {
                    what: format!("{what} in model {}", model.name()),
                    path,
                    hint,
                }
            }
            other => other,
        })?;
        let bytes = up.bytes;
        Self::from_parts(ctx, parts, bytes)
    }

    /// A network of a lowered graph whose weights (`weight_bytes` of them) are uploaded.
    pub(crate) fn from_parts(
        ctx: Arc<GpuContext>,
        parts: crate::gpu::GpuGraph,
        weight_bytes: u64,
    ) -> Result<Self> {
        let model = GpuModel {
            kernels: ctx.kernels()?,
            ctx,
            stages: parts.stages,
            nodes: parts.nodes,
            inputs: parts.inputs,
            outputs: parts.outputs,
            output_names: parts.output_names,
            weight_bytes,
        };
        Ok(Self::assemble(model))
    }

    /// A network with nothing planned yet.
    fn assemble(model: GpuModel) -> Self {
        GpuNetwork {
            model,
            plans: Vec::new(),
            plan_capacity: DEFAULT_PLAN_CAPACITY,
            pool: BufferPool::default(),
            ready: None,
            pending: None,
            states: None,
            state_valid: false,
            kernel_choice: RecurrentKernel::Auto,
            profiling: false,
            profile: None,
            stats: ForwardStats::default(),
            feedback: Vec::new(),
            fed_plan: None,
        }
    }
}
