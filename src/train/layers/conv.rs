//! `Conv1D` (channels_last, `padding` valid, same or causal, `strides`, `dilation_rate`,
//! `groups=1`) and `Conv2D` (valid or same) with their activation, and their backward pass: the input's windows laid out as
//! rows (im2col, zeros at padding taps), the output one product of them with the kernel;
//! backward the kernel's gradient as one product with those rows, the input's as one product
//! scattered back over the windows.

use super::super::activation::{dense_activate, dense_activation_backward};
use super::super::three;
use super::{cache_of, OpCache, OpForward, TrainOp};
use crate::element::Element;
use crate::error::{LstmError, Result};
use crate::graph::{Placement, Window2};
use crate::model::DenseActivation;
use ndarray::{
    Array1, Array2, Array3, Array4, ArrayD, ArrayViewD, ArrayViewMutD, Axis, Ix3, Ix4, IxDyn,
};
use serde_json::Value;

/// A convolution's `groups`: 1 only in training, else an error naming the layer.
fn refuse_groups(cfg: &Value, name: &str) -> Result<()> {
    if cfg.get("groups").and_then(Value::as_u64).unwrap_or(1) != 1 {
        return Err(LstmError::unsupported(
            "groups",
            format!("{} on layer {name} in training (1 only)", cfg["groups"]),
        ));
    }
    Ok(())
}

/// The next weight as the `[len]` bias of layer `name` with `use_bias` (the default), None
/// without; a missing or misshapen one is an error naming it.
pub(super) fn take_bias<T: Element>(
    it: &mut impl Iterator<Item = ArrayD<T>>,
    cfg: &Value,
    name: &str,
    len: usize,
) -> Result<Option<Array1<T>>> {
    if !cfg.get("use_bias").and_then(Value::as_bool).unwrap_or(true) {
        return Ok(None);
    }
    let b = it.next().ok_or_else(|| LstmError::MissingWeight {
        name: format!("{name}/bias"),
    })?;
    if b.shape() != [len] {
        return Err(LstmError::shape(format!("{name}/bias"), &[len], b.shape()));
    }
    Ok(Some(b.iter().copied().collect()))
}

#[derive(Debug, Clone)]
pub(super) struct Conv1D<T> {
    win: Window2,
    /// `[kernel_size, in, filters]`.
    kernel: Array3<T>,
    bias: Option<Array1<T>>,
    activation: DenseActivation,
}

impl<T: Element> Conv1D<T> {
    /// From the layer's config and weights (kernel, then bias with `use_bias`).
    pub(super) fn new(cfg: &Value, name: &str, w: Vec<ArrayD<T>>) -> Result<Self> {
        refuse_groups(cfg, name)?;
        let win = Window2::from_config(cfg, 1, "kernel_size", false)?;
        let mut it = w.into_iter();
        let kernel = it.next().ok_or_else(|| LstmError::MissingWeight {
            name: format!("{name}/kernel"),
        })?;
        let shape = kernel.shape().to_vec();
        let kernel = kernel
            .into_dimensionality::<Ix3>()
            .ok()
            .filter(|k| k.dim().0 == win.size[1])
            .ok_or_else(|| {
                LstmError::shape(format!("{name}/kernel"), &[win.size[1], 0, 0], &shape)
            })?;
        let filters = kernel.dim().2;
        let bias = take_bias(&mut it, cfg, name, filters)?;
        Ok(Conv1D {
            win,
            kernel,
            bias,
            activation: crate::graph::act_of(cfg.get("activation"), "activation")?,
        })
    }
}

/// The windows as rows `[B·O, k·in]`, the pre-activation `[B, O, filters]`, and the
/// input's `(B, T, in)` with the padding before the first step.
struct ConvCache<T> {
    cols: Array2<T>,
    z: ArrayD<T>,
    dims: (usize, usize, usize),
    before: usize,
}

impl<T: Element> TrainOp<T> for Conv1D<T> {
    fn class(&self) -> &'static str {
        "Conv1D"
    }

    fn forward(
        &self,
        name: &str,
        x: ArrayViewD<'_, T>,
        _: Option<&Array2<bool>>,
        _: Option<u64>,
    ) -> Result<OpForward<T>> {
        let x3 = three(x.view(), name)?;
        let (b, t, cin) = x3.dim();
        let (k, kin, filters) = self.kernel.dim();
        if cin != kin {
            return Err(LstmError::shape(
                format!("input of layer {name}"),
                &[b, t, kin],
                &[b, t, cin],
            ));
        }
        let place = self.win.place([1, t])?;
        let (before, out) = (place.before[1], place.out[1]);
        let mut cols = Array2::<T>::zeros((b * out, k * cin));
        for r in 0..b {
            for o in 0..out {
                let mut row = cols.row_mut(r * out + o);
                for (tap, s) in self.win.taps(1, o, before, t) {
                    for c in 0..cin {
                        row[tap * cin + c] = x3[[r, s, c]];
                    }
                }
            }
        }
        let w2 = self
            .kernel
            .view()
            .into_shape_with_order((k * cin, filters))
            .expect("a standard-layout kernel");
        let mut z = cols.dot(&w2);
        if let Some(bias) = &self.bias {
            z += bias;
        }
        let z = z
            .into_shape_with_order(IxDyn(&[b, out, filters]))
            .expect("[B·O, F] as [B, O, F]");
        Ok(OpForward {
            y: dense_activate(self.activation, &z),
            mask: None,
            cache: Box::new(ConvCache {
                cols,
                z,
                dims: (b, t, cin),
                before,
            }),
        })
    }

    fn backward(
        &self,
        name: &str,
        cache: &OpCache,
        d: ArrayD<T>,
    ) -> Result<(ArrayD<T>, Vec<ArrayD<T>>)> {
        let c = cache_of::<ConvCache<T>>(cache, name)?;
        let (b, t, cin) = c.dims;
        let (k, _, filters) = self.kernel.dim();
        if d.shape() != c.z.shape() {
            return Err(LstmError::invalid(
                format!("layer {name}"),
                "cotangent shape",
            ));
        }
        let out = c.z.shape()[1];
        let dz = dense_activation_backward(self.activation, &c.z, &d)
            .into_shape_with_order((b * out, filters))
            .expect("[B, O, F] as [B·O, F]");
        let dw = c
            .cols
            .t()
            .dot(&dz)
            .into_shape_with_order(IxDyn(&[k, cin, filters]))
            .expect("[k·in, F] as [k, in, F]");
        let w2 = self
            .kernel
            .view()
            .into_shape_with_order((k * cin, filters))
            .expect("a standard-layout kernel");
        let dcols = dz.dot(&w2.t());
        let mut dx = Array3::<T>::zeros((b, t, cin));
        for r in 0..b {
            for o in 0..out {
                let row = dcols.row(r * out + o);
                for (tap, s) in self.win.taps(1, o, c.before, t) {
                    for ch in 0..cin {
                        dx[[r, s, ch]] += row[tap * cin + ch];
                    }
                }
            }
        }
        let mut grads = vec![dw];
        if self.bias.is_some() {
            grads.push(dz.sum_axis(Axis(0)).into_dyn());
        }
        Ok((dx.into_dyn(), grads))
    }

    fn weights(&self) -> Vec<ArrayD<T>> {
        let mut w = vec![self.kernel.clone().into_dyn()];
        w.extend(self.bias.clone().map(|b| b.into_dyn()));
        w
    }

    fn weights_mut(&mut self) -> Vec<ArrayViewMutD<'_, T>> {
        let mut w = vec![self.kernel.view_mut().into_dyn()];
        w.extend(self.bias.as_mut().map(|b| b.view_mut().into_dyn()));
        w
    }

    fn clone_box(&self) -> Box<dyn TrainOp<T>> {
        Box::new(self.clone())
    }
}

/// The windows of `n` frames `x` (`[n, h, w, c]` row-major) as rows `[n·OH·OW, kh·kw·c]`
/// (zeros at padding taps), for the window `win` placed at `p`.
pub(super) fn im2col<T: Element>(
    x: &[T],
    [n, h, w, c]: [usize; 4],
    win: &Window2,
    p: Placement,
) -> Array2<T> {
    let [oh, ow] = p.out;
    let (kh, kw) = (win.size[0], win.size[1]);
    let mut cols = Array2::<T>::zeros((n * oh * ow, kh * kw * c));
    for (r, mut row) in cols.rows_mut().into_iter().enumerate() {
        let (i, oy, ox) = (r / (oh * ow), (r / ow) % oh, r % ow);
        let row = row.as_slice_mut().expect("a standard layout");
        for (ky, py) in win.taps(0, oy, p.before[0], h) {
            for (kx, px) in win.taps(1, ox, p.before[1], w) {
                let src = ((i * h + py) * w + px) * c;
                let dst = (ky * kw + kx) * c;
                row[dst..dst + c].copy_from_slice(&x[src..src + c]);
            }
        }
    }
    cols
}

/// [`im2col`]'s transpose: the rows' cotangents `d` summed back into `[n, h, w, c]`.
pub(super) fn col2im<T: Element>(
    d: &Array2<T>,
    [n, h, w, c]: [usize; 4],
    win: &Window2,
    p: Placement,
) -> Vec<T> {
    let [oh, ow] = p.out;
    let kw = win.size[1];
    let mut x = vec![T::zero(); n * h * w * c];
    for (r, row) in d.rows().into_iter().enumerate() {
        let (i, oy, ox) = (r / (oh * ow), (r / ow) % oh, r % ow);
        for (ky, py) in win.taps(0, oy, p.before[0], h) {
            for (kx, px) in win.taps(1, ox, p.before[1], w) {
                let dst = ((i * h + py) * w + px) * c;
                let src = (ky * kw + kx) * c;
                for k in 0..c {
                    x[dst + k] += row[src + k];
                }
            }
        }
    }
    x
}

/// `Conv2D` (channels_last, `padding` valid or same, `strides`, `dilation_rate`, `groups=1`)
/// with its activation: the frames' windows as rows ([`im2col`]), one product with the
/// kernel; backward the kernel's gradient as one product with those rows and the input's
/// scattered back ([`col2im`]).
#[derive(Debug, Clone)]
pub(super) struct Conv2D<T> {
    win: Window2,
    /// `[kh, kw, in, filters]`.
    kernel: Array4<T>,
    bias: Option<Array1<T>>,
    activation: DenseActivation,
}

impl<T: Element> Conv2D<T> {
    /// From the layer's config and weights (kernel, then bias with `use_bias`).
    pub(super) fn new(cfg: &Value, name: &str, w: Vec<ArrayD<T>>) -> Result<Self> {
        refuse_groups(cfg, name)?;
        let win = Window2::from_config(cfg, 2, "kernel_size", false)?;
        if !matches!(win.padding.as_str(), "valid" | "same") {
            return Err(LstmError::unsupported(
                "padding",
                format!("{} on Conv2D layer {name}", win.padding),
            ));
        }
        let mut it = w.into_iter();
        let kernel = it.next().ok_or_else(|| LstmError::MissingWeight {
            name: format!("{name}/kernel"),
        })?;
        let shape = kernel.shape().to_vec();
        let kernel = kernel
            .into_dimensionality::<Ix4>()
            .ok()
            .filter(|k| [k.dim().0, k.dim().1] == win.size)
            .map(|k| k.as_standard_layout().into_owned())
            .ok_or_else(|| {
                LstmError::shape(
                    format!("{name}/kernel"),
                    &[win.size[0], win.size[1], 0, 0],
                    &shape,
                )
            })?;
        let filters = kernel.dim().3;
        let bias = take_bias(&mut it, cfg, name, filters)?;
        Ok(Conv2D {
            win,
            kernel,
            bias,
            activation: crate::graph::act_of(cfg.get("activation"), "activation")?,
        })
    }

    /// The kernel as the `[kh·kw·in, filters]` matrix of the im2col product.
    fn matrix(&self) -> ndarray::ArrayView2<'_, T> {
        let (kh, kw, c, f) = self.kernel.dim();
        self.kernel
            .view()
            .into_shape_with_order((kh * kw * c, f))
            .expect("a standard-layout kernel")
    }
}

/// The windows as rows `[B·OH·OW, kh·kw·in]`, the pre-activation `[B, OH, OW, F]`, the
/// input's `[B, H, W, C]` and the window's placement.
struct Conv2DCache<T> {
    cols: Array2<T>,
    z: ArrayD<T>,
    dims: [usize; 4],
    place: Placement,
}

impl<T: Element> TrainOp<T> for Conv2D<T> {
    fn class(&self) -> &'static str {
        "Conv2D"
    }

    fn forward(
        &self,
        name: &str,
        x: ArrayViewD<'_, T>,
        _: Option<&Array2<bool>>,
        _: Option<u64>,
    ) -> Result<OpForward<T>> {
        let (_, _, kin, filters) = self.kernel.dim();
        let [b, h, w, cin] = match *x.shape() {
            [b, h, w, c] if c == kin => [b, h, w, c],
            _ => {
                let mut want = x.shape().to_vec();
                want.resize(4, 0);
                want[3] = kin;
                return Err(LstmError::shape(
                    format!("input of layer {name}"),
                    &want,
                    x.shape(),
                ));
            }
        };
        let place = self.win.place([h, w])?;
        let [oh, ow] = place.out;
        let xs = x.as_standard_layout();
        let cols = im2col(
            xs.as_slice().expect("a standard layout"),
            [b, h, w, cin],
            &self.win,
            place,
        );
        let mut z = cols.dot(&self.matrix());
        if let Some(bias) = &self.bias {
            z += bias;
        }
        let z = z
            .into_shape_with_order(IxDyn(&[b, oh, ow, filters]))
            .expect("[B·OH·OW, F] as [B, OH, OW, F]");
        Ok(OpForward {
            y: dense_activate(self.activation, &z),
            mask: None,
            cache: Box::new(Conv2DCache {
                cols,
                z,
                dims: [b, h, w, cin],
                place,
            }),
        })
    }

    fn backward(
        &self,
        name: &str,
        cache: &OpCache,
        d: ArrayD<T>,
    ) -> Result<(ArrayD<T>, Vec<ArrayD<T>>)> {
        let c = cache_of::<Conv2DCache<T>>(cache, name)?;
        if d.shape() != c.z.shape() {
            return Err(LstmError::invalid(
                format!("layer {name}"),
                "cotangent shape",
            ));
        }
        let filters = self.kernel.dim().3;
        let rows = c.cols.nrows();
        let dz = dense_activation_backward(self.activation, &c.z, &d)
            .into_shape_with_order((rows, filters))
            .expect("[B, OH, OW, F] as [B·OH·OW, F]");
        let dw = c
            .cols
            .t()
            .dot(&dz)
            .into_shape_with_order(IxDyn(self.kernel.shape()))
            .expect("[kh·kw·in, F] as the kernel");
        let dcols = dz.dot(&self.matrix().t());
        let dx = col2im(&dcols, c.dims, &self.win, c.place);
        let dx = ArrayD::from_shape_vec(IxDyn(&c.dims), dx).expect("the input's values");
        let mut grads = vec![dw];
        if self.bias.is_some() {
            grads.push(dz.sum_axis(Axis(0)).into_dyn());
        }
        Ok((dx, grads))
    }

    fn weights(&self) -> Vec<ArrayD<T>> {
        let mut w = vec![self.kernel.clone().into_dyn()];
        w.extend(self.bias.clone().map(|b| b.into_dyn()));
        w
    }

    fn weights_mut(&mut self) -> Vec<ArrayViewMutD<'_, T>> {
        let mut w = vec![self.kernel.view_mut().into_dyn()];
        w.extend(self.bias.as_mut().map(|b| b.view_mut().into_dyn()));
        w
    }

    fn clone_box(&self) -> Box<dyn TrainOp<T>> {
        Box::new(self.clone())
    }
}
