//! Dropout in training mode: the masks' generator, a Dropout layer's scale mask and a
//! recurrent layer's input dropout.

use crate::element::Element;
use crate::error::{LstmError, Result};
use ndarray::{Array2, Array3, ArrayD, ArrayView3, IxDyn};

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
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The generator of a recurrent layer's input masks: layer `at`, direction `dir`.
fn direction_stream(seed: u64, (at, dir): (usize, usize)) -> SplitMix {
    SplitMix(
        seed ^ (at as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
            ^ (dir as u64 + 1).wrapping_mul(0x8CB9_2BA7_2F3D_8DD7),
    )
}

/// What distinguishes the stream of a layer's recurrent masks from its input masks'.
const RECURRENT_STREAM: u64 = 0xA076_1D64_78BD_642F;

/// A recurrent layer's masks in training mode with `recurrent_dropout` > 0. Keras's cells
/// then switch to their implementation 1 (`keras/src/layers/rnn/{lstm,gru}.py`:
/// `if self.recurrent_dropout != 0.0: self.implementation = 1`, `dropout_mask_count` 4 or 3)
/// and draw one mask per gate block (LSTM i, f, c, o; GRU z, r, h; SimpleRNN a single one)
/// for the step input (`inputs * dp_mask[k]`, with `dropout`) and for the previous `h`
/// (`h_tm1 * rec_dp_mask[k]`), once per call, used at every step. A GRU's update
/// `z·h_prev + (1 - z)·hh` reads the unmasked `h_prev`.
#[derive(Debug, Clone)]
pub(crate) struct GateMasks<T> {
    /// Per gate block, `[B, I]` (None without `dropout`).
    pub(crate) input: Option<Vec<Array2<T>>>,
    /// Per gate block, `[B, H]`.
    pub(crate) recurrent: Vec<Array2<T>>,
}

impl<T: Element> GateMasks<T> {
    /// The masks of layer `name` (`gates` blocks, `b` rows, `i` inputs, `h` units) for
    /// rates `(dropout, recurrent_dropout)` and seed `seed`, layer `at`, direction `dir`:
    /// the input masks one after the other from the stream of [`input_dropout`], row-major;
    /// the recurrent masks likewise from a second stream.
    pub(crate) fn draw(
        name: &str,
        (gates, b, i, h): (usize, usize, usize, usize),
        (dropout, recurrent): (f64, f64),
        seed: u64,
        at: (usize, usize),
    ) -> Result<Self> {
        let draw = |rate: f64, width: usize, rng: &mut SplitMix| -> Result<Vec<Array2<T>>> {
            (0..gates)
                .map(|_| {
                    dropout_mask::<T>(name, rate, None, &[b, width], rng)
                        .map(|m| m.into_dimensionality::<ndarray::Ix2>().expect("drawn 2-D"))
                })
                .collect()
        };
        let input = if dropout > 0.0 {
            Some(draw(dropout, i, &mut direction_stream(seed, at))?)
        } else {
            None
        };
        let mut rng = direction_stream(seed ^ RECURRENT_STREAM, at);
        Ok(GateMasks {
            input,
            recurrent: draw(recurrent, h, &mut rng)?,
        })
    }
}

/// A recurrent direction's dropout in training mode, as Keras's cell applies it: without
/// `recurrent_dropout`, [`input_dropout`] (the input times one `[B, 1, I]` mask, returned);
/// with it, the input as it is and the per-gate [`GateMasks`] the cell applies. `rates` is
/// `(dropout, recurrent_dropout)`; outside training mode the input as it is.
#[allow(clippy::type_complexity)]
pub(crate) fn recurrent_dropout<T: Element>(
    cfg: &crate::config::LstmConfig,
    x: ArrayView3<'_, T>,
    (dropout, recurrent): (f64, f64),
    training: Option<u64>,
    at: (usize, usize),
) -> Result<(Array3<T>, Option<ArrayD<T>>, Option<GateMasks<T>>)> {
    match training {
        Some(seed) if recurrent > 0.0 => {
            let (b, _, i) = x.dim();
            let dims = (cfg.cell.gates(), b, i, cfg.units);
            let masks = GateMasks::draw(&cfg.name, dims, (dropout, recurrent), seed, at)?;
            Ok((x.to_owned(), None, Some(masks)))
        }
        _ => {
            let (xin, m) = input_dropout(&cfg.name, x, dropout, training, at)?;
            Ok((xin, m, None))
        }
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
            let mut rng = direction_stream(seed, (at, dir));
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
