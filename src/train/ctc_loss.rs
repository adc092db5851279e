//! Keras 3's `CTC` loss (`keras.losses.CTC`, TensorFlow backend: `tf.nn.ctc_loss` with the
//! blank at class 0, `logits_time_major=False`): per sample `-log p(label | x)` over the
//! predictions read as logits (`log_softmax` per step, whatever the output's activation),
//! the label the target row's nonzero entries (zeros pad its end), every prediction step
//! counted; then the mean over the batch (`sum_over_batch_size`). The forward-backward
//! recursions in log space over the label with blanks between and around its classes:
//!
//! ```text
//! α_t(s) = lse(α_{t-1}(s), α_{t-1}(s-1), α_{t-1}(s-2) if l'_s ≠ blank, l'_s ≠ l'_{s-2}) + lp_t(l'_s)
//! log p  = lse(α_{T-1}(S-1), α_{T-1}(S-2))       (β the same from the end)
//! dL/dz_t(k) = softmax_t(k) - Σ_{s: l'_s = k} exp(α_t(s) + β_t(s) - lp_t(k) - log p)
//! ```
//!
//! A label no alignment of the steps can emit has an infinite loss (`fit` then stops with
//! `TrainingDiverged`). Keras computes a float64 model's CTC loss in float32
//! (`keras/src/backend/tensorflow/nn.py`: `tf.nn.ctc_loss` refuses float64); here it is in
//! the model's type.

use super::loss::LossGrad;
use crate::element::Element;
use crate::error::{LstmError, Result};
use ndarray::{ArrayD, ArrayViewD, Ix2, Ix3, IxDyn};

/// `log(e^a + e^b)`, exact where either is `-inf`.
fn lse<T: Element>(a: T, b: T) -> T {
    let ninf = T::from_f64(f64::NEG_INFINITY);
    if a == ninf {
        return b;
    }
    if b == ninf {
        return a;
    }
    let m = a.elem_max(b);
    m + ((a - m).exp() + (b - m).exp()).ln()
}

/// The CTC loss of `pred` (`[B, T, classes]`, logits) against `target` (`[B, L]` class ids
/// as values, 0-padded at the end) and its gradient w.r.t. `pred`.
pub(super) fn ctc<T: Element>(
    pred: ArrayViewD<'_, T>,
    target: ArrayViewD<'_, T>,
    mask: Option<ArrayViewD<'_, bool>>,
) -> Result<LossGrad<T>> {
    let (pshape, tshape) = (pred.shape().to_vec(), target.shape().to_vec());
    let z = pred.into_dimensionality::<Ix3>().map_err(|_| {
        LstmError::invalid(
            "predictions of a CTC loss",
            format!("expected [batch, steps, classes], got {pshape:?}"),
        )
    })?;
    let (b, t, k) = z.dim();
    let y = target.into_dimensionality::<Ix2>().map_err(|_| {
        LstmError::invalid(
            "targets of a CTC loss",
            format!("expected [batch, max_label_length], got {tshape:?}"),
        )
    })?;
    if y.nrows() != b {
        return Err(LstmError::shape(
            "targets of a CTC loss",
            &[b, y.ncols()],
            y.shape(),
        ));
    }
    if mask.is_some() {
        return Err(LstmError::invalid(
            "loss mask",
            "a CTC loss takes the whole sequence (its prediction carries a mask)",
        ));
    }
    if t == 0 || k < 2 {
        return Err(LstmError::invalid(
            "predictions of a CTC loss",
            format!("{t} steps of {k} classes (the blank is class 0)"),
        ));
    }
    let ninf = T::from_f64(f64::NEG_INFINITY);
    let zero = T::zero();
    let scale = T::from_f64(1.0 / b as f64);
    let mut grad = ArrayD::<T>::zeros(IxDyn(&[b, t, k]));
    let mut total = zero;
    for r in 0..b {
        // the label: the row's leading nonzero classes
        let mut label = Vec::new();
        for (j, &v) in y.row(r).iter().enumerate() {
            let f = v.to_f64();
            if f.fract() != 0.0 || f < 0.0 || f >= k as f64 {
                return Err(LstmError::invalid(
                    "targets of a CTC loss",
                    format!("row {r}: {f} is not a class in 0..{k}"),
                ));
            }
            if f == 0.0 {
                if y.row(r).iter().skip(j).any(|&v| v != zero) {
                    return Err(LstmError::invalid(
                        "targets of a CTC loss",
                        format!("row {r}: a 0 (the blank, padding) before a class"),
                    ));
                }
                break;
            }
            label.push(f as usize);
        }
        // log-softmax per step
        let mut lp = vec![zero; t * k];
        for s in 0..t {
            let row = z.slice(ndarray::s![r, s, ..]);
            let max = row.iter().fold(ninf, |m, &v| m.elem_max(v));
            let sum = row.iter().fold(zero, |a, &v| a + (v - max).exp());
            let log_sum = max + sum.ln();
            for c in 0..k {
                lp[s * k + c] = row[c] - log_sum;
            }
        }
        let ext: Vec<usize> = (0..2 * label.len() + 1)
            .map(|s| if s % 2 == 0 { 0 } else { label[s / 2] })
            .collect();
        let n = ext.len();
        let skip = |s: usize, other: usize| ext[s] != 0 && ext[s] != ext[other];
        let mut alpha = vec![ninf; t * n];
        let mut beta = vec![ninf; t * n];
        alpha[0] = lp[ext[0]];
        if n > 1 {
            alpha[1] = lp[ext[1]];
        }
        for s in 1..t {
            for j in 0..n {
                let mut v = alpha[(s - 1) * n + j];
                if j >= 1 {
                    v = lse(v, alpha[(s - 1) * n + j - 1]);
                }
                if j >= 2 && skip(j, j - 2) {
                    v = lse(v, alpha[(s - 1) * n + j - 2]);
                }
                alpha[s * n + j] = v + lp[s * k + ext[j]];
            }
        }
        let last = (t - 1) * n;
        beta[last + n - 1] = lp[(t - 1) * k + ext[n - 1]];
        if n > 1 {
            beta[last + n - 2] = lp[(t - 1) * k + ext[n - 2]];
        }
        for s in (0..t - 1).rev() {
            for j in 0..n {
                let mut v = beta[(s + 1) * n + j];
                if j + 1 < n {
                    v = lse(v, beta[(s + 1) * n + j + 1]);
                }
                if j + 2 < n && skip(j, j + 2) {
                    v = lse(v, beta[(s + 1) * n + j + 2]);
                }
                beta[s * n + j] = v + lp[s * k + ext[j]];
            }
        }
        let log_p = if n > 1 {
            lse(alpha[last + n - 1], alpha[last + n - 2])
        } else {
            alpha[last + n - 1]
        };
        total += -log_p;
        // softmax minus the label's occupancy of each class at each step
        for s in 0..t {
            let mut occ = vec![ninf; k];
            for j in 0..n {
                occ[ext[j]] = lse(occ[ext[j]], alpha[s * n + j] + beta[s * n + j]);
            }
            for c in 0..k {
                let l = lp[s * k + c];
                let used = if occ[c] == ninf {
                    zero
                } else {
                    (occ[c] - l - log_p).exp()
                };
                grad[[r, s, c]] = (l.exp() - used) * scale;
            }
        }
    }
    Ok(LossGrad {
        value: total * scale,
        grad,
        wrt_logits: false,
    })
}

#[cfg(test)]
mod tests {
    use super::ctc;
    use ndarray::{ArrayD, IxDyn};

    fn stream(mut seed: u64) -> impl FnMut() -> f64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        }
    }

    /// Against central differences, and against the probability of the label summed over
    /// every alignment by brute force.
    #[test]
    fn ctc_loss_matches_brute_force_and_central_differences() {
        let (b, t, k) = (3, 5, 4);
        let mut next = stream(5);
        let z = ArrayD::from_shape_fn(IxDyn(&[b, t, k]), |_| 2.0 * next());
        // labels: a repeat (needs a blank between), an empty one, a full-length one
        let y = ndarray::arr2(&[[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [3.0, 1.0, 2.0]]).into_dyn();
        let g = ctc(z.view(), y.view(), None).unwrap();
        // brute force: every path of t steps, collapsed (repeats merged, blanks dropped)
        let mut want = 0.0;
        for r in 0..b {
            let label: Vec<usize> = y
                .slice(ndarray::s![r, ..])
                .iter()
                .filter(|&&v| v != 0.0)
                .map(|&v| v as usize)
                .collect();
            let mut p = 0.0;
            for code in 0..k.pow(t as u32) {
                let path: Vec<usize> = (0..t).map(|s| code / k.pow(s as u32) % k).collect();
                let mut out = Vec::new();
                for (s, &c) in path.iter().enumerate() {
                    if c != 0 && (s == 0 || path[s - 1] != c) {
                        out.push(c);
                    }
                }
                if out == label {
                    let mut q = 1.0;
                    for (s, &c) in path.iter().enumerate() {
                        let row = z.slice(ndarray::s![r, s, ..]);
                        let sum: f64 = row.iter().map(|v| v.exp()).sum();
                        q *= row[c].exp() / sum;
                    }
                    p += q;
                }
            }
            want += -f64::ln(p) / b as f64;
        }
        assert!((g.value - want).abs() < 1e-12, "{} vs {want}", g.value);
        let eps = 1e-6;
        let mut worst = 0.0f64;
        for e in 0..z.len() {
            let at = |d: f64| {
                let mut zp = z.clone();
                zp.as_slice_mut().unwrap()[e] += d;
                ctc(zp.view(), y.view(), None).unwrap().value
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            worst = worst.max((fd - g.grad.as_slice().unwrap()[e]).abs());
        }
        assert!(worst < 1e-8, "{worst:e}");
        // a label no alignment can emit: an infinite loss; bad targets name the problem
        let short = ndarray::arr2(&[[1.0, 1.0, 1.0]]).into_dyn();
        let z2 = ArrayD::from_elem(IxDyn(&[1, 4, 2]), 0.5);
        let inf: f64 = ctc(z2.view(), short.view(), None).unwrap().value;
        assert!(inf.is_infinite());
        for (bad, words) in [
            (ndarray::arr2(&[[1.0, 0.0, 2.0]]), "before a class"),
            (ndarray::arr2(&[[1.5, 0.0, 0.0]]), "not a class"),
            (ndarray::arr2(&[[4.0, 0.0, 0.0]]), "not a class"),
        ] {
            let z1 = ArrayD::from_elem(IxDyn(&[1, 5, 4]), 0.1);
            let e = ctc(z1.view(), bad.into_dyn().view(), None)
                .unwrap_err()
                .to_string();
            assert!(e.contains(words), "{e}");
        }
        let e = ctc(z.view(), y.slice(ndarray::s![..2, ..]).into_dyn(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("targets of a CTC loss"), "{e}");
    }
}
