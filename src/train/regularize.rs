//! Keras's weight regularizers in training: `L1`, `L2` and `L1L2` on a layer's weights
//! (`kernel_regularizer`, `recurrent_regularizer`, `bias_regularizer`,
//! `embeddings_regularizer`, `gamma_regularizer`, `beta_regularizer`), each adding
//! `l1 · Σ|w| + l2 · Σw²` to the loss as Keras's `Trainer.compute_loss` adds `model.losses`
//! (unweighted, beside the outputs' weighted losses), and its gradient `l1 · sign(w) + 2 l2 w`
//! to the weight's (`tf.abs`'s gradient is 0 at 0); and `OrthogonalRegularizer` on a rank-2
//! weight or output: `factor · 0.5 · Σ_{i≠j} |n_i · n_j| / (size (size - 1) / 2)` over its rows
//! (`mode="rows"`) or columns, each normalized as Keras's `normalize` does
//! (`x · min(rsqrt(Σx²), 1e7)`).

use crate::element::Element;
use crate::error::{LstmError, Result};
use ndarray::{ArrayD, ArrayViewD};
use serde_json::Value;

mod orthogonal;
use orthogonal::orthogonal;

/// One weight's regularizer: `l1 · Σ|w| + l2 · Σw²` (Keras's `L1`, `L2`, `L1L2`; read from a
/// config, the factors rounded to float32 as Keras's TensorFlow backend applies them).
///
/// ```
/// use lstm_wgpu::train::Regularizer;
/// let r = Regularizer::from_keras(
///     &serde_json::json!({"class_name": "L1L2", "config": {"l1": 0.5, "l2": 0.25}}),
///     "kernel_regularizer of layer dense",
/// )
/// .unwrap()
/// .unwrap();
/// let w = ndarray::arr1(&[1.0f64, -2.0]).into_dyn();
/// assert_eq!(r.loss(w.view()), 0.5 * 3.0 + 0.25 * 5.0);
/// assert_eq!(r.gradient(w.view()), ndarray::arr1(&[0.5 + 0.5, -0.5 - 1.0]).into_dyn());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Regularizer {
    /// The L1 factor.
    pub l1: f64,
    /// The L2 factor.
    pub l2: f64,
    /// Keras's `OrthogonalRegularizer`, added to the L1 and L2 parts (which a config of
    /// that class leaves 0).
    pub orthogonal: Option<Orthogonal>,
}

/// `keras.regularizers.OrthogonalRegularizer`: how far a rank-2 tensor's rows (or columns)
/// are from orthogonal.
///
/// ```
/// use lstm_wgpu::train::{Orthogonal, Regularizer};
/// let r = Regularizer::l1_l2(0.0, 0.0).with_orthogonal(Orthogonal { factor: 0.5, rows: true });
/// // two rows at 45 degrees: |cos| = 1/sqrt(2), one pair
/// let w = ndarray::arr2(&[[1.0f64, 0.0], [1.0, 1.0]]).into_dyn();
/// let want = 0.5 * 0.5 * 2.0 * (0.5f64).sqrt() / 1.0;
/// assert!((r.loss(w.view()) - want).abs() < 1e-12);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Orthogonal {
    /// The factor.
    pub factor: f64,
    /// `mode="rows"` (else `"columns"`).
    pub rows: bool,
}

impl Regularizer {
    /// `l1 · Σ|w| + l2 · Σw²`.
    pub fn l1_l2(l1: f64, l2: f64) -> Self {
        Regularizer {
            l1,
            l2,
            orthogonal: None,
        }
    }

    /// This regularizer plus `orthogonal`.
    pub fn with_orthogonal(mut self, orthogonal: Orthogonal) -> Self {
        self.orthogonal = Some(orthogonal);
        self
    }

    /// Whether it adds nothing.
    pub(super) fn is_zero(&self) -> bool {
        self.l1 == 0.0 && self.l2 == 0.0 && self.orthogonal.is_none()
    }

    /// An error naming `what` where this regularizer cannot apply to a tensor of `shape`
    /// (Keras's OrthogonalRegularizer takes rank 2 only).
    pub fn check_shape(&self, shape: &[usize], what: &str) -> Result<()> {
        match self.orthogonal {
            Some(_) if shape.len() != 2 => Err(LstmError::invalid(
                what,
                format!(
                    "OrthogonalRegularizer takes a rank-2 tensor; this one has shape {shape:?}"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The regularizer a Keras config holds (`{"class_name": "L2", "config": {"l2": ..}}`,
    /// `OrthogonalRegularizer`), None for `null`; another class (a custom one) is an error
    /// naming `what`.
    pub fn from_keras(v: &Value, what: &str) -> Result<Option<Self>> {
        if v.is_null() {
            return Ok(None);
        }
        let class = v.get("class_name").and_then(Value::as_str);
        let cfg = v.get("config").unwrap_or(&Value::Null);
        let factor = |key: &str| -> Result<f64> {
            match cfg.get(key) {
                None | Some(Value::Null) => Ok(0.0),
                Some(x) => x
                    .as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .ok_or_else(|| {
                        LstmError::bad_config(
                            format!("{what}: {key}"),
                            format!("{x} is not a finite factor >= 0"),
                        )
                    }),
            }
        };
        // (Keras's `ops.cast(factor, x.dtype)` of a Python float goes through a float32
        // tensor: the factor a float64 model applies is the float32 one's)
        let f32_rounded = |f: f64| f64::from(f as f32);
        if matches!(
            class,
            Some("OrthogonalRegularizer" | "orthogonal_regularizer")
        ) {
            let rows = match cfg.get("mode").and_then(Value::as_str).unwrap_or("rows") {
                "rows" => true,
                "columns" => false,
                other => {
                    return Err(LstmError::bad_config(
                        format!("{what}: mode"),
                        format!("{other} is not rows or columns"),
                    ))
                }
            };
            let f = match cfg.get("factor") {
                None | Some(Value::Null) => 0.01,
                Some(_) => factor("factor")?,
            };
            return Ok(Some(Regularizer::l1_l2(0.0, 0.0).with_orthogonal(
                Orthogonal {
                    factor: f32_rounded(f),
                    rows,
                },
            )));
        }
        let (l1, l2) = match class {
            Some("L1" | "l1") => (factor("l1")?, 0.0),
            Some("L2" | "l2") => (0.0, factor("l2")?),
            Some("L1L2" | "l1_l2") => (factor("l1")?, factor("l2")?),
            other => {
                return Err(LstmError::unsupported(
                    what,
                    format!(
                        "{} in training (L1, L2, L1L2 and OrthogonalRegularizer are built)",
                        other.unwrap_or("a regularizer without a class_name")
                    ),
                ))
            }
        };
        Ok(Some(Regularizer::l1_l2(f32_rounded(l1), f32_rounded(l2))))
    }

    /// `l1 · Σ|w| + l2 · Σw²`, the factors in `T` as Keras casts them.
    pub fn loss<T: Element>(&self, w: ArrayViewD<'_, T>) -> T {
        let mut total = T::zero();
        if self.l1 != 0.0 {
            total += T::from_f64(self.l1) * w.iter().fold(T::zero(), |s, &v| s + v.abs());
        }
        if self.l2 != 0.0 {
            total += T::from_f64(self.l2) * w.iter().fold(T::zero(), |s, &v| s + v * v);
        }
        if let Some(o) = self.orthogonal {
            total += orthogonal(o, w, false).0;
        }
        total
    }

    /// The loss's gradient: `l1 · sign(w) + 2 l2 w` (0 for the L1 part at w = 0).
    pub fn gradient<T: Element>(&self, w: ArrayViewD<'_, T>) -> ArrayD<T> {
        let (l1, l2) = (T::from_f64(self.l1), T::from_f64(self.l2));
        let two = T::from_f64(2.0);
        let mut g = w.mapv(|v| {
            let sign = if v > T::zero() {
                T::one()
            } else if v < T::zero() {
                -T::one()
            } else {
                T::zero()
            };
            l1 * sign + two * l2 * v
        });
        if let Some(o) = self.orthogonal {
            if let Some(d) = orthogonal(o, w, true).1 {
                g += &d;
            }
        }
        g
    }
}

/// The roles of a layer's trainable weights in Keras's order (`kernel`, `recurrent`, ...;
/// a role's keys are `<role>_regularizer` and `<role>_constraint`; `config` the layer's own
/// config), or None for a class whose weights are not placed here.
fn roles(class: &str, cfg: &Value) -> Option<Vec<&'static str>> {
    let flag = |key: &str| cfg.get(key).and_then(Value::as_bool).unwrap_or(true);
    let mut out = Vec::new();
    match class {
        "Dense" | "Conv1D" => {
            out.push("kernel");
            if flag("use_bias") {
                out.push("bias");
            }
        }
        "LSTM" | "GRU" | "SimpleRNN" | "CuDNNLSTM" | "CuDNNGRU" => {
            out.extend(["kernel", "recurrent"]);
            if flag("use_bias") {
                out.push("bias");
            }
        }
        "Embedding" => out.push("embeddings"),
        "LayerNormalization" | "BatchNormalization" => {
            if flag("scale") {
                out.push("gamma");
            }
            if flag("center") {
                out.push("beta");
            }
        }
        _ => return None,
    }
    Some(out)
}

/// The regularizer of each trainable weight of the layer `name` (class `class`, config
/// `cfg`: a `Bidirectional`'s and `TimeDistributed`'s inner layers' keys apply to their
/// weights), of the shapes `shapes` (one a regularizer cannot take is an error). A regularizer set on a weight this does not place (another
/// class, a count that differs) is an error naming the layer and the key, never dropped.
pub(super) fn layer_regularizers(
    class: &str,
    cfg: &Value,
    name: &str,
    shapes: &[Vec<usize>],
) -> Result<Vec<Option<Regularizer>>> {
    // (per_weight reads the keys in the weights' order)
    let at = std::cell::Cell::new(0);
    per_weight(
        class,
        cfg,
        name,
        shapes.len(),
        "_regularizer",
        &|v, what| {
            let r = Regularizer::from_keras(v, what)?;
            if let (Some(r), Some(shape)) = (&r, shapes.get(at.get())) {
                r.check_shape(shape, what)?;
            }
            at.set(at.get() + 1);
            Ok(r)
        },
    )
}

/// For each trainable weight of the layer `name`, in Keras's order, what `parse` reads from
/// its key `<role><suffix>` (`kernel_regularizer`, `bias_constraint`, ...): the layer's own
/// keys, or a `Bidirectional`'s and `TimeDistributed`'s inner layers' for their weights. A
/// key set on a weight this does not place (another class, a count that differs from
/// `count`) is an error naming the layer and the key, never dropped.
pub(super) fn per_weight<R: Clone>(
    class: &str,
    cfg: &Value,
    name: &str,
    count: usize,
    suffix: &str,
    parse: &dyn Fn(&Value, &str) -> Result<Option<R>>,
) -> Result<Vec<Option<R>>> {
    let inner = |key: &str| -> Option<(&str, &Value)> {
        let l = cfg.get(key)?;
        Some((
            l.get("class_name").and_then(Value::as_str)?,
            l.get("config").unwrap_or(&Value::Null),
        ))
    };
    // (class, config) of each part whose weights the layer holds, in order
    let parts: Vec<(&str, &Value)> = match class {
        "Bidirectional" => {
            let fw = inner("layer");
            let bw = inner("backward_layer").or(fw);
            fw.into_iter().chain(bw).collect()
        }
        "TimeDistributed" => inner("layer").into_iter().collect(),
        _ => vec![(class, cfg)],
    };
    let mut out = Vec::new();
    let mut placed = true;
    for (c, pc) in &parts {
        match roles(c, pc) {
            Some(stems) => {
                for stem in stems {
                    let key = format!("{stem}{suffix}");
                    out.push(parse(
                        pc.get(&key).unwrap_or(&Value::Null),
                        &format!("{key} of layer {name}"),
                    )?);
                }
            }
            None => placed = false,
        }
    }
    if placed && out.len() == count {
        return Ok(out);
    }
    // a layer whose weights are not placed: only an error when it asks for one
    for (c, pc) in &parts {
        if let Some(o) = pc.as_object() {
            for (key, v) in o {
                if key.ends_with(suffix) && key != "activity_regularizer" && !v.is_null() {
                    return Err(LstmError::unsupported(
                        key.as_str(),
                        format!(
                            "{v} on layer {name} ({c}) in training (its weights are not matched \
                             to their {}s here)",
                            &suffix[1..]
                        ),
                    ));
                }
            }
        }
    }
    Ok(vec![None; count])
}

/// The activity regularizer of the layer `name` (class `class`, config `cfg`): its
/// `activity_regularizer`, or an `ActivityRegularization` layer's `l1`/`l2` (Keras's
/// `L1L2(l1, l2)`), None for neither. Keras adds `r(y) / batch` for every output `y` of each
/// call to the loss. A `TimeDistributed`'s inner layer's is not applied by Keras 3 (it runs
/// the inner layer's `call`, not the layer): left, and logged; a Keras 2 file's (Keras 2
/// applies it over the batch times the steps) is an error naming it. A `Bidirectional`'s
/// inner layers' are [`inner_activity_regularizers`].
pub(super) fn activity_regularizer(
    class: &str,
    cfg: &Value,
    name: &str,
) -> Result<Option<Regularizer>> {
    if class == "TimeDistributed" {
        if let Some(r) = cfg
            .get("layer")
            .and_then(|l| l.get("config"))
            .and_then(|c| c.get("activity_regularizer"))
            .filter(|r| !r.is_null())
        {
            if cfg.get("keras2_inner_call").and_then(Value::as_bool) == Some(true) {
                return Err(LstmError::unsupported(
                    format!("activity_regularizer of the layer of layer {name}"),
                    format!(
                        "{r} in training (Keras 2 applies it over the batch times the steps; \
                         not built)"
                    ),
                ));
            }
            log::info!(
                "layer {name}: the activity_regularizer of its inner layer is not applied, as \
                 Keras 3's TimeDistributed does not apply it"
            );
        }
    }
    if class == "ActivityRegularization" {
        let r = Regularizer::from_keras(
            &serde_json::json!({"class_name": "L1L2", "config": {
                "l1": cfg.get("l1").cloned().unwrap_or(Value::Null),
                "l2": cfg.get("l2").cloned().unwrap_or(Value::Null),
            }}),
            &format!("layer {name}"),
        )?;
        return Ok(r.filter(|r| !r.is_zero()));
    }
    Regularizer::from_keras(
        cfg.get("activity_regularizer").unwrap_or(&Value::Null),
        &format!("activity_regularizer of layer {name}"),
    )
}

/// The activity regularizers of a `Bidirectional`'s forward and backward layers (their
/// `activity_regularizer`: Keras calls each direction as a layer, which adds `r(y) / batch`
/// for its output); None for another class.
pub(super) fn inner_activity_regularizers(
    class: &str,
    cfg: &Value,
    name: &str,
) -> Result<[Option<Regularizer>; 2]> {
    if class != "Bidirectional" {
        return Ok([None, None]);
    }
    let of = |key: &str| -> Result<Option<Regularizer>> {
        match cfg.get(key).and_then(|l| l.get("config")) {
            Some(c) => Regularizer::from_keras(
                c.get("activity_regularizer").unwrap_or(&Value::Null),
                &format!("activity_regularizer of the {key} of layer {name}"),
            ),
            None => Ok(None),
        }
    };
    let forward = of("layer")?;
    let backward = match cfg.get("backward_layer").filter(|b| !b.is_null()) {
        Some(_) => of("backward_layer")?,
        None => forward,
    };
    Ok([forward, backward])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn regularizers_follow_keras_configs() {
        let l2 = json!({"class_name": "L2", "config": {"l2": 0.1}});
        let l1 = json!({"class_name": "L1", "config": {"l1": 0.2}});
        let lstm = json!({"kernel_regularizer": l2, "recurrent_regularizer": null,
            "bias_regularizer": l1, "use_bias": true});
        let r =
            layer_regularizers("LSTM", &lstm, "lstm", &[vec![2, 8], vec![2, 8], vec![8]]).unwrap();
        assert_eq!(
            r,
            vec![
                Some(Regularizer::l1_l2(0.0, f64::from(0.1f32))),
                None,
                Some(Regularizer::l1_l2(f64::from(0.2f32), 0.0))
            ]
        );
        // a Bidirectional: the inner layer's keys on both directions
        let bidi = json!({"layer": {"class_name": "GRU", "config": lstm}});
        assert_eq!(
            layer_regularizers("Bidirectional", &bidi, "bidi", &vec![vec![2]; 6])
                .unwrap()
                .iter()
                .filter(|r| r.is_some())
                .count(),
            4
        );
        // BatchNormalization without scale: beta only
        let bn = json!({"scale": false, "beta_regularizer": l2});
        assert_eq!(
            layer_regularizers("BatchNormalization", &bn, "bn", &[vec![2]]).unwrap(),
            vec![Some(Regularizer::l1_l2(0.0, f64::from(0.1f32)))]
        );
        // not placed: an error naming the key and the layer, unless none is set
        let e = layer_regularizers("LSTM", &lstm, "lstm", &[vec![2, 8], vec![2, 8]]).unwrap_err();
        assert!(e.to_string().contains("bias_regularizer"), "{e}");
        assert!(e.to_string().contains("lstm"), "{e}");
        let e = layer_regularizers(
            "Conv2D",
            &json!({"kernel_regularizer": l2}),
            "c",
            &[vec![2], vec![2]],
        )
        .unwrap_err();
        assert!(e.to_string().contains("Conv2D"), "{e}");
        assert_eq!(
            layer_regularizers(
                "Conv2D",
                &json!({"kernel_regularizer": null}),
                "c",
                &[vec![2], vec![2]]
            )
            .unwrap(),
            vec![None, None]
        );
        // OrthogonalRegularizer: Keras's default factor and mode; rank 2 only
        let o = json!({"class_name": "OrthogonalRegularizer", "config": {}});
        assert_eq!(
            Regularizer::from_keras(&o, "k").unwrap(),
            Some(Regularizer::l1_l2(0.0, 0.0).with_orthogonal(Orthogonal {
                factor: f64::from(0.01f32),
                rows: true
            }))
        );
        let dense = json!({"kernel_regularizer": null, "bias_regularizer": o});
        let e = layer_regularizers("Dense", &dense, "d", &[vec![3, 2], vec![2]]).unwrap_err();
        assert!(e.to_string().contains("bias_regularizer of layer d"), "{e}");
        let e = Regularizer::from_keras(
            &json!({"class_name": "OrthogonalRegularizer", "config": {"mode": "diagonal"}}),
            "k",
        )
        .unwrap_err();
        assert!(e.to_string().contains("mode"), "{e}");
        // other classes and bad factors
        let e = Regularizer::from_keras(
            &json!({"class_name": "MyRegularizer", "config": {}}),
            "kernel_regularizer of layer d",
        )
        .unwrap_err();
        assert!(e.to_string().contains("MyRegularizer"), "{e}");
        let e = Regularizer::from_keras(
            &json!({"class_name": "L2", "config": {"l2": -1.0}}),
            "kernel_regularizer of layer d",
        )
        .unwrap_err();
        assert!(e.to_string().contains("l2"), "{e}");
    }

    #[test]
    fn activity_regularizers_follow_keras_configs() {
        let l2 = json!({"class_name": "L2", "config": {"l2": 0.5}});
        assert_eq!(
            activity_regularizer("Dense", &json!({"activity_regularizer": l2}), "d").unwrap(),
            Some(Regularizer::l1_l2(0.0, 0.5))
        );
        assert_eq!(
            activity_regularizer(
                "ActivityRegularization",
                &json!({"l1": 0.25, "l2": 0.0}),
                "a"
            )
            .unwrap(),
            Some(Regularizer::l1_l2(0.25, 0.0))
        );
        assert_eq!(
            activity_regularizer(
                "ActivityRegularization",
                &json!({"l1": 0.0, "l2": 0.0}),
                "a"
            )
            .unwrap(),
            None
        );
        // a TimeDistributed's inner one: Keras 3 does not apply it; a Keras 2 file's refused
        let td = json!({"layer": {"class_name": "Dense", "config": {"activity_regularizer": l2}}});
        assert_eq!(
            activity_regularizer("TimeDistributed", &td, "td").unwrap(),
            None
        );
        let mut td2 = td.clone();
        td2["keras2_inner_call"] = json!(true);
        let e = activity_regularizer("TimeDistributed", &td2, "td").unwrap_err();
        assert!(
            e.to_string()
                .contains("activity_regularizer of the layer of layer td"),
            "{e}"
        );
        // a Bidirectional's: each direction's, the backward layer's own where given
        let l1 = json!({"class_name": "L1", "config": {"l1": 0.25}});
        let bidi = json!({"layer": {"class_name": "LSTM", "config": {"activity_regularizer": l2}}});
        assert_eq!(
            inner_activity_regularizers("Bidirectional", &bidi, "b").unwrap(),
            [
                Some(Regularizer::l1_l2(0.0, 0.5)),
                Some(Regularizer::l1_l2(0.0, 0.5))
            ]
        );
        let mut both = bidi.clone();
        both["backward_layer"] =
            json!({"class_name": "LSTM", "config": {"activity_regularizer": l1}});
        assert_eq!(
            inner_activity_regularizers("Bidirectional", &both, "b").unwrap(),
            [
                Some(Regularizer::l1_l2(0.0, 0.5)),
                Some(Regularizer::l1_l2(0.25, 0.0))
            ]
        );
    }

    /// OrthogonalRegularizer's gradient against central differences, both modes (a zero
    /// row among them: its clamped inverse norm).
    #[test]
    fn orthogonal_gradient_matches_differences() {
        let w = ndarray::arr2(&[
            [0.5f64, -1.25, 2.0],
            [-0.1, 0.7, 0.3],
            [1.1, 0.2, -0.9],
            [0.0, 0.0, 0.0],
        ])
        .into_dyn();
        for rows in [true, false] {
            let r = Regularizer::l1_l2(0.0, 0.1).with_orthogonal(Orthogonal { factor: 0.3, rows });
            let g = r.gradient(w.view());
            for (k, _) in w.indexed_iter() {
                let at = |d: f64| {
                    let mut v = w.clone();
                    v[&k] += d;
                    r.loss(v.view())
                };
                if k[0] == 3 && rows {
                    // (the zero row's: 1e7 times the other rows' directions, kinks of |p|)
                    continue;
                }
                let fd = (at(1e-7) - at(-1e-7)) / 2e-7;
                assert!(
                    (fd - g[&k]).abs() < 1e-6,
                    "rows {rows} {k:?}: {fd} vs {}",
                    g[&k]
                );
            }
        }
        // one row: no pairs, 0 / 0 as Keras computes it
        let one = ndarray::arr2(&[[1.0f64, 2.0]]).into_dyn();
        let r = Regularizer::l1_l2(0.0, 0.0).with_orthogonal(Orthogonal {
            factor: 0.3,
            rows: true,
        });
        assert!(r.loss(one.view()).is_nan());
    }

    /// The gradient against central differences (away from the kink of |w|).
    #[test]
    fn regularizer_gradient_matches_differences() {
        let r = Regularizer::l1_l2(0.3, 0.7);
        let w = ndarray::arr1(&[0.5f64, -1.25, 2.0, -0.1]).into_dyn();
        let g = r.gradient(w.view());
        for k in 0..w.len() {
            let at = |d: f64| {
                let mut v = w.clone();
                v[k] += d;
                r.loss(v.view())
            };
            let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
            assert!((fd - g[k]).abs() < 1e-8, "{k}: {fd} vs {}", g[k]);
        }
        assert_eq!(
            r.gradient(ndarray::arr1(&[0.0f64]).into_dyn().view())[0],
            0.0
        );
    }
}
