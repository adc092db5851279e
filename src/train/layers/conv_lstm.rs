//! `ConvLSTM1D` and `ConvLSTM2D` in training (channels_last; `strides`, `padding` valid or
//! same, `dilation_rate`; `return_sequences`, `go_backwards`, the `[B, T]` mask rule,
//! `zero_output_for_mask`), the twin of the inference layer (`src/graph/conv_lstm.rs`), step
//! for step:
//!
//! ```text
//! z_t = im2col(x_t) K + b  +  im2col(h_{t-1}) U      (U: strides 1, padding "same")
//! i, f, g, o = z_t's four blocks of F channels; c_t = f·c_{t-1} + i·g; h_t = o·act(c_t)
//! ```
//!
//! per output pixel, then backpropagation through time as the LSTM's
//! (`train::recurrent`): per step (last first) the cell's backward on every pixel, the
//! recurrent kernel's gradient `im2col(h_{t-1})ᵀ dz_t`, and `dh_{t-1}` as `dz_t Uᵀ`
//! scattered back over the windows (col2im); then the input kernel's gradient, the bias's
//! and `dx` as products over all frames at once. The frames' windows of the input are kept
//! (`[B·T·P, kh·kw·C]`), and per step `h` before, the gates and `c` (`P` = output pixels).
//! `return_state`, `initial_state`, `stateful` and dropout are refused by name.

use super::super::activation::derivative_at;
use super::conv::{col2im, im2col, take_bias};
use super::{cache_of, OpCache, OpForward, TrainOp};
use crate::activation::Activation;
use crate::element::Element;
use crate::error::{LstmError, Result};
use crate::graph::{Placement, Window2};
use ndarray::{s, Array1, Array2, Array3, Array4, ArrayD, ArrayViewD, ArrayViewMutD, Axis, IxDyn};
use serde_json::Value;

/// A ConvLSTM layer with its weights (kernels as `[kh, kw, in, 4F]`, `kh` = 1 for 1-D).
#[derive(Debug, Clone)]
pub(super) struct ConvLstm<T> {
    class: &'static str,
    rank: usize,
    filters: usize,
    win: Window2,
    /// The recurrent convolution's window: the kernel's size, strides 1, padding "same".
    rwin: Window2,
    kernel: Array4<T>,
    recurrent: Array4<T>,
    bias: Option<Array1<T>>,
    act: Activation,
    rec: Activation,
    zero_output_for_mask: bool,
    return_sequences: bool,
    go_backwards: bool,
}

fn flag(cfg: &Value, key: &str) -> bool {
    cfg.get(key).and_then(Value::as_bool).unwrap_or(false)
}

impl<T: Element> ConvLstm<T> {
    /// From the layer's config and weights (kernel, recurrent kernel, then bias).
    pub(super) fn new(class: &str, cfg: &Value, name: &str, w: Vec<ArrayD<T>>) -> Result<Self> {
        crate::graph::channels_last(cfg)?;
        let rank = if class == "ConvLSTM1D" { 1 } else { 2 };
        for key in ["return_state", "stateful"] {
            if flag(cfg, key) {
                return Err(LstmError::unsupported(
                    key,
                    format!("true on {class} layer {name} in training"),
                ));
            }
        }
        let filters = match cfg.get("filters").and_then(Value::as_u64) {
            Some(f) if f >= 1 => f as usize,
            _ => {
                return Err(LstmError::bad_config(
                    format!("filters of layer {name}"),
                    "expected a positive int",
                ))
            }
        };
        let win = Window2::from_config(cfg, rank, "kernel_size", false)?;
        if !matches!(win.padding.as_str(), "valid" | "same") {
            return Err(LstmError::unsupported(
                "padding",
                format!("{} on {class} layer {name}", win.padding),
            ));
        }
        let act = |key: &str, default: &str| {
            crate::config::activation_from_keras(key, cfg.get(key), default)
        };
        let mut it = w.into_iter();
        let mut kernel = |what: &str, cin: Option<usize>| -> Result<Array4<T>> {
            let k = it.next().ok_or_else(|| LstmError::MissingWeight {
                name: format!("{name}/{what}"),
            })?;
            let shape = k.shape().to_vec();
            let k4 = match (rank, shape.as_slice()) {
                (1, &[kw, c, n]) => k.into_shape_with_order((1, kw, c, n)).ok(),
                (2, &[_, _, _, _]) => k.into_dimensionality().ok(),
                _ => None,
            }
            .filter(|k: &Array4<T>| {
                let (kh, kw, c, n) = k.dim();
                [kh, kw] == win.size && n == 4 * filters && cin.is_none_or(|ci| ci == c)
            });
            k4.map(|k| k.as_standard_layout().into_owned())
                .ok_or_else(|| {
                    let mut want: Vec<usize> = win.size[2 - rank..].to_vec();
                    want.extend([cin.unwrap_or(0), 4 * filters]);
                    LstmError::shape(format!("{name}/{what}"), &want, &shape)
                })
        };
        let kernel_x = kernel("kernel", None)?;
        let kernel_h = kernel("recurrent_kernel", Some(filters))?;
        let bias = take_bias(&mut it, cfg, name, 4 * filters)?;
        let rwin = Window2 {
            size: win.size,
            stride: [1, 1],
            dilation: [1, 1],
            padding: "same".into(),
        };
        Ok(ConvLstm {
            class: if rank == 1 {
                "ConvLSTM1D"
            } else {
                "ConvLSTM2D"
            },
            rank,
            filters,
            win,
            rwin,
            kernel: kernel_x,
            recurrent: kernel_h,
            bias,
            act: act("activation", "tanh")?,
            rec: act("recurrent_activation", "sigmoid")?,
            zero_output_for_mask: flag(cfg, "zero_output_for_mask"),
            return_sequences: flag(cfg, "return_sequences"),
            go_backwards: flag(cfg, "go_backwards"),
        })
    }

    /// A kernel as Keras's shape (`[kw, in, 4F]` for 1-D).
    fn keras_shape(&self, k: &Array4<T>) -> Vec<usize> {
        let (kh, kw, c, n) = k.dim();
        if self.rank == 1 {
            vec![kw, c, n]
        } else {
            vec![kh, kw, c, n]
        }
    }

    /// `(B, T, [H, W], C)` of an input (`H` = 1 for 1-D).
    fn dims(&self, shape: &[usize], name: &str) -> Result<(usize, usize, [usize; 2], usize)> {
        match (self.rank, shape) {
            (1, &[b, t, w, c]) => Ok((b, t, [1, w], c)),
            (2, &[b, t, h, w, c]) => Ok((b, t, [h, w], c)),
            _ => Err(LstmError::shape(
                format!("input of layer {name}"),
                &vec![0; self.rank + 3],
                shape,
            )),
        }
    }

    /// The time index of processing step `s`.
    fn time_of(&self, t: usize, s: usize) -> usize {
        if self.go_backwards {
            t - 1 - s
        } else {
            s
        }
    }
}

/// What the backward pass reads: the input frames' windows `[B·T·P, kq]` (row `(b·T + t)·P
/// + pixel`), and per processing step the pre-activations and gates `[B·P, 4F]`, `h` before,
/// `c` before and after `[B·P, F]`, and which batch rows were present.
struct Tape<T> {
    cols: Array2<T>,
    pre: Array3<T>,
    post: Array3<T>,
    h_prev: Array3<T>,
    c_prev: Array3<T>,
    c: Array3<T>,
    present: Array2<bool>,
    /// `(B, T, [H, W], C)` and the two placements.
    dims: (usize, usize, [usize; 2], usize),
    place: Placement,
    rplace: Placement,
}

/// A kernel `[kh, kw, in, 4F]` as the `[kh·kw·in, 4F]` matrix of an im2col product.
fn as_matrix<T: Element>(k: &Array4<T>) -> ndarray::ArrayView2<'_, T> {
    let (kh, kw, c, n) = k.dim();
    k.view()
        .into_shape_with_order((kh * kw * c, n))
        .expect("a standard-layout kernel")
}

impl<T: Element> TrainOp<T> for ConvLstm<T> {
    fn class(&self) -> &'static str {
        self.class
    }

    fn forward(
        &self,
        name: &str,
        x: ArrayViewD<'_, T>,
        mask: Option<&Array2<bool>>,
        _: Option<u64>,
    ) -> Result<OpForward<T>> {
        let (b, t, [h, w], cin) = self.dims(x.shape(), name)?;
        let f = self.filters;
        if cin != self.kernel.dim().2 {
            let mut want = x.shape().to_vec();
            *want.last_mut().expect("a shape") = self.kernel.dim().2;
            return Err(LstmError::shape(
                format!("input of layer {name}"),
                &want,
                x.shape(),
            ));
        }
        if let Some(m) = mask {
            if m.dim() != (b, t) {
                return Err(LstmError::shape(
                    format!("mask reaching layer {name}"),
                    &[b, t],
                    m.shape(),
                ));
            }
        }
        let place = self.win.place([h, w])?;
        let [oh, ow] = place.out;
        let rplace = self.rwin.place([oh, ow])?;
        let p = oh * ow;
        let xs = x.as_standard_layout();
        let xs = xs.as_slice().expect("a standard layout");
        // the input convolution of every frame at once: [B·T·P, 4F]
        let cols = im2col(xs, [b * t, h, w, cin], &self.win, place);
        let mut zx = cols.dot(&as_matrix(&self.kernel));
        if let Some(bias) = &self.bias {
            zx += bias;
        }
        let u = as_matrix(&self.recurrent);
        let n = 4 * f;
        let mut pre = Array3::<T>::zeros((t, b * p, n));
        let mut post = Array3::<T>::zeros((t, b * p, n));
        let mut h_prev = Array3::<T>::zeros((t, b * p, f));
        let mut c_prev = Array3::<T>::zeros((t, b * p, f));
        let mut c_all = Array3::<T>::zeros((t, b * p, f));
        let mut present = Array2::from_elem((b, t), true);
        let mut hs = Array2::<T>::zeros((b * p, f));
        let mut cs = Array2::<T>::zeros((b * p, f));
        let mut last = Array2::<T>::zeros((b * p, f));
        let mut seq = Array4::<T>::zeros((b, if self.return_sequences { t } else { 0 }, p, f));
        for s in 0..t {
            let tt = self.time_of(t, s);
            let hcols = im2col(
                hs.as_slice().expect("a standard layout"),
                [b, oh, ow, f],
                &self.rwin,
                rplace,
            );
            let mut z = hcols.dot(&u);
            h_prev.slice_mut(s![s, .., ..]).assign(&hs);
            c_prev.slice_mut(s![s, .., ..]).assign(&cs);
            for r in 0..b * p {
                let bi = r / p;
                let here = mask.is_none_or(|m| m[[bi, tt]]);
                present[[bi, s]] = here;
                if !here {
                    if self.zero_output_for_mask {
                        last.row_mut(r).fill(T::zero());
                    }
                    continue;
                }
                let mut zr = z.row_mut(r);
                zr += &zx.row((bi * t + tt) * p + r % p);
                pre.slice_mut(s![s, r, ..]).assign(&zr);
                let mut g = post.slice_mut(s![s, r, ..]);
                for k in 0..n {
                    let a = if (2 * f..3 * f).contains(&k) {
                        self.act
                    } else {
                        self.rec
                    };
                    g[k] = a.apply(zr[k]);
                }
                for j in 0..f {
                    let cj = g[f + j] * cs[[r, j]] + g[j] * g[2 * f + j];
                    cs[[r, j]] = cj;
                    hs[[r, j]] = g[3 * f + j] * self.act.apply(cj);
                    last[[r, j]] = hs[[r, j]];
                }
            }
            c_all.slice_mut(s![s, .., ..]).assign(&cs);
            if self.return_sequences {
                for r in 0..b * p {
                    seq.slice_mut(s![r / p, s, r % p, ..]).assign(&last.row(r));
                }
            }
        }
        let frame = |n: usize| -> Vec<usize> {
            let mut v = vec![n];
            if self.rank == 2 {
                v.push(oh);
            }
            v.extend([ow, f]);
            v
        };
        let (y, out_mask) = if self.return_sequences {
            let mut shape = vec![b, t];
            shape.extend(&frame(b)[1..]);
            (
                seq.into_shape_with_order(IxDyn(&shape))
                    .expect("the sequence"),
                mask.cloned(),
            )
        } else {
            (
                last.into_shape_with_order(IxDyn(&frame(b)))
                    .expect("the last output"),
                None,
            )
        };
        Ok(OpForward {
            y,
            mask: out_mask,
            cache: Box::new(Tape {
                cols,
                pre,
                post,
                h_prev,
                c_prev,
                c: c_all,
                present,
                dims: (b, t, [h, w], cin),
                place,
                rplace,
            }),
        })
    }

    fn backward(
        &self,
        name: &str,
        cache: &OpCache,
        d: ArrayD<T>,
    ) -> Result<(ArrayD<T>, Vec<ArrayD<T>>)> {
        let tp = cache_of::<Tape<T>>(cache, name)?;
        let (b, t, [h, w], cin) = tp.dims;
        let [oh, ow] = tp.place.out;
        let (p, f) = (oh * ow, self.filters);
        let n = 4 * f;
        let d = d.as_standard_layout().into_owned();
        let want = if self.return_sequences {
            b * t * p * f
        } else {
            b * p * f
        };
        if d.len() != want || d.shape()[0] != b {
            return Err(LstmError::invalid(
                format!("layer {name}"),
                format!("cotangent shape {:?}", d.shape()),
            ));
        }
        let d_seq = self.return_sequences.then(|| {
            d.view()
                .into_shape_with_order((b, t, p, f))
                .expect("checked above")
        });
        let mut dy = match &d_seq {
            Some(_) => Array2::<T>::zeros((b * p, f)),
            None => d
                .view()
                .into_shape_with_order((b * p, f))
                .expect("checked above")
                .to_owned(),
        };
        let mut dh = Array2::<T>::zeros((b * p, f));
        let mut dc = Array2::<T>::zeros((b * p, f));
        let mut dzx = Array2::<T>::zeros((b * t * p, n));
        let mut du = Array2::<T>::zeros((self.rwin.size[0] * self.rwin.size[1] * f, n));
        let u = as_matrix(&self.recurrent);
        for s in (0..t).rev() {
            let tt = self.time_of(t, s);
            if let Some(ds) = &d_seq {
                for r in 0..b * p {
                    let mut row = dy.row_mut(r);
                    row += &ds.slice(s![r / p, s, r % p, ..]);
                }
            }
            let mut dz = Array2::<T>::zeros((b * p, n));
            for r in 0..b * p {
                let bi = r / p;
                if !tp.present[[bi, s]] {
                    if self.zero_output_for_mask {
                        dy.row_mut(r).fill(T::zero());
                    }
                    continue;
                }
                let (z, g) = (tp.pre.slice(s![s, r, ..]), tp.post.slice(s![s, r, ..]));
                for j in 0..f {
                    let cj = tp.c[[s, r, j]];
                    let ac = self.act.apply(cj);
                    let dhj = dh[[r, j]] + dy[[r, j]];
                    let dcj = dc[[r, j]] + dhj * g[3 * f + j] * derivative_at(self.act, cj, ac);
                    dc[[r, j]] = dcj * g[f + j];
                    let d = |k: usize, a: Activation| derivative_at(a, z[k], g[k]);
                    dz[[r, j]] = dcj * g[2 * f + j] * d(j, self.rec);
                    dz[[r, f + j]] = dcj * tp.c_prev[[s, r, j]] * d(f + j, self.rec);
                    dz[[r, 2 * f + j]] = dcj * g[j] * d(2 * f + j, self.act);
                    dz[[r, 3 * f + j]] = dhj * ac * d(3 * f + j, self.rec);
                }
                dy.row_mut(r).fill(T::zero());
            }
            // the recurrent convolution's transpose: dU and dh_prev
            let hp = tp.h_prev.slice(s![s, .., ..]);
            let hcols = im2col(
                hp.as_standard_layout()
                    .as_slice()
                    .expect("a standard layout"),
                [b, oh, ow, f],
                &self.rwin,
                tp.rplace,
            );
            du += &hcols.t().dot(&dz);
            let dprev = col2im(&dz.dot(&u.t()), [b, oh, ow, f], &self.rwin, tp.rplace);
            for r in 0..b * p {
                if tp.present[[r / p, s]] {
                    for j in 0..f {
                        dh[[r, j]] = dprev[r * f + j];
                    }
                }
            }
            for r in 0..b * p {
                let row = (r / p * t + tt) * p + r % p;
                dzx.row_mut(row).assign(&dz.row(r));
            }
        }
        // the input convolution over all frames at once
        let dk = tp.cols.t().dot(&dzx);
        let dcols = dzx.dot(&as_matrix(&self.kernel).t());
        let dx = col2im(&dcols, [b * t, h, w, cin], &self.win, tp.place);
        let mut xshape = vec![b, t];
        if self.rank == 2 {
            xshape.push(h);
        }
        xshape.extend([w, cin]);
        let dx = ArrayD::from_shape_vec(IxDyn(&xshape), dx).expect("the input's values");
        let shaped = |g: Array2<T>, k: &Array4<T>| {
            g.into_shape_with_order(IxDyn(&self.keras_shape(k)))
                .expect("a kernel's values")
        };
        let mut grads = vec![shaped(dk, &self.kernel), shaped(du, &self.recurrent)];
        if self.bias.is_some() {
            grads.push(dzx.sum_axis(Axis(0)).into_dyn());
        }
        Ok((dx, grads))
    }

    fn weights(&self) -> Vec<ArrayD<T>> {
        let as_keras = |k: &Array4<T>| {
            k.clone()
                .into_shape_with_order(IxDyn(&self.keras_shape(k)))
                .expect("a kernel's values")
        };
        let mut w = vec![as_keras(&self.kernel), as_keras(&self.recurrent)];
        w.extend(self.bias.clone().map(|b| b.into_dyn()));
        w
    }

    fn weights_mut(&mut self) -> Vec<ArrayViewMutD<'_, T>> {
        let (ks, rs) = (
            self.keras_shape(&self.kernel),
            self.keras_shape(&self.recurrent),
        );
        let mut w = vec![
            self.kernel
                .view_mut()
                .into_shape_with_order(IxDyn(&ks))
                .expect("a standard-layout kernel"),
            self.recurrent
                .view_mut()
                .into_shape_with_order(IxDyn(&rs))
                .expect("a standard-layout kernel"),
        ];
        w.extend(self.bias.as_mut().map(|b| b.view_mut().into_dyn()));
        w
    }

    fn clone_box(&self) -> Box<dyn TrainOp<T>> {
        Box::new(self.clone())
    }
}
