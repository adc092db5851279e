//! A layer the application implements (`crate::custom`), as a graph op.

use super::ops::{Extra, GpuStage, Op, Uploader};
use super::Value;
use crate::error::{LstmError, Result};

/// A layer the application implements ([`crate::custom::CustomLayer`]): its call on the
/// CPU path, shared by the model's clones; no GPU kernel.
#[derive(Clone)]
pub(super) struct Custom {
    pub(super) name: String,
    pub(super) class: String,
    pub(super) layer: std::sync::Arc<std::sync::Mutex<Box<dyn crate::custom::CustomLayer>>>,
}

impl std::fmt::Debug for Custom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Custom")
            .field("name", &self.name)
            .field("class", &self.class)
            .finish()
    }
}

impl Op for Custom {
    fn call(&mut self, inputs: &[&Value], extra: &Extra<'_>) -> Result<Vec<Value>> {
        use crate::custom::LayerInput;
        // an explicit `mask=` tensor is the first input's mask, as Keras hands it to `call`
        let explicit = extra
            .mask
            .map(|m| super::ops::bool_mask(m, &self.name))
            .transpose()?;
        let args: Vec<LayerInput<'_>> = inputs
            .iter()
            .enumerate()
            .map(|(k, v)| LayerInput {
                data: v.data.view(),
                mask: match (&explicit, k) {
                    (Some(m), 0) => Some(m.view()),
                    _ => v.mask.as_ref().map(|m| m.view()),
                },
            })
            .collect();
        let mut layer = self.layer.lock().map_err(|_| {
            LstmError::invalid(
                format!("layer {}", self.name),
                "an earlier call of this custom layer panicked",
            )
        })?;
        let outs = layer.call(&args)?;
        if outs.is_empty() {
            return Err(LstmError::invalid(
                format!("layer {} ({})", self.name, self.class),
                "the custom layer returned no output",
            ));
        }
        let batch = inputs.first().map(|v| v.data.shape().first().copied());
        for (k, o) in outs.iter().enumerate() {
            if let (Some(m), Some(Some(b))) = (&o.mask, batch) {
                if m.nrows() != b || o.data.ndim() < 2 || m.ncols() != o.data.shape()[1] {
                    return Err(LstmError::shape(
                        format!("mask of output {k} of custom layer {}", self.name),
                        &o.data.shape()[..o.data.ndim().min(2)],
                        m.shape(),
                    ));
                }
            }
        }
        Ok(outs
            .into_iter()
            .map(|o| Value {
                data: o.data,
                mask: o.mask,
            })
            .collect())
    }

    fn params(&self) -> usize {
        self.layer.lock().map_or(0, |l| l.params())
    }

    fn on_gpu(&self) -> bool {
        self.layer.lock().is_ok_and(|l| l.gpu_kernel().is_some())
    }

    fn gpu(&self, up: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        let kernel = self
            .layer
            .lock()
            .map_err(|_| {
                LstmError::invalid(
                    format!("layer {}", self.name),
                    "an earlier call of this custom layer panicked",
                )
            })?
            .gpu_kernel();
        match kernel {
            Some(k) => Ok(Box::new(crate::gpu::plan::CustomStage::new(
                up, &self.name, k,
            )?)),
            None => Err(LstmError::UnsupportedOnPath {
                what: format!("the application's custom layer class {}", self.class),
                path: "gpu".into(),
                hint: "a custom layer without a GPU kernel (CustomLayer::gpu_kernel) runs on \
                       the CPU path only: KerasModel::predict_inputs"
                    .into(),
            }),
        }
    }
}
