//! The attention layers of a graph on the CPU: `Attention` (dot or concat scores, scale,
//! causal mask, returned scores) and `AdditiveAttention`, with the value and query masks as
//! Keras applies them. GPU twin: `AttentionStage` (src/gpu/plan/attention.rs).

use super::conv::as3;
use super::ops::{fitting_mask, stage, Extra, GpuStage, Op, Uploader};
use super::Value;
use crate::error::{LstmError, Result};
use crate::gpu::plan::AttentionStage;
use ndarray::{Array3, Axis};

/// An attention layer's `[query, value]` or `[query, value, key]` (the key is the value when
/// not given); both twins use it.
pub(crate) fn query_value_key<'t, T>(inputs: &'t [T], what: &str) -> Result<(&'t T, &'t T, &'t T)> {
    match inputs {
        [q, v] => Ok((q, v, v)),
        [q, v, k] => Ok((q, v, k)),
        other => Err(LstmError::invalid(
            what,
            format!(
                "takes [query, value] or [query, value, key], got {} tensors",
                other.len()
            ),
        )),
    }
}

/// The scale of an attention layer fits its queries of `dim` features: one value
/// (Attention) or one per feature (AdditiveAttention); both twins check it.
pub(crate) fn check_scale(
    scale: Option<&[f32]>,
    additive: bool,
    dim: usize,
    name: &str,
) -> Result<()> {
    if let Some(scale) = scale {
        let want = if additive { dim } else { 1 };
        if scale.len() != want {
            return Err(LstmError::shape(
                format!("{name}/scale"),
                &[want],
                &[scale.len()],
            ));
        }
    }
    Ok(())
}

/// `Attention` (dot or concat scores) and `AdditiveAttention`: inputs `[query, value]` or
/// `[query, value, key]`; the value's mask excludes steps from the scores, the query's mask
/// zeroes output rows and is the output's mask.
#[derive(Debug, Clone)]
pub(super) struct Attention {
    pub(super) name: String,
    pub(super) additive: bool,
    /// Attention: one scalar; AdditiveAttention: one per feature.
    pub(super) scale: Option<Vec<f32>>,
    pub(super) concat_weight: Option<f32>,
}

impl Op for Attention {
    fn call(&mut self, inputs: &[&Value], extra: &Extra<'_>) -> Result<Vec<Value>> {
        let what = format!("layer {}", self.name);
        let (q, v, k) = query_value_key(inputs, &what)?;
        let (q, v, k) = (*q, *v, *k);
        let causal = extra.flag("use_causal_mask");
        let return_scores = extra.flag("return_attention_scores");
        let (qa, va, ka) = (
            as3(q, &self.name)?,
            as3(v, &self.name)?,
            as3(k, &self.name)?,
        );
        let (b, tq, dim) = qa.dim();
        let (_, tv, vdim) = va.dim();
        check_scale(self.scale.as_deref(), self.additive, dim, &self.name)?;
        fitting_mask(q.mask.as_ref(), (b, tq), &self.name)?;
        fitting_mask(v.mask.as_ref(), (b, tv), &self.name)?;
        if ka.dim() != (b, tv, dim) || va.dim().0 != b {
            return Err(LstmError::shape(
                format!("key of {what}"),
                &[b, tv, dim],
                ka.shape(),
            ));
        }
        let mut weights = Array3::<f32>::zeros((b, tq, tv));
        let mut out = Array3::<f32>::zeros((b, tq, vdim));
        for i in 0..b {
            for a in 0..tq {
                let mut scores: Vec<f32> = (0..tv)
                    .map(|j| {
                        if self.additive {
                            (0..dim)
                                .map(|d| {
                                    let s = self.scale.as_ref().map_or(1.0, |s| s[d]);
                                    s * (qa[[i, a, d]] + ka[[i, j, d]]).tanh()
                                })
                                .sum()
                        } else if let Some(cw) = self.concat_weight {
                            let s = self.scale.as_ref().map_or(1.0, |s| s[0]);
                            cw * (0..dim)
                                .map(|d| {
                                    let x = qa[[i, a, d]] + ka[[i, j, d]];
                                    (if self.scale.is_some() { s * x } else { x }).tanh()
                                })
                                .sum::<f32>()
                        } else {
                            let dot: f32 = (0..dim).map(|d| qa[[i, a, d]] * ka[[i, j, d]]).sum();
                            self.scale.as_ref().map_or(dot, |s| dot * s[0])
                        }
                    })
                    .collect();
                for (j, s) in scores.iter_mut().enumerate() {
                    let present = v.mask.as_ref().is_none_or(|m| m[[i, j]]) && (!causal || j <= a);
                    if !present {
                        *s -= 1.0e9;
                    }
                }
                let m = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
                let sum: f32 = e.iter().sum();
                for (j, ej) in e.iter().enumerate() {
                    let w = ej / sum;
                    weights[[i, a, j]] = w;
                    for d in 0..vdim {
                        out[[i, a, d]] += w * va[[i, j, d]];
                    }
                }
                if q.mask.as_ref().is_some_and(|m| !m[[i, a]]) {
                    out.index_axis_mut(Axis(0), i).row_mut(a).fill(0.0);
                }
            }
        }
        let mut outs = vec![Value {
            data: out.into_dyn(),
            mask: q.mask.clone(),
        }];
        if return_scores {
            outs.push(Value {
                data: weights.into_dyn(),
                mask: None,
            });
        }
        Ok(outs)
    }

    fn params(&self) -> usize {
        self.scale.as_ref().map_or(0, |s| s.len()) + usize::from(self.concat_weight.is_some())
    }

    fn gpu(&self, up: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        let scale_buf = match (&self.scale, self.additive) {
            (Some(s), true) => Some(up.floats(&format!("{}/scale", self.name), s)?),
            _ => None,
        };
        stage(AttentionStage {
            name: self.name.clone(),
            additive: self.additive,
            scale: self.scale.clone(),
            scale_buf,
            concat_weight: self.concat_weight,
        })
    }
}

/// Builds `Attention` or `AdditiveAttention`, or None for another class.
pub(super) fn build(
    class: &str,
    cfg: &serde_json::Value,
    name: &str,
    weights: &dyn Fn() -> Result<Vec<ndarray::ArrayD<f32>>>,
) -> Result<Option<Box<dyn super::ops::Op>>> {
    use serde_json::Value as Json;
    Ok(Some(match class {
        "Attention" | "AdditiveAttention" => {
            let use_scale = cfg
                .get("use_scale")
                .and_then(Json::as_bool)
                .unwrap_or(class == "AdditiveAttention");
            let score_mode = cfg
                .get("score_mode")
                .and_then(Json::as_str)
                .unwrap_or("dot");
            let additive = class == "AdditiveAttention";
            if !additive && !matches!(score_mode, "dot" | "concat") {
                return Err(LstmError::unsupported("score_mode", score_mode));
            }
            let mut w = if use_scale || (!additive && score_mode == "concat") {
                weights()?.into_iter()
            } else {
                Vec::new().into_iter()
            };
            let scale = if use_scale {
                Some(w.next().ok_or_else(|| LstmError::MissingWeight {
                    name: format!("{name}/scale"),
                })?)
            } else {
                None
            };
            let concat_weight = if !additive && score_mode == "concat" {
                let c = w.next().ok_or_else(|| LstmError::MissingWeight {
                    name: format!("{name}/concat_score_weight"),
                })?;
                Some(c.iter().copied().next().unwrap_or(1.0))
            } else {
                None
            };
            Box::new(Attention {
                name: name.to_string(),
                additive,
                scale: scale.map(|s| s.iter().copied().collect()),
                concat_weight,
            })
        }
        _ => return Ok(None),
    }))
}
