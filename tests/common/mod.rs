//! Helpers shared by the integration tests.
#![allow(dead_code)]

use lstm_wgpu::gpu::{GpuContext, GpuOptions};
use ndarray::{Array3, ArrayD};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// The shared context, or None (after printing why) when no adapter exists and the
/// environment does not require one.
pub fn gpu(test: &str) -> Option<Arc<GpuContext>> {
    static CTX: OnceLock<Result<Arc<GpuContext>, String>> = OnceLock::new();
    // The tests ask for software adapters too: CI has only lavapipe.
    let open = || GpuContext::with_options(&GpuOptions::from_env().allow_software(true));
    match CTX.get_or_init(|| open().map_err(|e| e.to_string())) {
        Ok(c) => Some(c.clone()),
        Err(e) => {
            if std::env::var("LSTM_WGPU_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("{test}: LSTM_WGPU_REQUIRE_GPU=1 but no GPU adapter: {e}");
            }
            eprintln!("SKIPPED {test}: no GPU adapter ({e})");
            None
        }
    }
}

/// The largest absolute difference between two lists of outputs (same count and shapes).
pub fn max_abs(a: &[ArrayD<f32>], b: &[ArrayD<f32>]) -> f32 {
    assert_eq!(a.len(), b.len(), "number of outputs");
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            assert_eq!(x.shape(), y.shape());
            x.iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f32::max)
        })
        .fold(0.0, f32::max)
}

/// Deterministic values in [-scale, scale) (xorshift), `[b, t, i]`.
pub fn xorshift_input(b: usize, t: usize, i: usize, seed: u64, scale: f32) -> Array3<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    Array3::from_shape_fn((b, t, i), |_| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 * scale - scale
    })
}

/// A folder of the shared reference data, `../shared/golden/NAME` beside the checkout, or the
/// folder the environment variable `var` names.
pub fn golden_dir(name: &str, var: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/golden")
            .join(name)
    })
}

/// The recorded LSTM cases (`LSTM_WGPU_GOLDEN_DIR` overrides).
pub fn lstm_cases_dir() -> PathBuf {
    golden_dir("keras-lstm", "LSTM_WGPU_GOLDEN_DIR")
}

/// A model's inputs from `DIR/NAME.input.npy` (one input) or `NAME.input.K.npy`, as float32 or
/// (for integer inputs) int32 arrays.
pub fn model_inputs(
    dir: &std::path::Path,
    name: &str,
    specs: &[lstm_wgpu::model::InputSpec],
) -> Vec<lstm_wgpu::model::ModelInput> {
    use ndarray_npy::read_npy;
    let path = |k: usize| {
        if specs.len() == 1 {
            dir.join(format!("{name}.input.npy"))
        } else {
            dir.join(format!("{name}.input.{k}.npy"))
        }
    };
    specs
        .iter()
        .enumerate()
        .map(|(k, spec)| {
            if spec.dtype.starts_with("int") {
                let a: ndarray::ArrayD<i32> =
                    read_npy(path(k)).unwrap_or_else(|e| panic!("{name} input {k}: {e}"));
                a.into()
            } else {
                let a: ArrayD<f32> =
                    read_npy(path(k)).unwrap_or_else(|e| panic!("{name} input {k}: {e}"));
                a.into()
            }
        })
        .collect()
}

/// A model's expected outputs: `DIR/NAME.expected.npy`, or `NAME.expected.K.npy` for several.
pub fn expected_outputs(dir: &std::path::Path, name: &str) -> Vec<ArrayD<f32>> {
    use ndarray_npy::read_npy;
    let single = dir.join(format!("{name}.expected.npy"));
    if single.exists() {
        return vec![read_npy(&single).unwrap()];
    }
    (0..)
        .map(|k| dir.join(format!("{name}.expected.{k}.npy")))
        .take_while(|p| p.exists())
        .map(|p| read_npy(&p).unwrap())
        .collect()
}

/// The multi-layer graphs recorded from Keras 3.15.1 in `tests/data/keras` (scripts in
/// `scripts/record_*.py`), each `NAME.keras` with its inputs and Keras's predictions.
#[allow(dead_code)]
pub const RECORDED_GRAPHS: [&str; 10] = [
    "nested",
    "time_distributed",
    "mix1",
    "mix2",
    "mix3",
    "mix4",
    "mix5",
    "mix7",
    "nmt",
    "masked_initial_state",
];

/// Random single mutations of a model config (a value removed, or replaced by one of
/// `replacements`), for the tests that loading never panics: a seeded xorshift over every
/// path of keys and indices of the config.
#[allow(dead_code)]
pub struct Mutator {
    seed: u64,
    paths: Vec<Vec<String>>,
}

#[allow(dead_code)]
impl Mutator {
    /// Over every path of `config`, seeded by `seed`.
    pub fn new(config: &serde_json::Value, seed: u64) -> Self {
        fn walk(v: &serde_json::Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
            out.push(at.clone());
            match v {
                serde_json::Value::Object(m) => m.iter().for_each(|(k, c)| {
                    at.push(k.clone());
                    walk(c, at, out);
                    at.pop();
                }),
                serde_json::Value::Array(a) => a.iter().enumerate().for_each(|(k, c)| {
                    at.push(k.to_string());
                    walk(c, at, out);
                    at.pop();
                }),
                _ => {}
            }
        }
        let mut paths = Vec::new();
        walk(config, &mut Vec::new(), &mut paths);
        Mutator { seed, paths }
    }

    /// A number below `n` (xorshift).
    pub fn below(&mut self, n: usize) -> usize {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        (self.seed % n as u64) as usize
    }

    /// `config` with one value at a random path removed (`None`) or replaced by one of
    /// `replacements`, and that path; None when the path cannot be mutated.
    pub fn mutate(
        &mut self,
        config: &serde_json::Value,
        replacements: &[Option<serde_json::Value>],
    ) -> Option<(serde_json::Value, Vec<String>)> {
        use serde_json::Value;
        fn at_path<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
            path.iter().try_fold(v, |v, k| match v {
                Value::Object(m) => m.get_mut(k),
                Value::Array(a) => a.get_mut(k.parse::<usize>().ok()?),
                _ => None,
            })
        }
        let k = self.below(self.paths.len());
        let path = self.paths[k].clone();
        let r = self.below(replacements.len());
        let replacement = replacements[r].clone();
        let mut c = config.clone();
        let (last, parent) = path.split_last()?;
        match (at_path(&mut c, parent), replacement) {
            (Some(Value::Object(m)), None) => {
                m.remove(last);
            }
            (Some(Value::Array(a)), None) => {
                let i = last.parse::<usize>().ok().filter(|&i| i < a.len())?;
                a.remove(i);
            }
            (Some(p), Some(r)) => *at_path(p, std::slice::from_ref(last))? = r,
            _ => return None,
        }
        Some((c, path))
    }
}

/// `model` on `inputs` gives `want` within 1e-5 on the CPU and, when a GPU adapter is
/// there, within 1e-4 on the GPU in one submission; prints the errors.
#[allow(dead_code)]
pub fn check_both_paths(
    name: &str,
    model: &mut lstm_wgpu::model::KerasModel,
    inputs: &[lstm_wgpu::model::ModelInput],
    want: &[ArrayD<f32>],
) {
    let got = model.predict_inputs(inputs).unwrap();
    assert_eq!(got.len(), want.len(), "{name}: outputs");
    let e = max_abs(&got, want);
    assert!(e <= 1e-5, "{name} cpu: {e}");
    if let Some(ctx) = gpu(name) {
        let mut g = lstm_wgpu::gpu::GpuNetwork::from_model(ctx, model).unwrap();
        let on_gpu = g.forward_inputs(inputs).unwrap();
        let eg = max_abs(&on_gpu, want);
        assert!(eg <= 1e-4, "{name} gpu: {eg}");
        assert_eq!(g.stats().submits, 1, "{name}: one submission");
        println!("{name}: cpu {e:.1e}, gpu {eg:.1e}");
    }
}

/// A recorded model built for training (`train::Functional`): its predictions within
/// `tol` of Keras's recorded outputs, and its MSE gradients (towards half its outputs)
/// finite with every weight's nonzero somewhere.
pub fn check_trainable(dir: &std::path::Path, name: &str, tol: f32) {
    use lstm_wgpu::model::{KerasModel, ModelInput};
    use lstm_wgpu::train::{Functional, Loss, Losses};
    let model = KerasModel::load(&dir.join(format!("{name}.keras"))).unwrap();
    let net = Functional::<f32>::from_model(&model).unwrap();
    let xs: Vec<ArrayD<f32>> = model_inputs(dir, name, model.inputs())
        .into_iter()
        .map(|i| match i {
            ModelInput::F32(x) => x,
            other => panic!("{name}: {other:?}"),
        })
        .collect();
    let xv: Vec<_> = xs.iter().map(|x| x.view()).collect();
    let want = expected_outputs(dir, name);
    let got = net.predict(&xv).unwrap();
    assert_eq!(got.len(), want.len(), "{name}");
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        let e = (g - w).mapv(f32::abs).fold(0.0f32, |a, &b| a.max(b));
        assert!(e < tol, "{name} output {k}: {e:e}");
    }
    let targets: Vec<ArrayD<f32>> = got.iter().map(|y| y.mapv(|v| 0.5 * v)).collect();
    let tv: Vec<_> = targets.iter().map(|y| y.view()).collect();
    let losses = Losses::new(vec![Some(Loss::MeanSquaredError); got.len()]);
    let g = net.gradients(&xv, &tv, &losses).unwrap();
    assert!(g.loss > 0.0 && g.loss.is_finite(), "{name}");
    assert!(
        g.weights.iter().all(|w| w.iter().all(|v| v.is_finite())),
        "{name}"
    );
    assert!(
        g.weights.iter().all(|w| w.iter().any(|&v| v != 0.0)),
        "{name}"
    );
}
