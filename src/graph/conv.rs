//! Convolution, pooling and padding layers of a graph on the CPU (Keras 3 semantics,
//! channels_last): `Conv1D`, `MaxPooling1D`, `AveragePooling1D`, `ZeroPadding1D`,
//! `Cropping1D`, `UpSampling1D`; `build` also makes the attention layers (`attention.rs`).
//! None of these keep an incoming mask.

use super::ops::{stage, Extra, GpuStage, Op, Uploader};
use super::Value;
use crate::activation::Activation;
use crate::error::{LstmError, Result};
use crate::gpu::plan::{ConvStage, GatherStage, Layout, PoolStage};
use ndarray::{Array1, Array3, ArrayD, Ix1, Ix3};
use serde_json::Value as Json;

/// The first entry of a config value that Keras writes as an int or a one-element list.
fn first_int(cfg: &Json, key: &str) -> Option<i64> {
    match cfg.get(key)? {
        Json::Array(a) => a.first()?.as_i64(),
        v => v.as_i64(),
    }
}

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

fn channels_last(cfg: &Json) -> Result<()> {
    match cfg.get("data_format").and_then(Json::as_str) {
        Some("channels_first") => Err(LstmError::unsupported(
            "data_format",
            "channels_first (only channels_last is supported)",
        )),
        _ => Ok(()),
    }
}

pub(super) fn as3<'a>(v: &'a Value, name: &str) -> Result<ndarray::ArrayView3<'a, f32>> {
    v.data
        .view()
        .into_dimensionality::<Ix3>()
        .map_err(|_| LstmError::shape(format!("input of layer {name}"), &[0, 0, 0], v.data.shape()))
}

/// The in-range input steps `(tap, step)` of output step `o` of a window of `k` taps
/// `dilation` apart, moved by `stride`, over `t` steps padded by `left` (padding taps are
/// skipped: zeros for a convolution, nothing for pooling).
fn taps(
    o: usize,
    k: usize,
    (stride, dilation, left, t): (usize, usize, usize, usize),
) -> impl Iterator<Item = (usize, usize)> {
    (0..k).filter_map(move |kk| {
        let pos = (o * stride + kk * dilation).checked_sub(left)?;
        (pos < t).then_some((kk, pos))
    })
}

/// The one `[B, T, C]` input of layer `name`.
fn one_3d<'a>(inputs: &[&'a Value], name: &str) -> Result<ndarray::ArrayView3<'a, f32>> {
    match inputs {
        [x] => as3(x, name),
        _ => Err(LstmError::invalid(
            format!("layer {name}"),
            "takes one input",
        )),
    }
}

/// (left padding, output length) of a 1-D window of `span` (dilated size) over `t` steps.
pub(crate) fn window(
    padding: &str,
    t: usize,
    span: usize,
    stride: usize,
) -> Result<(usize, usize)> {
    Ok(match padding {
        "valid" => (
            0,
            if t >= span {
                (t - span) / stride + 1
            } else {
                0
            },
        ),
        "same" => {
            let out = t.div_ceil(stride);
            let total = ((out.max(1) - 1) * stride + span).saturating_sub(t);
            (total / 2, out)
        }
        "causal" => (span - 1, if t > 0 { (t - 1) / stride + 1 } else { 0 }),
        other => return Err(LstmError::unsupported("padding", other)),
    })
}

/// Builds one of this module's layers, or None for another class.
pub(crate) fn build(
    class: &str,
    cfg: &Json,
    name: &str,
    weights: &dyn Fn() -> Result<Vec<ArrayD<f32>>>,
) -> Result<Option<Box<dyn Op>>> {
    Ok(Some(match class {
        "Conv1D" => {
            channels_last(cfg)?;
            let mut w = weights()?.into_iter();
            let kernel = w
                .next()
                .ok_or_else(|| LstmError::MissingWeight {
                    name: format!("{name}/kernel"),
                })?
                .into_dimensionality::<Ix3>()
                .map_err(|_| LstmError::shape(format!("{name}/kernel"), &[0, 0, 0], &[]))?;
            let use_bias = cfg.get("use_bias").and_then(Json::as_bool).unwrap_or(true);
            let bias = if use_bias {
                Some(
                    w.next()
                        .ok_or_else(|| LstmError::MissingWeight {
                            name: format!("{name}/bias"),
                        })?
                        .into_dimensionality::<Ix1>()
                        .map_err(|_| LstmError::shape(format!("{name}/bias"), &[0], &[]))?,
                )
            } else {
                None
            };
            let activation = match cfg.get("activation") {
                None | Some(Json::Null) => Activation::Linear,
                Some(Json::String(s)) => {
                    Activation::from_name(s).map_err(|_| LstmError::unsupported("activation", s))?
                }
                Some(other) => return Err(LstmError::unsupported("activation", other)),
            };
            let groups = cfg.get("groups").and_then(Json::as_u64).unwrap_or(1).max(1) as usize;
            let filters = kernel.dim().2;
            if kernel.dim().0 == 0 || kernel.dim().1 == 0 {
                return Err(LstmError::shape(
                    format!("{name}/kernel"),
                    &[1, 1, filters],
                    kernel.shape(),
                ));
            }
            if filters % groups != 0 {
                return Err(LstmError::shape(
                    format!("{name}/kernel"),
                    &[0, 0, groups],
                    kernel.shape(),
                ));
            }
            Box::new(Conv1D {
                name: name.to_string(),
                kernel,
                bias,
                activation,
                stride: first_int(cfg, "strides").unwrap_or(1).max(1) as usize,
                dilation: first_int(cfg, "dilation_rate").unwrap_or(1).max(1) as usize,
                padding: cfg
                    .get("padding")
                    .and_then(Json::as_str)
                    .unwrap_or("valid")
                    .to_string(),
                groups,
            })
        }
        "MaxPooling1D" | "AveragePooling1D" => {
            channels_last(cfg)?;
            let size = first_int(cfg, "pool_size").unwrap_or(2).max(1) as usize;
            let stride = cfg
                .get("strides")
                .filter(|v| !v.is_null())
                .and_then(|_| first_int(cfg, "strides"))
                .unwrap_or(size as i64)
                .max(1) as usize;
            let padding = cfg.get("padding").and_then(Json::as_str).unwrap_or("valid");
            if padding == "causal" {
                return Err(LstmError::unsupported("padding", padding));
            }
            Box::new(Pool {
                name: name.to_string(),
                max: class == "MaxPooling1D",
                size,
                stride,
                padding: padding.to_string(),
            })
        }
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
            Box::new(super::attention::Attention {
                name: name.to_string(),
                additive,
                scale: scale.map(|s| s.iter().copied().collect()),
                concat_weight,
            })
        }
        _ => return Ok(None),
    }))
}

#[derive(Debug, Clone)]
struct Conv1D {
    name: String,
    /// `[K, Cin / groups, F]`.
    kernel: Array3<f32>,
    bias: Option<Array1<f32>>,
    activation: Activation,
    stride: usize,
    dilation: usize,
    padding: String,
    groups: usize,
}

impl Op for Conv1D {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_3d(inputs, &self.name)?;
        let (b, t, cin) = x.dim();
        let (k, cg, f) = self.kernel.dim();
        if cin != cg * self.groups {
            return Err(LstmError::shape(
                format!("input of layer {}", self.name),
                &[b, t, cg * self.groups],
                x.shape(),
            ));
        }
        let span = self.dilation * (k - 1) + 1;
        let (left, out_len) = window(&self.padding, t, span, self.stride)?;
        let fg = f / self.groups;
        // Per group, as one product: the receptive fields as rows (im2col; padding taps are
        // zeros, as Keras's explicit zero padding), times the group's kernel [k·cg, fg].
        let rows = b * out_len;
        let mut y = ndarray::Array2::<f32>::zeros((rows, f));
        let mut cols = ndarray::Array2::<f32>::zeros((rows, k * cg));
        for g in 0..self.groups {
            cols.fill(0.0);
            for i in 0..b {
                for o in 0..out_len {
                    let mut row = cols.row_mut(i * out_len + o);
                    for (kk, pos) in taps(o, k, (self.stride, self.dilation, left, t)) {
                        for c in 0..cg {
                            row[kk * cg + c] = x[[i, pos, g * cg + c]];
                        }
                    }
                }
            }
            let w = self
                .kernel
                .slice(ndarray::s![.., .., g * fg..(g + 1) * fg])
                .to_owned()
                .into_shape_with_order((k * cg, fg))
                .expect("k·cg rows of fg filters");
            let mut part = y.slice_mut(ndarray::s![.., g * fg..(g + 1) * fg]);
            if let Some(bias) = &self.bias {
                part.assign(&bias.slice(ndarray::s![g * fg..(g + 1) * fg]));
            }
            let mut out = part.to_owned();
            crate::cpu::reference::matmul(
                cols.view(),
                w.view(),
                out.view_mut(),
                self.bias.is_some(),
            );
            part.assign(&out);
        }
        y.mapv_inplace(|v| self.activation.apply(v));
        let y = y
            .into_shape_with_order((b, out_len, f))
            .expect("rows x filters");
        Ok(vec![Value {
            data: y.into_dyn(),
            mask: None,
        }])
    }

    fn params(&self) -> usize {
        self.kernel.len() + self.bias.as_ref().map_or(0, |b| b.len())
    }

    fn gpu(&self, up: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        let (k, cg, f) = self.kernel.dim();
        let w: Vec<f32> = self.kernel.iter().copied().collect();
        stage(ConvStage {
            name: self.name.clone(),
            kernel: up.floats(&format!("{}/kernel", self.name), &w)?,
            bias: self
                .bias
                .as_ref()
                .map(|b| up.floats(&format!("{}/bias", self.name), &b.to_vec()))
                .transpose()?,
            kernel_size: k,
            channels_per_group: cg,
            filters: f,
            groups: self.groups,
            stride: self.stride,
            dilation: self.dilation,
            padding: self.padding.clone(),
            activation: self.activation,
        })
    }
}

#[derive(Debug, Clone)]
struct Pool {
    name: String,
    max: bool,
    size: usize,
    stride: usize,
    padding: String,
}

impl Op for Pool {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_3d(inputs, &self.name)?;
        let (b, t, c) = x.dim();
        let (left, out_len) = window(&self.padding, t, self.size, self.stride)?;
        let mut y = Array3::<f32>::zeros((b, out_len, c));
        for i in 0..b {
            for o in 0..out_len {
                for ch in 0..c {
                    // padding positions take no part (max: -inf; average: not counted)
                    let (mut acc, mut n) = (if self.max { f32::NEG_INFINITY } else { 0.0 }, 0);
                    for (_, pos) in taps(o, self.size, (self.stride, 1, left, t)) {
                        let v = x[[i, pos, ch]];
                        acc = if self.max { acc.max(v) } else { acc + v };
                        n += 1;
                    }
                    y[[i, o, ch]] = if self.max { acc } else { acc / n.max(1) as f32 };
                }
            }
        }
        Ok(vec![Value {
            data: y.into_dyn(),
            mask: None,
        }])
    }

    fn gpu(&self, _: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        stage(PoolStage {
            name: self.name.clone(),
            max: self.max,
            window: Some((self.size, self.stride, self.padding.clone())),
            keepdims: false,
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
        let x = one_3d(inputs, "padding")?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn value(data: Array3<f32>) -> Value {
        Value {
            data: data.into_dyn(),
            mask: None,
        }
    }

    fn run(
        op: &mut Box<dyn Op>,
        inputs: &[&Value],
        kwargs: &serde_json::Map<String, Json>,
    ) -> Vec<Value> {
        let extra = Extra {
            states: Vec::new(),
            mask: None,
            scalars: &[],
            kwargs,
        };
        op.call(inputs, &extra).unwrap()
    }

    fn conv(cfg: Json, kernel: Array3<f32>, bias: Option<Vec<f32>>) -> Box<dyn Op> {
        let w = move || {
            let mut v = vec![kernel.clone().into_dyn()];
            v.extend(bias.clone().map(|b| Array1::from(b).into_dyn()));
            Ok(v)
        };
        build("Conv1D", &cfg, "conv", &w).unwrap().unwrap()
    }

    /// x = 1, 2, 3, 4, 5 (one channel), kernel [1, 10] (k = 2): the documented formulas by
    /// hand for each padding, stride and dilation.
    #[test]
    fn conv1d_by_hand() {
        let x = value(Array3::from_shape_vec((1, 5, 1), vec![1., 2., 3., 4., 5.]).unwrap());
        let kernel = Array3::from_shape_vec((2, 1, 1), vec![1., 10.]).unwrap();
        let none = serde_json::Map::new();
        for (padding, stride, dilation, want) in [
            // valid: y[o] = x[o] + 10 x[o+1]
            ("valid", 1, 1, vec![21., 32., 43., 54.]),
            // causal: left pad 1: y[o] = x[o-1] + 10 x[o]
            ("causal", 1, 1, vec![10., 21., 32., 43., 54.]),
            // causal, dilation 2: left pad 2: y[o] = x[o-2] + 10 x[o]
            ("causal", 1, 2, vec![10., 20., 31., 42., 53.]),
            // same, stride 2: out 3, pad total 1 (left 0): y[o] = x[2o] + 10 x[2o+1]
            ("same", 2, 1, vec![21., 43., 5.]),
            // valid, stride 2, dilation 2: span 3: y[o] = x[2o] + 10 x[2o+2]
            ("valid", 2, 2, vec![31., 53.]),
        ] {
            let cfg = json!({"padding": padding, "strides": [stride], "dilation_rate": [dilation],
                             "use_bias": true, "activation": "linear"});
            let mut op = conv(cfg, kernel.clone(), Some(vec![0.0]));
            let y = run(&mut op, &[&x], &none).remove(0);
            assert_eq!(
                y.data.iter().copied().collect::<Vec<_>>(),
                want,
                "{padding} {stride} {dilation}"
            );
        }
        // groups: two channels, two filters, each filter sees its own channel
        let x2 = value(Array3::from_shape_vec((1, 2, 2), vec![1., 100., 2., 200.]).unwrap());
        let k2 = Array3::from_shape_vec((1, 1, 2), vec![1., 2.]).unwrap();
        let cfg = json!({"padding": "valid", "groups": 2, "use_bias": false, "activation": "relu"});
        let mut op = conv(cfg, k2, None);
        let y = run(&mut op, &[&x2], &none).remove(0);
        assert_eq!(
            y.data.iter().copied().collect::<Vec<_>>(),
            vec![1., 200., 2., 400.]
        );
    }

    #[test]
    fn pooling_padding_and_upsampling_by_hand() {
        let x = value(Array3::from_shape_vec((1, 5, 1), vec![1., 5., 2., 4., 3.]).unwrap());
        let none = serde_json::Map::new();
        let no_weights = || -> Result<Vec<ArrayD<f32>>> { Ok(Vec::new()) };
        for (class, cfg, want) in [
            ("MaxPooling1D", json!({"pool_size": [2]}), vec![5., 4.]),
            ("AveragePooling1D", json!({"pool_size": [2]}), vec![3., 3.]),
            // same: out 3, pad right 1; the last window averages its one real value
            (
                "AveragePooling1D",
                json!({"pool_size": [2], "padding": "same"}),
                vec![3., 3., 3.],
            ),
            (
                "MaxPooling1D",
                json!({"pool_size": [3], "strides": [1]}),
                vec![5., 5., 4.],
            ),
            (
                "ZeroPadding1D",
                json!({"padding": [1, 2]}),
                vec![0., 1., 5., 2., 4., 3., 0., 0.],
            ),
            ("Cropping1D", json!({"cropping": [1, 2]}), vec![5., 2.]),
            (
                "UpSampling1D",
                json!({"size": 2}),
                vec![1., 1., 5., 5., 2., 2., 4., 4., 3., 3.],
            ),
        ] {
            let mut op = build(class, &cfg, "p", &no_weights).unwrap().unwrap();
            let y = run(&mut op, &[&x], &none).remove(0);
            assert_eq!(
                y.data.iter().copied().collect::<Vec<_>>(),
                want,
                "{class} {cfg}"
            );
        }
    }

    /// One query, two values: scores by the documented formulas, the value mask, the query
    /// mask and the causal mask.
    #[test]
    fn attention_by_hand() {
        let q = value(Array3::from_shape_vec((1, 1, 2), vec![1., 0.]).unwrap());
        let mut v = value(Array3::from_shape_vec((1, 2, 2), vec![2., 0., 0., 4.]).unwrap());
        let none = serde_json::Map::new();
        // dot scores [2, 0] scaled by 0.5: [1, 0]; softmax; output = w0 [2, 0] + w1 [0, 4]
        let scale = || -> Result<Vec<ArrayD<f32>>> {
            Ok(vec![ArrayD::from_elem(ndarray::IxDyn(&[]), 0.5)])
        };
        let mut op = build("Attention", &json!({"use_scale": true}), "att", &scale)
            .unwrap()
            .unwrap();
        let (w0, w1) = (1f32.exp() / (1f32.exp() + 1.0), 1.0 / (1f32.exp() + 1.0));
        let y = run(&mut op, &[&q, &v], &none).remove(0);
        let got: Vec<f32> = y.data.iter().copied().collect();
        assert!(
            (got[0] - 2.0 * w0).abs() < 1e-6 && (got[1] - 4.0 * w1).abs() < 1e-6,
            "{got:?}"
        );
        // the value mask drops value 1
        v.mask = Some(ndarray::arr2(&[[true, false]]));
        let y = run(&mut op, &[&q, &v], &none).remove(0);
        assert_eq!(y.data.iter().copied().collect::<Vec<_>>(), vec![2., 0.]);
        // additive: scores sum(scale * tanh(q + k)), scale [1, 1]
        let s2 = || -> Result<Vec<ArrayD<f32>>> {
            Ok(vec![ArrayD::from_elem(ndarray::IxDyn(&[2]), 1.0)])
        };
        let mut add = build("AdditiveAttention", &json!({"use_scale": true}), "add", &s2)
            .unwrap()
            .unwrap();
        v.mask = None;
        let (s0, s1) = ((3f32).tanh() + 0f32.tanh(), 1f32.tanh() + 4f32.tanh());
        let (a0, a1) = (
            s0.exp() / (s0.exp() + s1.exp()),
            s1.exp() / (s0.exp() + s1.exp()),
        );
        let y = run(&mut add, &[&q, &v], &none).remove(0);
        let got: Vec<f32> = y.data.iter().copied().collect();
        assert!(
            (got[0] - 2.0 * a0).abs() < 1e-6 && (got[1] - 4.0 * a1).abs() < 1e-6,
            "{got:?}"
        );
        // causal: query step 0 sees value step 0 only; scores come back when asked
        let mut kw = serde_json::Map::new();
        kw.insert("use_causal_mask".into(), json!(true));
        kw.insert("return_attention_scores".into(), json!(true));
        let out = run(&mut op, &[&q, &v], &kw);
        assert_eq!(
            out[0].data.iter().copied().collect::<Vec<_>>(),
            vec![2., 0.]
        );
        assert_eq!(out[1].data.shape(), &[1, 1, 2]);
    }
}
