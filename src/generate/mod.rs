//! Generation loops: a model that predicts the next token's distribution from a window of
//! token ids (Keras's text-generation example, textgenrnn) run token after token, each
//! drawn by a [`Sampler`] (the argmax, or temperature and top-k sampling from a seeded
//! `rand` generator, or from given uniforms to replay a Python loop's draws).
//!
//! ```
//! use lstm_wgpu::generate::{generate, Sampler};
//! // a toy "model": always predicts token (last + 1) mod 5
//! let next = |window: &[i64]| -> lstm_wgpu::Result<Vec<f32>> {
//!     let mut p = vec![0.0; 5];
//!     p[((window[window.len() - 1] + 1) % 5) as usize] = 1.0;
//!     Ok(p)
//! };
//! let tokens = generate(next, &[0, 1], 2, 6, &mut Sampler::greedy())?;
//! assert_eq!(tokens, [2, 3, 4, 0, 1, 2]);
//! # Ok::<(), lstm_wgpu::LstmError>(())
//! ```

use crate::error::{LstmError, Result};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

#[derive(Debug)]
enum Draws {
    Seeded(Box<StdRng>),
    Replay(std::vec::IntoIter<f64>),
}

/// How the next token is drawn from a predicted distribution: the distribution tempered
/// (`p^(1/temperature)`, renormalised; temperature 0 is the argmax), cut to its `top_k`
/// most likely tokens (ties by index) and renormalised, then drawn by inverse CDF from a
/// uniform `u` in [0, 1): the first token whose cumulative probability reaches `u`, in
/// float64.
#[derive(Debug)]
pub struct Sampler {
    temperature: f64,
    top_k: Option<usize>,
    draws: Draws,
}

impl Sampler {
    /// The most likely token every time.
    pub fn greedy() -> Self {
        Sampler {
            temperature: 0.0,
            top_k: None,
            draws: Draws::Seeded(Box::new(StdRng::seed_from_u64(0))),
        }
    }

    /// Temperature and top-k sampling from a `rand` generator seeded by `seed`.
    ///
    /// ```
    /// use lstm_wgpu::generate::Sampler;
    /// let mut s = Sampler::new(0.8, Some(3), 42)?;
    /// let t = s.sample(&[0.1, 0.6, 0.3])?;
    /// assert!(t < 3);
    /// assert!(Sampler::new(-1.0, None, 0).is_err());
    /// # Ok::<(), lstm_wgpu::LstmError>(())
    /// ```
    pub fn new(temperature: f64, top_k: Option<usize>, seed: u64) -> Result<Self> {
        Self::checked(
            temperature,
            top_k,
            Draws::Seeded(Box::new(StdRng::seed_from_u64(seed))),
        )
    }

    /// Sampling that draws with the given uniforms in order (to replay the draws of
    /// another implementation's loop, e.g. numpy's `random_sample`); running out of them
    /// is an error.
    pub fn replay(temperature: f64, top_k: Option<usize>, uniforms: Vec<f64>) -> Result<Self> {
        if let Some(u) = uniforms.iter().find(|u| !(0.0..1.0).contains(*u)) {
            return Err(LstmError::invalid(
                "uniforms",
                format!("{u} is not in [0, 1)"),
            ));
        }
        Self::checked(temperature, top_k, Draws::Replay(uniforms.into_iter()))
    }

    fn checked(temperature: f64, top_k: Option<usize>, draws: Draws) -> Result<Self> {
        if !temperature.is_finite() || temperature < 0.0 {
            return Err(LstmError::invalid(
                "temperature",
                format!("{temperature} (must be 0 for the argmax, or positive)"),
            ));
        }
        if top_k == Some(0) {
            return Err(LstmError::invalid("top_k", "0 (keep at least one token)"));
        }
        Ok(Sampler {
            temperature,
            top_k,
            draws,
        })
    }

    /// The next token drawn from `probs` (a distribution over the vocabulary: non-negative,
    /// not all zero, no NaN).
    pub fn sample(&mut self, probs: &[f32]) -> Result<usize> {
        if probs.is_empty() {
            return Err(LstmError::invalid("probabilities", "an empty distribution"));
        }
        if let Some((k, p)) = probs
            .iter()
            .enumerate()
            .find(|(_, p)| p.is_nan() || **p < 0.0 || p.is_infinite())
        {
            return Err(LstmError::invalid(
                "probabilities",
                format!("token {k} has probability {p} (the model's output is not a distribution)"),
            ));
        }
        let argmax = || {
            probs
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (k, &p)| {
                    if p > best.1 {
                        (k, p)
                    } else {
                        best
                    }
                })
                .0
        };
        if self.temperature == 0.0 {
            return Ok(argmax());
        }
        let mut p: Vec<f64> = probs
            .iter()
            .map(|&v| f64::from(v).powf(1.0 / self.temperature))
            .collect();
        let sum: f64 = p.iter().sum();
        if !(sum > 0.0 && sum.is_finite()) {
            return Err(LstmError::invalid(
                "probabilities",
                format!(
                    "their tempered sum is {sum} (temperature {})",
                    self.temperature
                ),
            ));
        }
        p.iter_mut().for_each(|v| *v /= sum);
        if let Some(k) = self.top_k.filter(|&k| k < p.len()) {
            let mut order: Vec<usize> = (0..p.len()).collect();
            // descending, ties by index (a stable sort)
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
            let mut keep = vec![0.0; p.len()];
            for &i in &order[..k] {
                keep[i] = p[i];
            }
            let sum: f64 = keep.iter().sum();
            p = keep.into_iter().map(|v| v / sum).collect();
        }
        let u = match &mut self.draws {
            Draws::Seeded(rng) => rng.random::<f64>(),
            Draws::Replay(it) => it
                .next()
                .ok_or_else(|| LstmError::invalid("uniforms", "the replayed draws ran out"))?,
        };
        let mut cdf = 0.0;
        for (k, v) in p.iter().enumerate() {
            cdf += v;
            if cdf >= u {
                return Ok(k);
            }
        }
        Ok(p.len() - 1)
    }
}

/// Runs a generation loop: `steps` tokens, each drawn by `sampler` from `next(window)`, the
/// distribution a model predicts from the last `window` tokens (`seed` first; the window
/// is shorter while fewer tokens exist, never padded). Returns the generated tokens (not
/// the seed).
pub fn generate(
    mut next: impl FnMut(&[i64]) -> Result<Vec<f32>>,
    seed: &[i64],
    window: usize,
    steps: usize,
    sampler: &mut Sampler,
) -> Result<Vec<i64>> {
    if seed.is_empty() {
        return Err(LstmError::invalid(
            "seed",
            "at least one token to start from",
        ));
    }
    if window == 0 {
        return Err(LstmError::invalid("window", "at least one token"));
    }
    let mut tokens = seed.to_vec();
    for _ in 0..steps {
        let from = tokens.len().saturating_sub(window);
        let probs = next(&tokens[from..])?;
        let t = sampler.sample(&probs)?;
        tokens.push(t as i64);
    }
    Ok(tokens.split_off(seed.len()))
}

/// The window of a next-token model whose inputs are `(name, dims after the batch)`: its one
/// input's fixed length (the seed must hold that many tokens), or `usize::MAX` for a free
/// length (the whole history is then the window); an error for other models.
pub(crate) fn token_window(inputs: &[(&str, &[Option<usize>])], seed: &[i64]) -> Result<usize> {
    let (name, dims) = match inputs {
        [(name, dims)] if dims.len() == 1 => (name, dims),
        _ => {
            return Err(LstmError::invalid(
                "model",
                "generation needs a model with one input of token ids [batch, steps]",
            ))
        }
    };
    match dims[0] {
        Some(w) if seed.len() < w => Err(LstmError::invalid(
            "seed",
            format!(
                "{} tokens, but the model reads windows of {w} (input {name})",
                seed.len()
            ),
        )),
        Some(w) => Ok(w),
        None => Ok(usize::MAX),
    }
}

/// A window of token ids as a model input `[1, len]`.
pub(crate) fn window_input(w: &[i64]) -> Result<crate::model::ModelInput> {
    let ids = ndarray::Array2::from_shape_vec((1, w.len()), w.to_vec())
        .map_err(|e| LstmError::invalid("window", e.to_string()))?;
    Ok(crate::model::ModelInput::I64(ids.into_dyn()))
}

/// The next-token distribution in a model's output: `[1, V]`, or the last step of
/// `[1, T, V]`.
pub(crate) fn last_distribution(out: &ndarray::ArrayD<f32>) -> Result<Vec<f32>> {
    match out.shape() {
        [1, _] => Ok(out.iter().copied().collect()),
        [1, t, v] if *t > 0 => Ok(out.iter().skip((t - 1) * v).copied().collect()),
        other => Err(LstmError::shape(
            "the model's output (a next-token distribution)",
            &[1, 0],
            other,
        )),
    }
}

mod seq2seq;
pub use seq2seq::{decode_loop, seq2seq, seq2seq_gpu, Seq2SeqOptions, TokenFeed};
