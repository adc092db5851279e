//! Dropout in training mode: the masks' generator, a Dropout layer's scale mask and a
//! recurrent layer's input dropout.

use crate::element::Element;
use crate::error::{LstmError, Result};
use ndarray::{Array3, ArrayD, ArrayView3, IxDyn};

/// SplitMix64: the Dropout masks' generator.
pub(crate) struct SplitMix(pub(crate) u64);

impl SplitMix {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A recurrent layer's input dropout in training mode (Keras's `dropout` argument with
/// `recurrent_dropout=0`: the cell multiplies every step's input by one mask drawn per call,
/// `inputs * dp_mask` with `dp_mask` of `ones_like(inputs[:, 0])`, keras/src/layers/rnn): `x`
/// times a `[B, 1, I]` mask broadcast over the steps, and that mask; `x` itself otherwise.
/// `at`: the layer and direction (a Bidirectional's draw their own masks).
pub(crate) fn input_dropout<T: Element>(
    name: &str,
    x: ArrayView3<'_, T>,
    rate: f64,
    training: Option<u64>,
    (at, dir): (usize, usize),
) -> Result<(Array3<T>, Option<ArrayD<T>>)> {
    match training {
        Some(seed) if rate > 0.0 => {
            let mut rng = SplitMix(
                seed ^ (at as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
                    ^ (dir as u64 + 1).wrapping_mul(0x8CB9_2BA7_2F3D_8DD7),
            );
            let m = dropout_mask(
                name,
                rate,
                Some(&[None, Some(1), None]),
                x.shape(),
                &mut rng,
            )?;
            let xm = (&x.into_dyn() * &m)
                .into_dimensionality::<ndarray::Ix3>()
                .expect("3-D");
            Ok((xm, Some(m)))
        }
        _ => Ok((x.to_owned(), None)),
    }
}

/// The scale mask of a Dropout layer (`1 / (1 - rate)` where kept, 0 where dropped) for an
/// input of `shape`: one draw per element of `noise_shape`, broadcast.
pub(crate) fn dropout_mask<T: Element>(
    name: &str,
    rate: f64,
    noise_shape: Option<&[Option<usize>]>,
    shape: &[usize],
    rng: &mut SplitMix,
) -> Result<ArrayD<T>> {
    let ns: Vec<usize> = match noise_shape {
        None => shape.to_vec(),
        Some(ns) => {
            if ns.len() != shape.len() {
                return Err(LstmError::invalid(
                    format!("noise_shape of layer {name}"),
                    format!("has {} axes, the input {}", ns.len(), shape.len()),
                ));
            }
            ns.iter()
                .zip(shape)
                .map(|(n, &s)| match n {
                    None => Ok(s),
                    Some(n) if *n == s || *n == 1 => Ok(*n),
                    Some(n) => Err(LstmError::invalid(
                        format!("noise_shape of layer {name}"),
                        format!("{n} does not broadcast to the input's {s} (shape {shape:?})"),
                    )),
                })
                .collect::<Result<_>>()?
        }
    };
    let scale = T::from_f64(1.0 / (1.0 - rate));
    let m = ArrayD::from_shape_fn(IxDyn(&ns), |_| {
        if rng.next_f64() >= rate {
            scale
        } else {
            T::zero()
        }
    });
    Ok(m.broadcast(IxDyn(shape))
        .expect("checked to broadcast")
        .to_owned())
}

#[cfg(test)]
mod tests {
    use super::{dropout_mask, SplitMix};
    use ndarray::{ArrayD, Axis};

    #[test]
    fn dropout_masks_keep_one_minus_rate_scaled() {
        let mut rng = SplitMix(3);
        for rate in [0.1, 0.5, 0.9] {
            let m: ArrayD<f64> = dropout_mask("d", rate, None, &[40, 50, 20], &mut rng).unwrap();
            let scale = 1.0 / (1.0 - rate);
            assert!(m.iter().all(|&v| v == 0.0 || v == scale));
            let kept = m.iter().filter(|&&v| v != 0.0).count() as f64 / m.len() as f64;
            assert!((kept - (1.0 - rate)).abs() < 0.02, "{rate}: kept {kept}");
        }
        // noise_shape (None, 1, None): one draw per (row, feature), the same at every step
        let m: ArrayD<f32> =
            dropout_mask("d", 0.5, Some(&[None, Some(1), None]), &[3, 7, 4], &mut rng).unwrap();
        for s in 1..7 {
            assert_eq!(m.index_axis(Axis(1), s), m.index_axis(Axis(1), 0));
        }
        for bad in [vec![None, Some(2), None], vec![None, None]] {
            let e = dropout_mask::<f32>("drop", 0.5, Some(&bad), &[3, 7, 4], &mut rng).unwrap_err();
            assert!(e.to_string().contains("noise_shape of layer drop"), "{e}");
        }
    }
}
