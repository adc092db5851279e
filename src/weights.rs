//! LSTM weights in Keras layout, validated against the configuration, and seeded random
//! initialisation with Keras's distributions.

use crate::config::{Cell, Distribution, FanMode, Initializer, LstmConfig};
use crate::element::Element;
use crate::error::{LstmError, Result};
use ndarray::{Array1, Array2, ArrayD, Ix2};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// The weights of one recurrent layer in Keras layout: `kernel [I, G·H]`,
/// `recurrent_kernel [H, G·H]`, `bias` (absent when `use_bias` is false), with G gate blocks
/// of H columns each ([`Cell::gates`](crate::Cell::gates)):
///
/// - LSTM: G = 4, blocks input, forget, cell candidate, output (`i, f, c, o`); bias `[4H]`.
/// - GRU: G = 3, blocks update, reset, candidate (`z, r, h`); with `reset_after` the bias is
///   Keras's `[2, 3H]` flattened to `[6H]` (the input bias, then the recurrent bias), without
///   it `[3H]`.
/// - SimpleRNN: G = 1; bias `[H]`.
///
/// ```
/// use lstm_wgpu::{LstmConfig, LstmWeights};
/// let config = LstmConfig::new(4);
/// let w = LstmWeights::<f32>::random(&config, 3, 42).unwrap();
/// assert_eq!(w.kernel.dim(), (3, 16));
/// assert_eq!(w.recurrent_kernel.dim(), (4, 16));
/// // unit_forget_bias: ones in the forget block, zeros elsewhere.
/// let b = w.bias.as_ref().unwrap();
/// assert_eq!(b[4], 1.0);
/// assert_eq!(b[0], 0.0);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LstmWeights<T> {
    /// `[I, G·H]`.
    pub kernel: Array2<T>,
    /// `[H, G·H]`.
    pub recurrent_kernel: Array2<T>,
    /// `[G·H]` (`[6H]` for a GRU with `reset_after`), present exactly when the configuration
    /// has `use_bias`.
    pub bias: Option<Array1<T>>,
}

impl<T: Element> LstmWeights<T> {
    /// Builds weights for `config` with `input_dim` input features, checking every shape.
    pub fn new(
        config: &LstmConfig,
        input_dim: usize,
        kernel: Array2<T>,
        recurrent_kernel: Array2<T>,
        bias: Option<Array1<T>>,
    ) -> Result<Self> {
        let w = LstmWeights {
            kernel,
            recurrent_kernel,
            bias,
        };
        w.validate(config, input_dim)?;
        Ok(w)
    }

    /// Checks the shapes against `config` and `input_dim`.
    pub fn validate(&self, config: &LstmConfig, input_dim: usize) -> Result<()> {
        config.validate()?;
        if input_dim == 0 {
            return Err(LstmError::invalid("input_dim", "must be at least 1"));
        }
        let h4 = config.cell.gates() * config.units;
        let check = |what: &str, expected: &[usize], actual: &[usize]| {
            if expected != actual {
                Err(LstmError::shape(
                    format!("{}/{what}", config.name),
                    expected,
                    actual,
                ))
            } else {
                Ok(())
            }
        };
        check("kernel", &[input_dim, h4], self.kernel.shape())?;
        check(
            "recurrent_kernel",
            &[config.units, h4],
            self.recurrent_kernel.shape(),
        )?;
        match (&self.bias, config.use_bias) {
            (Some(b), true) => check("bias", &[bias_len(config)], b.shape())?,
            (None, true) => {
                return Err(LstmError::MissingWeight {
                    name: format!("{}/bias", config.name),
                })
            }
            (Some(b), false) => {
                return Err(LstmError::shape(
                    format!("{}/bias (use_bias is false)", config.name),
                    &[],
                    b.shape(),
                ))
            }
            (None, false) => {}
        }
        Ok(())
    }

    /// The input width I.
    pub fn input_dim(&self) -> usize {
        self.kernel.nrows()
    }

    /// Takes the layer's weights from the front of a Keras `get_weights()`-ordered list
    /// (`kernel`, `recurrent_kernel`, then `bias` when `use_bias`), checking their shapes.
    /// Returns the weights and the number of arrays consumed.
    ///
    /// ```
    /// use lstm_wgpu::{LstmConfig, LstmWeights};
    /// use ndarray::{ArrayD, IxDyn};
    /// let c = LstmConfig::new(2).use_bias(false);
    /// let list = vec![ArrayD::<f32>::zeros(IxDyn(&[3, 8])), ArrayD::zeros(IxDyn(&[2, 8]))];
    /// let (w, used) = LstmWeights::from_keras_list(&c, &list).unwrap();
    /// assert_eq!((w.input_dim(), used), (3, 2));
    /// ```
    pub fn from_keras_list(config: &LstmConfig, list: &[ArrayD<T>]) -> Result<(Self, usize)> {
        let name = |w: &str| format!("{}/{w}", config.name);
        let gh = config.cell.gates() * config.units;
        let take2 = |i: usize, what: &str| -> Result<Array2<T>> {
            let a = list
                .get(i)
                .ok_or_else(|| LstmError::MissingWeight { name: name(what) })?;
            a.clone()
                .into_dimensionality::<Ix2>()
                .map_err(|_| LstmError::shape(name(what), &[0, gh], a.shape()))
        };
        let kernel = take2(0, "kernel")?;
        let recurrent_kernel = take2(1, "recurrent_kernel")?;
        let bias = if config.use_bias {
            let a = list
                .get(2)
                .ok_or_else(|| LstmError::MissingWeight { name: name("bias") })?;
            let expected: &[usize] = match config.cell {
                Cell::Gru { reset_after: true } => &[2, gh],
                _ => &[gh],
            };
            if a.shape() != expected {
                return Err(LstmError::shape(name("bias"), expected, a.shape()));
            }
            Some(Array1::from_iter(a.iter().cloned()))
        } else {
            None
        };
        let used = 2 + usize::from(config.use_bias);
        let input_dim = kernel.nrows();
        Ok((
            LstmWeights::new(config, input_dim, kernel, recurrent_kernel, bias)?,
            used,
        ))
    }

    /// Fresh weights drawn with the configuration's initializers from an RNG seeded with `seed`
    /// (Keras defaults: glorot_uniform kernel, orthogonal recurrent kernel, zero bias with ones
    /// in the forget block when `unit_forget_bias`).
    pub fn random(config: &LstmConfig, input_dim: usize, seed: u64) -> Result<Self> {
        config.validate()?;
        if input_dim == 0 {
            return Err(LstmError::invalid("input_dim", "must be at least 1"));
        }
        let h = config.units;
        let mut rng = StdRng::seed_from_u64(seed);
        let gh = config.cell.gates() * h;
        let kernel = sample(&config.kernel_initializer, input_dim, gh, &mut rng);
        let recurrent_kernel = sample(&config.recurrent_initializer, h, gh, &mut rng);
        let bias = config.use_bias.then(|| {
            let n = bias_len(config);
            let mut b = sample(&config.bias_initializer, 1, n, &mut rng)
                .into_shape_with_order(n)
                .expect("1 x n has n elements");
            if config.unit_forget_bias && config.cell == Cell::Lstm {
                b.slice_mut(ndarray::s![h..2 * h]).fill(T::one());
            }
            b
        });
        LstmWeights::new(config, input_dim, kernel, recurrent_kernel, bias)
    }
}

/// The length of a layer's bias vector.
pub(crate) fn bias_len(config: &LstmConfig) -> usize {
    let gh = config.cell.gates() * config.units;
    match config.cell {
        Cell::Gru { reset_after: true } => 2 * gh,
        _ => gh,
    }
}

/// A standard normal draw from two uniform draws in [0, 1) of `uniform` (Box-Muller; `1 - u`
/// keeps the logarithm finite).
pub(crate) fn standard_normal(mut uniform: impl FnMut() -> f64) -> f64 {
    let u1 = 1.0 - uniform();
    let u2 = uniform();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Draws a `rows x cols` matrix from `init` (fan_in = rows, fan_out = cols, as Keras computes
/// them for a 2-D variable).
fn sample<T: Element>(init: &Initializer, rows: usize, cols: usize, rng: &mut StdRng) -> Array2<T> {
    let (fan_in, fan_out) = (rows as f64, cols as f64);
    let uniform = |rng: &mut StdRng, lo: f64, hi: f64| lo + (hi - lo) * rng.random::<f64>();
    let normal = |rng: &mut StdRng| -> f64 { standard_normal(|| rng.random::<f64>()) };
    let truncated = |rng: &mut StdRng, mean: f64, stddev: f64| loop {
        let z = normal(rng);
        if z.abs() <= 2.0 {
            break mean + stddev * z;
        }
    };
    // Keras scales truncated-normal variance initializers by 1 / 0.8796... so that the
    // truncated distribution keeps the intended variance.
    const TRUNC_STD: f64 = 0.879_625_661_034_239_8;
    let fill =
        |f: &mut dyn FnMut() -> f64| Array2::from_shape_fn((rows, cols), |_| T::from_f64(f()));
    match init {
        Initializer::Zeros => Array2::zeros((rows, cols)),
        Initializer::Ones => Array2::ones((rows, cols)),
        Initializer::Constant(v) => Array2::from_elem((rows, cols), T::from_f64(*v)),
        Initializer::GlorotUniform | Initializer::HeUniform | Initializer::LecunUniform => {
            let scale = match init {
                Initializer::GlorotUniform => 2.0 / (fan_in + fan_out),
                Initializer::HeUniform => 2.0 / fan_in,
                _ => 1.0 / fan_in,
            };
            let limit = (3.0 * scale).sqrt();
            fill(&mut || uniform(rng, -limit, limit))
        }
        Initializer::GlorotNormal | Initializer::HeNormal | Initializer::LecunNormal => {
            let scale = match init {
                Initializer::GlorotNormal => 2.0 / (fan_in + fan_out),
                Initializer::HeNormal => 2.0 / fan_in,
                _ => 1.0 / fan_in,
            };
            let stddev = scale.sqrt() / TRUNC_STD;
            fill(&mut || truncated(rng, 0.0, stddev))
        }
        Initializer::RandomUniform { minval, maxval } => {
            fill(&mut || uniform(rng, *minval, *maxval))
        }
        Initializer::RandomNormal { mean, stddev } => fill(&mut || mean + stddev * normal(rng)),
        Initializer::TruncatedNormal { mean, stddev } => {
            fill(&mut || truncated(rng, *mean, *stddev))
        }
        Initializer::VarianceScaling {
            scale,
            mode,
            distribution,
        } => {
            let fan = match mode {
                FanMode::FanIn => fan_in,
                FanMode::FanOut => fan_out,
                FanMode::FanAvg => (fan_in + fan_out) / 2.0,
            };
            let variance = scale / fan.max(1.0);
            match distribution {
                Distribution::Uniform => {
                    let limit = (3.0 * variance).sqrt();
                    fill(&mut || uniform(rng, -limit, limit))
                }
                Distribution::UntruncatedNormal => {
                    let stddev = variance.sqrt();
                    fill(&mut || stddev * normal(rng))
                }
                Distribution::TruncatedNormal => {
                    let stddev = variance.sqrt() / TRUNC_STD;
                    fill(&mut || truncated(rng, 0.0, stddev))
                }
            }
        }
        Initializer::Identity { gain } => Array2::from_shape_fn((rows, cols), |(i, j)| {
            T::from_f64(if i == j { *gain } else { 0.0 })
        }),
        Initializer::Orthogonal { gain } => {
            // QR of a normal (max x min) matrix; Keras flips signs so that R has a positive
            // diagonal, which is what Gram-Schmidt gives. The min(rows, cols) vectors are kept
            // as contiguous rows of `v` (v = Qᵀ).
            let (r, c) = (rows.max(cols), rows.min(cols));
            let mut v = Array2::from_shape_fn((c, r), |_| normal(rng));
            for j in 0..c {
                let (done, mut rest) = v.view_mut().split_at(ndarray::Axis(0), j);
                let mut vj = rest.row_mut(0);
                // Modified Gram-Schmidt, twice for stability.
                for _ in 0..2 {
                    for q in done.rows() {
                        let d = vj.dot(&q);
                        vj.scaled_add(-d, &q);
                    }
                }
                let norm = vj.dot(&vj).sqrt();
                vj.mapv_inplace(|x| x / norm);
            }
            let q = if rows < cols { v } else { v.reversed_axes() };
            q.mapv(|x| T::from_f64(gain * x))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variance_scaling_is_glorot_for_fan_avg_uniform() {
        // Keras 2 saves glorot_uniform as VarianceScaling(1.0, fan_avg, uniform)
        let vs = Initializer::from_keras(
            "kernel_initializer",
            &serde_json::json!({"class_name": "VarianceScaling",
                "config": {"scale": 1.0, "mode": "fan_avg", "distribution": "uniform", "seed": null}}),
        )
        .unwrap();
        let a: Array2<f64> = sample(&vs, 30, 50, &mut StdRng::seed_from_u64(3));
        let b: Array2<f64> = sample(
            &Initializer::GlorotUniform,
            30,
            50,
            &mut StdRng::seed_from_u64(3),
        );
        assert_eq!(a, b);
        let bad =
            serde_json::json!({"class_name": "VarianceScaling", "config": {"mode": "fan_max"}});
        let e = Initializer::from_keras("kernel_initializer", &bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kernel_initializer mode") && e.contains("fan_max"),
            "{e}"
        );
        let id = Initializer::Identity { gain: 2.0 };
        let m: Array2<f64> = sample(&id, 3, 3, &mut StdRng::seed_from_u64(0));
        assert_eq!(m, Array2::<f64>::eye(3) * 2.0);
    }

    #[test]
    fn orthogonal_rows_are_orthonormal() {
        let c = LstmConfig::new(5);
        let w = LstmWeights::<f64>::random(&c, 3, 7).unwrap();
        // [H, 4H] with H < 4H: rows are orthonormal.
        let g = w.recurrent_kernel.dot(&w.recurrent_kernel.t());
        for i in 0..5 {
            for j in 0..5 {
                let e = if i == j { 1.0 } else { 0.0 };
                assert!(
                    (g[[i, j]] - e).abs() < 1e-12,
                    "gram[{i},{j}] = {}",
                    g[[i, j]]
                );
            }
        }
    }

    #[test]
    fn glorot_within_limit_and_seeded() {
        let c = LstmConfig::new(8);
        let a = LstmWeights::<f32>::random(&c, 10, 1).unwrap();
        let b = LstmWeights::<f32>::random(&c, 10, 1).unwrap();
        let d = LstmWeights::<f32>::random(&c, 10, 2).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.kernel, d.kernel);
        let limit = (6.0f32 / (10.0 + 32.0)).sqrt();
        assert!(a.kernel.iter().all(|v| v.abs() <= limit));
        assert!(a.kernel.iter().any(|v| v.abs() > limit / 2.0));
    }

    #[test]
    fn no_unit_forget_bias_gives_zero_bias() {
        let c = LstmConfig::new(3).unit_forget_bias(false);
        let w = LstmWeights::<f32>::random(&c, 2, 0).unwrap();
        assert!(w.bias.unwrap().iter().all(|v| *v == 0.0));
    }

    #[test]
    fn shape_errors_name_the_weight() {
        let c = LstmConfig::new(2);
        let e = LstmWeights::<f32>::new(
            &c,
            3,
            Array2::zeros((3, 8)),
            Array2::zeros((2, 7)),
            Some(Array1::zeros(8)),
        )
        .unwrap_err();
        match e {
            LstmError::ShapeMismatch {
                what,
                expected,
                actual,
            } => {
                assert!(what.ends_with("recurrent_kernel"));
                assert_eq!(expected, vec![2, 8]);
                assert_eq!(actual, vec![2, 7]);
            }
            other => panic!("unexpected {other}"),
        }
        let e = LstmWeights::<f32>::new(&c, 3, Array2::zeros((3, 8)), Array2::zeros((2, 8)), None)
            .unwrap_err();
        assert!(matches!(e, LstmError::MissingWeight { ref name } if name.ends_with("bias")));
    }
}
