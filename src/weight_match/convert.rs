//! How weights saved by other layer classes or Keras versions are converted on load, as
//! Keras 2's HDF5 loader converts them (`preprocess_weights_for_loading`,
//! `_convert_rnn_weights`): CuDNNLSTM/CuDNNGRU layouts, Keras 1's per-gate LSTM and GRU
//! weights, through Bidirectional and TimeDistributed wrappers.

use super::flag;
use ndarray::{concatenate, ArrayD, Axis, IxDyn};
use serde_json::Value as Json;

/// `preprocess_weights_for_loading` of Keras 2's HDF5 loader: the weights saved for `entry`
/// (a model layer) in the form the model's layer takes. Wrappers convert their inner
/// layers' weights; Keras 1's per-gate LSTM (12 arrays) and GRU (9) weights are joined;
/// then `_convert_rnn_weights` (cuDNN layouts).
pub(crate) fn preprocess(
    entry: &Json,
    weights: Vec<ArrayD<f32>>,
    keras_version: &str,
) -> std::result::Result<Vec<ArrayD<f32>>, String> {
    let class = entry.get("class_name").and_then(Json::as_str).unwrap_or("");
    let null = Json::Null;
    let cfg = entry.get("config").unwrap_or(&null);
    let mut weights = weights;
    match class {
        "Bidirectional" => {
            let forward = cfg.get("layer").unwrap_or(&null);
            let backward = match cfg.get("backward_layer") {
                Some(b) if !b.is_null() => b,
                _ => forward,
            };
            let half = weights.len() / 2;
            let back = weights.split_off(half);
            let mut out = preprocess(forward, weights, keras_version)?;
            out.extend(preprocess(backward, back, keras_version)?);
            return Ok(out);
        }
        "TimeDistributed" => {
            return preprocess(cfg.get("layer").unwrap_or(&null), weights, keras_version)
        }
        _ => {}
    }
    if keras_version == "1" {
        let join = |idx: &[usize], w: &[ArrayD<f32>]| -> std::result::Result<ArrayD<f32>, String> {
            let views: Vec<_> = idx.iter().map(|&i| w[i].view()).collect();
            concatenate(Axis(w[idx[0]].ndim() - 1), &views)
                .map_err(|e| format!("Keras 1 weights of {class} do not concatenate: {e}"))
        };
        if class == "LSTM" && weights.len() == 12 {
            // Keras 1: i, c, f, o; Keras 2: i, f, c, o
            weights = vec![
                join(&[0, 6, 3, 9], &weights)?,
                join(&[1, 7, 4, 10], &weights)?,
                join(&[2, 8, 5, 11], &weights)?,
            ];
        }
        if class == "GRU" && weights.len() == 9 {
            weights = vec![
                join(&[0, 3, 6], &weights)?,
                join(&[1, 4, 7], &weights)?,
                join(&[2, 5, 8], &weights)?,
            ];
        }
    }
    convert_rnn_weights(class, cfg, weights)
}

/// `_convert_rnn_weights`: CuDNNLSTM weights (bias `[8H]`: input and recurrent biases) into
/// an LSTM's, CuDNNGRU weights (bias `[6H]`) into a `reset_after=True` GRU's. The source is
/// told by the bias shape, as Keras does; cuDNN keeps each gate's input kernel in Fortran
/// order and each recurrent kernel transposed.
fn convert_rnn_weights(
    class: &str,
    cfg: &Json,
    weights: Vec<ArrayD<f32>>,
) -> std::result::Result<Vec<ArrayD<f32>>, String> {
    let (gates, lstm) = match class {
        "LSTM" | "CuDNNLSTM" => (4, true),
        "GRU" | "CuDNNGRU" => (3, false),
        _ => return Ok(weights),
    };
    if weights.len() != 3 || weights[1].ndim() != 2 || weights[0].ndim() != 2 {
        return Ok(weights);
    }
    let units = weights[1].shape()[0];
    let bias = weights[2].shape().to_vec();
    let cudnn = bias == [2 * units * gates];
    if lstm {
        if cudnn {
            return from_cudnn(weights, gates, units, true);
        }
        if bias != [units * gates] {
            return Err(format!(
                "invalid bias shape {bias:?} for an LSTM of {units} units"
            ));
        }
        return Ok(weights);
    }
    let source = if cudnn {
        "CuDNNGRU"
    } else if bias == [2, units * gates] {
        "GRU(reset_after=True)"
    } else if bias == [units * gates] {
        "GRU(reset_after=False)"
    } else {
        return Err(format!(
            "invalid bias shape {bias:?} for a GRU of {units} units"
        ));
    };
    let target = if class == "CuDNNGRU" || flag(cfg, "reset_after", true) {
        // (a CuDNNGRU is run as the reset_after GRU it computes)
        "GRU(reset_after=True)"
    } else {
        "GRU(reset_after=False)"
    };
    match (source, target) {
        _ if source == target => Ok(weights),
        ("CuDNNGRU", "GRU(reset_after=True)") => from_cudnn(weights, gates, units, false),
        _ => Err(format!("{source} is not compatible with {target}")),
    }
}

/// cuDNN's layout to Keras's: per gate, the input kernel `[I, H]` read back from Fortran
/// order (`k.T.reshape(k.shape, order="F")`), the recurrent kernel transposed; the LSTM's
/// two biases summed, the GRU's reshaped to `[2, 3H]`.
fn from_cudnn(
    weights: Vec<ArrayD<f32>>,
    gates: usize,
    units: usize,
    lstm: bool,
) -> std::result::Result<Vec<ArrayD<f32>>, String> {
    let (kernel, recurrent, bias) = (&weights[0], &weights[1], &weights[2]);
    let input = kernel.shape()[0];
    if kernel.shape()[1] != gates * units || recurrent.shape()[1] != gates * units {
        return Err(format!(
            "cuDNN kernels of shapes {:?} and {:?} for {units} units",
            kernel.shape(),
            recurrent.shape()
        ));
    }
    let mut k = ArrayD::<f32>::zeros(IxDyn(&[input, gates * units]));
    let mut r = ArrayD::<f32>::zeros(IxDyn(&[units, gates * units]));
    for g in 0..gates {
        // the gate's block flattened row-major, then read column-major as [I, H]
        let block: Vec<f32> = (0..input)
            .flat_map(|i| (0..units).map(move |h| (i, h)))
            .map(|(i, h)| kernel[[i, g * units + h]])
            .collect();
        for a in 0..input {
            for b in 0..units {
                k[[a, g * units + b]] = block[a + b * input];
            }
        }
        for a in 0..units {
            for b in 0..units {
                r[[a, g * units + b]] = recurrent[[b, g * units + a]];
            }
        }
    }
    let n = gates * units;
    let b = if lstm {
        ArrayD::from_shape_fn(IxDyn(&[n]), |i| bias[[i[0]]] + bias[[n + i[0]]])
    } else {
        ArrayD::from_shape_fn(IxDyn(&[2, n]), |i| bias[[i[0] * n + i[1]]])
    };
    Ok(vec![k, r, b])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn arr(shape: &[usize], f: impl Fn(usize) -> f32) -> ArrayD<f32> {
        let n: usize = shape.iter().product();
        ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(f).collect()).unwrap()
    }

    #[test]
    fn cudnn_lstm_kernels_as_numpy() {
        // I = 2, H = 3: per gate the block [2, 3] = [[a, b, c], [d, e, f]] flattened
        // row-major is a b c d e f; read column-major as [2, 3]: [[a, c, e], [b, d, f]].
        let (i, h) = (2, 3);
        let kernel = arr(&[i, 4 * h], |x| x as f32);
        let recurrent = arr(&[h, 4 * h], |x| 100.0 + x as f32);
        let bias = arr(&[8 * h], |x| x as f32);
        let out = from_cudnn(vec![kernel.clone(), recurrent.clone(), bias], 4, h, true).unwrap();
        for g in 0..4 {
            let block = |r: usize, c: usize| kernel[[r, g * h + c]];
            let flat = [
                block(0, 0),
                block(0, 1),
                block(0, 2),
                block(1, 0),
                block(1, 1),
                block(1, 2),
            ];
            for a in 0..i {
                for b in 0..h {
                    assert_eq!(out[0][[a, g * h + b]], flat[a + b * i]);
                    // recurrent: k.T per gate
                }
            }
            for a in 0..h {
                for b in 0..h {
                    assert_eq!(out[1][[a, g * h + b]], recurrent[[b, g * h + a]]);
                }
            }
        }
        assert_eq!(out[2].shape(), &[12]);
        assert_eq!(out[2][[0]], 0.0 + 12.0);
        assert_eq!(out[2][[11]], 11.0 + 23.0);
    }

    #[test]
    fn gru_layouts_are_checked_as_keras() {
        let (i, h) = (2, 3);
        let w = |bias: &[usize]| {
            vec![
                arr(&[i, 3 * h], |x| x as f32),
                arr(&[h, 3 * h], |x| x as f32),
                arr(bias, |x| x as f32),
            ]
        };
        let reset_after = json!({"reset_after": true});
        let before = json!({"reset_after": false});
        let out = convert_rnn_weights("GRU", &reset_after, w(&[6 * h])).unwrap();
        assert_eq!(out[2].shape(), &[2, 3 * h]);
        assert_eq!(out[2][[1, 0]], 9.0);
        let e = convert_rnn_weights("GRU", &before, w(&[6 * h])).unwrap_err();
        assert!(
            e.contains("CuDNNGRU is not compatible with GRU(reset_after=False)"),
            "{e}"
        );
        let e = convert_rnn_weights("GRU", &reset_after, w(&[3 * h])).unwrap_err();
        assert!(e.contains("not compatible"), "{e}");
        // same layouts pass through
        assert_eq!(
            convert_rnn_weights("GRU", &before, w(&[3 * h])).unwrap()[2].shape(),
            &[9]
        );
        assert!(convert_rnn_weights("LSTM", &before, w(&[7])).is_err());
    }

    #[test]
    fn keras1_lstm_gates_reordered() {
        // 12 arrays W_i U_i b_i W_c U_c b_c W_f U_f b_f W_o U_o b_o, each filled with its index
        let w: Vec<ArrayD<f32>> = (0..12)
            .map(|k| arr(if k % 3 == 2 { &[2] } else { &[2, 2] }, move |_| k as f32))
            .collect();
        let entry = json!({"class_name": "LSTM", "config": {"units": 2}});
        let out = preprocess(&entry, w, "1").unwrap();
        assert_eq!(out.len(), 3);
        let gates: Vec<f32> = (0..4).map(|g| out[0][[0, 2 * g]]).collect();
        assert_eq!(gates, vec![0.0, 6.0, 3.0, 9.0]);
        assert_eq!(out[2][[2]], 8.0);
    }
}
