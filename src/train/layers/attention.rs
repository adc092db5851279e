//! `Attention` (dot or concat scores, `use_scale`, `use_causal_mask`,
//! `return_attention_scores`) and `AdditiveAttention` in training: inputs `[query, value]` or
//! `[query, value, key]` (the key is the value when not given), the value's mask excluding
//! steps from the scores (`scores -= 1e9` there, as Keras), the query's mask zeroing output
//! rows and passed on. The forward pass is step for step the inference twin's
//! (`src/graph/attention.rs`); the backward pass is the softmax's and the scores'.
//!
//! `dropout` in training mode, as Keras's `_apply_scores`: the softmax weights times a
//! `[B, Tq, Tv]` scale mask (`1/(1 - rate)` where kept, one draw per weight from the call's
//! stream, row-major), then the weighted sum; the returned scores are the weights after the
//! dropout, as Keras returns them.

use super::super::dropout::{dropout_mask, SplitMix};
use super::{MergeForward, MergeOp, OpCache};
use crate::element::Element;
use crate::error::{LstmError, Result};
use ndarray::{Array1, Array2, Array3, ArrayD, ArrayView3, ArrayViewD, ArrayViewMutD, Ix3};

/// How the scores are made.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Score {
    /// `q · k` (times `scale` with `use_scale`).
    Dot,
    /// `concat_score_weight · Σ tanh(q + k)` (`scale · (q + k)` inside with `use_scale`).
    Concat,
    /// AdditiveAttention: `Σ_d scale_d · tanh(q_d + k_d)` (scale 1 without `use_scale`).
    Additive,
}

/// An attention layer with its weights (Keras's order: `scale`, then
/// `concat_score_weight`).
#[derive(Debug, Clone)]
pub(super) struct Attention<T> {
    score: Score,
    /// `[]` (Attention) or `[dim]` (AdditiveAttention), with `use_scale`.
    scale: Option<ArrayD<T>>,
    /// `[]`, with `score_mode="concat"`.
    concat: Option<ArrayD<T>>,
    causal: bool,
    return_scores: bool,
    /// The attention dropout rate (training mode only).
    dropout: f64,
}

struct Cache<T> {
    q: Array3<T>,
    v: Array3<T>,
    k: Array3<T>,
    /// The softmax weights `[B, Tq, Tv]`.
    w: Array3<T>,
    /// The dropout's scale mask `[B, Tq, Tv]` (training mode with dropout).
    drop: Option<Array3<T>>,
    q_mask: Option<Array2<bool>>,
    /// Whether the key was given apart from the value.
    three: bool,
}

impl<T: Element> Attention<T> {
    /// From the config of `class` (`Attention` or `AdditiveAttention`) and its weights.
    pub(super) fn new(
        class: &str,
        cfg: &serde_json::Value,
        name: &str,
        kwargs: &serde_json::Map<String, serde_json::Value>,
        weights: Vec<ArrayD<T>>,
    ) -> Result<Self> {
        use serde_json::Value as Json;
        let additive = class == "AdditiveAttention";
        let use_scale = cfg
            .get("use_scale")
            .and_then(Json::as_bool)
            .unwrap_or(additive);
        let score = match (additive, cfg.get("score_mode").and_then(Json::as_str)) {
            (true, _) => Score::Additive,
            (false, None | Some("dot")) => Score::Dot,
            (false, Some("concat")) => Score::Concat,
            (false, Some(other)) => return Err(LstmError::unsupported("score_mode", other)),
        };
        let dropout = super::super::unit_rate(cfg, "dropout", name)?;
        let mut w = weights.into_iter();
        let mut take = |what: &str| {
            w.next().ok_or_else(|| LstmError::MissingWeight {
                name: format!("{name}/{what}"),
            })
        };
        let scale = if use_scale {
            Some(take("scale")?)
        } else {
            None
        };
        let concat = if score == Score::Concat {
            Some(take("concat_score_weight")?)
        } else {
            None
        };
        let flag = |k: &str| kwargs.get(k).and_then(Json::as_bool).unwrap_or(false);
        Ok(Attention {
            score,
            scale,
            concat,
            causal: flag("use_causal_mask"),
            return_scores: flag("return_attention_scores"),
            dropout,
        })
    }

    /// The forward pass; with `seed` (training mode) and a dropout rate, the weights'
    /// dropout mask drawn from it.
    fn run(
        &self,
        name: &str,
        xs: &[ArrayViewD<'_, T>],
        masks: &[Option<&Array2<bool>>],
        seed: Option<u64>,
    ) -> Result<MergeForward<T>> {
        let what = format!("layer {name}");
        let (q, v, k) = crate::graph::query_value_key(xs, &what)?;
        let (q, v, k) = (
            as3(q, "query", name)?,
            as3(v, "value", name)?,
            as3(k, "key", name)?,
        );
        let (b, tq, dim) = q.dim();
        let (_, tv, vdim) = v.dim();
        if k.dim() != (b, tv, dim) || v.dim().0 != b {
            return Err(LstmError::shape(
                format!("key of {what}"),
                &[b, tv, dim],
                k.shape(),
            ));
        }
        let want = if self.score == Score::Additive {
            dim
        } else {
            1
        };
        if let Some(s) = &self.scale {
            if s.len() != want {
                return Err(LstmError::shape(
                    format!("{name}/scale"),
                    &[want],
                    s.shape(),
                ));
            }
        }
        let q_mask = masks.first().copied().flatten();
        let v_mask = masks.get(1).copied().flatten();
        for (m, t) in [(q_mask, tq), (v_mask, tv)] {
            if let Some(m) = m {
                if m.dim() != (b, t) {
                    return Err(LstmError::shape(
                        format!("mask reaching {what}"),
                        &[b, t],
                        m.shape(),
                    ));
                }
            }
        }
        let (q, v, k) = (q.to_owned(), v.to_owned(), k.to_owned());
        let drop = match seed {
            Some(seed) if self.dropout > 0.0 => Some(
                dropout_mask::<T>(name, self.dropout, None, &[b, tq, tv], &mut SplitMix(seed))?
                    .into_dimensionality::<Ix3>()
                    .expect("drawn 3-D"),
            ),
            _ => None,
        };
        let mut w = Array3::<T>::zeros((b, tq, tv));
        let mut out = Array3::<T>::zeros((b, tq, vdim));
        let big = T::from_f64(1.0e9);
        for i in 0..b {
            for a in 0..tq {
                let qa: Vec<T> = q.slice(ndarray::s![i, a, ..]).to_vec();
                let mut scores: Vec<T> = (0..tv)
                    .map(|j| {
                        let kj: Vec<T> = k.slice(ndarray::s![i, j, ..]).to_vec();
                        self.score_of(&qa, &kj)
                    })
                    .collect();
                for (j, s) in scores.iter_mut().enumerate() {
                    let present = v_mask.is_none_or(|m| m[[i, j]]) && (!self.causal || j <= a);
                    if !present {
                        *s = *s - big;
                    }
                }
                let m = scores
                    .iter()
                    .copied()
                    .fold(
                        T::from_f64(f64::NEG_INFINITY),
                        |a, b| if b > a { b } else { a },
                    );
                let e: Vec<T> = scores.iter().map(|&s| (s - m).exp()).collect();
                let mut sum = T::zero();
                for &x in &e {
                    sum += x;
                }
                for (j, &ej) in e.iter().enumerate() {
                    let wj = ej / sum;
                    w[[i, a, j]] = wj;
                    // (the weight after the dropout)
                    let wj = drop.as_ref().map_or(wj, |m| wj * m[[i, a, j]]);
                    for d in 0..vdim {
                        out[[i, a, d]] += wj * v[[i, j, d]];
                    }
                }
                if q_mask.is_some_and(|m| !m[[i, a]]) {
                    out.slice_mut(ndarray::s![i, a, ..]).fill(T::zero());
                }
            }
        }
        let extra = if self.return_scores {
            // (Keras returns the weights after its dropout)
            vec![match &drop {
                Some(m) => (&w * m).into_dyn(),
                None => w.clone().into_dyn(),
            }]
        } else {
            Vec::new()
        };
        Ok(MergeForward {
            y: out.into_dyn(),
            mask: q_mask.cloned(),
            extra,
            cache: Box::new(Cache {
                q,
                v,
                k,
                w,
                drop,
                q_mask: q_mask.cloned(),
                three: xs.len() == 3,
            }),
        })
    }

    /// The score of query row `q` against key row `k`.
    fn score_of(&self, q: &[T], k: &[T]) -> T {
        let dim = q.len();
        match self.score {
            Score::Dot => {
                let mut dot = T::zero();
                for d in 0..dim {
                    dot += q[d] * k[d];
                }
                self.scale
                    .as_ref()
                    .map_or(dot, |s| dot * s.iter().copied().next().unwrap_or(T::one()))
            }
            Score::Additive => {
                let mut sum = T::zero();
                for d in 0..dim {
                    let s = self.scale.as_ref().map_or(T::one(), |s| s[d]);
                    sum += s * (q[d] + k[d]).tanh();
                }
                sum
            }
            Score::Concat => {
                let cw = self
                    .concat
                    .as_ref()
                    .and_then(|c| c.iter().copied().next())
                    .unwrap_or(T::one());
                let mut sum = T::zero();
                for d in 0..dim {
                    let x = q[d] + k[d];
                    let x = match &self.scale {
                        Some(s) => s.iter().copied().next().unwrap_or(T::one()) * x,
                        None => x,
                    };
                    sum += x.tanh();
                }
                cw * sum
            }
        }
    }
}

fn as3<'a, T>(x: &ArrayViewD<'a, T>, what: &str, name: &str) -> Result<ArrayView3<'a, T>> {
    x.clone()
        .into_dimensionality::<Ix3>()
        .map_err(|_| LstmError::shape(format!("{what} of layer {name}"), &[0, 0, 0], x.shape()))
}

impl<T: Element> MergeOp<T> for Attention<T> {
    fn class(&self) -> &'static str {
        if self.score == Score::Additive {
            "AdditiveAttention"
        } else {
            "Attention"
        }
    }

    fn forward(
        &self,
        name: &str,
        xs: &[ArrayViewD<'_, T>],
        masks: &[Option<&Array2<bool>>],
    ) -> Result<MergeForward<T>> {
        self.run(name, xs, masks, None)
    }

    fn forward_in_training(
        &self,
        name: &str,
        xs: &[ArrayViewD<'_, T>],
        masks: &[Option<&Array2<bool>>],
        _scalars: &[f64],
        seed: Option<u64>,
    ) -> Result<MergeForward<T>> {
        self.run(name, xs, masks, seed)
    }

    fn backward(
        &self,
        name: &str,
        cache: &OpCache,
        d: ArrayD<T>,
    ) -> Result<(Vec<Option<ArrayD<T>>>, Vec<ArrayD<T>>)> {
        self.backward_extra(name, cache, d, Vec::new())
    }

    fn backward_extra(
        &self,
        name: &str,
        cache: &OpCache,
        d: ArrayD<T>,
        d_extra: Vec<Option<ArrayD<T>>>,
    ) -> Result<(Vec<Option<ArrayD<T>>>, Vec<ArrayD<T>>)> {
        let d_scores = d_extra.into_iter().next().flatten();
        let c = cache
            .downcast_ref::<Cache<T>>()
            .ok_or_else(|| LstmError::invalid(format!("layer {name}"), "cache mismatch"))?;
        let mut d = d
            .into_dimensionality::<Ix3>()
            .map_err(|_| LstmError::invalid(format!("layer {name}"), "cotangent shape"))?;
        let d_scores = match d_scores {
            Some(s) => Some(
                s.into_dimensionality::<Ix3>()
                    .map_err(|_| LstmError::invalid(format!("layer {name}"), "cotangent shape"))?,
            ),
            None => None,
        };
        let (b, tq, dim) = c.q.dim();
        let (_, tv, vdim) = c.v.dim();
        let mut dq = Array3::<T>::zeros((b, tq, dim));
        let mut dk = Array3::<T>::zeros((b, tv, dim));
        let mut dv = Array3::<T>::zeros((b, tv, vdim));
        let mut dscale = self.scale.as_ref().map(|s| Array1::<T>::zeros(s.len()));
        let mut dconcat = T::zero();
        let one = T::one();
        let scalar = |a: &Option<ArrayD<T>>| a.as_ref().and_then(|s| s.iter().copied().next());
        for i in 0..b {
            for a in 0..tq {
                if c.q_mask.as_ref().is_some_and(|m| !m[[i, a]]) {
                    d.slice_mut(ndarray::s![i, a, ..]).fill(T::zero());
                }
                // dL/dw_j = d_out · v_j (+ the returned scores' cotangent); softmax backward
                let mut dw: Vec<T> = (0..tv)
                    .map(|j| {
                        let mut s = T::zero();
                        for e in 0..vdim {
                            s += d[[i, a, e]] * c.v[[i, j, e]];
                        }
                        s
                    })
                    .collect();
                if let Some(ds) = &d_scores {
                    for (j, x) in dw.iter_mut().enumerate() {
                        *x += ds[[i, a, j]];
                    }
                }
                // (the output and the returned scores read the weights after the dropout)
                if let Some(m) = &c.drop {
                    for (j, x) in dw.iter_mut().enumerate() {
                        *x = *x * m[[i, a, j]];
                    }
                }
                let mut dot = T::zero();
                for (j, &g) in dw.iter().enumerate() {
                    dot += g * c.w[[i, a, j]];
                }
                for j in 0..tv {
                    let wj = c.w[[i, a, j]];
                    let wd = c.drop.as_ref().map_or(wj, |m| wj * m[[i, a, j]]);
                    for e in 0..vdim {
                        dv[[i, j, e]] += wd * d[[i, a, e]];
                    }
                    let ds = wj * (dw[j] - dot);
                    match self.score {
                        Score::Dot => {
                            let s = scalar(&self.scale).unwrap_or(one);
                            let mut raw = T::zero();
                            for e in 0..dim {
                                raw += c.q[[i, a, e]] * c.k[[i, j, e]];
                                dq[[i, a, e]] += ds * s * c.k[[i, j, e]];
                                dk[[i, j, e]] += ds * s * c.q[[i, a, e]];
                            }
                            if let Some(g) = dscale.as_mut() {
                                g[0] += ds * raw;
                            }
                        }
                        Score::Additive => {
                            for e in 0..dim {
                                let s = self.scale.as_ref().map_or(one, |s| s[e]);
                                let t = (c.q[[i, a, e]] + c.k[[i, j, e]]).tanh();
                                let g = ds * s * (one - t * t);
                                dq[[i, a, e]] += g;
                                dk[[i, j, e]] += g;
                                if let Some(gs) = dscale.as_mut() {
                                    gs[e] += ds * t;
                                }
                            }
                        }
                        Score::Concat => {
                            let cw = scalar(&self.concat).unwrap_or(one);
                            let s = scalar(&self.scale);
                            let mut tsum = T::zero();
                            for e in 0..dim {
                                let x = c.q[[i, a, e]] + c.k[[i, j, e]];
                                let t = (s.unwrap_or(one) * x).tanh();
                                tsum += t;
                                let g = ds * cw * (one - t * t);
                                dq[[i, a, e]] += g * s.unwrap_or(one);
                                dk[[i, j, e]] += g * s.unwrap_or(one);
                                if let Some(gs) = dscale.as_mut() {
                                    gs[0] += g * x;
                                }
                            }
                            dconcat += ds * tsum;
                        }
                    }
                }
            }
        }
        let mut weights = Vec::new();
        if let (Some(g), Some(s)) = (dscale, &self.scale) {
            weights.push(
                g.into_shape_with_order(ndarray::IxDyn(s.shape()))
                    .expect("the scale's shape"),
            );
        }
        if let Some(cw) = &self.concat {
            weights.push(ArrayD::from_elem(ndarray::IxDyn(cw.shape()), dconcat));
        }
        let mut grads = vec![Some(dq.into_dyn())];
        if c.three {
            grads.push(Some(dv.into_dyn()));
            grads.push(Some(dk.into_dyn()));
        } else {
            grads.push(Some((dv + dk).into_dyn()));
        }
        Ok((grads, weights))
    }

    fn weights(&self) -> Vec<ArrayD<T>> {
        self.scale.iter().chain(&self.concat).cloned().collect()
    }

    fn weights_mut(&mut self) -> Vec<ArrayViewMutD<'_, T>> {
        self.scale
            .iter_mut()
            .chain(self.concat.iter_mut())
            .map(|w| w.view_mut())
            .collect()
    }

    fn clone_box(&self) -> Box<dyn MergeOp<T>> {
        Box::new(self.clone())
    }
}
