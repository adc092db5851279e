//! `ZeroPadding1D`, `Cropping1D`, `UpSampling1D` and their 2-D forms `ZeroPadding2D`,
//! `Cropping2D`, `UpSampling2D` (nearest) on the CPU (the gather kernel on the GPU). None of
//! these keep an incoming mask.

use super::conv::spatial;
use super::ops::{stage, Extra, GpuStage, Op, Uploader};
use super::Value;
use crate::error::{LstmError, Result};
use crate::gpu::plan::{GatherStage, Layout};
use ndarray::{Array3, Array4};
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
        "ZeroPadding2D" | "Cropping2D" | "UpSampling2D" => {
            if cfg.get("data_format").and_then(Json::as_str) == Some("channels_first") {
                return Err(LstmError::unsupported("data_format", "channels_first"));
            }
            let zero = [(0, 0); 2];
            match class {
                "ZeroPadding2D" => Box::new(Pad2 {
                    name: class.into(),
                    pad: pairs(cfg, "padding", 1)?,
                    crop: zero,
                    repeat: [1, 1],
                }),
                "Cropping2D" => Box::new(Pad2 {
                    name: class.into(),
                    pad: zero,
                    crop: pairs(cfg, "cropping", 0)?,
                    repeat: [1, 1],
                }),
                _ => {
                    let interpolation = cfg
                        .get("interpolation")
                        .and_then(Json::as_str)
                        .unwrap_or("nearest");
                    if interpolation != "nearest" {
                        return Err(LstmError::unsupported("interpolation", interpolation));
                    }
                    let size = match cfg.get("size") {
                        Some(Json::Array(a)) if a.len() == 2 => {
                            [a[0].as_u64().unwrap_or(0), a[1].as_u64().unwrap_or(0)]
                        }
                        Some(v) => [v.as_u64().unwrap_or(0); 2],
                        None => [2, 2],
                    };
                    if size.contains(&0) {
                        return Err(LstmError::bad_config("size", "expected positive ints"));
                    }
                    Box::new(Pad2 {
                        name: class.into(),
                        pad: zero,
                        crop: zero,
                        repeat: size.map(|v| v as usize),
                    })
                }
            }
        }
        _ => return Ok(None),
    }))
}

/// A 2-D padding or cropping config: an int (all four sides), `[h, w]` (each axis both
/// sides) or `[[top, bottom], [left, right]]`.
fn pairs(cfg: &Json, key: &str, default: usize) -> Result<[(usize, usize); 2]> {
    let bad = |v: &Json| {
        LstmError::bad_config(
            key,
            format!("expected an int, [h, w] or [[top, bottom], [left, right]], got {v}"),
        )
    };
    let int = |v: &Json| v.as_u64().map(|n| n as usize).ok_or_else(|| bad(v));
    Ok(match cfg.get(key) {
        None | Some(Json::Null) => [(default, default); 2],
        Some(Json::Array(a)) if a.len() == 2 => {
            let axis = |v: &Json| -> Result<(usize, usize)> {
                match v {
                    Json::Array(p) if p.len() == 2 => Ok((int(&p[0])?, int(&p[1])?)),
                    other => {
                        let n = int(other)?;
                        Ok((n, n))
                    }
                }
            };
            [axis(&a[0])?, axis(&a[1])?]
        }
        Some(v) => {
            let n = int(v)?;
            [(n, n); 2]
        }
    })
}

/// `ZeroPadding2D`, `Cropping2D` or `UpSampling2D` on `[B, H, W, C]`: per axis, crop `crop`,
/// repeat each row or column `repeat` times, pad `pad` zeros (one of the three per layer).
#[derive(Debug, Clone)]
pub(crate) struct Pad2 {
    pub(crate) name: String,
    pub(crate) pad: [(usize, usize); 2],
    pub(crate) crop: [(usize, usize); 2],
    pub(crate) repeat: [usize; 2],
}

impl Pad2 {
    /// The kept size of each axis after cropping, and the output size, for an `[h, w]` input.
    pub(crate) fn sizes(&self, hw: [usize; 2]) -> Result<([usize; 2], [usize; 2])> {
        let mut kept = [0; 2];
        let mut out = [0; 2];
        for a in 0..2 {
            let (c0, c1) = self.crop[a];
            if c0 + c1 > hw[a] {
                return Err(LstmError::invalid(
                    format!("layer {}", self.name),
                    format!("crops {:?} from an axis of {}", self.crop[a], hw[a]),
                ));
            }
            kept[a] = hw[a] - c0 - c1;
            out[a] = self.pad[a].0 + kept[a] * self.repeat[a] + self.pad[a].1;
        }
        Ok((kept, out))
    }
}

impl Op for Pad2 {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = spatial(inputs, 2, &self.name)?;
        let (b, h, w, c) = x.dim();
        let (kept, [oh, ow]) = self.sizes([h, w])?;
        // the input position of output position `o` along axis `a`, if not padding
        let from = |a: usize, o: usize| -> Option<usize> {
            let s = o.checked_sub(self.pad[a].0)?;
            (s < kept[a] * self.repeat[a]).then(|| self.crop[a].0 + s / self.repeat[a])
        };
        let y = Array4::from_shape_fn((b, oh, ow, c), |(i, oy, ox, ch)| {
            match (from(0, oy), from(1, ox)) {
                (Some(py), Some(px)) => x[[i, py, px, ch]],
                _ => 0.0,
            }
        });
        Ok(vec![Value {
            data: y.into_dyn(),
            mask: None,
        }])
    }

    fn gpu(&self, _: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        stage(GatherStage {
            name: self.name.clone(),
            layout: Layout::Pad2(self.clone()),
        })
    }
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
