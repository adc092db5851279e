//! Building a [`GpuNetwork`]: a CPU network or a loaded Keras model turned into the stages of
//! a [`GpuModel`], with every weight uploaded once.

use super::{float64_error, GpuNetwork};
use crate::cpu::Lstm;
use crate::element::Element;
use crate::error::{LstmError, Result};
use crate::gpu::context::GpuContext;
use crate::gpu::plan::{
    BidiStage, BufferPool, DenseStage, GpuModel, GpuStage, LstmStage, MaskStage, RecurrentKernel,
    DEFAULT_PLAN_CAPACITY,
};
use crate::gpu::stats::ForwardStats;
use crate::gpu::upload::{projection_order, row_major, upload_f32, upload_weights};
use crate::model::{DenseActivation, KerasModel, ModelLayer};
use crate::network::Network;
use std::sync::Arc;

impl GpuNetwork {
    /// Uploads `network`'s weights to the GPU. Only `f32` networks run on the GPU; an `f64`
    /// network gives an error that says so.
    pub fn new<T: Element>(ctx: Arc<GpuContext>, network: &Network<T>) -> Result<Self> {
        if !T::is_f32() {
            return Err(float64_error());
        }
        let mut stages = Vec::new();
        let mut weight_bytes = 0;
        let mut dirs = 0;
        stages_of(&ctx, network, &mut dirs, &mut weight_bytes, &mut stages)?;
        let model = GpuModel {
            kernels: ctx.kernels()?,
            ctx,
            stages,
            input_dim: network.input_dim(),
            weight_bytes,
        };
        Ok(Self::assemble(model, None))
    }

    /// Uploads a loaded Keras model (Masking, LSTM, Bidirectional and Dense layers) so that
    /// the whole model runs in one submission with one readback; [`GpuNetwork::forward`]
    /// then returns the model's outputs in its output order.
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
        if let Some(why) = model.chain_error() {
            return Err(LstmError::UnsupportedOnPath {
                what: format!(
                    "model {} (not a chain of layers the GPU runs: {why})",
                    model.name()
                ),
                path: "gpu".into(),
                hint: "the GPU path runs chains of Masking, LSTM, GRU, SimpleRNN, \
                       Bidirectional and Dense layers so far; run this model on the CPU path \
                       (KerasModel::predict_inputs)"
                    .into(),
            });
        }
        let mut stages: Vec<Box<dyn GpuStage>> = Vec::new();
        let mut weight_bytes = 0;
        let mut dirs = 0;
        let mut input_dim = None;
        for (name, layer) in model.layers() {
            match layer {
                ModelLayer::Masking { mask_value } => {
                    stages.push(Box::new(MaskStage { value: *mask_value }))
                }
                ModelLayer::Recurrent(net) => {
                    input_dim.get_or_insert(net.input_dim());
                    stages_of(&ctx, net, &mut dirs, &mut weight_bytes, &mut stages)?;
                }
                ModelLayer::Dense {
                    kernel,
                    bias,
                    activation,
                } => {
                    input_dim.get_or_insert(kernel.nrows());
                    let bytes = &mut weight_bytes;
                    let dense = ctx.checked("uploading weights", || -> Result<DenseStage> {
                        Ok(DenseStage {
                            name: name.to_string(),
                            kernel: upload_f32(
                                &ctx,
                                &format!("{name}/kernel"),
                                &projection_order(kernel.view()),
                                bytes,
                            )?,
                            bias: match bias {
                                Some(b) => Some(upload_f32(
                                    &ctx,
                                    &format!("{name}/bias"),
                                    &row_major(b.view().insert_axis(ndarray::Axis(0))),
                                    bytes,
                                )?),
                                None => None,
                            },
                            inputs: kernel.nrows(),
                            units: kernel.ncols(),
                            activation: match activation {
                                DenseActivation::Elementwise(a) => Some(*a),
                                DenseActivation::Softmax => None,
                            },
                        })
                    })??;
                    stages.push(Box::new(dense));
                }
            }
        }
        let input_dim =
            input_dim.ok_or_else(|| LstmError::invalid("model", "has no LSTM or Dense layer"))?;
        let model_gpu = GpuModel {
            kernels: ctx.kernels()?,
            ctx,
            stages,
            input_dim,
            weight_bytes,
        };
        Ok(Self::assemble(
            model_gpu,
            Some(model.output_indices().to_vec()),
        ))
    }

    /// A network with nothing planned yet.
    fn assemble(model: GpuModel, output_select: Option<Vec<usize>>) -> Self {
        GpuNetwork {
            model,
            output_select,
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
        }
    }
}

/// Appends the stages of `net` (an LSTM, a Bidirectional LSTM or a stack of them), uploading
/// their weights; `dirs` counts the recurrent directions (their state buffers) so far.
fn stages_of<T: Element>(
    ctx: &GpuContext,
    net: &Network<T>,
    dirs: &mut usize,
    bytes: &mut u64,
    stages: &mut Vec<Box<dyn GpuStage>>,
) -> Result<()> {
    let mut direction = |l: &Lstm<T>, bytes: &mut u64| -> Result<LstmStage> {
        let stage = LstmStage {
            weights: upload_weights(ctx, l, bytes)?,
            state: *dirs,
        };
        *dirs += 1;
        Ok(stage)
    };
    match net {
        Network::Lstm(l) => stages.push(Box::new(direction(l, bytes)?)),
        Network::Bidirectional(b) => {
            let fwd = direction(b.forward_layer(), bytes)?;
            let bwd = direction(b.backward_layer(), bytes)?;
            stages.push(Box::new(BidiStage {
                fwd,
                bwd,
                mode: b.merge_mode(),
            }));
        }
        Network::Sequential(layers) => {
            for l in layers {
                stages_of(ctx, l, dirs, bytes, stages)?;
            }
        }
    }
    Ok(())
}
