//! Keras's weight constraints in training: `MaxNorm`, `NonNeg`, `UnitNorm` and `MinMaxNorm`
//! on a layer's weights (`kernel_constraint`, `recurrent_constraint`, `bias_constraint`,
//! `embeddings_constraint`, `gamma_constraint`, `beta_constraint`), applied to each trainable
//! weight after every optimizer step as Keras's `optimizer.apply` does
//! (`variable.assign(variable.constraint(variable))`), with Keras's formulas and epsilon.

use crate::element::Element;
use crate::error::{LstmError, Result};
use ndarray::{ArrayD, ArrayViewMutD, Axis, Zip};
use serde_json::Value;

/// The axes a norm constraint reduces over (Keras's `axis`: one, several, or every axis for
/// `null`), as written in the config (negative ones count from the end).
#[derive(Debug, Clone, PartialEq)]
pub enum NormAxes {
    /// Every axis (`axis: null`).
    All,
    /// These axes.
    Some(Vec<isize>),
}

/// One weight's constraint (Keras's `keras.constraints`), with `norms = sqrt(Σ_axis w²)`
/// kept per slice and Keras's `epsilon()` = 1e-7:
///
/// - `MaxNorm`: `w · clip(norms, 0, max_value) / (ε + norms)`;
/// - `NonNeg`: `max(w, 0)`;
/// - `UnitNorm`: `w / (ε + norms)`;
/// - `MinMaxNorm`: `w · (rate · clip(norms, min_value, max_value) + (1 - rate) · norms) /
///   (ε + norms)`.
///
/// ```
/// use lstm_wgpu::train::Constraint;
/// let c = Constraint::from_keras(
///     &serde_json::json!({"class_name": "MaxNorm", "config": {"max_value": 1.0, "axis": 0}}),
///     "kernel_constraint of layer dense",
/// )
/// .unwrap()
/// .unwrap();
/// // a 2 x 2 kernel: column 0 has norm 5 (scaled to 1), column 1 norm 0.5 (kept)
/// let mut w = ndarray::arr2(&[[3.0f64, 0.3], [4.0, 0.4]]).into_dyn();
/// c.apply(w.view_mut(), "kernel of layer dense").unwrap();
/// assert!((w[[0, 0]] - 0.6).abs() < 1e-6 && (w[[1, 0]] - 0.8).abs() < 1e-6);
/// assert!((w[[0, 1]] - 0.3).abs() < 1e-6);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// `MaxNorm(max_value, axis)`.
    MaxNorm {
        /// The largest norm a slice keeps.
        max_value: f64,
        /// The axes of the norm.
        axis: NormAxes,
    },
    /// `NonNeg()`.
    NonNeg,
    /// `UnitNorm(axis)`.
    UnitNorm {
        /// The axes of the norm.
        axis: NormAxes,
    },
    /// `MinMaxNorm(min_value, max_value, rate, axis)`.
    MinMaxNorm {
        /// The smallest norm.
        min_value: f64,
        /// The largest norm.
        max_value: f64,
        /// How far towards the clipped norm a step goes (1: all the way).
        rate: f64,
        /// The axes of the norm.
        axis: NormAxes,
    },
}

/// Keras's `backend.epsilon()`.
const EPSILON: f64 = 1e-7;

impl Constraint {
    /// The constraint a Keras config holds (`{"class_name": "MaxNorm", "config": {..}}`),
    /// None for `null`; another class (a custom one) is an error naming `what`.
    pub fn from_keras(v: &Value, what: &str) -> Result<Option<Self>> {
        if v.is_null() {
            return Ok(None);
        }
        // (a bare name, `"non_neg"`, is the class with its defaults, as `constraints.get`)
        let class = v
            .as_str()
            .or_else(|| v.get("class_name").and_then(Value::as_str));
        let cfg = v.get("config").unwrap_or(&Value::Null);
        let number = |key: &str, default: f64| -> Result<f64> {
            match cfg.get(key) {
                None => Ok(default),
                Some(x) => x.as_f64().filter(|f| f.is_finite()).ok_or_else(|| {
                    LstmError::bad_config(format!("{what}: {key}"), format!("{x} is not a number"))
                }),
            }
        };
        let axis = || -> Result<NormAxes> {
            let bad = |x: &Value| {
                LstmError::bad_config(
                    format!("{what}: axis"),
                    format!("{x} is not an axis, a list of axes or null"),
                )
            };
            match cfg.get("axis") {
                None => Ok(NormAxes::Some(vec![0])),
                Some(Value::Null) => Ok(NormAxes::All),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|x| x.as_i64().map(|i| i as isize).ok_or_else(|| bad(x)))
                    .collect::<Result<_>>()
                    .map(NormAxes::Some),
                Some(x) => x
                    .as_i64()
                    .map(|i| NormAxes::Some(vec![i as isize]))
                    .ok_or_else(|| bad(x)),
            }
        };
        Ok(Some(match class {
            Some("MaxNorm" | "max_norm" | "maxnorm") => Constraint::MaxNorm {
                max_value: number("max_value", 2.0)?,
                axis: axis()?,
            },
            Some("NonNeg" | "non_neg" | "nonneg") => Constraint::NonNeg,
            Some("UnitNorm" | "unit_norm" | "unitnorm") => Constraint::UnitNorm { axis: axis()? },
            Some("MinMaxNorm" | "min_max_norm") => Constraint::MinMaxNorm {
                min_value: number("min_value", 0.0)?,
                max_value: number("max_value", 1.0)?,
                rate: number("rate", 1.0)?,
                axis: axis()?,
            },
            other => {
                return Err(LstmError::unsupported(
                    what,
                    format!(
                        "{} in training (MaxNorm, NonNeg, UnitNorm and MinMaxNorm are built)",
                        other.unwrap_or("a constraint without a class_name")
                    ),
                ))
            }
        }))
    }

    /// The axes (in `0..ndim`, sorted, distinct) the norm of a weight of `ndim` axes reduces
    /// over; an axis out of range is an error naming `what`.
    fn axes(&self, ndim: usize, what: &str) -> Result<Vec<usize>> {
        let axis = match self {
            Constraint::NonNeg => return Ok(Vec::new()),
            Constraint::MaxNorm { axis, .. }
            | Constraint::UnitNorm { axis }
            | Constraint::MinMaxNorm { axis, .. } => axis,
        };
        let mut out: Vec<usize> = match axis {
            NormAxes::All => (0..ndim).collect(),
            NormAxes::Some(a) => a
                .iter()
                .map(|&k| {
                    let at = if k < 0 { k + ndim as isize } else { k };
                    usize::try_from(at)
                        .ok()
                        .filter(|&a| a < ndim)
                        .ok_or_else(|| {
                            LstmError::invalid(
                                format!("axis of {what}"),
                                format!("{k} is out of range for a weight of {ndim} axes"),
                            )
                        })
                })
                .collect::<Result<_>>()?,
        };
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Checks that the constraint applies to a weight of shape `shape` (its axes in range).
    pub fn check(&self, shape: &[usize], what: &str) -> Result<()> {
        self.axes(shape.len(), what).map(|_| ())
    }

    /// Constrains `w` in place (`what` names it in an error), in `T` as Keras computes it.
    pub fn apply<T: Element>(&self, mut w: ArrayViewMutD<'_, T>, what: &str) -> Result<()> {
        let axes = self.axes(w.ndim(), what)?;
        if let Constraint::NonNeg = self {
            // (`ops.maximum(w, 0)`: a NaN stays NaN)
            w.mapv_inplace(|v| if v < T::zero() { T::zero() } else { v });
            return Ok(());
        }
        // the norms, kept per slice with the reduced axes of length 1
        let mut norms: ArrayD<T> = w.mapv(|v| v * v);
        for &a in axes.iter().rev() {
            norms = norms.sum_axis(Axis(a)).insert_axis(Axis(a));
        }
        // (the f64 root rounded to f32 is f32's correctly rounded root)
        norms.mapv_inplace(|v| T::from_f64(v.to_f64().sqrt()));
        let eps = T::from_f64(EPSILON);
        // per slice: the factor `desired / (ε + norms)`, or UnitNorm's divisor `ε + norms`
        let per_slice: ArrayD<T> = match *self {
            Constraint::MaxNorm { max_value, .. } => {
                let hi = T::from_f64(max_value);
                norms.mapv(|n| clip(n, T::zero(), hi) / (eps + n))
            }
            Constraint::UnitNorm { .. } => norms.mapv(|n| eps + n),
            Constraint::MinMaxNorm {
                min_value,
                max_value,
                rate,
                ..
            } => {
                let (lo, hi) = (T::from_f64(min_value), T::from_f64(max_value));
                let (r, keep) = (T::from_f64(rate), T::from_f64(1.0 - rate));
                norms.mapv(|n| (r * clip(n, lo, hi) + keep * n) / (eps + n))
            }
            Constraint::NonNeg => return Ok(()),
        };
        let per_slice = per_slice.broadcast(w.raw_dim()).ok_or_else(|| {
            LstmError::invalid(
                what,
                "the constraint's norms do not broadcast to the weight",
            )
        })?;
        let divide = matches!(self, Constraint::UnitNorm { .. });
        Zip::from(&mut w).and(&per_slice).for_each(|v, &s| {
            *v = if divide { *v / s } else { *v * s };
        });
        Ok(())
    }
}

/// TensorFlow's `clip_by_value`: `min(max(x, lo), hi)`.
fn clip<T: Element>(x: T, lo: T, hi: T) -> T {
    let m = if x > lo { x } else { lo };
    if m < hi {
        m
    } else {
        hi
    }
}

/// The constraint of each trainable weight of the layer `name` (class `class`, config `cfg`;
/// a `Bidirectional`'s and `TimeDistributed`'s inner layers' keys apply to their weights),
/// whose weights have the shapes `shapes`: a constraint set on a weight this does not place,
/// or with an axis the weight lacks, is an error naming the layer and the key.
pub(super) fn layer_constraints(
    class: &str,
    cfg: &Value,
    name: &str,
    shapes: &[Vec<usize>],
) -> Result<Vec<Option<Constraint>>> {
    // (per_weight parses the weights' keys in order: the k-th parse is weight k's)
    let at = std::cell::Cell::new(0usize);
    let parse = |v: &Value, what: &str| -> Result<Option<Constraint>> {
        let c = Constraint::from_keras(v, what)?;
        if let (Some(c), Some(shape)) = (&c, shapes.get(at.get())) {
            c.check(shape, what)?;
        }
        at.set(at.get() + 1);
        Ok(c)
    };
    super::regularize::per_weight(class, cfg, name, shapes.len(), "_constraint", &parse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{arr1, arr2, Array3};
    use serde_json::json;

    fn constraint(v: Value) -> Constraint {
        Constraint::from_keras(&v, "test").unwrap().unwrap()
    }

    /// Each class against Keras's formula written out, on several axes.
    #[test]
    fn constraints_follow_keras_formulas() {
        let w = Array3::from_shape_fn((3, 2, 4), |(i, j, k)| {
            (i as f64 - 1.2) * 0.7 + (j as f64) * 0.3 - (k as f64) * 0.45
        })
        .into_dyn();
        let eps = 1e-7;
        // MaxNorm over axes [0, 1] (Keras's advice for a Conv1D kernel): per output column
        let c = constraint(json!({"class_name": "MaxNorm",
            "config": {"max_value": 1.5, "axis": [0, 1]}}));
        let mut got = w.clone();
        c.apply(got.view_mut(), "w").unwrap();
        for k in 0..4 {
            let n: f64 = w
                .slice(ndarray::s![.., .., k])
                .iter()
                .map(|v| v * v)
                .sum::<f64>()
                .sqrt();
            let factor = n.clamp(0.0, 1.5) / (eps + n);
            for i in 0..3 {
                for j in 0..2 {
                    let want = w[[i, j, k]] * factor;
                    assert!((got[[i, j, k]] - want).abs() < 1e-15, "{k}");
                }
            }
        }
        // UnitNorm on the last axis (-1), MinMaxNorm on axis 1, every axis (null)
        let u = constraint(json!({"class_name": "UnitNorm", "config": {"axis": -1}}));
        let mut got = w.clone();
        u.apply(got.view_mut(), "w").unwrap();
        let row: f64 = (0..4)
            .map(|k| w[[2, 1, k]] * w[[2, 1, k]])
            .sum::<f64>()
            .sqrt();
        assert!((got[[2, 1, 3]] - w[[2, 1, 3]] / (eps + row)).abs() < 1e-15);
        let m = constraint(json!({"class_name": "MinMaxNorm",
            "config": {"min_value": 0.9, "max_value": 1.0, "rate": 0.25, "axis": 1}}));
        let mut got = w.clone();
        m.apply(got.view_mut(), "w").unwrap();
        let n = (w[[0, 0, 2]].powi(2) + w[[0, 1, 2]].powi(2)).sqrt();
        let want = w[[0, 1, 2]] * ((0.25 * n.clamp(0.9, 1.0) + 0.75 * n) / (eps + n));
        assert!((got[[0, 1, 2]] - want).abs() < 1e-15);
        let all = constraint(json!({"class_name": "MaxNorm",
            "config": {"max_value": 1.0, "axis": null}}));
        let mut got = w.clone();
        all.apply(got.view_mut(), "w").unwrap();
        let total = got.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!((total - 1.0).abs() < 1e-6, "{total}");
        // NonNeg: negatives to 0, NaN kept
        let mut v = arr1(&[-1.0f32, 0.0, 2.0, f32::NAN]).into_dyn();
        constraint(json!({"class_name": "NonNeg", "config": {}}))
            .apply(v.view_mut(), "b")
            .unwrap();
        assert_eq!(&v.as_slice().unwrap()[..3], &[0.0, 0.0, 2.0]);
        assert!(v[3].is_nan());
        // a norm already inside MaxNorm's bound is (all but) unchanged
        let mut small = arr2(&[[0.1f32], [0.2]]).into_dyn();
        constraint(json!({"class_name": "MaxNorm", "config": {"max_value": 2.0}}))
            .apply(small.view_mut(), "k")
            .unwrap();
        assert!((small[[1, 0]] - 0.2).abs() < 1e-6);
    }

    #[test]
    fn constraint_configs_are_checked() {
        let e = Constraint::from_keras(
            &json!({"class_name": "MyConstraint", "config": {}}),
            "kernel_constraint of layer d",
        )
        .unwrap_err();
        assert!(e.to_string().contains("MyConstraint"), "{e}");
        assert!(
            e.to_string().contains("kernel_constraint of layer d"),
            "{e}"
        );
        let e = Constraint::from_keras(
            &json!({"class_name": "MaxNorm", "config": {"axis": "rows"}}),
            "kernel_constraint of layer d",
        )
        .unwrap_err();
        assert!(e.to_string().contains("axis"), "{e}");
        // an axis the weight lacks, at load time
        let cfg = json!({"kernel_constraint": {"class_name": "UnitNorm", "config": {"axis": 2}},
            "use_bias": true});
        let e = layer_constraints("Dense", &cfg, "dense", &[vec![3, 4], vec![4]]).unwrap_err();
        assert!(e.to_string().contains("dense"), "{e}");
        assert!(e.to_string().contains("out of range"), "{e}");
        // placed by role: an LSTM's three weights, a Bidirectional's inner keys twice
        let lstm = json!({"recurrent_constraint": {"class_name": "NonNeg", "config": {}},
            "use_bias": true});
        let c = layer_constraints("LSTM", &lstm, "l", &[vec![2, 8], vec![2, 8], vec![8]]).unwrap();
        assert_eq!(c, vec![None, Some(Constraint::NonNeg), None]);
        let bidi = json!({"layer": {"class_name": "LSTM", "config": lstm}});
        let shapes = vec![vec![2, 8], vec![2, 8], vec![8]];
        let shapes: Vec<Vec<usize>> = shapes.iter().chain(&shapes).cloned().collect();
        let c = layer_constraints("Bidirectional", &bidi, "b", &shapes).unwrap();
        assert_eq!(c.iter().filter(|c| c.is_some()).count(), 2);
        // a class whose weights are not placed: refused when it sets one
        let e = layer_constraints(
            "Conv2D",
            &json!({"kernel_constraint": {"class_name": "NonNeg", "config": {}}}),
            "conv",
            &[vec![3, 3, 1, 2]],
        )
        .unwrap_err();
        assert!(e.to_string().contains("kernel_constraint"), "{e}");
    }
}
