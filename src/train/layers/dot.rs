//! `Dot` in training: Keras's `batch_dot` of two tensors along one axis each (`axes`), the
//! inputs optionally L2-normalized along those axes first (`normalize`: Keras 3's
//! `x · min(rsqrt(Σx²), 1/ε)`, ε = 1e-7; Keras 2's `x · rsqrt(max(Σx², 1e-12))` for a file
//! it wrote), and its backward pass. The inputs' masks are not
//! read and the output has none, as Keras's `Dot.compute_mask`.

use super::{cache_of, MergeForward, MergeOp, OpCache};
use crate::element::Element;
use crate::error::{LstmError, Result};
use ndarray::{Array3, ArrayD, ArrayViewD, Axis, IxDyn};

/// Keras's `Dot(axes, normalize)`.
#[derive(Debug, Clone)]
pub(super) struct Dot {
    /// The axis of each input (negative from the end; 0, the batch, is refused).
    pub(super) axes: (i64, i64),
    pub(super) normalize: bool,
    /// Keras 2's normalization (a file Keras 2 wrote): `x · rsqrt(max(Σx², 1e-12))`.
    pub(super) keras2_normalize: bool,
}

/// Keras 3's `1 / backend.epsilon()`, the largest factor `normalize` applies.
const MAX_INV_NORM: f64 = 1e7;

/// Keras 2's floor of the squared norm (`tf.linalg.l2_normalize`'s epsilon).
const KERAS2_FLOOR: f64 = 1e-12;

/// How one input was laid out for the product: its axes' order (batch, kept axes, then the
/// summed axis for the first input; batch, summed axis, kept axes for the second), its shape
/// in that order, and its normalization (the normalized values, each lane's factor and
/// whether the factor was clamped).
struct Arranged<T> {
    order: Vec<usize>,
    permuted_shape: Vec<usize>,
    normalized: Option<(ArrayD<T>, Vec<T>, Vec<bool>)>,
}

struct DotCache<T> {
    /// `[B, P, K]` and `[B, K, Q]`.
    xm: Array3<T>,
    ym: Array3<T>,
    parts: [Arranged<T>; 2],
    axes: [usize; 2],
}

/// `x` L2-normalized along `axis` as Keras 3's `normalize`: the values, each lane's factor
/// `min(rsqrt(Σx²), 1e7)` and whether the clamp chose `1e7` (with `keras2`, Keras 2's
/// `rsqrt(max(Σx², 1e-12))` and whether the floor was chosen).
fn normalized<T: Element>(
    x: &ArrayViewD<'_, T>,
    axis: usize,
    keras2: bool,
) -> (ArrayD<T>, Vec<T>, Vec<bool>) {
    let mut out = x.to_owned();
    let cap = T::from_f64(MAX_INV_NORM);
    let floor = T::from_f64(KERAS2_FLOOR);
    let rsqrt = |s: T| T::one() / T::from_f64(s.to_f64().sqrt());
    let (mut invs, mut clamped) = (Vec::new(), Vec::new());
    for mut lane in out.lanes_mut(Axis(axis)) {
        let s = lane.iter().fold(T::zero(), |a, &v| a + v * v);
        // (TensorFlow's `minimum` and `maximum` pass their gradient to the first argument
        // on a tie; a NaN is not clamped)
        let (inv, clamp) = if keras2 {
            let clamp = s < floor;
            (rsqrt(if clamp { floor } else { s }), clamp)
        } else {
            let raw = rsqrt(s);
            let clamp = raw > cap;
            (if clamp { cap } else { raw }, clamp)
        };
        lane.mapv_inplace(|v| v * inv);
        invs.push(inv);
        clamped.push(clamp);
    }
    (out, invs, clamped)
}

/// `x` with `axis` moved last (`last`) or just after the batch, as `[B, P, K]` or `[B, K, P]`,
/// the order of its axes and the shape in that order.
fn arrange<T: Element>(
    x: &ArrayViewD<'_, T>,
    axis: usize,
    last: bool,
) -> (Array3<T>, Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..x.ndim()).filter(|&a| a != axis).collect();
    if last {
        order.push(axis);
    } else {
        order.insert(1, axis);
    }
    let moved = x.view().permuted_axes(IxDyn(&order));
    let permuted_shape = moved.shape().to_vec();
    let (b, k) = (x.shape()[0], x.shape()[axis]);
    let p = x.len() / (b * k).max(1);
    let shape = if last { (b, p, k) } else { (b, k, p) };
    let m = moved
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order(shape)
        .expect("the same number of values");
    (m, order, permuted_shape)
}

/// The inverse of [`arrange`]: `m` (laid out as `order`, shape `permuted_shape`) back in the
/// input's own axis order.
fn unarrange<T: Element>(m: Array3<T>, order: &[usize], permuted_shape: &[usize]) -> ArrayD<T> {
    let mut inverse = vec![0; order.len()];
    for (k, &a) in order.iter().enumerate() {
        inverse[a] = k;
    }
    m.into_shape_with_order(IxDyn(permuted_shape))
        .expect("the same number of values")
        .permuted_axes(IxDyn(&inverse))
        .as_standard_layout()
        .into_owned()
}

impl Dot {
    fn axis(&self, k: usize, ndim: usize, name: &str) -> Result<usize> {
        let a = if k == 0 { self.axes.0 } else { self.axes.1 };
        let at = if a < 0 { a + ndim as i64 } else { a };
        if at <= 0 || at as usize >= ndim {
            return Err(LstmError::invalid(
                format!("axes of layer {name}"),
                format!("{a} is not a non-batch axis of a rank-{ndim} input"),
            ));
        }
        Ok(at as usize)
    }
}

impl<T: Element> MergeOp<T> for Dot {
    fn class(&self) -> &'static str {
        "Dot"
    }

    fn forward(
        &self,
        name: &str,
        xs: &[ArrayViewD<'_, T>],
        _masks: &[Option<&ndarray::Array2<bool>>],
    ) -> Result<MergeForward<T>> {
        let [x, y] = xs else {
            return Err(LstmError::invalid(
                format!("layer {name}"),
                format!("Dot takes 2 inputs, got {}", xs.len()),
            ));
        };
        let axes = [self.axis(0, x.ndim(), name)?, self.axis(1, y.ndim(), name)?];
        if x.shape()[0] != y.shape()[0] || x.shape()[axes[0]] != y.shape()[axes[1]] {
            return Err(LstmError::shape(
                format!("second input of layer {name}"),
                &[x.shape()[0], x.shape()[axes[0]]],
                &[y.shape()[0], y.shape()[axes[1]]],
            ));
        }
        let mut parts = Vec::new();
        let mut mats = Vec::new();
        for (k, v) in [x, y].into_iter().enumerate() {
            let norm = self
                .normalize
                .then(|| normalized(v, axes[k], self.keras2_normalize));
            let (m, order, permuted_shape) = match &norm {
                Some((n, _, _)) => arrange(&n.view(), axes[k], k == 0),
                None => arrange(v, axes[k], k == 0),
            };
            mats.push(m);
            parts.push(Arranged {
                order,
                permuted_shape,
                normalized: norm,
            });
        }
        let ym = mats.pop().expect("two inputs");
        let xm = mats.pop().expect("two inputs");
        let b = xm.dim().0;
        let mut out = Array3::<T>::zeros((b, xm.dim().1, ym.dim().2));
        for i in 0..b {
            out.index_axis_mut(Axis(0), i)
                .assign(&xm.index_axis(Axis(0), i).dot(&ym.index_axis(Axis(0), i)));
        }
        // [B] + x's kept axes + y's kept axes (at least [B, 1], as `batch_dot`)
        let mut shape = vec![b];
        shape.extend(&parts[0].permuted_shape[1..parts[0].permuted_shape.len() - 1]);
        shape.extend(&parts[1].permuted_shape[2..]);
        if shape.len() == 1 {
            shape.push(1);
        }
        let y_out = out
            .into_shape_with_order(IxDyn(&shape))
            .expect("the same number of values");
        let [p0, p1]: [Arranged<T>; 2] = match parts.try_into() {
            Ok(p) => p,
            Err(_) => unreachable!("two inputs"),
        };
        Ok(MergeForward {
            y: y_out,
            mask: None,
            extra: Vec::new(),
            cache: Box::new(DotCache {
                xm,
                ym,
                parts: [p0, p1],
                axes,
            }),
        })
    }

    fn backward(
        &self,
        name: &str,
        cache: &OpCache,
        d: ArrayD<T>,
    ) -> Result<(Vec<Option<ArrayD<T>>>, Vec<ArrayD<T>>)> {
        let c = cache_of::<DotCache<T>>(cache, name)?;
        let (b, p, k) = c.xm.dim();
        let q = c.ym.dim().2;
        let d = d
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((b, p, q))
            .map_err(|_| {
                LstmError::invalid(
                    format!("cotangent of layer {name}"),
                    format!("{} values for an output of {}", b * p * q, b * p * q),
                )
            })?;
        let mut dx = Array3::<T>::zeros((b, p, k));
        let mut dy = Array3::<T>::zeros((b, k, q));
        for i in 0..b {
            let di = d.index_axis(Axis(0), i);
            dx.index_axis_mut(Axis(0), i)
                .assign(&di.dot(&c.ym.index_axis(Axis(0), i).t()));
            dy.index_axis_mut(Axis(0), i)
                .assign(&c.xm.index_axis(Axis(0), i).t().dot(&di));
        }
        let mut grads = Vec::new();
        for (m, (part, &axis)) in [dx, dy].into_iter().zip(c.parts.iter().zip(&c.axes)) {
            let mut g = unarrange(m, &part.order, &part.permuted_shape);
            if let Some((n, invs, clamped)) = &part.normalized {
                // y = x · inv: dx = inv · (dy - y (dy · y)), or inv · dy where inv is the
                // clamp (a constant there)
                for ((mut lane, yl), (&inv, &clamp)) in g
                    .lanes_mut(Axis(axis))
                    .into_iter()
                    .zip(n.lanes(Axis(axis)))
                    .zip(invs.iter().zip(clamped))
                {
                    let dot = lane
                        .iter()
                        .zip(yl.iter())
                        .fold(T::zero(), |a, (&g, &v)| a + g * v);
                    for (gv, &v) in lane.iter_mut().zip(yl.iter()) {
                        *gv = if clamp {
                            inv * *gv
                        } else {
                            inv * (*gv - v * dot)
                        };
                    }
                }
            }
            grads.push(Some(g));
        }
        Ok((grads, Vec::new()))
    }

    fn clone_box(&self) -> Box<dyn MergeOp<T>> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::arr2;

    /// A zero vector under `normalize`: Keras's clamp `min(rsqrt(0), 1e7)` gives 0, not NaN,
    /// and the gradient through the clamp is `1e7 · dy` (TensorFlow 2.21's GradientTape on
    /// this input: `[[6708203.5, 13416407.0], [0.31678385, -0.23758788]]` and
    /// `[[0, 0], [0.98994946, 0.9899496]]`).
    #[test]
    fn normalized_dot_of_a_zero_vector_is_keras_s() {
        let dot = Dot {
            axes: (1, 1),
            normalize: true,
            keras2_normalize: false,
        };
        let x = arr2(&[[0.0f32, 0.0], [3.0, 4.0]]).into_dyn();
        let y = arr2(&[[1.0f32, 2.0], [1.0, -1.0]]).into_dyn();
        let f = MergeOp::<f32>::forward(&dot, "dot", &[x.view(), y.view()], &[None, None]).unwrap();
        assert_eq!(f.y.shape(), &[2, 1]);
        assert_eq!(f.y[[0, 0]], 0.0);
        assert!((f.y[[1, 0]] + 0.141_421_35).abs() < 1e-7, "{}", f.y);
        let d = arr2(&[[1.5f32], [2.0]]).into_dyn();
        let (g, w) = MergeOp::<f32>::backward(&dot, "dot", &f.cache, d).unwrap();
        assert!(w.is_empty());
        let (gx, gy) = (g[0].clone().unwrap(), g[1].clone().unwrap());
        let tf_x = [6_708_203.5f32, 13_416_407.0, 0.316_783_85, -0.237_587_88];
        let tf_y = [0.0f32, 0.0, 0.989_949_46, 0.989_949_6];
        for (got, want) in gx.iter().zip(tf_x).chain(gy.iter().zip(tf_y)) {
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{got} vs {want}"
            );
        }
    }

    /// Keras 2's normalization of a vector of squared norm 2.5e-13 (under its floor 1e-12):
    /// tf-keras 2.21's Dot and GradientTape on this input give `[0.49193496, -0.14142135]`,
    /// `[[670820.375, 1341640.75], [0.31678385, -0.23758788]]` and `[[0.05366564,
    /// -0.02683282], [0.98994946, 0.9899496]]`.
    #[test]
    fn keras2_normalized_dot_floors_the_squared_norm() {
        let dot = Dot {
            axes: (1, 1),
            normalize: true,
            keras2_normalize: true,
        };
        let x = arr2(&[[3e-7f32, 4e-7], [3.0, 4.0]]).into_dyn();
        let y = arr2(&[[1.0f32, 2.0], [1.0, -1.0]]).into_dyn();
        let f = MergeOp::<f32>::forward(&dot, "dot", &[x.view(), y.view()], &[None, None]).unwrap();
        assert!((f.y[[0, 0]] - 0.491_934_96).abs() < 1e-6, "{}", f.y);
        let d = arr2(&[[1.5f32], [2.0]]).into_dyn();
        let (g, _) = MergeOp::<f32>::backward(&dot, "dot", &f.cache, d).unwrap();
        let tf = [
            670_820.4f32,
            1_341_640.8,
            0.316_783_85,
            -0.237_587_88,
            0.053_665_64,
            -0.026_832_82,
            0.989_949_46,
            0.989_949_6,
        ];
        let got: Vec<f32> = g.iter().flat_map(|a| a.clone().unwrap()).collect();
        for (got, want) in got.iter().zip(tf) {
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{got} vs {want}"
            );
        }
    }

    #[test]
    fn dot_refuses_the_batch_axis_and_mismatched_lengths() {
        let x = ndarray::Array3::<f64>::zeros((2, 3, 4)).into_dyn();
        let y = ndarray::Array3::<f64>::zeros((2, 5, 4)).into_dyn();
        let batch = Dot {
            axes: (0, 0),
            normalize: false,
            keras2_normalize: false,
        };
        let Err(e) = MergeOp::<f64>::forward(&batch, "dot", &[x.view(), y.view()], &[None, None])
        else {
            panic!("the batch axis was taken");
        };
        assert!(e.to_string().contains("axes of layer dot"), "{e}");
        let wrong = Dot {
            axes: (1, 1),
            normalize: false,
            keras2_normalize: false,
        };
        let Err(e) = MergeOp::<f64>::forward(&wrong, "dot", &[x.view(), y.view()], &[None, None])
        else {
            panic!("lengths 3 and 5 were multiplied");
        };
        assert!(e.to_string().contains("second input of layer dot"), "{e}");
    }
}
