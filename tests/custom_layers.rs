//! The application's own layer classes (`lstm_wgpu::custom`), on models recorded from
//! Keras 3.15.1 and tf-keras 2.21 (`tests/data/custom_layers`,
//! `scripts/record_custom_layers.py`): textgenrnn's `AttentionWeightedAverage` (a weight,
//! the input's mask, one or two outputs) and the OCR example's `CTCLayer` (the identity on
//! its second input at inference).

use lstm_wgpu::custom::{
    CustomLayer, CustomObjects, GpuKernel, LayerInput, LayerOutput, LayerSpec, GPU_KERNEL_PRELUDE,
};
use lstm_wgpu::model::{KerasModel, LoadOptions, ModelInput, WeightMatch};
use lstm_wgpu::LstmError;
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::read_npy;
use std::path::PathBuf;

mod common;
use common::{gpu, max_abs};

fn path(f: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/custom_layers")
        .join(f)
}

fn npy(f: &str) -> ArrayD<f32> {
    read_npy(path(f)).unwrap()
}

fn tokens() -> ModelInput {
    let ids: ArrayD<i32> = read_npy(path("awa.input.npy")).unwrap();
    ids.into()
}

/// `AttentionWeightedAverage`, as textgenrnn computes it (in f64, rounded at the end).
#[derive(Debug)]
struct Awa {
    w: ArrayD<f32>,
    return_attention: bool,
}

impl CustomLayer for Awa {
    fn call(&mut self, inputs: &[LayerInput<'_>]) -> lstm_wgpu::Result<Vec<LayerOutput>> {
        let x = &inputs[0].data;
        if x.ndim() != 3 || x.shape()[2] != self.w.shape()[0] {
            return Err(LstmError::shape(
                "AttentionWeightedAverage input",
                &[0, 0, self.w.shape()[0]],
                x.shape(),
            ));
        }
        let (b, t, c) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let mut out = ArrayD::zeros(IxDyn(&[b, c]));
        let mut att = ArrayD::zeros(IxDyn(&[b, t]));
        for i in 0..b {
            let logits: Vec<f64> = (0..t)
                .map(|s| {
                    (0..c)
                        .map(|k| f64::from(x[[i, s, k]]) * f64::from(self.w[[k, 0]]))
                        .sum()
                })
                .collect();
            let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let mut a: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
            if let Some(m) = &inputs[0].mask {
                (0..t).for_each(|s| a[s] *= if m[[i, s]] { 1.0 } else { 0.0 });
            }
            let sum: f64 = a.iter().sum::<f64>() + 1e-7;
            for s in 0..t {
                att[[i, s]] = (a[s] / sum) as f32;
                for k in 0..c {
                    out[[i, k]] += (f64::from(x[[i, s, k]]) * a[s] / sum) as f32;
                }
            }
        }
        let mut outs = vec![LayerOutput::new(out)];
        if self.return_attention {
            outs.push(LayerOutput::new(att));
        }
        Ok(outs)
    }

    fn params(&self) -> usize {
        self.w.len()
    }

    /// One invocation per batch row, as `call` computes it (the one-output form only).
    fn gpu_kernel(&self) -> Option<GpuKernel> {
        if self.return_attention {
            return None;
        }
        let channels = self.w.shape()[0];
        let kernel = GpuKernel::new(
            format!("{GPU_KERNEL_PRELUDE}{AWA_WGSL}"),
            move |s| {
                if s.len() != 3 || s[2] != channels {
                    return Err(LstmError::shape(
                        "AttentionWeightedAverage input",
                        &[0, 0, channels],
                        s,
                    ));
                }
                Ok(vec![s[0], s[2]])
            },
            |s| ((s[0] as u32).div_ceil(64), 1),
        );
        Some(kernel.weights(self.w.iter().copied().collect()))
    }
}

/// The kernel after `GPU_KERNEL_PRELUDE`.
const AWA_WGSL: &str = r#"
fn logit(b: u32, t: u32) -> f32 {
    let c = shape.dims.z;
    var l = 0.0;
    for (var k = 0u; k < c; k++) { l += x[(b * shape.dims.y + t) * c + k] * w[k]; }
    return l;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let b = id.x;
    let t_len = shape.dims.y;
    let c = shape.dims.z;
    if (b >= shape.dims.x) { return; }
    var m = -3.4e38;
    for (var t = 0u; t < t_len; t++) { m = max(m, logit(b, t)); }
    var sum = 0.0;
    for (var t = 0u; t < t_len; t++) {
        var a = exp(logit(b, t) - m);
        if (shape.has_mask == 1u) { a *= mask[b * t_len + t]; }
        sum += a;
    }
    sum += 1e-7;
    for (var t = 0u; t < t_len; t++) {
        var a = exp(logit(b, t) - m);
        if (shape.has_mask == 1u) { a *= mask[b * t_len + t]; }
        for (var k = 0u; k < c; k++) {
            y[b * c + k] += x[(b * t_len + t) * c + k] * a / sum;
        }
    }
}
"#;

fn awa(spec: LayerSpec<'_>) -> lstm_wgpu::Result<Box<dyn CustomLayer>> {
    Ok(Box::new(Awa {
        w: spec.weight(0)?,
        return_attention: spec.config["return_attention"].as_bool().unwrap_or(false),
    }))
}

fn options(class: &str) -> LoadOptions {
    LoadOptions::new().custom(CustomObjects::new().register(class, awa))
}

fn check(name: &str, mut model: KerasModel, inputs: &[ModelInput], want: &[ArrayD<f32>]) {
    let got = model.predict_inputs(inputs).unwrap();
    let e = max_abs(&got, want);
    assert!(e <= 1e-5, "{name} cpu: {e}");
    println!("{name}: cpu {e:.1e}");
}

#[test]
fn an_unregistered_class_is_an_error_naming_it() {
    let e = KerasModel::load(&path("awa_k3.keras"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("AttentionWeightedAverage") && e.contains("CustomObjects"),
        "{e}"
    );
}

#[test]
fn a_registered_class_runs_on_the_cpu_as_keras() {
    // by class name, and by the name it is registered under in Keras
    for class in [
        "AttentionWeightedAverage",
        "textgenrnn>AttentionWeightedAverage",
    ] {
        let model = KerasModel::load_with(&path("awa_k3.keras"), &options(class)).unwrap();
        check("awa_k3", model, &[tokens()], &[npy("awa_k3.expected.npy")]);
    }
    // two outputs: [Dense, attention weights]
    let model = KerasModel::load_with(
        &path("awa_k3_attention.keras"),
        &options("AttentionWeightedAverage"),
    )
    .unwrap();
    let want = [
        npy("awa_k3_attention.expected.0.npy"),
        npy("awa_k3_attention.expected.1.npy"),
    ];
    check("awa_k3_attention", model, &[tokens()], &want);
}

#[test]
fn a_custom_gpu_kernel_runs_in_the_one_submission() {
    let mut model =
        KerasModel::load_with(&path("awa_k3.keras"), &options("AttentionWeightedAverage")).unwrap();
    let summary = model.summary().unwrap();
    let attention = summary.iter().find(|l| l.name == "attention").unwrap();
    assert_eq!((attention.params, attention.gpu), (6, true));
    let Some(ctx) = gpu("custom layer") else {
        return;
    };
    let want = npy("awa_k3.expected.npy");
    let mut g = lstm_wgpu::gpu::GpuNetwork::from_model(ctx.clone(), &model).unwrap();
    let got = g.forward_inputs(&[tokens()]).unwrap();
    let cpu = model.predict_inputs(&[tokens()]).unwrap();
    let (e, ec) = (
        max_abs(&got, std::slice::from_ref(&want)),
        max_abs(&got, &cpu),
    );
    assert!(e <= 1e-4 && ec <= 1e-4, "gpu vs keras {e}, vs cpu {ec}");
    assert_eq!(g.stats().submits, 1);
    println!("awa_k3 gpu: {e:.1e} vs Keras, {ec:.1e} vs the CPU");
    // a custom layer without a kernel: the GPU path names it
    let model = KerasModel::load_with(
        &path("awa_k3_attention.keras"),
        &options("AttentionWeightedAverage"),
    )
    .unwrap();
    let e = lstm_wgpu::gpu::GpuNetwork::from_model(ctx.clone(), &model)
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(e, LstmError::UnsupportedOnPath { .. }), "{e}");
    let e = e.to_string();
    assert!(
        e.contains("attention") && e.contains("AttentionWeightedAverage"),
        "{e}"
    );
    // a kernel that does not compile: an error naming the layer, no panic
    #[derive(Debug)]
    struct Broken;
    impl CustomLayer for Broken {
        fn call(&mut self, inputs: &[LayerInput<'_>]) -> lstm_wgpu::Result<Vec<LayerOutput>> {
            Ok(vec![LayerOutput::new(inputs[0].data.to_owned())])
        }
        fn gpu_kernel(&self) -> Option<GpuKernel> {
            Some(GpuKernel::new("fn main( {", |s| Ok(s.to_vec()), |_| (1, 1)))
        }
    }
    let custom =
        CustomObjects::new().register("AttentionWeightedAverage", |_| Ok(Box::new(Broken)));
    let model =
        KerasModel::load_with(&path("awa_k3.keras"), &LoadOptions::new().custom(custom)).unwrap();
    let e = lstm_wgpu::gpu::GpuNetwork::from_model(ctx, &model)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("custom layer attention"), "{e}");
}

#[test]
fn legacy_files_with_a_custom_layer() {
    // whole model: the custom layer's weight count is taken from the file's layer of its name
    let model =
        KerasModel::load_with(&path("awa_k2.h5"), &options("AttentionWeightedAverage")).unwrap();
    check("awa_k2", model, &[tokens()], &[npy("awa_k2.expected.npy")]);
    // renamed layers, matched by order: the count must be given
    let (json, weights) = (path("awa_k2.json"), path("awa_k2_weights.h5"));
    let e = KerasModel::load_weights_with_options(
        &json,
        &weights,
        &options("AttentionWeightedAverage"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("CustomObjects::weight_count") && e.contains("attention_new"),
        "{e}"
    );
    let custom = CustomObjects::new()
        .register("AttentionWeightedAverage", awa)
        .weight_count("AttentionWeightedAverage", |_| 1);
    let opts = LoadOptions::new().custom(custom);
    let model = KerasModel::load_weights_with_options(&json, &weights, &opts).unwrap();
    check(
        "awa_k2 renamed",
        model,
        &[tokens()],
        &[npy("awa_k2_renamed.expected.npy")],
    );
    // by name nothing matches
    let by_name = opts.clone().weight_match(WeightMatch::ByName {
        skip_mismatch: false,
    });
    assert!(KerasModel::load_weights_with_options(&json, &weights, &by_name).is_err());
}

/// The OCR example's `CTCLayer(y_true, y_pred)`: adds the CTC loss in training, returns
/// `y_pred`.
#[derive(Debug)]
struct CtcLayer;

impl CustomLayer for CtcLayer {
    fn call(&mut self, inputs: &[LayerInput<'_>]) -> lstm_wgpu::Result<Vec<LayerOutput>> {
        let y_pred = inputs
            .get(1)
            .ok_or_else(|| LstmError::invalid("CTCLayer inputs", "takes (y_true, y_pred)"))?;
        Ok(vec![LayerOutput::with_mask(
            y_pred.data.to_owned(),
            y_pred.mask.map(|m| m.to_owned()),
        )])
    }
}

#[test]
fn a_weightless_custom_layer_with_two_inputs() {
    let custom = CustomObjects::new().register("CTCLayer", |_| Ok(Box::new(CtcLayer)));
    let model =
        KerasModel::load_with(&path("ctc_k3.keras"), &LoadOptions::new().custom(custom)).unwrap();
    let inputs = [npy("ctc.input.0.npy").into(), npy("ctc.input.1.npy").into()];
    check("ctc_k3", model, &inputs, &[npy("ctc_k3.expected.npy")]);
}
