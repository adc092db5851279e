//! `MultiHeadAttention` in training: inputs `[query, value]` or `[query, value, key]` (the
//! key is the value when not given). The forward pass is step for step the inference
//! twin's (`src/graph/mha.rs`): the three projections (kernels `[D, N, H]`, biases
//! `[N, H]`), per head the scaled dot products masked where the combined mask is false (the
//! query's mask by row, the value's and key's by column, the causal triangle with
//! `use_causal_mask`; a masked score replaced by a large negative number), a softmax over
//! the key steps, on Keras's scores path (`return_attention_scores`) the masked weights
//! zeroed after it, the weighted sum of the values and the output projection (`[N, Hv,
//! Dout]`, bias `[Dout]`). The backward pass runs it in reverse: the output projection's
//! transpose, each head's softmax backward (a masked score gets no gradient), the
//! projections' transposes.
//!
//! `dropout` as Keras's: a layer with dropout takes the scores path in either mode; in
//! training mode its Dropout multiplies the (masked, zeroed) weights by a `[B, N, T, S]`
//! scale mask (`1/(1 - rate)` where kept, one draw per weight from the call's stream,
//! row-major) before the weighted sum; the returned scores are the weights before it, as
//! Keras returns them.

use super::super::dropout::{dropout_mask, SplitMix};
use super::{MergeForward, MergeOp, OpCache};
use crate::cpu::reference::matmul;
use crate::element::Element;
use crate::error::{LstmError, Result};
use ndarray::{Array2, Array4, ArrayD, ArrayView2, ArrayViewD, ArrayViewMutD, Axis, Ix3};
use serde_json::Value as Json;

/// A `MultiHeadAttention` layer with its weights in Keras's order and shapes: the query,
/// key, value and output projections' kernels, each followed by its bias with `use_bias`.
#[derive(Debug, Clone)]
pub(super) struct Mha<T> {
    heads: usize,
    key_dim: usize,
    value_dim: usize,
    use_bias: bool,
    weights: Vec<ArrayD<T>>,
    causal: bool,
    return_scores: bool,
    /// The attention dropout rate (training mode only; with it Keras takes its scores path
    /// in either mode).
    dropout: f64,
}

/// What the backward pass reads.
struct Cache<T> {
    /// The inputs as `[B·T, D]` rows: query, value, key.
    xq: Array2<T>,
    xv: Array2<T>,
    xk: Array2<T>,
    /// The projections `[B·T, N·H]`, `[B·S, N·H]`, `[B·S, N·Hv]`.
    q: Array2<T>,
    k: Array2<T>,
    v: Array2<T>,
    /// The softmax weights `[B, N, T, S]` (before the scores path zeroes masked ones).
    p: Array4<T>,
    /// Where a score counts `[B, T, S]` (None: everywhere).
    allowed: Option<ndarray::Array3<bool>>,
    /// The heads' outputs `[B·T, N·Hv]`.
    context: Array2<T>,
    /// The dropout's scale mask `[B, N, T, S]` (training mode with dropout).
    drop: Option<Array4<T>>,
    dims: (usize, usize, usize),
    three: bool,
}

impl<T: Element> Mha<T> {
    /// From the layer's config, the call's keyword arguments and its weights.
    pub(super) fn new(
        cfg: &Json,
        name: &str,
        kwargs: &serde_json::Map<String, Json>,
        weights: Vec<ArrayD<T>>,
    ) -> Result<Self> {
        let (heads, key_dim, value_dim) = crate::graph::mha::head_sizes(cfg, name)?;
        let dropout = super::super::unit_rate(cfg, "dropout", name)?;
        let use_bias = cfg.get("use_bias").and_then(Json::as_bool).unwrap_or(true);
        let per = 1 + usize::from(use_bias);
        if weights.len() != 4 * per {
            return Err(LstmError::invalid(
                format!("weights of layer {name}"),
                format!("expected {} arrays, got {}", 4 * per, weights.len()),
            ));
        }
        for (k, what) in ["query", "key", "value", "attention_output"]
            .iter()
            .enumerate()
        {
            let kernel = &weights[k * per];
            let s = kernel.shape();
            let last = k == 3;
            let ok = s.len() == 3
                && if last {
                    s[0] == heads && s[1] == value_dim
                } else {
                    s[1] == heads && s[2] == if k == 2 { value_dim } else { key_dim }
                };
            if !ok {
                return Err(LstmError::shape(
                    format!("{name}/{what}/kernel"),
                    &if last {
                        [heads, value_dim, 0]
                    } else {
                        [0, heads, if k == 2 { value_dim } else { key_dim }]
                    },
                    s,
                ));
            }
            if use_bias {
                let cols = if last { s[2] } else { s[1] * s[2] };
                if weights[k * per + 1].len() != cols {
                    return Err(LstmError::shape(
                        format!("{name}/{what}/bias"),
                        &[cols],
                        weights[k * per + 1].shape(),
                    ));
                }
            }
        }
        let flag = |k: &str| kwargs.get(k).and_then(Json::as_bool).unwrap_or(false);
        Ok(Mha {
            heads,
            key_dim,
            value_dim,
            use_bias,
            weights,
            causal: flag("use_causal_mask"),
            return_scores: flag("return_attention_scores"),
            dropout,
        })
    }

    /// Projection `k` (query, key, value, output): its kernel as `[rows, cols]` and bias.
    fn projection(&self, k: usize) -> (ArrayView2<'_, T>, Option<&ArrayD<T>>) {
        let per = 1 + usize::from(self.use_bias);
        let w = &self.weights[k * per];
        let s = w.shape();
        let (rows, cols) = if k == 3 {
            (s[0] * s[1], s[2])
        } else {
            (s[0], s[1] * s[2])
        };
        let kernel = w
            .view()
            .into_shape_with_order((rows, cols))
            .expect("a kernel checked at load");
        (kernel, self.use_bias.then(|| &self.weights[k * per + 1]))
    }

    /// `x [rows, D] · kernel + bias` of projection `k`, its input width checked.
    fn project(&self, k: usize, x: ArrayView2<'_, T>, what: &str) -> Result<Array2<T>> {
        let (w, b) = self.projection(k);
        if x.ncols() != w.nrows() {
            return Err(LstmError::shape(what, &[x.nrows(), w.nrows()], x.shape()));
        }
        let mut y = Array2::<T>::zeros((x.nrows(), w.ncols()));
        matmul(x, w, y.view_mut(), false);
        if let Some(b) = b {
            for mut row in y.rows_mut() {
                for (v, &bb) in row.iter_mut().zip(b.iter()) {
                    *v += bb;
                }
            }
        }
        Ok(y)
    }

    /// The scores' scale `1/√key_dim` as Keras applies it: `tf.cast` of the Python float
    /// (`ops.cast` on the scores path, `dot_product_attention`'s on the fused one) makes a
    /// float32 tensor of it first, so a float64 model scales by its float32 rounding.
    fn inverse_sqrt_key_dim(&self) -> T {
        T::from_f64(f64::from((1.0 / (self.key_dim as f64).sqrt()) as f32))
    }

    /// Keras's scores path (the weights materialised, the masked ones zeroed after the
    /// softmax), taken when the scores are returned or the layer has dropout.
    fn scores_path(&self) -> bool {
        self.return_scores || self.dropout > 0.0
    }
}

/// `x` as `[B·T, D]` rows.
fn rows<T: Element>(x: &ArrayViewD<'_, T>, what: &str) -> Result<(Array2<T>, usize, usize)> {
    let x3 = x
        .clone()
        .into_dimensionality::<Ix3>()
        .map_err(|_| LstmError::shape(what, &[0, 0, 0], x.shape()))?;
    let (b, t, d) = x3.dim();
    let owned = x3.as_standard_layout().into_owned();
    Ok((
        owned
            .into_shape_with_order((b * t, d))
            .expect("[B, T, D] reshapes to [B·T, D]"),
        b,
        t,
    ))
}

impl<T: Element> MergeOp<T> for Mha<T> {
    fn class(&self) -> &'static str {
        "MultiHeadAttention"
    }

    fn forward(
        &self,
        name: &str,
        xs: &[ArrayViewD<'_, T>],
        masks: &[Option<&Array2<bool>>],
    ) -> Result<MergeForward<T>> {
        self.forward_in_training(name, xs, masks, &[], None)
    }

    /// With `seed` (training mode) and a dropout rate, the weights' dropout mask drawn from
    /// it.
    fn forward_in_training(
        &self,
        name: &str,
        xs: &[ArrayViewD<'_, T>],
        masks: &[Option<&Array2<bool>>],
        _scalars: &[f64],
        seed: Option<u64>,
    ) -> Result<MergeForward<T>> {
        let what = format!("layer {name}");
        let (q_in, v_in, k_in) = crate::graph::query_value_key(xs, &what)?;
        let (xq, b, t) = rows(q_in, &format!("query of {what}"))?;
        let (xv, bv, s) = rows(v_in, &format!("value of {what}"))?;
        let (xk, bk, sk) = rows(k_in, &format!("key of {what}"))?;
        if bv != b || bk != b || sk != s {
            return Err(LstmError::shape(
                format!("key of {what}"),
                &[b, s, xk.ncols()],
                k_in.shape(),
            ));
        }
        let three = xs.len() == 3;
        let q_mask = masks.first().copied().flatten();
        let v_mask = masks.get(1).copied().flatten();
        let k_mask = if three {
            masks.get(2).copied().flatten()
        } else {
            v_mask
        };
        for (m, len, which) in [
            (q_mask, t, "query"),
            (v_mask, s, "value"),
            (k_mask, s, "key"),
        ] {
            if let Some(m) = m {
                if m.dim() != (b, len) {
                    return Err(LstmError::shape(
                        format!("{which} mask reaching {what}"),
                        &[b, len],
                        m.shape(),
                    ));
                }
            }
        }
        let q = self.project(0, xq.view(), &format!("query of {what}"))?;
        let k = self.project(1, xk.view(), &format!("key of {what}"))?;
        let v = self.project(2, xv.view(), &format!("value of {what}"))?;
        let (n, h, hv) = (self.heads, self.key_dim, self.value_dim);
        let masked = q_mask.is_some() || v_mask.is_some() || k_mask.is_some() || self.causal;
        let allowed = masked.then(|| {
            ndarray::Array3::from_shape_fn((b, t, s), |(i, a, j)| {
                q_mask.is_none_or(|m| m[[i, a]])
                    && v_mask.is_none_or(|m| m[[i, j]])
                    && k_mask.is_none_or(|m| m[[i, j]])
                    && (!self.causal || j <= a)
            })
        });
        let scores_path = self.scores_path();
        let fill = if scores_path {
            T::from_f64(-1e9)
        } else {
            // (TensorFlow's `_get_large_negative`: the same constant in either type)
            T::from_f64(3.38953e38 * -0.7)
        };
        let inv = self.inverse_sqrt_key_dim();
        let drop = match seed {
            Some(seed) if self.dropout > 0.0 => Some(
                dropout_mask::<T>(name, self.dropout, None, &[b, n, t, s], &mut SplitMix(seed))?
                    .into_dimensionality::<ndarray::Ix4>()
                    .expect("drawn 4-D"),
            ),
            _ => None,
        };
        let mut p = Array4::<T>::zeros((b, n, t, s));
        let mut context = Array2::<T>::zeros((b * t, n * hv));
        let mut row = vec![T::zero(); s];
        for i in 0..b {
            for head in 0..n {
                for a in 0..t {
                    let qr = q.row(i * t + a);
                    for (j, r) in row.iter_mut().enumerate() {
                        let kr = k.row(i * s + j);
                        let mut dot = T::zero();
                        for d in 0..h {
                            // (the scores path scales the query first, the fused one the
                            // product: Keras's two orders)
                            dot += if scores_path {
                                (qr[head * h + d] * inv) * kr[head * h + d]
                            } else {
                                qr[head * h + d] * kr[head * h + d]
                            };
                        }
                        *r = if scores_path { dot } else { dot * inv };
                        if allowed.as_ref().is_some_and(|al| !al[[i, a, j]]) {
                            *r = fill;
                        }
                    }
                    softmax(&mut row);
                    for (j, &w) in row.iter().enumerate() {
                        p[[i, head, a, j]] = w;
                        let kept = !scores_path || allowed.as_ref().is_none_or(|al| al[[i, a, j]]);
                        if !kept {
                            continue;
                        }
                        // (the weight after the dropout)
                        let w = drop.as_ref().map_or(w, |m| w * m[[i, head, a, j]]);
                        let vr = v.row(i * s + j);
                        for e in 0..hv {
                            context[[i * t + a, head * hv + e]] += w * vr[head * hv + e];
                        }
                    }
                }
            }
        }
        let out = self.project(3, context.view(), &format!("output of {what}"))?;
        let dout = out.ncols();
        let extra = if self.return_scores {
            let mut shown = p.clone();
            if let Some(al) = &allowed {
                for ((i, _, a, j), w) in shown.indexed_iter_mut() {
                    if !al[[i, a, j]] {
                        *w = T::zero();
                    }
                }
            }
            vec![shown.into_dyn()]
        } else {
            Vec::new()
        };
        Ok(MergeForward {
            y: out
                .into_shape_with_order((b, t, dout))
                .expect("[B·T, Dout] reshapes to [B, T, Dout]")
                .into_dyn(),
            mask: q_mask.cloned(),
            extra,
            cache: Box::new(Cache {
                xq,
                xv,
                xk,
                q,
                k,
                v,
                p,
                allowed,
                context,
                drop,
                dims: (b, t, s),
                three,
            }),
        })
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
        let c = cache
            .downcast_ref::<Cache<T>>()
            .ok_or_else(|| LstmError::invalid(format!("layer {name}"), "cache mismatch"))?;
        let (b, t, s) = c.dims;
        let (n, h, hv) = (self.heads, self.key_dim, self.value_dim);
        let d_scores = d_extra.into_iter().next().flatten();
        if let Some(ds) = &d_scores {
            if ds.shape() != [b, n, t, s] {
                return Err(LstmError::shape(
                    format!("scores cotangent of layer {name}"),
                    &[b, n, t, s],
                    ds.shape(),
                ));
            }
        }
        let (wo, _) = self.projection(3);
        let dout = wo.ncols();
        let d2 = d
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((b * t, dout))
            .map_err(|_| LstmError::invalid(format!("layer {name}"), "cotangent shape"))?;
        let mut grads: Vec<ArrayD<T>> = Vec::new();
        // the output projection
        let mut dwo = Array2::<T>::zeros(wo.dim());
        matmul(c.context.t(), d2.view(), dwo.view_mut(), false);
        let mut dctx = Array2::<T>::zeros(c.context.dim());
        matmul(d2.view(), wo.t(), dctx.view_mut(), false);
        let dbo = d2.sum_axis(Axis(0));
        // each head's attention
        let scores_path = self.scores_path();
        let inv = self.inverse_sqrt_key_dim();
        let mut dq = Array2::<T>::zeros(c.q.dim());
        let mut dk = Array2::<T>::zeros(c.k.dim());
        let mut dv = Array2::<T>::zeros(c.v.dim());
        let mut dp = vec![T::zero(); s];
        for i in 0..b {
            for head in 0..n {
                for a in 0..t {
                    let allowed = |j: usize| c.allowed.as_ref().is_none_or(|al| al[[i, a, j]]);
                    let dc = dctx.row(i * t + a);
                    for (j, g) in dp.iter_mut().enumerate() {
                        // (the weight the output read: zeroed where masked on the scores path)
                        let kept = !scores_path || allowed(j);
                        // (the output read the weight after the dropout, the returned
                        // scores the one before)
                        let m = c.drop.as_ref().map_or(T::one(), |m| m[[i, head, a, j]]);
                        let w = c.p[[i, head, a, j]] * m;
                        let vr = c.v.row(i * s + j);
                        let mut sum = T::zero();
                        for e in 0..hv {
                            sum += dc[head * hv + e] * vr[head * hv + e];
                        }
                        sum = sum * m;
                        if let Some(ds) = &d_scores {
                            sum += ds[[i, head, a, j]];
                        }
                        if kept {
                            let mut dvr = dv.row_mut(i * s + j);
                            for e in 0..hv {
                                dvr[head * hv + e] += w * dc[head * hv + e];
                            }
                        }
                        *g = if kept { sum } else { T::zero() };
                    }
                    let mut dot = T::zero();
                    for (j, &g) in dp.iter().enumerate() {
                        dot += g * c.p[[i, head, a, j]];
                    }
                    let qr = c.q.row(i * t + a);
                    for (j, &g) in dp.iter().enumerate() {
                        // (a masked score was replaced: no gradient reaches it)
                        if !allowed(j) {
                            continue;
                        }
                        let ds = c.p[[i, head, a, j]] * (g - dot) * inv;
                        let kr = c.k.row(i * s + j);
                        let mut dqr = dq.row_mut(i * t + a);
                        for e in 0..h {
                            dqr[head * h + e] += ds * kr[head * h + e];
                        }
                        let mut dkr = dk.row_mut(i * s + j);
                        for e in 0..h {
                            dkr[head * h + e] += ds * qr[head * h + e];
                        }
                    }
                }
            }
        }
        // the three input projections
        let mut dx = Vec::new();
        for (k, (x, dz)) in [(&c.xq, &dq), (&c.xk, &dk), (&c.xv, &dv)]
            .into_iter()
            .enumerate()
        {
            let (w, _) = self.projection(k);
            let mut dw = Array2::<T>::zeros(w.dim());
            matmul(x.t(), dz.view(), dw.view_mut(), false);
            let mut dxi = Array2::<T>::zeros(x.dim());
            matmul(dz.view(), w.t(), dxi.view_mut(), false);
            dx.push(dxi);
            let per = 1 + usize::from(self.use_bias);
            grads.push(
                dw.into_shape_with_order(ndarray::IxDyn(self.weights[k * per].shape()))
                    .expect("the kernel's shape"),
            );
            if self.use_bias {
                grads.push(
                    dz.sum_axis(Axis(0))
                        .into_shape_with_order(ndarray::IxDyn(self.weights[k * per + 1].shape()))
                        .expect("the bias's shape"),
                );
            }
        }
        // (the order above is query, key, value: Keras's is query, key, value, output)
        let per = 1 + usize::from(self.use_bias);
        grads.push(
            dwo.into_shape_with_order(ndarray::IxDyn(self.weights[3 * per].shape()))
                .expect("the kernel's shape"),
        );
        if self.use_bias {
            grads.push(dbo.into_dyn());
        }
        let to3 = |a: Array2<T>, len: usize| {
            let d = a.ncols();
            a.into_shape_with_order((b, len, d))
                .expect("[B·T, D] reshapes to [B, T, D]")
                .into_dyn()
        };
        let mut dx = dx.into_iter();
        let dxq = to3(dx.next().expect("three"), t);
        let dxk = to3(dx.next().expect("three"), s);
        let dxv = to3(dx.next().expect("three"), s);
        let inputs = if c.three {
            vec![Some(dxq), Some(dxv), Some(dxk)]
        } else {
            vec![Some(dxq), Some(dxv + dxk)]
        };
        Ok((inputs, grads))
    }

    fn weights(&self) -> Vec<ArrayD<T>> {
        self.weights.clone()
    }

    fn weights_mut(&mut self) -> Vec<ArrayViewMutD<'_, T>> {
        self.weights.iter_mut().map(|w| w.view_mut()).collect()
    }

    fn clone_box(&self) -> Box<dyn MergeOp<T>> {
        Box::new(self.clone())
    }
}

/// Softmax of `xs` in place, `e^(x - max) / sum`.
fn softmax<T: Element>(xs: &mut [T]) {
    let m = xs.iter().copied().fold(
        T::from_f64(f64::NEG_INFINITY),
        |a, b| if b > a { b } else { a },
    );
    let mut sum = T::zero();
    for x in xs.iter_mut() {
        *x = (*x - m).exp();
        sum += *x;
    }
    for x in xs.iter_mut() {
        *x = *x / sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unbuilt_settings_and_wrong_weights_are_refused_by_name() {
        let w = |shapes: &[&[usize]]| -> Vec<ArrayD<f64>> {
            shapes
                .iter()
                .map(|s| ArrayD::zeros(ndarray::IxDyn(s)))
                .collect()
        };
        let good = w(&[&[4, 2, 3], &[4, 2, 3], &[4, 2, 3], &[2, 3, 5]]);
        let kw = serde_json::Map::new();
        let cfg = serde_json::json!({"num_heads": 2, "key_dim": 3, "use_bias": false});
        assert!(Mha::new(&cfg, "mha", &kw, good.clone()).is_ok());
        let mut dropout = cfg.clone();
        dropout["dropout"] = serde_json::json!(0.1);
        assert!(Mha::new(&dropout, "mha", &kw, good.clone()).is_ok());
        dropout["dropout"] = serde_json::json!(1.0);
        let err = Mha::new(&dropout, "mha", &kw, good.clone())
            .unwrap_err()
            .to_string();
        assert!(err.contains("dropout") && err.contains("mha"), "{err}");
        let mut gate = cfg.clone();
        gate["use_gate"] = serde_json::json!(true);
        assert!(Mha::new(&gate, "mha", &kw, good.clone())
            .unwrap_err()
            .to_string()
            .contains("use_gate"));
        let wrong = w(&[&[4, 2, 3], &[4, 2, 3], &[4, 2, 4], &[2, 3, 5]]);
        let err = Mha::new(&cfg, "mha", &kw, wrong).unwrap_err().to_string();
        assert!(err.contains("mha/value/kernel"), "{err}");
        let err = Mha::new(&cfg, "mha", &kw, good[..3].to_vec())
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected 4 arrays"), "{err}");
    }
}
