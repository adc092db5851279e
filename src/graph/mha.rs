//! `MultiHeadAttention` on the CPU, as Keras 3 computes it at inference: the query, key and
//! value projections (`EinsumDense` kernels `[D, N, H]`, biases `[N, H]`), per head the
//! scaled dot products of every query step with every key step, masked where the combined
//! mask is false (the query's Keras mask by row, the value's and key's by column, the causal
//! triangle with `use_causal_mask`; a masked score is replaced by a large negative number),
//! a softmax over the key steps (Keras's path that returns the scores then zeroes the masked
//! weights, so a fully masked row attends to nothing; its fused path leaves such a row
//! uniform: both are followed), the
//! weighted sum of the values, and the output projection (`[N, Hv, Dout]`, bias `[Dout]`).
//! The output carries the query's mask; `return_attention_scores` adds the scores
//! `[B, N, T, S]`. Attention over the sequence axis (`attention_axes` `[1]`), no gate, no
//! sliding window. GPU twin: `gpu::plan::MhaStage` (projection.wgsl for the four
//! projections, mha.wgsl for the attention).

use super::ops::{Extra, GpuStage, Op, Uploader};
use super::Value;
use crate::cpu::attention;
use crate::error::{LstmError, Result};
use crate::weight_source::WeightSource;
use ndarray::{s, Array2, Array3, ArrayD, ArrayView3, Ix3, IxDyn};
use serde_json::Value as Json;

/// The large negative number a masked score becomes: Keras's `Softmax` layer's (the path
/// that returns the scores) and TensorFlow's `dot_product_attention`'s (the other path).
const MASKED_SCORES: f32 = -1e9;
const MASKED_DOT_PRODUCT: f32 = -0.7 * 3.389_53e38;

/// One projection: kernel `[in, N·H]` (Keras's `[in, N, H]` flattened) and bias `[N·H]`.
#[derive(Debug, Clone)]
pub(crate) struct Projection {
    pub kernel: Array2<f32>,
    pub bias: Option<Vec<f32>>,
}

impl Projection {
    /// `x [B, T, in]` projected into `buf` (grown as needed, kept by the caller between
    /// calls): `[B, T, out]`, one product over the B·T rows.
    fn apply_into<'b>(
        &self,
        x: ArrayView3<'_, f32>,
        what: &str,
        buf: &'b mut Vec<f32>,
    ) -> Result<ArrayView3<'b, f32>> {
        let (b, t, d) = x.dim();
        if d != self.kernel.nrows() {
            return Err(LstmError::shape(
                what,
                &[b, t, self.kernel.nrows()],
                &[b, t, d],
            ));
        }
        let n = self.kernel.ncols();
        let x = x.as_standard_layout();
        let rows = x
            .view()
            .into_shape_with_order((b * t, d))
            .map_err(|_| LstmError::shape(what, &[b, t, d], x.shape()))?;
        if buf.len() < b * t * n {
            buf.resize(b * t * n, 0.0);
        }
        let mut out = ndarray::ArrayViewMut2::from_shape((b * t, n), &mut buf[..b * t * n])
            .expect("rows x columns");
        // (every value written: the product does not accumulate)
        crate::cpu::reference::matmul(rows, self.kernel.view(), out.view_mut(), false);
        if let Some(bias) = &self.bias {
            for mut row in out.rows_mut() {
                row.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
            }
        }
        Ok(ArrayView3::from_shape((b, t, n), &buf[..b * t * n]).expect("rows x columns"))
    }

    /// `x [B, T, in]` projected: a new `[B, T, out]`.
    fn apply(&self, x: ArrayView3<'_, f32>, what: &str) -> Result<Array3<f32>> {
        let mut buf = Vec::new();
        let y = self.apply_into(x, what, &mut buf)?.dim();
        buf.truncate(y.0 * y.1 * y.2);
        Ok(Array3::from_shape_vec(y, buf).expect("the projected values"))
    }
}

/// The buffers of one MultiHeadAttention call kept between calls (the projections and the
/// attention's output): no fresh pages per call.
#[derive(Debug, Clone, Default)]
pub(crate) struct MhaScratch {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Each head's keys packed for the scores (`cpu::attention::pack_keys`), `[B, N, s·h]`.
    packed_keys: Vec<f32>,
    /// Each head's values contiguous, `[B, N, s, hv]`.
    head_values: Vec<f32>,
    context: Vec<f32>,
}

#[derive(Debug, Clone)]
pub(crate) struct Mha {
    pub name: String,
    pub heads: usize,
    pub key_dim: usize,
    pub value_dim: usize,
    pub query: Projection,
    pub key: Projection,
    pub value: Projection,
    pub output: Projection,
    /// Keras takes the scores path when the layer has dropout (even at inference).
    pub dropout: bool,
    pub scratch: MhaScratch,
}

fn int(cfg: &Json, key: &str) -> Option<usize> {
    cfg.get(key).and_then(Json::as_u64).map(|v| v as usize)
}

/// Builds a `MultiHeadAttention` layer (weight group `key`).
/// The groups Keras 3 saves a `MultiHeadAttention`'s four projections under (query, key,
/// value, output), in its weights' order.
pub(crate) const PROJECTIONS: [&str; 4] =
    ["query_dense", "key_dense", "value_dense", "output_dense"];

/// The weights of each of a `MultiHeadAttention`'s four projections (kernel, then bias with
/// `use_bias`): Keras 3 keeps each under its own group, a legacy file lists them all in
/// `weight_names` order.
pub(crate) fn projection_weights(
    src: &WeightSource,
    key: &str,
    name: &str,
    use_bias: bool,
) -> Result<Vec<Vec<ArrayD<f32>>>> {
    if !src.is_legacy_source() {
        return PROJECTIONS
            .iter()
            .map(|p| src.group(&format!("layers/{key}/{p}")))
            .collect();
    }
    let per = 1 + usize::from(use_bias);
    let all = src.layer(key, name)?;
    if all.len() != 4 * per {
        return Err(LstmError::invalid(
            format!("weights of layer {name}"),
            format!("expected {} arrays, got {}", 4 * per, all.len()),
        ));
    }
    Ok(all.chunks(per).map(<[_]>::to_vec).collect())
}

/// The head sizes of a `MultiHeadAttention` config, `(num_heads, key_dim, value_dim)`
/// (`value_dim` null: `key_dim`), the settings neither twin builds (`use_gate`,
/// `sliding_window`, `attention_axes` other than the sequence axis) refused by name: the one
/// reading of the config the inference op and the training op share.
pub(crate) fn head_sizes(cfg: &Json, name: &str) -> Result<(usize, usize, usize)> {
    let heads = int(cfg, "num_heads")
        .filter(|&n| n > 0)
        .ok_or_else(|| LstmError::bad_config("num_heads", "expected a positive integer"))?;
    let key_dim = int(cfg, "key_dim")
        .filter(|&n| n > 0)
        .ok_or_else(|| LstmError::bad_config("key_dim", "expected a positive integer"))?;
    let value_dim = match cfg.get("value_dim") {
        None | Some(Json::Null) => key_dim,
        Some(v) => v
            .as_u64()
            .filter(|&n| n > 0)
            .ok_or_else(|| LstmError::bad_config("value_dim", "expected a positive integer"))?
            as usize,
    };
    if cfg.get("use_gate").and_then(Json::as_bool) == Some(true) {
        return Err(LstmError::unsupported(
            "use_gate",
            format!("true (layer {name})"),
        ));
    }
    if cfg.get("sliding_window").is_some_and(|v| !v.is_null()) {
        return Err(LstmError::unsupported(
            "sliding_window",
            format!("{} (layer {name})", cfg["sliding_window"]),
        ));
    }
    match cfg.get("attention_axes") {
        None | Some(Json::Null) => {}
        Some(Json::Array(a)) if a.len() == 1 && matches!(a[0].as_i64(), Some(1) | Some(-2)) => {}
        Some(other) => {
            return Err(LstmError::unsupported(
                "attention_axes",
                format!("{other} (layer {name}; the sequence axis [1] is supported)"),
            ))
        }
    }
    Ok((heads, key_dim, value_dim))
}

pub(super) fn build(cfg: &Json, name: &str, key: &str, src: &WeightSource) -> Result<Box<dyn Op>> {
    let (heads, key_dim, value_dim) = head_sizes(cfg, name)?;
    // (Keras saves `output_shape=6` as `[6]`; the output kernel [N, Hv, 6] then says it)
    if cfg
        .get("output_shape")
        .and_then(Json::as_array)
        .is_some_and(|a| a.len() != 1)
    {
        return Err(LstmError::unsupported(
            "output_shape",
            format!(
                "{} (layer {name}; one output width or null)",
                cfg["output_shape"]
            ),
        ));
    }
    let use_bias = cfg.get("use_bias").and_then(Json::as_bool).unwrap_or(true);
    let parts = projection_weights(src, key, name, use_bias)?;
    let projection = |w: &[ArrayD<f32>], what: &str, last: bool| -> Result<Projection> {
        let kernel = w.first().ok_or_else(|| LstmError::MissingWeight {
            name: format!("{name}/{what}/kernel"),
        })?;
        let s = kernel.shape();
        // [in, N, H] (projections) or [N, Hv, out] (the output)
        if s.len() != 3 {
            return Err(LstmError::shape(
                format!("{name}/{what}/kernel"),
                &[0, heads, 0],
                s,
            ));
        }
        let (rows, cols) = if last {
            (s[0] * s[1], s[2])
        } else {
            (s[0], s[1] * s[2])
        };
        let kernel = kernel
            .to_owned()
            .into_shape_with_order((rows, cols))
            .map_err(|_| LstmError::shape(format!("{name}/{what}/kernel"), &[rows, cols], s))?;
        let bias = if use_bias {
            let b = w.get(1).ok_or_else(|| LstmError::MissingWeight {
                name: format!("{name}/{what}/bias"),
            })?;
            if b.len() != cols {
                return Err(LstmError::shape(
                    format!("{name}/{what}/bias"),
                    &[cols],
                    b.shape(),
                ));
            }
            Some(b.iter().copied().collect())
        } else {
            None
        };
        Ok(Projection { kernel, bias })
    };
    let op = Mha {
        name: name.to_string(),
        heads,
        key_dim,
        value_dim,
        query: projection(&parts[0], "query", false)?,
        key: projection(&parts[1], "key", false)?,
        value: projection(&parts[2], "value", false)?,
        output: projection(&parts[3], "attention_output", true)?,
        dropout: cfg.get("dropout").and_then(Json::as_f64).unwrap_or(0.0) > 0.0,
        scratch: MhaScratch::default(),
    };
    for (p, width, what) in [
        (&op.query, heads * key_dim, "query"),
        (&op.key, heads * key_dim, "key"),
        (&op.value, heads * value_dim, "value"),
    ] {
        if p.kernel.ncols() != width {
            return Err(LstmError::shape(
                format!("{name}/{what}/kernel"),
                &[p.kernel.nrows(), heads, width / heads],
                &[p.kernel.nrows(), p.kernel.ncols()],
            ));
        }
    }
    if op.output.kernel.nrows() != heads * value_dim {
        return Err(LstmError::shape(
            format!("{name}/attention_output/kernel"),
            &[heads, value_dim, op.output.kernel.ncols()],
            &[op.output.kernel.nrows(), op.output.kernel.ncols()],
        ));
    }
    Ok(Box::new(op))
}

/// The tensors of a call: query, value, key (the value when absent), with their masks.
pub(crate) fn call_tensors<'v>(inputs: &[&'v Value], name: &str) -> Result<[&'v Value; 3]> {
    match inputs {
        [q, v] => Ok([q, v, v]),
        [q, v, k] => Ok([q, v, k]),
        other => Err(LstmError::invalid(
            format!("layer {name}"),
            format!(
                "takes query, value and an optional key, got {} tensors",
                other.len()
            ),
        )),
    }
}

impl Mha {
    /// Whether Keras takes the path that materialises the scores (their masked value and
    /// the order of the scale differ from the fused path's).
    pub(crate) fn scores_path(&self, return_scores: bool) -> bool {
        return_scores || self.dropout
    }
}

/// Query rows one MHA task scores at once (its scratch: rows x key steps floats).
const QUERY_BLOCK: usize = 64;

/// One thread's buffers of an MHA task, kept between calls: the block's scores, the scaled
/// query rows (the scores path).
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    query: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

impl Op for Mha {
    fn call(&mut self, inputs: &[&Value], extra: &Extra<'_>) -> Result<Vec<Value>> {
        let [q, v, k] = call_tensors(inputs, &self.name)?;
        fn three<'v>(x: &'v Value, what: &str, name: &str) -> Result<ArrayView3<'v, f32>> {
            x.data.view().into_dimensionality::<Ix3>().map_err(|_| {
                LstmError::shape(
                    format!("{what} of layer {name}"),
                    &[0, 0, 0],
                    x.data.shape(),
                )
            })
        }
        let name = &self.name;
        let (xq, xv, xk) = (
            three(q, "query", name)?,
            three(v, "value", name)?,
            three(k, "key", name)?,
        );
        let (b, t) = (xq.dim().0, xq.dim().1);
        let s = xv.dim().1;
        if xv.dim().0 != b || xk.dim().0 != b || xk.dim().1 != s {
            return Err(LstmError::shape(
                format!("key of layer {}", self.name),
                &[b, s, xk.dim().2],
                &[xk.dim().0, xk.dim().1, xk.dim().2],
            ));
        }
        let causal = extra.flag("use_causal_mask");
        let return_scores = extra.flag("return_attention_scores");
        let (n, h, hv) = (self.heads, self.key_dim, self.value_dim);
        let scores_path = self.scores_path(return_scores);
        let MhaScratch {
            q: qbuf,
            k: kbuf,
            v: vbuf,
            packed_keys,
            head_values,
            context: cbuf,
        } = &mut self.scratch;
        let pq = self
            .query
            .apply_into(xq, &format!("query of layer {name}"), qbuf)?;
        let pk = self
            .key
            .apply_into(xk, &format!("key of layer {name}"), kbuf)?;
        let pv = self
            .value
            .apply_into(xv, &format!("value of layer {name}"), vbuf)?;
        let inv = (1.0 / (h as f64).sqrt()) as f32;
        // (the key's mask counts when the key is its own tensor; else it is the value's)
        let allowed = |i: usize, tq: usize, sk: usize| -> bool {
            q.mask.as_ref().is_none_or(|m| m[[i, tq]])
                && v.mask.as_ref().is_none_or(|m| m[[i, sk]])
                && k.mask.as_ref().is_none_or(|m| m[[i, sk]])
                && (!causal || sk <= tq)
        };
        let masked = q.mask.is_some() || v.mask.is_some() || k.mask.is_some() || causal;
        let fill = if scores_path {
            MASKED_SCORES
        } else {
            MASKED_DOT_PRODUCT
        };
        // One task per (batch row, head, block of query rows), spread over the cores: the
        // block's scores as one product Q · K_hᵀ [rows, s] (in a scratch of the thread's,
        // reused: no fresh pages per call), masked, a softmax per query row, and the weights
        // times V_h [s, hv] as another.
        let qb = QUERY_BLOCK.min(t.max(1));
        let blocks = t.div_ceil(qb);
        let (qs, ks, vs) = (n * h, n * h, n * hv);
        let (pq, pk, pv) = (
            pq.as_slice().expect("a standard layout"),
            pk.as_slice().expect("a standard layout"),
            pv.as_slice().expect("a standard layout"),
        );
        // Each head's keys packed for the scores and its values contiguous `[s, hv]`, once
        // per call (every block of query rows reads them).
        packed_keys.resize(b * n * s * h, 0.0);
        head_values.resize(b * n * s * hv, 0.0);
        for i in 0..b {
            for head in 0..n {
                let at = (i * n + head) * s;
                if s > 0 {
                    attention::pack_keys(
                        &pk[i * s * ks + head * h..],
                        ks,
                        (s, h),
                        &mut packed_keys[at * h..(at + s) * h],
                    );
                }
                for j in 0..s {
                    head_values[(at + j) * hv..(at + j + 1) * hv]
                        .copy_from_slice(&pv[(i * s + j) * vs + head * hv..][..hv]);
                }
            }
        }
        let (packed_keys, head_values) = (&packed_keys[..], &head_values[..]);
        let task = |idx: usize| -> (Option<Array2<f32>>, Array2<f32>) {
            let (i, head, blk) = (idx / (n * blocks), (idx / blocks) % n, idx % blocks);
            let (r0, r1) = (blk * qb, ((blk + 1) * qb).min(t));
            let rows = r1 - r0;
            let q0 = (i * t + r0) * qs + head * h;
            let keys = &packed_keys[(i * n + head) * s * h..][..s * h];
            let values = &head_values[(i * n + head) * s * hv..][..s * hv];
            SCRATCH.with_borrow_mut(|Scratch { scores, query }| {
                scores.resize(rows * s, 0.0);
                if scores_path {
                    // (Keras scales the query before the product on this path)
                    query.resize(rows * h, 0.0);
                    for r in 0..rows {
                        for (d, y) in query[r * h..(r + 1) * h].iter_mut().enumerate() {
                            *y = pq[q0 + r * qs + d] * inv;
                        }
                    }
                    attention::scores(query, h, keys, (rows, h, s), 1.0, scores);
                } else {
                    attention::scores(&pq[q0..], qs, keys, (rows, h, s), inv, scores);
                }
                for (local, row) in scores.chunks_exact_mut(s.max(1)).enumerate().take(rows) {
                    let tq = r0 + local;
                    if masked {
                        for (sk, r) in row.iter_mut().enumerate() {
                            if !allowed(i, tq, sk) {
                                *r = fill;
                            }
                        }
                    }
                    crate::cpu::simd::softmax_in_place(row);
                    if scores_path && masked {
                        // the scores path's Softmax layer zeroes the masked positions after
                        // the softmax (a fully masked row attends to nothing); the fused path
                        // keeps the softmax's (uniform) weights there
                        for (sk, r) in row.iter_mut().enumerate() {
                            if !allowed(i, tq, sk) {
                                *r = 0.0;
                            }
                        }
                    }
                }
                let mut ctx = Array2::<f32>::zeros((rows, hv));
                attention::weighted_sum(
                    scores,
                    values,
                    hv,
                    (rows, s, hv),
                    ctx.as_slice_mut().expect("a standard layout"),
                    hv,
                );
                let w = return_scores.then(|| {
                    Array2::from_shape_vec((rows, s), scores[..rows * s].to_vec())
                        .expect("rows x keys")
                });
                (w, ctx)
            })
        };
        let tasks = b * n * blocks;
        let parts: Vec<(Option<Array2<f32>>, Array2<f32>)> = if b * n * t * s * (h + hv) >= 1 << 16
        {
            use rayon::prelude::*;
            (0..tasks).into_par_iter().map(task).collect()
        } else {
            (0..tasks).map(task).collect()
        };
        // (every value of the context is written below: each block's rows of each head)
        if cbuf.len() < b * t * n * hv {
            cbuf.resize(b * t * n * hv, 0.0);
        }
        let mut context =
            ndarray::ArrayViewMut3::from_shape((b, t, n * hv), &mut cbuf[..b * t * n * hv])
                .expect("rows x heads");
        let mut scores = ArrayD::<f32>::zeros(IxDyn(&[b, n, if return_scores { t } else { 0 }, s]));
        for (idx, (w, ctx)) in parts.into_iter().enumerate() {
            let (i, head, blk) = (idx / (n * blocks), (idx / blocks) % n, idx % blocks);
            let rows = blk * qb..(blk * qb + ctx.nrows());
            context
                .slice_mut(s![i, rows.clone(), head * hv..(head + 1) * hv])
                .assign(&ctx);
            if let Some(w) = w {
                scores.slice_mut(s![i, head, rows, ..]).assign(&w);
            }
        }
        let out = self
            .output
            .apply(context.view(), &format!("output of layer {name}"))?;
        let mut outs = vec![Value {
            data: out.into_dyn(),
            mask: q.mask.clone(),
        }];
        if return_scores {
            outs.push(Value {
                data: scores,
                mask: None,
            });
        }
        Ok(outs)
    }

    fn params(&self) -> usize {
        [&self.query, &self.key, &self.value, &self.output]
            .iter()
            .map(|p| p.kernel.len() + p.bias.as_ref().map_or(0, Vec::len))
            .sum()
    }

    fn gpu(&self, up: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        crate::gpu::plan::MhaStage::upload(up, self)
    }
}
