//! Keras's `OrthogonalRegularizer`: its loss and gradient.

use super::Orthogonal;
use crate::element::Element;
use ndarray::{ArrayD, ArrayViewD};

/// Keras's `OrthogonalRegularizer(factor, mode)` of a rank-2 `w` and, with `grad`, its
/// gradient (TensorFlow's: `|p|`'s is `sign(p)`, 0 at 0; through the clamp of the inverse
/// norm, `1e7`). Another rank gives NaN ([`Regularizer::check_shape`] refuses it first).
pub(super) fn orthogonal<T: Element>(
    o: Orthogonal,
    w: ArrayViewD<'_, T>,
    grad: bool,
) -> (T, Option<ArrayD<T>>) {
    let Ok(w2) = w.view().into_dimensionality::<ndarray::Ix2>() else {
        return (T::from_f64(f64::NAN), None);
    };
    // the vectors normalized: the rows of x
    let x = if o.rows {
        w2.to_owned()
    } else {
        w2.t().to_owned()
    };
    let size = x.nrows();
    let cap = T::from_f64(1e7);
    let mut inv = Vec::with_capacity(size);
    let mut n = x.clone();
    for (mut row, xr) in n.rows_mut().into_iter().zip(x.rows()) {
        let sq = xr.iter().fold(T::zero(), |s, &v| s + v * v);
        let r = T::one() / T::from_f64(sq.to_f64().sqrt());
        // (min(rsqrt, 1e7): past the cap, or NaN, the constant's branch)
        let clamped = !matches!(
            r.partial_cmp(&cap),
            Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
        );
        let r = if clamped { cap } else { r };
        row.mapv_inplace(|v| v * r);
        inv.push((r, clamped));
    }
    let p = n.dot(&n.t());
    let mut sum = T::zero();
    for ((i, j), &v) in p.indexed_iter() {
        if i != j {
            sum += v.abs();
        }
    }
    let pairs = T::from_f64(size as f64 * (size as f64 - 1.0) / 2.0);
    let f = T::from_f64(o.factor) * T::from_f64(0.5);
    let loss = f * sum / pairs;
    if !grad {
        return (loss, None);
    }
    // dL/dp off the diagonal, then dL/dn = (G + Gᵀ) n, then through each row's normalization
    let scale = f / pairs;
    let g = ndarray::Array2::from_shape_fn((size, size), |(i, j)| {
        let v = p[[i, j]];
        if i == j || v == T::zero() {
            T::zero()
        } else if v > T::zero() {
            scale
        } else {
            -scale
        }
    });
    let gs = &g + &g.t();
    let dn = gs.dot(&n);
    let mut dx = dn.clone();
    for (((mut d, dnr), nr), &(r, clamped)) in dx
        .rows_mut()
        .into_iter()
        .zip(dn.rows())
        .zip(n.rows())
        .zip(&inv)
    {
        if clamped {
            d.mapv_inplace(|v| v * r);
        } else {
            let dot = dnr.iter().zip(nr).fold(T::zero(), |s, (&a, &b)| s + a * b);
            for ((dv, &a), &b) in d.iter_mut().zip(dnr).zip(nr) {
                *dv = r * (a - b * dot);
            }
        }
    }
    let dx = if o.rows { dx } else { dx.t().to_owned() };
    (loss, Some(dx.into_dyn()))
}
