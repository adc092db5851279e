//! The graph's per-tensor layers on the CPU: the identity layers, recurrent layers (with
//! `initial_state` and `mask` from the graph), `Dense`, `Embedding`, `Masking`,
//! `TimeDistributed`, the shape layers and the op layers of masks (`ExpandDims`,
//! `ZerosLike`); the activation layers are in `activations.rs`.

use super::ops::{
    act_of, apply_act, bool_mask, one_input, stage, Act, Extra, GpuStage, Op, Uploader,
};
use super::Value;
use crate::cpu::reference::matmul;
use crate::error::{LstmError, Result};
use crate::gpu::plan::{
    DenseStage, EmbeddingStage, GatherStage, Layout, MaskStage, TimeDistributedStage, UnaryOp,
    UnaryStage,
};
use crate::network::Network;
use ndarray::{Array1, Array2, ArrayD, Axis, Ix2, Ix3, IxDyn};
use serde_json::Value as Json;

#[derive(Debug, Clone)]
pub(super) struct Identity;

impl Op for Identity {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        Ok(inputs.iter().map(|v| (*v).clone()).collect())
    }

    fn gpu(&self, _: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        stage(GatherStage {
            name: "identity".into(),
            layout: Layout::Identity,
        })
    }
}

#[derive(Debug, Clone)]
pub(super) struct Recurrent {
    pub(super) name: String,
    pub(super) net: Network<f32>,
    /// Keras 2's rule: the input's mask applies with `initial_state` too (see `call`).
    pub(super) keras2_call_mask: bool,
    /// `CuDNNLSTM`/`CuDNNGRU` when the config named that class: it runs as the LSTM/GRU it
    /// computes, and refuses a mask as Keras does ("Masking is not supported for CuDNN
    /// RNNs").
    pub(super) cudnn_class: Option<String>,
}

impl Recurrent {
    /// The error for a mask reaching a cuDNN layer, as Keras raises it.
    pub(super) fn check_cudnn_mask(&self, masked: bool) -> Result<()> {
        match &self.cudnn_class {
            Some(class) if masked => Err(LstmError::invalid(
                format!("mask of layer {}", self.name),
                format!("masking is not supported for CuDNN RNNs ({class}), as in Keras"),
            )),
            _ => Ok(()),
        }
    }
}

impl Op for Recurrent {
    fn call(&mut self, inputs: &[&Value], extra: &Extra<'_>) -> Result<Vec<Value>> {
        // Keras 2 graphs pass the initial states positionally after x.
        let (x, positional_states) = inputs
            .split_first()
            .ok_or_else(|| LstmError::invalid(format!("layer {}", self.name), "no input"))?;
        let states: Vec<&Value> = if extra.states.is_empty() {
            positional_states.to_vec()
        } else {
            extra.states.clone()
        };
        let x3 = x.data.view().into_dimensionality::<Ix3>().map_err(|_| {
            LstmError::shape(
                format!("input of layer {}", self.name),
                &[0, 0, 0],
                x.data.shape(),
            )
        })?;
        // The mask the layer runs under: an explicit `mask=`, else its input's. Keras 3 passes
        // the input's mask on only to a call with one tensor argument: a layer called with
        // `initial_state=` tensors runs unmasked (its outputs still carry the input's mask).
        // Keras 2 passed it on.
        let mask = match extra.mask {
            Some(m) => Some(bool_mask(m, &self.name)?),
            None if !extra.states.is_empty() && !self.keras2_call_mask => None,
            None => x.mask.clone(),
        };
        self.check_cudnn_mask(mask.is_some())?;
        let init: Vec<ndarray::ArrayView2<f32>> = states
            .iter()
            .map(|s| {
                s.data.view().into_dimensionality::<Ix2>().map_err(|_| {
                    LstmError::shape(
                        format!("initial_state of layer {}", self.name),
                        &[0, 0],
                        s.data.shape(),
                    )
                })
            })
            .collect::<Result<_>>()?;
        let outs = self.net.forward(
            x3,
            (!init.is_empty()).then_some(init.as_slice()),
            mask.as_ref().map(|m| m.view()),
        )?;
        // The outputs' mask: the input's own (compute_mask of the first argument's mask).
        let seq_mask = self
            .net
            .returns_sequences()
            .then(|| x.mask.clone())
            .flatten();
        Ok(outs
            .into_iter()
            .enumerate()
            .map(|(k, data)| Value {
                // the sequence keeps the mask; states and last outputs have none
                mask: if k == 0 || (data.ndim() == 3) {
                    seq_mask.clone()
                } else {
                    None
                },
                data,
            })
            .collect())
    }

    fn is_recurrent(&self) -> bool {
        true
    }

    fn params(&self) -> usize {
        let arrays = self.net.keras_weights();
        let weights: usize = arrays.iter().map(|w| w.len()).sum();
        // a CuDNNLSTM keeps input and recurrent biases apart (`[8H]` for the LSTM's `[4H]`):
        // Keras counts both, though they run summed (each direction's third array)
        let split_biases: usize = match self.cudnn_class.as_deref() {
            Some("CuDNNLSTM") => arrays.iter().skip(2).step_by(3).map(|b| b.len()).sum(),
            _ => 0,
        };
        weights + split_biases
    }

    fn gpu(&self, up: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        up.keras2_call_mask = self.keras2_call_mask;
        let stages = up.recurrent(&self.net);
        up.keras2_call_mask = false;
        let mut stages = stages?;
        match stages.len() {
            1 if self.cudnn_class.is_some() => Ok(Box::new(CudnnStage {
                op: self.clone(),
                inner: stages.remove(0),
            })),
            1 => Ok(stages.remove(0)),
            n => Err(LstmError::invalid(
                format!("layer {}", self.name),
                format!("a recurrent layer of {n} stages"),
            )),
        }
    }
}

/// A cuDNN layer's GPU stage: the recurrent stage, refusing a mask as its CPU twin does.
#[derive(Debug)]
struct CudnnStage {
    op: Recurrent,
    inner: Box<dyn GpuStage>,
}

impl GpuStage for CudnnStage {
    fn directions(&self) -> Vec<&crate::LstmConfig> {
        self.inner.directions()
    }

    fn state_slots(&self) -> Vec<(usize, usize)> {
        self.inner.state_slots()
    }

    fn plan(
        &self,
        cx: &mut crate::gpu::plan::PlanContext<'_, '_>,
        args: &crate::gpu::plan::Args<'_>,
    ) -> Result<Vec<crate::gpu::plan::Tensor>> {
        let masked = args.mask.is_some() || args.inputs.first().is_some_and(|x| x.mask.is_some());
        self.op.check_cudnn_mask(masked)?;
        self.inner.plan(cx, args)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Dense {
    pub(crate) name: String,
    pub(crate) kernel: Array2<f32>,
    pub(crate) bias: Option<Array1<f32>>,
    pub(crate) act: Act,
}

impl Dense {
    /// A Keras `Dense` from its config and weights (`kernel`, then `bias` if `use_bias`),
    /// checked against each other.
    pub(crate) fn new(cfg: &Json, name: &str, w: Vec<ArrayD<f32>>) -> Result<Self> {
        let mut w = w.into_iter();
        let kernel = w
            .next()
            .ok_or_else(|| LstmError::MissingWeight {
                name: format!("{name}/kernel"),
            })?
            .into_dimensionality::<Ix2>()
            .map_err(|_| LstmError::shape(format!("{name}/kernel"), &[0, 0], &[]))?;
        let use_bias = cfg.get("use_bias").and_then(Json::as_bool).unwrap_or(true);
        let bias: Option<Array1<f32>> = if use_bias {
            let b = w.next().ok_or_else(|| LstmError::MissingWeight {
                name: format!("{name}/bias"),
            })?;
            if b.len() != kernel.ncols() {
                return Err(LstmError::shape(
                    format!("{name}/bias"),
                    &[kernel.ncols()],
                    b.shape(),
                ));
            }
            Some(b.iter().copied().collect())
        } else {
            None
        };
        if let Some(units) = cfg.get("units").and_then(Json::as_u64) {
            if units as usize != kernel.ncols() {
                return Err(LstmError::shape(
                    format!("{name}/kernel"),
                    &[kernel.nrows(), units as usize],
                    kernel.shape(),
                ));
            }
        }
        Ok(Dense {
            name: name.to_string(),
            kernel,
            bias,
            act: act_of(cfg.get("activation"), "activation")?,
        })
    }
}

impl Op for Dense {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_input(inputs, &self.name)?;
        let shape = x.data.shape().to_vec();
        if shape.len() < 2 {
            return Err(LstmError::shape(
                format!("input of layer {}", self.name),
                &[0, self.kernel.nrows()],
                &shape,
            ));
        }
        let width = *shape.last().unwrap_or(&0);
        if width != self.kernel.nrows() {
            return Err(LstmError::shape(
                format!("input of layer {}", self.name),
                &[self.kernel.nrows()],
                &[width],
            ));
        }
        let rows = x.data.len() / width.max(1);
        let x2 = x
            .data
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((rows, width))
            .expect("rows x width elements");
        let n = self.kernel.ncols();
        let mut y = match &self.bias {
            Some(b) => b.broadcast((rows, n)).expect("[N]").to_owned(),
            None => Array2::zeros((rows, n)),
        };
        matmul(
            x2.view(),
            self.kernel.view(),
            y.view_mut(),
            self.bias.is_some(),
        );
        let mut out_shape = shape;
        *out_shape.last_mut().expect("at least 1-D") = n;
        let mut y = y
            .into_shape_with_order(IxDyn(&out_shape))
            .expect("same count");
        apply_act(self.act, &mut y);
        Ok(vec![Value {
            data: y,
            mask: x.mask.clone(),
        }])
    }

    fn params(&self) -> usize {
        self.kernel.len() + self.bias.as_ref().map_or(0, |b| b.len())
    }

    fn gpu(&self, up: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        let act = match self.act {
            Act::Elementwise(a) => Some(a),
            Act::Softmax => None,
        };
        stage(DenseStage::upload(
            up,
            &self.name,
            self.kernel.view(),
            self.bias.as_ref().map(|b| b.view()),
            act,
        )?)
    }
}

#[derive(Debug, Clone)]
pub(super) struct Embedding {
    pub(super) name: String,
    pub(super) table: Array2<f32>,
    pub(super) mask_zero: bool,
}

impl Op for Embedding {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_input(inputs, &self.name)?;
        let (vocab, dim) = self.table.dim();
        let mut shape = x.data.shape().to_vec();
        let mut out = Vec::with_capacity(x.data.len() * dim);
        for &id in x.data.iter() {
            if id < 0.0 || id.fract() != 0.0 || id as usize >= vocab {
                return Err(LstmError::invalid(
                    format!("input of layer {}", self.name),
                    format!("token id {id} is not in 0..{vocab}"),
                ));
            }
            out.extend(self.table.row(id as usize).iter());
        }
        let mask = if self.mask_zero {
            Some(
                x.data
                    .mapv(|v| v != 0.0)
                    .into_dimensionality::<Ix2>()
                    .map_err(|_| {
                        LstmError::shape(format!("input of layer {}", self.name), &[0, 0], &shape)
                    })?,
            )
        } else {
            None
        };
        shape.push(dim);
        Ok(vec![Value {
            data: ArrayD::from_shape_vec(IxDyn(&shape), out).expect("ids x dim values"),
            mask,
        }])
    }

    fn params(&self) -> usize {
        self.table.len()
    }

    fn gpu(&self, up: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        let (vocab, dim) = self.table.dim();
        let values: Vec<f32> = self.table.iter().copied().collect();
        stage(EmbeddingStage {
            name: self.name.clone(),
            table: up.floats(&format!("{}/embeddings", self.name), &values)?,
            vocab,
            dim,
            mask_zero: self.mask_zero,
        })
    }
}

#[derive(Debug, Clone)]
pub(super) struct Masking {
    pub(super) value: f32,
}

impl Op for Masking {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_input(inputs, "Masking")?;
        let x3 = x
            .data
            .view()
            .into_dimensionality::<Ix3>()
            .map_err(|_| LstmError::shape("input of Masking", &[0, 0, 0], x.data.shape()))?;
        let m = x3.map_axis(Axis(2), |row| row.iter().any(|&v| v != self.value));
        let mut out = x3.to_owned();
        for ((b, t, _), v) in out.indexed_iter_mut() {
            if !m[[b, t]] {
                *v = 0.0;
            }
        }
        Ok(vec![Value {
            data: out.into_dyn(),
            mask: Some(m),
        }])
    }

    fn gpu(&self, _: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        stage(MaskStage { value: self.value })
    }
}

#[derive(Debug, Clone)]
pub(super) struct RepeatVector {
    pub(super) n: usize,
}

impl Op for RepeatVector {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_input(inputs, "RepeatVector")?;
        let x2 = x
            .data
            .view()
            .into_dimensionality::<Ix2>()
            .map_err(|_| LstmError::shape("input of RepeatVector", &[0, 0], x.data.shape()))?;
        let (b, w) = x2.dim();
        let out = ndarray::Array3::from_shape_fn((b, self.n, w), |(i, _, k)| x2[[i, k]]);
        Ok(vec![Value {
            data: out.into_dyn(),
            mask: None,
        }])
    }

    fn gpu(&self, _: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        stage(GatherStage {
            name: "RepeatVector".into(),
            layout: Layout::Repeat(self.n),
        })
    }
}

/// `Reshape(target)` (a `-1` entry inferred), or `Flatten` (no target).
#[derive(Debug, Clone)]
pub(super) struct Reshape {
    pub(super) target: Option<Vec<i64>>,
}

impl Op for Reshape {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_input(inputs, "Reshape")?;
        let shape = reshape_target(x.data.shape()[0], x.data.len(), self.target.as_deref());
        let data = x
            .data
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order(IxDyn(&shape))
            .map_err(|_| LstmError::shape("target_shape", &shape, x.data.shape()))?;
        Ok(vec![Value { data, mask: None }])
    }

    fn gpu(&self, _: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        stage(GatherStage {
            name: "Reshape".into(),
            layout: Layout::Reshape(self.target.clone()),
        })
    }
}

/// `TimeDistributed(layer)` (other than Dense, Activation, Dropout, which are themselves on
/// the last axis): the layer applied to each timestep, as Keras's loop over
/// `inputs[:, t]` does, here on the `[B·T, ...]` rows at once; the output keeps the input's
/// mask (the inner layer gets none: Keras hands it `mask[:, t]`, one value per row, which
/// layers with a time axis of their own cannot take).
#[derive(Debug, Clone)]
pub(super) struct TimeDistributed {
    pub(super) name: String,
    pub(super) inner: Box<dyn Op>,
}

impl Op for TimeDistributed {
    fn call(&mut self, inputs: &[&Value], extra: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_input(inputs, &self.name)?;
        let shape = x.data.shape().to_vec();
        if shape.len() < 3 {
            return Err(LstmError::shape(
                format!("input of layer {}", self.name),
                &[0, 0, 0],
                &shape,
            ));
        }
        let (b, t) = (shape[0], shape[1]);
        let mut merged = vec![b * t];
        merged.extend(&shape[2..]);
        let rows = Value {
            data: x
                .data
                .as_standard_layout()
                .into_owned()
                .into_shape_with_order(IxDyn(&merged))
                .expect("the same values"),
            mask: None,
        };
        let inner_extra = Extra {
            states: Vec::new(),
            mask: None,
            scalars: extra.scalars,
            kwargs: extra.kwargs,
        };
        let outs = self.inner.call(&[&rows], &inner_extra)?;
        outs.into_iter()
            .map(|o| {
                let mut s = vec![b, t];
                s.extend(&o.data.shape()[1..]);
                Ok(Value {
                    data: o.data.into_shape_with_order(IxDyn(&s)).map_err(|e| {
                        LstmError::invalid(format!("layer {}", self.name), e.to_string())
                    })?,
                    mask: x.mask.clone(),
                })
            })
            .collect()
    }

    fn params(&self) -> usize {
        self.inner.params()
    }

    fn on_gpu(&self) -> bool {
        self.inner.on_gpu()
    }

    fn gpu(&self, up: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        stage(TimeDistributedStage {
            name: self.name.clone(),
            inner: self.inner.gpu(up)?,
        })
    }
}

/// `ExpandDims(axis)`, an op layer Keras saves when it computes merged masks: a unit axis
/// inserted (no mask).
#[derive(Debug, Clone)]
pub(super) struct ExpandDims {
    pub(super) axis: i64,
}

impl Op for ExpandDims {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_input(inputs, "ExpandDims")?;
        let nd = x.data.ndim() as i64 + 1;
        let a = if self.axis < 0 {
            nd + self.axis
        } else {
            self.axis
        };
        if a < 1 || a >= nd {
            return Err(LstmError::invalid(
                "ExpandDims",
                format!(
                    "axis {} is not a non-batch axis of a rank-{nd} result",
                    self.axis
                ),
            ));
        }
        Ok(vec![Value {
            data: x.data.clone().insert_axis(Axis(a as usize)),
            mask: None,
        }])
    }

    fn gpu(&self, _: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        stage(GatherStage {
            name: "ExpandDims".into(),
            layout: Layout::ExpandDims(self.axis),
        })
    }
}

/// `ZerosLike` / `OnesLike`, op layers Keras saves when it computes merged masks: the input's
/// shape filled with `value` (no mask).
#[derive(Debug, Clone)]
pub(super) struct FillLike {
    pub(super) value: f32,
}

impl Op for FillLike {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_input(inputs, "ZerosLike")?;
        Ok(vec![Value {
            data: ArrayD::from_elem(x.data.raw_dim(), self.value),
            mask: None,
        }])
    }

    fn gpu(&self, _: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        stage(UnaryStage {
            name: "ZerosLike".into(),
            op: UnaryOp::Fill(self.value),
        })
    }
}

/// The shape `Reshape(target)` (`-1` = the rest) or `Flatten` (`None`) gives `len` values of
/// a batch of `b`; both twins use it.
pub(crate) fn reshape_target(b: usize, len: usize, target: Option<&[i64]>) -> Vec<usize> {
    let per = len / b.max(1);
    let mut shape = vec![b];
    match target {
        None => shape.push(per),
        Some(t) => {
            let known: i64 = t.iter().filter(|&&d| d > 0).product();
            for &d in t {
                shape.push(if d > 0 {
                    d as usize
                } else {
                    per / known.max(1) as usize
                });
            }
        }
    }
    shape
}

#[derive(Debug, Clone)]
pub(super) struct Permute {
    pub(super) dims: Vec<usize>,
}

impl Op for Permute {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_input(inputs, "Permute")?;
        let mut axes = vec![0];
        axes.extend(&self.dims);
        let valid = axes.len() == x.data.ndim() && {
            let mut s = axes.clone();
            s.sort_unstable();
            s.iter().enumerate().all(|(k, &a)| k == a)
        };
        if !valid {
            return Err(LstmError::shape(
                "Permute dims",
                &[x.data.ndim() - 1],
                &[self.dims.len()],
            ));
        }
        let data = x
            .data
            .clone()
            .permuted_axes(IxDyn(&axes))
            .as_standard_layout()
            .into_owned();
        Ok(vec![Value { data, mask: None }])
    }

    fn gpu(&self, _: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        stage(GatherStage {
            name: "Permute".into(),
            layout: Layout::Permute(self.dims.clone()),
        })
    }
}
