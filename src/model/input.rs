//! The inputs a model is run on: float features or integer token ids.

use crate::error::{LstmError, Result};
use ndarray::ArrayD;

/// One input of a model: float features, or integer token ids (for `Embedding`).
#[derive(Debug, Clone)]
pub enum ModelInput {
    /// Float features.
    F32(ArrayD<f32>),
    /// Token ids (int32 or int64 in Keras).
    I64(ArrayD<i64>),
}

impl From<ArrayD<f32>> for ModelInput {
    fn from(a: ArrayD<f32>) -> Self {
        ModelInput::F32(a)
    }
}

impl From<ArrayD<i64>> for ModelInput {
    fn from(a: ArrayD<i64>) -> Self {
        ModelInput::I64(a)
    }
}

impl From<ArrayD<i32>> for ModelInput {
    fn from(a: ArrayD<i32>) -> Self {
        ModelInput::I64(a.mapv(i64::from))
    }
}

impl ModelInput {
    pub(crate) fn is_integer(&self) -> bool {
        matches!(self, ModelInput::I64(_))
    }

    /// The values as f32 (token ids exactly: at most 2^24).
    pub(super) fn to_f32(&self, name: &str) -> Result<ArrayD<f32>> {
        match self {
            ModelInput::F32(a) => Ok(a.clone()),
            ModelInput::I64(a) => {
                if let Some(v) = a.iter().find(|v| v.unsigned_abs() > 1 << 24) {
                    return Err(LstmError::invalid(
                        format!("input {name}"),
                        format!("token id {v} is too large"),
                    ));
                }
                Ok(a.mapv(|v| v as f32))
            }
        }
    }
}
