//! Keras's weight regularizers in training: `L1`, `L2` and `L1L2` on a layer's weights
//! (`kernel_regularizer`, `recurrent_regularizer`, `bias_regularizer`,
//! `embeddings_regularizer`, `gamma_regularizer`, `beta_regularizer`), each adding
//! `l1 · Σ|w| + l2 · Σw²` to the loss as Keras's `Trainer.compute_loss` adds `model.losses`
//! (unweighted, beside the outputs' weighted losses), and its gradient `l1 · sign(w) + 2 l2 w`
//! to the weight's (`tf.abs`'s gradient is 0 at 0).

use crate::element::Element;
use crate::error::{LstmError, Result};
use ndarray::{ArrayD, ArrayViewD};
use serde_json::Value;

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
}

impl Regularizer {
    /// The regularizer a Keras config holds (`{"class_name": "L2", "config": {"l2": ..}}`),
    /// None for `null`; another class (`OrthogonalRegularizer`, a custom one) is an error
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
        let (l1, l2) = match class {
            Some("L1" | "l1") => (factor("l1")?, 0.0),
            Some("L2" | "l2") => (0.0, factor("l2")?),
            Some("L1L2" | "l1_l2") => (factor("l1")?, factor("l2")?),
            other => {
                return Err(LstmError::unsupported(
                    what,
                    format!(
                        "{} in training (L1, L2 and L1L2 are built)",
                        other.unwrap_or("a regularizer without a class_name")
                    ),
                ))
            }
        };
        // (Keras's `ops.cast(factor, x.dtype)` of a Python float goes through a float32
        // tensor: the factor a float64 model applies is the float32 one's)
        let f32_rounded = |f: f64| f64::from(f as f32);
        Ok(Some(Regularizer {
            l1: f32_rounded(l1),
            l2: f32_rounded(l2),
        }))
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
        total
    }

    /// The loss's gradient: `l1 · sign(w) + 2 l2 w` (0 for the L1 part at w = 0).
    pub fn gradient<T: Element>(&self, w: ArrayViewD<'_, T>) -> ArrayD<T> {
        let (l1, l2) = (T::from_f64(self.l1), T::from_f64(self.l2));
        let two = T::from_f64(2.0);
        w.mapv(|v| {
            let sign = if v > T::zero() {
                T::one()
            } else if v < T::zero() {
                -T::one()
            } else {
                T::zero()
            };
            l1 * sign + two * l2 * v
        })
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
/// weights), `count` of them. A regularizer set on a weight this does not place (another
/// class, a count that differs) is an error naming the layer and the key, never dropped.
pub(super) fn layer_regularizers(
    class: &str,
    cfg: &Value,
    name: &str,
    count: usize,
) -> Result<Vec<Option<Regularizer>>> {
    per_weight(
        class,
        cfg,
        name,
        count,
        "_regularizer",
        &Regularizer::from_keras,
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
/// call to the loss. An inner layer's of a `Bidirectional` or `TimeDistributed` (Keras
/// applies it to the inner call's outputs, over its own batch) is an error naming it.
pub(super) fn activity_regularizer(
    class: &str,
    cfg: &Value,
    name: &str,
) -> Result<Option<Regularizer>> {
    for key in ["layer", "backward_layer"] {
        if let Some(r) = cfg
            .get(key)
            .and_then(|l| l.get("config"))
            .and_then(|c| c.get("activity_regularizer"))
            .filter(|r| !r.is_null())
        {
            return Err(LstmError::unsupported(
                format!("activity_regularizer of the {key} of layer {name}"),
                format!("{r} in training (an inner layer's activity regularizer is not built)"),
            ));
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
        return Ok(r.filter(|r| r.l1 != 0.0 || r.l2 != 0.0));
    }
    Regularizer::from_keras(
        cfg.get("activity_regularizer").unwrap_or(&Value::Null),
        &format!("activity_regularizer of layer {name}"),
    )
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
        let r = layer_regularizers("LSTM", &lstm, "lstm", 3).unwrap();
        assert_eq!(
            r,
            vec![
                Some(Regularizer {
                    l1: 0.0,
                    l2: f64::from(0.1f32)
                }),
                None,
                Some(Regularizer {
                    l1: f64::from(0.2f32),
                    l2: 0.0
                })
            ]
        );
        // a Bidirectional: the inner layer's keys on both directions
        let bidi = json!({"layer": {"class_name": "GRU", "config": lstm}});
        assert_eq!(
            layer_regularizers("Bidirectional", &bidi, "bidi", 6)
                .unwrap()
                .iter()
                .filter(|r| r.is_some())
                .count(),
            4
        );
        // BatchNormalization without scale: beta only
        let bn = json!({"scale": false, "beta_regularizer": l2});
        assert_eq!(
            layer_regularizers("BatchNormalization", &bn, "bn", 1).unwrap(),
            vec![Some(Regularizer {
                l1: 0.0,
                l2: f64::from(0.1f32)
            })]
        );
        // not placed: an error naming the key and the layer, unless none is set
        let e = layer_regularizers("LSTM", &lstm, "lstm", 2).unwrap_err();
        assert!(e.to_string().contains("bias_regularizer"), "{e}");
        assert!(e.to_string().contains("lstm"), "{e}");
        let e =
            layer_regularizers("Conv2D", &json!({"kernel_regularizer": l2}), "c", 2).unwrap_err();
        assert!(e.to_string().contains("Conv2D"), "{e}");
        assert_eq!(
            layer_regularizers("Conv2D", &json!({"kernel_regularizer": null}), "c", 2).unwrap(),
            vec![None, None]
        );
        // other classes and bad factors
        let e = Regularizer::from_keras(
            &json!({"class_name": "OrthogonalRegularizer", "config": {}}),
            "kernel_regularizer of layer d",
        )
        .unwrap_err();
        assert!(e.to_string().contains("OrthogonalRegularizer"), "{e}");
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
            Some(Regularizer { l1: 0.0, l2: 0.5 })
        );
        assert_eq!(
            activity_regularizer(
                "ActivityRegularization",
                &json!({"l1": 0.25, "l2": 0.0}),
                "a"
            )
            .unwrap(),
            Some(Regularizer { l1: 0.25, l2: 0.0 })
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
        let td = json!({"layer": {"class_name": "Dense", "config": {"activity_regularizer": l2}}});
        let e = activity_regularizer("TimeDistributed", &td, "td").unwrap_err();
        assert!(
            e.to_string()
                .contains("activity_regularizer of the layer of layer td"),
            "{e}"
        );
    }

    /// The gradient against central differences (away from the kink of |w|).
    #[test]
    fn regularizer_gradient_matches_differences() {
        let r = Regularizer { l1: 0.3, l2: 0.7 };
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
