//! Convolution, pooling and padding layers of a graph on the CPU (Keras 3 semantics,
//! channels_last): `Conv1D`, `Conv2D`, `MaxPooling1D`/`2D`, `AveragePooling1D`/`2D`,
//! `ZeroPadding1D`, `Cropping1D`, `UpSampling1D`; `build` also makes the attention layers
//! (`attention.rs`). None of these keep an incoming mask. A 1-D layer is its 2-D form on
//! `[B, 1, T, C]`: one geometry ([`Window2`]) and one kernel for both.

use super::ops::{stage, Extra, GpuStage, Op, Uploader};
use super::Value;
use crate::activation::Activation;
use crate::error::{LstmError, Result};
use crate::gpu::plan::{ConvStage, PoolStage};
use ndarray::{Array1, Array4, ArrayD, ArrayView4, Ix1, Ix3, Ix4};
use serde_json::Value as Json;

/// An error unless the layer is channels_last (its `data_format` absent or not
/// channels_first).
pub(crate) fn channels_last(cfg: &Json) -> Result<()> {
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

/// A config entry Keras writes as an int or a list of `n` ints (`kernel_size`, `strides`,
/// `dilation_rate`, `pool_size`), each at least 1; `default` when absent or null.
fn ints(cfg: &Json, key: &str, n: usize, default: usize) -> Result<Vec<usize>> {
    let bad = |v: &Json| {
        LstmError::bad_config(
            key,
            format!("expected a positive int or a list of {n} positive ints, got {v}"),
        )
    };
    let one = |v: &Json| match v.as_u64() {
        Some(k) if k >= 1 => Ok(k as usize),
        _ => Err(bad(v)),
    };
    match cfg.get(key) {
        None | Some(Json::Null) => Ok(vec![default; n]),
        Some(Json::Array(a)) if a.len() == n => a.iter().map(one).collect(),
        Some(v @ Json::Array(_)) => Err(bad(v)),
        Some(v) => Ok(vec![one(v)?; n]),
    }
}

/// The geometry of a window over the `[H, W]` axes of `[B, H, W, C]` (a 1-D layer's is
/// `[1, T]`): its size, stride, dilation and Keras padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Window2 {
    pub size: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    pub padding: String,
}

/// Where a window lies: the padding before each axis and the output extent of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placement {
    pub before: [usize; 2],
    pub out: [usize; 2],
}

impl Window2 {
    /// From a 1-D or 2-D layer's config (`size_key`: `kernel_size` or `pool_size`; a pool's
    /// strides default to its size and it has no dilation).
    pub(crate) fn from_config(cfg: &Json, rank: usize, size_key: &str, pool: bool) -> Result<Self> {
        let size = ints(cfg, size_key, rank, if pool { 2 } else { 1 })?;
        let stride = ints(cfg, "strides", rank, 1)?;
        let stride = match cfg.get("strides") {
            None | Some(Json::Null) if pool => size.clone(),
            _ => stride,
        };
        let dilation = if pool {
            vec![1; rank]
        } else {
            ints(cfg, "dilation_rate", rank, 1)?
        };
        let padding = cfg
            .get("padding")
            .and_then(Json::as_str)
            .unwrap_or("valid")
            .to_ascii_lowercase();
        if !(padding == "valid" || padding == "same" || (padding == "causal" && rank == 1 && !pool))
        {
            return Err(LstmError::unsupported("padding", padding));
        }
        if stride.iter().any(|&s| s > 1) && dilation.iter().any(|&d| d > 1) {
            // Keras's own check: strides > 1 with dilation_rate > 1 is refused at build.
            return Err(LstmError::bad_config(
                "dilation_rate",
                "strides > 1 together with dilation_rate > 1 (Keras refuses it too)",
            ));
        }
        let two = |v: &[usize]| if rank == 1 { [1, v[0]] } else { [v[0], v[1]] };
        Ok(Window2 {
            size: two(&size),
            stride: two(&stride),
            dilation: two(&dilation),
            padding,
        })
    }

    /// The window over an `[h, w]` input (Keras's/TensorFlow's output sizes and padding).
    pub(crate) fn place(&self, hw: [usize; 2]) -> Result<Placement> {
        let mut p = Placement {
            before: [0; 2],
            out: [0; 2],
        };
        // (a 1-D layer's unit H axis, size and stride 1, gives one row and no padding under
        // every padding)
        for (a, &n) in hw.iter().enumerate() {
            let span = self.dilation[a] * (self.size[a] - 1) + 1;
            (p.before[a], p.out[a]) = window(&self.padding, n, span, self.stride[a])?;
        }
        Ok(p)
    }

    /// The in-range input positions `(tap, position)` along axis `a` of output index `o`.
    pub(crate) fn taps(
        &self,
        a: usize,
        o: usize,
        before: usize,
        n: usize,
    ) -> impl Iterator<Item = (usize, usize)> {
        taps(
            o,
            self.size[a],
            (self.stride[a], self.dilation[a], before, n),
        )
    }
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

/// The one input of a 1-D (`[B, T, C]`) or 2-D (`[B, H, W, C]`) layer `name`, as
/// `[B, H, W, C]` (H = 1 for 1-D).
pub(crate) fn spatial<'a>(
    inputs: &[&'a Value],
    rank: usize,
    name: &str,
) -> Result<ArrayView4<'a, f32>> {
    let x = match inputs {
        [x] => x,
        _ => {
            return Err(LstmError::invalid(
                format!("layer {name}"),
                "takes one input",
            ))
        }
    };
    let want = vec![0; rank + 2];
    let bad = || LstmError::shape(format!("input of layer {name}"), &want, x.data.shape());
    if x.data.ndim() != rank + 2 {
        return Err(bad());
    }
    if rank == 1 {
        let v = x
            .data
            .view()
            .into_dimensionality::<Ix3>()
            .map_err(|_| bad())?;
        Ok(v.insert_axis(ndarray::Axis(1)))
    } else {
        x.data
            .view()
            .into_dimensionality::<Ix4>()
            .map_err(|_| bad())
    }
}

/// `[B, H, W, C]` back as the layer's rank: `[B, W, C]` for 1-D.
pub(super) fn unspatial(y: Array4<f32>, rank: usize) -> ArrayD<f32> {
    if rank == 1 {
        y.index_axis_move(ndarray::Axis(1), 0).into_dyn()
    } else {
        y.into_dyn()
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

/// A convolution kernel weight `what` of a rank-`rank` layer as `[kh, kw, in, out]` (`kh` = 1
/// for 1-D), or an error naming it.
pub(super) fn spatial_kernel(
    k: Option<ArrayD<f32>>,
    rank: usize,
    what: &str,
) -> Result<Array4<f32>> {
    let k = k.ok_or_else(|| LstmError::MissingWeight { name: what.into() })?;
    let shape = k.shape().to_vec();
    let bad = || LstmError::shape(what, &vec![0; rank + 2], &shape);
    if rank == 1 {
        Ok(k.into_dimensionality::<Ix3>()
            .map_err(|_| bad())?
            .insert_axis(ndarray::Axis(0)))
    } else {
        k.into_dimensionality::<Ix4>().map_err(|_| bad())
    }
}

/// A bias weight `what` of `len` values, or an error naming it.
pub(super) fn bias_weight(b: Option<ArrayD<f32>>, len: usize, what: &str) -> Result<Array1<f32>> {
    let b = b.ok_or_else(|| LstmError::MissingWeight { name: what.into() })?;
    let shape = b.shape().to_vec();
    match b.into_dimensionality::<Ix1>() {
        Ok(b) if b.len() == len => Ok(b),
        _ => Err(LstmError::shape(what, &[len], &shape)),
    }
}

fn conv_layer(class: &str, cfg: &Json, name: &str, w: Vec<ArrayD<f32>>) -> Result<Conv> {
    channels_last(cfg)?;
    let rank = if class == "Conv1D" { 1 } else { 2 };
    let mut win = Window2::from_config(cfg, rank, "kernel_size", false)?;
    let mut w = w.into_iter();
    let kernel = spatial_kernel(w.next(), rank, &format!("{name}/kernel"))?;
    let use_bias = cfg.get("use_bias").and_then(Json::as_bool).unwrap_or(true);
    let bias = use_bias
        .then(|| bias_weight(w.next(), kernel.dim().3, &format!("{name}/bias")))
        .transpose()?;
    let activation = match cfg.get("activation") {
        None | Some(Json::Null) => Activation::Linear,
        Some(Json::String(s)) => {
            Activation::from_name(s).map_err(|_| LstmError::unsupported("activation", s))?
        }
        Some(other) => return Err(LstmError::unsupported("activation", other)),
    };
    let groups = match cfg.get("groups") {
        None | Some(Json::Null) => 1,
        Some(v) => match v.as_u64() {
            Some(g) if g >= 1 => g as usize,
            _ => {
                return Err(LstmError::bad_config(
                    "groups",
                    format!("expected a positive int, got {v}"),
                ))
            }
        },
    };
    let (kh, kw, _, filters) = kernel.dim();
    if cfg.get("kernel_size").is_none_or(Json::is_null) {
        // no kernel_size written (Keras always writes one): the kernel's own
        win.size = [kh, kw];
    }
    if kernel.iter().len() == 0 || [kh, kw] != win.size {
        return Err(LstmError::shape(
            format!("{name}/kernel"),
            &[
                win.size[0],
                win.size[1],
                kernel.dim().2.max(1),
                filters.max(1),
            ],
            kernel.shape(),
        ));
    }
    if filters % groups != 0 {
        return Err(LstmError::bad_config(
            "groups",
            format!("layer {name}: {filters} filters do not split into {groups} groups"),
        ));
    }
    Ok(Conv {
        name: name.to_string(),
        rank,
        kernel,
        bias,
        activation,
        win,
        groups,
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
        "Conv1D" | "Conv2D" => Box::new(conv_layer(class, cfg, name, weights()?)?),
        "MaxPooling1D" | "AveragePooling1D" | "MaxPooling2D" | "AveragePooling2D" => {
            channels_last(cfg)?;
            let rank = if class.ends_with("1D") { 1 } else { 2 };
            Box::new(Pool {
                name: name.to_string(),
                rank,
                max: class.starts_with("Max"),
                win: Window2::from_config(cfg, rank, "pool_size", true)?,
            })
        }
        _ => {
            return match super::padding::build(class, cfg)? {
                Some(op) => Ok(Some(op)),
                None => super::attention::build(class, cfg, name, weights),
            }
        }
    }))
}

/// `Conv1D` or `Conv2D` (`rank` 1 or 2), the kernel as `[kh, kw, in/groups, filters]`
/// (`kh` = 1 for 1-D).
#[derive(Debug, Clone)]
pub(super) struct Conv {
    pub(super) name: String,
    pub(super) rank: usize,
    pub(super) kernel: Array4<f32>,
    pub(super) bias: Option<Array1<f32>>,
    pub(super) activation: Activation,
    pub(super) win: Window2,
    pub(super) groups: usize,
}

/// Floats of im2col rows a block of a convolution stages at once (256 KiB: in L2 with the
/// kernel and the block's outputs).
const CONV_BLOCK_FLOATS: usize = 1 << 16;

thread_local! {
    /// Each thread's im2col scratch, kept between calls (no fresh pages per block).
    static COLS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Conv {
    /// The receptive fields of output rows `r0..r0 + n` for group `g` as `[n, kh·kw·cg]`
    /// rows of `cols` (im2col; padding taps are zeros, as Keras's explicit zero padding).
    /// `x` is `[B, H, W, Cin]` row-major.
    fn im2col(
        &self,
        x: &[f32],
        [h, w, cin]: [usize; 3],
        p: Placement,
        (r0, n, g): (usize, usize, usize),
        cols: &mut [f32],
    ) {
        let (kh, kw, cg, _) = self.kernel.dim();
        let [oh, ow] = p.out;
        let kq = kh * kw * cg;
        // one copy for a run of taps when they are adjacent pixels of all channels
        let runs = self.win.dilation[1] == 1 && cg == cin;
        // whether a window starting at `o` covers only real positions along axis `a`
        let inside = |a: usize, o: usize, n: usize| {
            let first = o * self.win.stride[a];
            let last = first + (self.win.size[a] - 1) * self.win.dilation[a];
            first >= p.before[a] && last < n + p.before[a]
        };
        for (k, row) in cols[..n * kq].chunks_exact_mut(kq).enumerate() {
            let r = r0 + k;
            let (i, oy, ox) = (r / (oh * ow), (r / ow) % oh, r % ow);
            // (a window over padding leaves zeros at its padding taps)
            if !(inside(0, oy, h) && inside(1, ox, w)) {
                row.fill(0.0);
            }
            for (ky, py) in self.win.taps(0, oy, p.before[0], h) {
                let line = (i * h + py) * w;
                if runs {
                    // taps kx in [lo, hi) lie inside: start + kx in [before, w + before)
                    let start = ox * self.win.stride[1];
                    let lo = p.before[1].saturating_sub(start);
                    let hi = kw.min((w + p.before[1]).saturating_sub(start));
                    if lo < hi {
                        let src = (line + start + lo - p.before[1]) * cin;
                        let dst = (ky * kw + lo) * cg;
                        let len = (hi - lo) * cin;
                        row[dst..dst + len].copy_from_slice(&x[src..src + len]);
                    }
                } else {
                    for (kx, px) in self.win.taps(1, ox, p.before[1], w) {
                        let src = (line + px) * cin + g * cg;
                        let dst = (ky * kw + kx) * cg;
                        row[dst..dst + cg].copy_from_slice(&x[src..src + cg]);
                    }
                }
            }
        }
    }
}

impl Op for Conv {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = spatial(inputs, self.rank, &self.name)?;
        let (b, h, w, cin) = x.dim();
        let (kh, kw, cg, f) = self.kernel.dim();
        if cin != cg * self.groups {
            let mut want = x.shape().to_vec();
            want[3] = cg * self.groups;
            if self.rank == 1 {
                want.remove(1);
            }
            return Err(LstmError::shape(
                format!("input of layer {}", self.name),
                &want,
                inputs[0].data.shape(),
            ));
        }
        let p = self.win.place([h, w])?;
        let [oh, ow] = p.out;
        let fg = f / self.groups;
        let kq = kh * kw * cg;
        let rows = b * oh * ow;
        let xs = x.as_standard_layout();
        let xs = xs.as_slice().expect("a standard layout");
        let kernel = self.kernel.as_standard_layout();
        let kernel = kernel
            .view()
            .into_shape_with_order((kq, f))
            .expect("kh·kw·cg rows of filters");
        let mut y = vec![0f32; rows * f];
        // Blocks of output rows, spread over the cores: each stages its rows' receptive
        // fields (per group) and multiplies them by the group's kernel columns into its
        // part of the output, bias first, then the activation while it is in cache.
        let block = (CONV_BLOCK_FLOATS / kq.max(1)).clamp(16, 4096);
        let run = |(blk, out): (usize, &mut [f32])| {
            COLS.with_borrow_mut(|cols| {
                let n = out.len() / f;
                cols.resize(n * kq, 0.0);
                let mut yv =
                    ndarray::ArrayViewMut2::from_shape((n, f), out).expect("rows x filters");
                for g in 0..self.groups {
                    self.im2col(xs, [h, w, cin], p, (blk * block, n, g), cols);
                    let a =
                        ndarray::ArrayView2::from_shape((n, kq), &cols[..n * kq]).expect("rows");
                    let cols_g = ndarray::s![.., g * fg..(g + 1) * fg];
                    let mut part = yv.slice_mut(cols_g);
                    if let Some(bias) = &self.bias {
                        part.assign(&bias.slice(ndarray::s![g * fg..(g + 1) * fg]));
                    }
                    crate::cpu::reference::matmul_serial(
                        a,
                        kernel.slice(cols_g),
                        part,
                        self.bias.is_some(),
                    );
                }
                self.activation
                    .apply_slice(yv.as_slice_mut().expect("contiguous rows"));
            })
        };
        if rows > 0 && f > 0 {
            if rows <= block {
                run((0, &mut y[..]));
            } else {
                use rayon::prelude::*;
                y.par_chunks_mut(block * f).enumerate().for_each(run);
            }
        }
        let y = Array4::from_shape_vec((b, oh, ow, f), y).expect("rows x filters");
        Ok(vec![Value {
            data: unspatial(y, self.rank),
            mask: None,
        }])
    }

    fn params(&self) -> usize {
        self.kernel.len() + self.bias.as_ref().map_or(0, |b| b.len())
    }

    fn gpu(&self, up: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        let (_, _, cg, f) = self.kernel.dim();
        let w: Vec<f32> = self.kernel.iter().copied().collect();
        stage(ConvStage {
            name: self.name.clone(),
            kernel: up.floats(&format!("{}/kernel", self.name), &w)?,
            bias: self
                .bias
                .as_ref()
                .map(|b| up.floats(&format!("{}/bias", self.name), &b.to_vec()))
                .transpose()?,
            rank: self.rank,
            channels_per_group: cg,
            filters: f,
            groups: self.groups,
            win: self.win.clone(),
            activation: self.activation,
        })
    }
}

/// `MaxPooling1D`/`2D` or `AveragePooling1D`/`2D`.
#[derive(Debug, Clone)]
struct Pool {
    name: String,
    rank: usize,
    max: bool,
    win: Window2,
}

impl Op for Pool {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = spatial(inputs, self.rank, &self.name)?;
        let (b, h, w, c) = x.dim();
        let p = self.win.place([h, w])?;
        let [oh, ow] = p.out;
        let mut y = Array4::<f32>::zeros((b, oh, ow, c));
        for i in 0..b {
            for oy in 0..oh {
                for ox in 0..ow {
                    for ch in 0..c {
                        // padding positions take no part (max: -inf; average: not counted)
                        let (mut acc, mut n) = (if self.max { f32::NEG_INFINITY } else { 0.0 }, 0);
                        for (_, py) in self.win.taps(0, oy, p.before[0], h) {
                            for (_, px) in self.win.taps(1, ox, p.before[1], w) {
                                let v = x[[i, py, px, ch]];
                                acc = if self.max { acc.max(v) } else { acc + v };
                                n += 1;
                            }
                        }
                        y[[i, oy, ox, ch]] = if self.max { acc } else { acc / n.max(1) as f32 };
                    }
                }
            }
        }
        Ok(vec![Value {
            data: unspatial(y, self.rank),
            mask: None,
        }])
    }

    fn gpu(&self, _: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        stage(PoolStage {
            name: self.name.clone(),
            max: self.max,
            window: Some((self.rank, self.win.clone())),
            keepdims: false,
            spatial: false,
        })
    }
}

#[cfg(test)]
mod tests;
