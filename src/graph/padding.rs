//! `ZeroPadding1D`, `Cropping1D` and `UpSampling1D` on the CPU (the gather kernel on the
//! GPU). None of these keep an incoming mask.

use super::conv::spatial;
use super::ops::{stage, Extra, GpuStage, Op, Uploader};
use super::Value;
use crate::error::{LstmError, Result};
use crate::gpu::plan::{GatherStage, Layout};
use ndarray::Array3;
use serde_json::Value as Json;

/// A `(left, right)` pair written as an int or a two-element list.
fn pair(cfg: &Json, key: &str, default: usize) -> (usize, usize) {
    match cfg.get(key) {
        Some(Json::Array(a)) if a.len() == 2 => (
            a[0].as_u64().unwrap_or(0) as usize,
            a[1].as_u64().unwrap_or(0) as usize,
        ),
        Some(v) => {
            let n = v.as_u64().unwrap_or(default as u64) as usize;
            (n, n)
        }
        None => (default, default),
    }
}

/// Builds one of this module's layers, or None for another class.
pub(super) fn build(class: &str, cfg: &Json) -> Result<Option<Box<dyn Op>>> {
    Ok(Some(match class {
        "ZeroPadding1D" => Box::new(Pad {
            pad: pair(cfg, "padding", 1),
            crop: (0, 0),
            repeat: 1,
        }),
        "Cropping1D" => Box::new(Pad {
            pad: (0, 0),
            crop: pair(cfg, "cropping", 1),
            repeat: 1,
        }),
        "UpSampling1D" => Box::new(Pad {
            pad: (0, 0),
            crop: (0, 0),
            repeat: cfg.get("size").and_then(Json::as_u64).unwrap_or(2).max(1) as usize,
        }),
        _ => return Ok(None),
    }))
}

/// `ZeroPadding1D`, `Cropping1D` and `UpSampling1D` on the time axis.
#[derive(Debug, Clone)]
struct Pad {
    pad: (usize, usize),
    crop: (usize, usize),
    repeat: usize,
}

impl Op for Pad {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = spatial(inputs, 1, "padding")?.index_axis_move(ndarray::Axis(1), 0);
        let (b, t, c) = x.dim();
        if self.crop.0 + self.crop.1 > t {
            return Err(LstmError::invalid(
                "Cropping1D",
                format!("crops {:?} steps from {t}", self.crop),
            ));
        }
        let kept = t - self.crop.0 - self.crop.1;
        let out_t = self.pad.0 + kept * self.repeat + self.pad.1;
        let y = Array3::from_shape_fn((b, out_t, c), |(i, s, ch)| {
            if s < self.pad.0 || s >= self.pad.0 + kept * self.repeat {
                0.0
            } else {
                x[[i, self.crop.0 + (s - self.pad.0) / self.repeat, ch]]
            }
        });
        Ok(vec![Value {
            data: y.into_dyn(),
            mask: None,
        }])
    }

    fn gpu(&self, _: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        stage(GatherStage {
            name: "padding".into(),
            layout: Layout::Pad {
                pad: self.pad,
                crop: self.crop,
                repeat: self.repeat,
            },
        })
    }
}
