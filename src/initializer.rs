//! Weight initializers as Keras names them (`GlorotUniform`, `Orthogonal`, `VarianceScaling`,
//! ...), read from a layer config's `*_initializer` entries.

use crate::error::{LstmError, Result};
use serde_json::Value;

/// A weight initializer, as Keras names them (used by [`crate::LstmWeights::random`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Initializer {
    /// `GlorotUniform`: U(-l, l), `l = sqrt(6 / (fan_in + fan_out))`.
    GlorotUniform,
    /// `GlorotNormal`: truncated normal, stddev `sqrt(2 / (fan_in + fan_out))`.
    GlorotNormal,
    /// `HeUniform`: U(-l, l), `l = sqrt(6 / fan_in)`.
    HeUniform,
    /// `HeNormal`: truncated normal, stddev `sqrt(2 / fan_in)`.
    HeNormal,
    /// `LecunUniform`: U(-l, l), `l = sqrt(3 / fan_in)`.
    LecunUniform,
    /// `LecunNormal`: truncated normal, stddev `sqrt(1 / fan_in)`.
    LecunNormal,
    /// `Orthogonal` with a gain.
    Orthogonal {
        /// Multiplier of the orthogonal matrix.
        gain: f64,
    },
    /// `Zeros`.
    Zeros,
    /// `Ones`.
    Ones,
    /// `Constant`.
    Constant(f64),
    /// `RandomUniform`.
    RandomUniform {
        /// Lower bound.
        minval: f64,
        /// Upper bound.
        maxval: f64,
    },
    /// `RandomNormal`.
    RandomNormal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        stddev: f64,
    },
    /// `TruncatedNormal` (values beyond two standard deviations are redrawn).
    TruncatedNormal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        stddev: f64,
    },
    /// `VarianceScaling` (what Keras 2 configs save for glorot/he/lecun): variance
    /// `scale / fan` with fan `fan_in`, `fan_out` or their average.
    VarianceScaling {
        /// The variance's numerator.
        scale: f64,
        /// Which fan divides it.
        mode: FanMode,
        /// The distribution drawn from.
        distribution: Distribution,
    },
    /// `Identity` (a gain times the identity matrix, zeros off the diagonal).
    Identity {
        /// Multiplier of the identity.
        gain: f64,
    },
}

/// The fan of a `VarianceScaling` initializer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanMode {
    /// `fan_in`: the kernel's rows.
    FanIn,
    /// `fan_out`: its columns.
    FanOut,
    /// `fan_avg`: their mean.
    FanAvg,
}

/// The distribution of a `VarianceScaling` initializer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    /// `uniform`: U(-l, l), `l = sqrt(3 · variance)`.
    Uniform,
    /// `truncated_normal` (Keras 2's `normal`): within two standard deviations, scaled to
    /// keep the variance.
    TruncatedNormal,
    /// `untruncated_normal`.
    UntruncatedNormal,
}

impl Initializer {
    /// Reads a Keras initializer: a name string (`"glorot_uniform"`) or a
    /// `{"class_name": ..., "config": {...}}` object. `key` names the config key in errors.
    ///
    /// ```
    /// use lstm_wgpu::Initializer;
    /// let v = serde_json::json!({"class_name": "Orthogonal", "config": {"gain": 2.0, "seed": null}});
    /// assert_eq!(Initializer::from_keras("recurrent_initializer", &v).unwrap(),
    ///            Initializer::Orthogonal { gain: 2.0 });
    /// ```
    pub fn from_keras(key: &str, value: &Value) -> Result<Self> {
        let (name, cfg) = match value {
            Value::String(s) => (s.as_str(), Value::Null),
            Value::Object(o) => {
                let name = o.get("class_name").and_then(Value::as_str).ok_or_else(|| {
                    LstmError::bad_config(key, "initializer object without class_name")
                })?;
                (name, o.get("config").cloned().unwrap_or(Value::Null))
            }
            other => return Err(LstmError::unsupported(key, other)),
        };
        let num = |k: &str, default: f64| cfg.get(k).and_then(Value::as_f64).unwrap_or(default);
        Ok(match name {
            "GlorotUniform" | "glorot_uniform" => Initializer::GlorotUniform,
            "GlorotNormal" | "glorot_normal" => Initializer::GlorotNormal,
            "HeUniform" | "he_uniform" => Initializer::HeUniform,
            "HeNormal" | "he_normal" => Initializer::HeNormal,
            "LecunUniform" | "lecun_uniform" => Initializer::LecunUniform,
            "LecunNormal" | "lecun_normal" => Initializer::LecunNormal,
            "Orthogonal" | "orthogonal" => Initializer::Orthogonal {
                gain: num("gain", 1.0),
            },
            "Zeros" | "zeros" => Initializer::Zeros,
            "Ones" | "ones" => Initializer::Ones,
            "Constant" | "constant" => Initializer::Constant(num("value", 0.0)),
            "RandomUniform" | "random_uniform" => Initializer::RandomUniform {
                minval: num("minval", -0.05),
                maxval: num("maxval", 0.05),
            },
            "RandomNormal" | "random_normal" => Initializer::RandomNormal {
                mean: num("mean", 0.0),
                stddev: num("stddev", 0.05),
            },
            "TruncatedNormal" | "truncated_normal" => Initializer::TruncatedNormal {
                mean: num("mean", 0.0),
                stddev: num("stddev", 0.05),
            },
            "Identity" | "identity" => Initializer::Identity {
                gain: num("gain", 1.0),
            },
            "VarianceScaling" | "variance_scaling" => {
                let text = |k: &str, default: &str| {
                    cfg.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or(default)
                        .to_string()
                };
                let mode = match text("mode", "fan_in").as_str() {
                    "fan_in" => FanMode::FanIn,
                    "fan_out" => FanMode::FanOut,
                    "fan_avg" => FanMode::FanAvg,
                    other => return Err(LstmError::unsupported(format!("{key} mode"), other)),
                };
                let distribution = match text("distribution", "truncated_normal").as_str() {
                    "uniform" => Distribution::Uniform,
                    // (Keras 2.0-2.2's name for the truncated normal)
                    "truncated_normal" | "normal" => Distribution::TruncatedNormal,
                    "untruncated_normal" => Distribution::UntruncatedNormal,
                    other => {
                        return Err(LstmError::unsupported(format!("{key} distribution"), other))
                    }
                };
                let scale = num("scale", 1.0);
                if scale.is_nan() || scale <= 0.0 {
                    return Err(LstmError::unsupported(format!("{key} scale"), scale));
                }
                Initializer::VarianceScaling {
                    scale,
                    mode,
                    distribution,
                }
            }
            other => return Err(LstmError::unsupported(key, other)),
        })
    }
}
