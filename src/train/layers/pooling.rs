//! `GlobalAveragePooling1D`, `GlobalMaxPooling1D`, `MaxPooling1D` and `AveragePooling1D`,
//! and their 2-D forms over `[B, H, W, C]` (channels_last) and their backward passes as TensorFlow's gradients give them: a
//! maximum's cotangent shared equally by the tied maxima of a global pooling (`tf.reduce_max`)
//! and sent to the first maximum of a window (`tf.nn.max_pool`); an average's spread over the
//! steps it counted (the unmasked ones; a window's in-range ones).

use super::super::three;
use super::{cache_of, OpCache, OpForward, TrainOp};
use crate::element::Element;
use crate::error::{LstmError, Result};
use crate::graph::Window2;
use ndarray::{Array2, Array3, ArrayD, ArrayViewD, Ix2, IxDyn};

/// `GlobalAveragePooling1D` (the mean over the unmasked steps: `sum(where(mask, x, 0)) /
/// sum(mask)`, NaN for a row with none) or `GlobalMaxPooling1D` (the maximum over every
/// step; Keras's ignores the mask). Either drops the mask.
#[derive(Debug, Clone)]
pub(super) struct GlobalPool1D {
    pub(super) average: bool,
    pub(super) keepdims: bool,
}

/// The input's shape and, for an average, the counted steps (`[B, T]`) and their number per
/// row; for a maximum, the input and the output.
enum GlobalCache<T> {
    Average(Array2<bool>, Vec<T>),
    Max(Array3<T>, Array2<T>),
}

impl<T: Element> TrainOp<T> for GlobalPool1D {
    fn class(&self) -> &'static str {
        if self.average {
            "GlobalAveragePooling1D"
        } else {
            "GlobalMaxPooling1D"
        }
    }

    fn forward(
        &self,
        name: &str,
        x: ArrayViewD<'_, T>,
        mask: Option<&Array2<bool>>,
        _: Option<u64>,
    ) -> Result<OpForward<T>> {
        let x3 = three(x.view(), name)?;
        let (b, t, c) = x3.dim();
        let mut y = Array2::<T>::zeros((b, c));
        let cache = if self.average {
            let counted = match mask {
                Some(m) if m.dim() == (b, t) => m.clone(),
                Some(m) => {
                    return Err(LstmError::shape(
                        format!("mask of layer {name}"),
                        &[b, t],
                        m.shape(),
                    ))
                }
                None => Array2::from_elem((b, t), true),
            };
            let mut counts = Vec::with_capacity(b);
            for r in 0..b {
                let n = T::from_f64(counted.row(r).iter().filter(|&&p| p).count() as f64);
                for s in (0..t).filter(|&s| counted[[r, s]]) {
                    for k in 0..c {
                        y[[r, k]] += x3[[r, s, k]];
                    }
                }
                y.row_mut(r).mapv_inplace(|v| v / n);
                counts.push(n);
            }
            GlobalCache::Average(counted, counts)
        } else {
            y.fill(T::from_f64(f64::NEG_INFINITY));
            for r in 0..b {
                for s in 0..t {
                    for k in 0..c {
                        let v = x3[[r, s, k]];
                        // (a NaN is skipped, as the inference graph's maximum)
                        if v > y[[r, k]] {
                            y[[r, k]] = v;
                        }
                    }
                }
            }
            GlobalCache::Max(x3.to_owned(), y.clone())
        };
        let y = if self.keepdims {
            y.insert_axis(ndarray::Axis(1)).into_dyn()
        } else {
            y.into_dyn()
        };
        Ok(OpForward {
            y,
            mask: None,
            cache: Box::new(cache),
        })
    }

    fn backward(
        &self,
        name: &str,
        cache: &OpCache,
        d: ArrayD<T>,
    ) -> Result<(ArrayD<T>, Vec<ArrayD<T>>)> {
        let cache = cache_of::<GlobalCache<T>>(cache, name)?;
        let d = if self.keepdims {
            d.index_axis_move(ndarray::Axis(1), 0)
        } else {
            d
        };
        let d = d
            .into_dimensionality::<Ix2>()
            .map_err(|_| LstmError::invalid(format!("layer {name}"), "cotangent shape"))?;
        let dx = match cache {
            GlobalCache::Average(counted, counts) => {
                let (b, t) = counted.dim();
                let c = d.ncols();
                Array3::from_shape_fn((b, t, c), |(r, s, k)| {
                    if counted[[r, s]] {
                        d[[r, k]] / counts[r]
                    } else {
                        T::zero()
                    }
                })
            }
            GlobalCache::Max(x, y) => {
                let (b, t, c) = x.dim();
                let mut dx = Array3::<T>::zeros((b, t, c));
                for r in 0..b {
                    for k in 0..c {
                        let ties = (0..t).filter(|&s| x[[r, s, k]] == y[[r, k]]).count();
                        let share = d[[r, k]] / T::from_f64(ties.max(1) as f64);
                        for s in (0..t).filter(|&s| x[[r, s, k]] == y[[r, k]]) {
                            dx[[r, s, k]] = share;
                        }
                    }
                }
                dx
            }
        };
        Ok((dx.into_dyn(), Vec::new()))
    }

    fn clone_box(&self) -> Box<dyn TrainOp<T>> {
        Box::new(self.clone())
    }
}

/// `MaxPooling1D` or `AveragePooling1D` over windows of the step axis (`pool_size`,
/// `strides`, `padding` valid or same; an average counts only the in-range steps, as
/// TensorFlow's): [`Pool2D`] over `[B, 1, T, C]` (a 1-D window is one row high). Drops the
/// mask.
#[derive(Debug, Clone)]
pub(super) struct Pool1D(Pool2D);

impl Pool1D {
    pub(super) fn new(max: bool, win: Window2) -> Self {
        Pool1D(Pool2D::new(max, win))
    }
}

/// `a` (`[B, T, C]`) as `[B, 1, T, C]` or back (`[B, 1, T, C]` as `[B, T, C]`).
fn with_row<T: Element>(a: ArrayD<T>, add: bool, name: &str) -> Result<ArrayD<T>> {
    let s = a.shape().to_vec();
    let shape: Vec<usize> = match (add, s.as_slice()) {
        (true, &[b, t, c]) => vec![b, 1, t, c],
        (false, &[b, 1, t, c]) => vec![b, t, c],
        _ => {
            return Err(LstmError::invalid(
                format!("layer {name}"),
                "cotangent shape",
            ))
        }
    };
    Ok(a.into_shape_with_order(IxDyn(&shape))
        .expect("the same values"))
}

impl<T: Element> TrainOp<T> for Pool1D {
    fn class(&self) -> &'static str {
        if self.0.max {
            "MaxPooling1D"
        } else {
            "AveragePooling1D"
        }
    }

    fn forward(
        &self,
        name: &str,
        x: ArrayViewD<'_, T>,
        _: Option<&Array2<bool>>,
        _: Option<u64>,
    ) -> Result<OpForward<T>> {
        let x3 = three(x.view(), name)?;
        let x4 = with_row(x3.as_standard_layout().into_owned().into_dyn(), true, name)?;
        let out = self.0.forward(name, x4.view(), None, None)?;
        Ok(OpForward {
            y: with_row(out.y, false, name)?,
            mask: None,
            cache: out.cache,
        })
    }

    fn backward(
        &self,
        name: &str,
        cache: &OpCache,
        d: ArrayD<T>,
    ) -> Result<(ArrayD<T>, Vec<ArrayD<T>>)> {
        let (dx, _) = self.0.backward(name, cache, with_row(d, true, name)?)?;
        Ok((with_row(dx, false, name)?, Vec::new()))
    }

    fn clone_box(&self) -> Box<dyn TrainOp<T>> {
        Box::new(self.clone())
    }
}

/// `x` as `[B, H, W, C]`, or an error naming the layer.
fn four<'a, T>(x: &'a ArrayViewD<'_, T>, name: &str) -> Result<ndarray::ArrayView4<'a, T>> {
    x.view()
        .into_dimensionality::<ndarray::Ix4>()
        .map_err(|_| LstmError::shape(format!("input of layer {name}"), &[0, 0, 0, 0], x.shape()))
}

/// `GlobalAveragePooling2D` (the mean over every pixel) or `GlobalMaxPooling2D` (the
/// maximum; its cotangent shared equally by the tied maxima, as `tf.reduce_max`'s).
#[derive(Debug, Clone)]
pub(super) struct GlobalPool2D {
    pub(super) average: bool,
    pub(super) keepdims: bool,
}

impl<T: Element> TrainOp<T> for GlobalPool2D {
    fn class(&self) -> &'static str {
        if self.average {
            "GlobalAveragePooling2D"
        } else {
            "GlobalMaxPooling2D"
        }
    }

    fn forward(
        &self,
        name: &str,
        x: ArrayViewD<'_, T>,
        _: Option<&Array2<bool>>,
        _: Option<u64>,
    ) -> Result<OpForward<T>> {
        let x4 = four(&x, name)?;
        let (b, h, w, c) = x4.dim();
        let flat = x4
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((b, h * w, c))
            .expect("[B, H, W, C] as [B, H·W, C]");
        let pooled = GlobalPool1D {
            average: self.average,
            keepdims: false,
        }
        .forward(name, flat.view().into_dyn(), None, None)?;
        let y = if self.keepdims {
            pooled
                .y
                .into_shape_with_order(IxDyn(&[b, 1, 1, c]))
                .expect("[B, C] as [B, 1, 1, C]")
        } else {
            pooled.y
        };
        Ok(OpForward {
            y,
            mask: None,
            cache: Box::new((pooled.cache, [b, h, w, c])),
        })
    }

    fn backward(
        &self,
        name: &str,
        cache: &OpCache,
        d: ArrayD<T>,
    ) -> Result<(ArrayD<T>, Vec<ArrayD<T>>)> {
        let (inner, dims) = cache_of::<(OpCache, [usize; 4])>(cache, name)?;
        let d = d
            .into_shape_with_order(IxDyn(&[dims[0], dims[3]]))
            .map_err(|_| LstmError::invalid(format!("layer {name}"), "cotangent shape"))?;
        let one = GlobalPool1D {
            average: self.average,
            keepdims: false,
        };
        let (dx, _) = TrainOp::<T>::backward(&one, name, inner, d)?;
        Ok((
            dx.into_shape_with_order(IxDyn(dims))
                .expect("[B, H·W, C] as [B, H, W, C]"),
            Vec::new(),
        ))
    }

    fn clone_box(&self) -> Box<dyn TrainOp<T>> {
        Box::new(self.clone())
    }
}

/// `MaxPooling2D` or `AveragePooling2D` over windows of the two spatial axes (`pool_size`,
/// `strides`, `padding` valid or same): a maximum's cotangent to the first maximum of its
/// window in row-major order (`tf.nn.max_pool`'s), an average over the in-range pixels.
#[derive(Debug, Clone)]
pub(super) struct Pool2D {
    max: bool,
    win: Window2,
}

impl Pool2D {
    pub(super) fn new(max: bool, win: Window2) -> Self {
        Pool2D { max, win }
    }
}

/// The input's shape, the placement and, per output value of a maximum, the input pixel
/// (`y·W + x`) it came from.
struct Pool2DCache {
    dims: [usize; 4],
    place: crate::graph::Placement,
    argmax: Vec<usize>,
}

impl<T: Element> TrainOp<T> for Pool2D {
    fn class(&self) -> &'static str {
        if self.max {
            "MaxPooling2D"
        } else {
            "AveragePooling2D"
        }
    }

    fn forward(
        &self,
        name: &str,
        x: ArrayViewD<'_, T>,
        _: Option<&Array2<bool>>,
        _: Option<u64>,
    ) -> Result<OpForward<T>> {
        let x4 = four(&x, name)?;
        let (b, h, w, c) = x4.dim();
        let place = self.win.place([h, w])?;
        let [oh, ow] = place.out;
        let mut y = ndarray::Array4::<T>::zeros((b, oh, ow, c));
        let mut argmax = Vec::with_capacity(if self.max { b * oh * ow * c } else { 0 });
        for r in 0..b {
            for oy in 0..oh {
                for ox in 0..ow {
                    for k in 0..c {
                        let mut taps =
                            self.win
                                .taps(0, oy, place.before[0], h)
                                .flat_map(|(_, py)| {
                                    self.win
                                        .taps(1, ox, place.before[1], w)
                                        .map(move |(_, px)| (py, px))
                                });
                        if self.max {
                            let (py, px) = taps.next().unwrap_or((0, 0));
                            let (mut best, mut at) = (x4[[r, py, px, k]], py * w + px);
                            for (py, px) in taps {
                                if x4[[r, py, px, k]] > best {
                                    (best, at) = (x4[[r, py, px, k]], py * w + px);
                                }
                            }
                            y[[r, oy, ox, k]] = best;
                            argmax.push(at);
                        } else {
                            let (mut sum, mut n) = (T::zero(), 0usize);
                            for (py, px) in taps {
                                sum += x4[[r, py, px, k]];
                                n += 1;
                            }
                            y[[r, oy, ox, k]] = sum / T::from_f64(n as f64);
                        }
                    }
                }
            }
        }
        Ok(OpForward {
            y: y.into_dyn(),
            mask: None,
            cache: Box::new(Pool2DCache {
                dims: [b, h, w, c],
                place,
                argmax,
            }),
        })
    }

    fn backward(
        &self,
        name: &str,
        cache: &OpCache,
        d: ArrayD<T>,
    ) -> Result<(ArrayD<T>, Vec<ArrayD<T>>)> {
        let cache = cache_of::<Pool2DCache>(cache, name)?;
        let [b, h, w, c] = cache.dims;
        let [oh, ow] = cache.place.out;
        let d = d
            .into_dimensionality::<ndarray::Ix4>()
            .ok()
            .filter(|d| d.dim() == (b, oh, ow, c))
            .ok_or_else(|| LstmError::invalid(format!("layer {name}"), "cotangent shape"))?;
        let mut dx = ndarray::Array4::<T>::zeros((b, h, w, c));
        let mut at = cache.argmax.iter();
        let before = cache.place.before;
        for r in 0..b {
            for oy in 0..oh {
                for ox in 0..ow {
                    for k in 0..c {
                        let g = d[[r, oy, ox, k]];
                        if self.max {
                            let p = *at.next().expect("one per output value");
                            dx[[r, p / w, p % w, k]] += g;
                        } else {
                            let ny = self.win.taps(0, oy, before[0], h).count();
                            let nx = self.win.taps(1, ox, before[1], w).count();
                            let share = g / T::from_f64((ny * nx) as f64);
                            for (_, py) in self.win.taps(0, oy, before[0], h) {
                                for (_, px) in self.win.taps(1, ox, before[1], w) {
                                    dx[[r, py, px, k]] += share;
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok((dx.into_dyn(), Vec::new()))
    }

    fn clone_box(&self) -> Box<dyn TrainOp<T>> {
        Box::new(self.clone())
    }
}
