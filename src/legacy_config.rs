//! Model configs as older writers saved them, made into what the graph reads: one pass
//! ([`prepare`]) that rewrites old forms (`normalize_config`: CuDNN classes, Keras 2.0/2.1's
//! bare-list `Sequential`) and gives Keras 1/2 configs their meaning where Keras 3 reads the
//! same words differently (`keras2_semantics`).

use crate::hdf5::H5File;
use serde_json::Value as Json;

/// `config` ready for the graph: old forms rewritten, Keras 2 meanings given (the writer's
/// version from the config itself, else the weights `file`'s; see `keras2_semantics`).
pub(crate) fn prepare(config: &Json, file: Option<&H5File>) -> Json {
    let mut config = config.clone();
    normalize_config(&mut config);
    keras2_semantics(&mut config, file);
    config
}

/// Rewrites what older Keras versions wrote into what the graph reads, in place:
/// `CuDNNLSTM`/`CuDNNGRU` layers become the `LSTM` and `reset_after` `GRU` they compute
/// (tanh, sigmoid, biases; marked so that a mask given to them is refused, as Keras refuses
/// it), and a Keras 2.0-2.1 `Sequential` config (a bare list of layers) gets its `layers`
/// key.
pub(crate) fn normalize_config(config: &mut Json) {
    match config {
        Json::Object(map) => {
            let class = map
                .get("class_name")
                .and_then(Json::as_str)
                .map(str::to_string);
            if class.as_deref() == Some("Sequential") {
                if let Some(Json::Array(list)) = map.get("config").cloned() {
                    map.insert(
                        "config".into(),
                        serde_json::json!({"name": "sequential", "layers": list}),
                    );
                }
            }
            if let Some(c @ ("CuDNNLSTM" | "CuDNNGRU")) = class.as_deref() {
                let target = if c == "CuDNNLSTM" { "LSTM" } else { "GRU" };
                map.insert("class_name".into(), Json::String(target.into()));
                if let Some(Json::Object(cfg)) = map.get_mut("config") {
                    cfg.insert("activation".into(), "tanh".into());
                    cfg.insert("recurrent_activation".into(), "sigmoid".into());
                    cfg.insert("use_bias".into(), true.into());
                    if target == "GRU" {
                        cfg.insert("reset_after".into(), true.into());
                    }
                    cfg.insert("cudnn_class".into(), Json::String(c.into()));
                }
            }
            for v in map.values_mut() {
                normalize_config(v);
            }
        }
        Json::Array(items) => items.iter_mut().for_each(normalize_config),
        _ => {}
    }
}

/// Gives `config` Keras 2's meaning where Keras 3 reads the same words differently, when
/// the Keras that wrote it was Keras 1 or 2: the config's own `keras_version` (tf-keras's
/// `model.to_json()` writes it), else none when the config is Keras 3's (its layers carry
/// `module` keys), else the `keras_version` of the weights file `file`.
fn keras2_semantics(config: &mut Json, file: Option<&H5File>) {
    let own = config
        .get("keras_version")
        .and_then(Json::as_str)
        .map(str::to_string);
    let keras3 = config.get("module").is_some() || config.get("registered_name").is_some();
    let version = match (own, file) {
        (Some(v), _) => v,
        _ if keras3 => "3".into(),
        (None, Some(file)) => ["", "model_weights"]
            .iter()
            .find_map(|g| file.string_attribute(g, "keras_version").ok())
            .and_then(|v| v.into_iter().next())
            .unwrap_or_default(),
        (None, None) => String::new(),
    };
    if version.starts_with("2.") || version.starts_with("1.") {
        // standalone Keras (1.x, 2.0-2.3; tf.keras of TF 1 says "2.x.y-tf", of TF 2 2.4+)
        let minor: Option<u32> = version.split('.').nth(1).and_then(|m| m.parse().ok());
        let standalone = !version.contains("-tf")
            && (version.starts_with("1.") || minor.is_some_and(|m| m <= 3));
        keras2_words(config, standalone);
    }
}

/// `"hard_sigmoid"` (any activation key) as Keras 2's `clip(0.2x + 0.5, 0, 1)`, the
/// recurrent layers marked to take their input's mask with initial states, as Keras 2 did,
/// a GRU config without `reset_after` (Keras 2.0's) as the reset-before GRU it was, and, for
/// files of standalone Keras (`standalone`: 2.3 and before), `Bidirectional` layers without
/// tf.keras's zero outputs at masked steps.
fn keras2_words(config: &mut Json, standalone: bool) {
    match config {
        Json::Object(map) => {
            // Keras 2 hands a recurrent layer its input's mask even when it is called with
            // initial states (Keras 3 does not: see `graph::core::Recurrent`).
            let recurrent = matches!(
                map.get("class_name").and_then(Json::as_str),
                Some("LSTM" | "GRU" | "SimpleRNN" | "Bidirectional" | "RNN")
            );
            let gru = matches!(
                map.get("class_name").and_then(Json::as_str),
                Some("GRU" | "GRUCell")
            );
            let bidirectional =
                map.get("class_name").and_then(Json::as_str) == Some("Bidirectional");
            // Keras 2's Dot normalizes by tf.linalg.l2_normalize (the squared norm floored
            // at 1e-12); Keras 3's factor is min(rsqrt(sum x^2), 1e7)
            // Keras 2's TimeDistributed calls its layer as a layer (its activity
            // regularizer applies); Keras 3's runs the layer's call
            if map.get("class_name").and_then(Json::as_str) == Some("TimeDistributed") {
                if let Some(Json::Object(cfg)) = map.get_mut("config") {
                    cfg.insert("keras2_inner_call".into(), Json::Bool(true));
                }
            }
            if map.get("class_name").and_then(Json::as_str) == Some("Dot") {
                if let Some(Json::Object(cfg)) = map.get_mut("config") {
                    cfg.insert("keras2_normalize".into(), Json::Bool(true));
                }
            }
            if recurrent || gru {
                if let Some(Json::Object(cfg)) = map.get_mut("config") {
                    cfg.insert("keras2_call_mask".into(), Json::Bool(true));
                    // Keras 2.0's GRU (before the reset_after option, which every later
                    // writer saves) was the reset-before form.
                    if gru && !cfg.contains_key("reset_after") {
                        cfg.insert("reset_after".into(), Json::Bool(false));
                    }
                    if standalone && bidirectional {
                        cfg.insert("standalone_keras_mask".into(), Json::Bool(true));
                    }
                }
            }
            for (k, v) in map.iter_mut() {
                if k.ends_with("activation") && v.as_str() == Some("hard_sigmoid") {
                    *v = Json::String("hard_sigmoid_keras2".into());
                } else {
                    keras2_words(v, standalone);
                }
            }
        }
        Json::Array(items) => items.iter_mut().for_each(|v| keras2_words(v, standalone)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn old_configs_normalized() {
        let mut v = json!({"class_name": "Sequential", "config": [
            {"class_name": "CuDNNGRU", "config": {"name": "g", "units": 2}}]});
        normalize_config(&mut v);
        let layer = &v["config"]["layers"][0];
        assert_eq!(layer["class_name"], "GRU");
        assert_eq!(layer["config"]["reset_after"], true);
        assert_eq!(layer["config"]["recurrent_activation"], "sigmoid");
        assert_eq!(layer["config"]["cudnn_class"], "CuDNNGRU");
    }
}
