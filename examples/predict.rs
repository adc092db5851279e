//! Runs a saved Keras model on an input and writes its predictions.
//!
//! ```text
//! cargo run --release --example predict -- --model FILE.keras --input X.npy --output Y.npy [--backend auto|cpu|gpu] [--weights FILE]
//! ```
//! `--weights` takes the weights from a `.weights.h5` or a sharded `.weights.json` index, with
//! `--model` (a `.keras` or JSON file) supplying the configuration; `--weights-by order|name`
//! (and `--skip-mismatch`) chooses how the file's layers are matched to the model's, as
//! Keras's `load_weights(by_name=..., skip_mismatch=...)` (default: order, Keras's default).
//! `--backend auto` (the default) runs on a hardware GPU when there is one (a model the GPU
//! path cannot plan runs on the CPU instead), else on the CPU path, and says which and why in
//! one line on stderr; `gpu` takes a software adapter (llvmpipe, lavapipe, ...) too when no
//! hardware one is found.
//! A model with several outputs writes `Y.0.npy`, `Y.1.npy`, ... in the model's output order.
//! Any error: a one-line reason on stderr and a non-zero exit code.

use lstm_wgpu::gpu::{GpuContext, GpuNetwork, GpuOptions};
use lstm_wgpu::model::{KerasModel, ModelInput, WeightMatch};
use ndarray::ArrayD;
use ndarray_npy::{read_npy, write_npy};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "usage: predict --model FILE.keras|FILE.h5 --input X.npy [--input X2.npy ...] \
--output Y.npy [--backend auto|cpu|gpu] [--weights FILE.weights.h5|FILE.h5|FILE.weights.json] \
[--weights-by order|name] [--skip-mismatch] [--summary] [--help]

  --input    once per model input, in the model's input order: float32 features, or int32/int64
             token ids for an Embedding input
  --backend  auto (default): a hardware GPU if there is one (the whole model in one
             submission; a model the GPU path cannot plan runs on the CPU instead), else the
             CPU path (one line on stderr says which and why); cpu; gpu (a software adapter too)
  --weights  take the weights from this file (a sharded .weights.json index included), the
             configuration from --model
  --weights-by  how the weights file's layers are matched to the model's: order (default,
             Keras's load_weights default: the layers with weights, in order) or name (Keras's
             by_name=True, legacy HDF5 files: a file with more layers than the model loads)
  --skip-mismatch  with --weights-by name: skip a layer whose weight count or shapes differ
             (Keras's skip_mismatch=True; a layer left without weights is still an error)
  --summary  print the model's inputs and its layers (output shapes, parameters) as Keras's
             model.summary(), and exit";

fn usage() -> String {
    USAGE.into()
}

/// An input `.npy` as float32, or as token ids (int32/int64).
fn read_input(path: &Path) -> Result<ModelInput, String> {
    if let Ok(a) = read_npy::<_, ArrayD<f32>>(path) {
        return Ok(a.into());
    }
    if let Ok(a) = read_npy::<_, ArrayD<i32>>(path) {
        return Ok(a.into());
    }
    read_npy::<_, ArrayD<i64>>(path)
        .map(ModelInput::from)
        .map_err(|e| format!("{}: {e} (expected float32, int32 or int64)", path.display()))
}

fn run() -> Result<(), String> {
    let (mut model, mut output, mut backend) = (None, None, "auto".to_string());
    let mut inputs: Vec<PathBuf> = Vec::new();
    let mut weights: Option<PathBuf> = None;
    let mut summary = false;
    let (mut by, mut skip_mismatch) = ("order".to_string(), false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(usage);
        match a.as_str() {
            "--model" => model = Some(PathBuf::from(value()?)),
            "--input" => inputs.push(PathBuf::from(value()?)),
            "--output" => output = Some(PathBuf::from(value()?)),
            "--backend" => backend = value()?,
            "--weights" => weights = Some(PathBuf::from(value()?)),
            "--weights-by" => by = value()?,
            "--skip-mismatch" => skip_mismatch = true,
            "--summary" => summary = true,
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => return Err(usage()),
        }
    }
    let Some(model) = model else {
        return Err(usage());
    };
    if !matches!(backend.as_str(), "auto" | "cpu" | "gpu") {
        return Err(format!("unknown backend {backend:?} (auto, cpu or gpu)"));
    }
    let matching = match (by.as_str(), skip_mismatch) {
        ("order", false) => WeightMatch::Order,
        ("order", true) => {
            return Err("--skip-mismatch goes with --weights-by name (as Keras's \
                        skip_mismatch with by_name=True)"
                .into())
        }
        ("name", skip_mismatch) => WeightMatch::ByName { skip_mismatch },
        (other, _) => return Err(format!("unknown --weights-by {other:?} (order or name)")),
    };
    if weights.is_none() && (by != "order" || skip_mismatch) {
        return Err("--weights-by and --skip-mismatch go with --weights FILE".into());
    }
    let mut m = match &weights {
        Some(w) => KerasModel::load_weights_with(&model, w, matching),
        None => KerasModel::load(&model),
    }
    .map_err(|e| e.to_string())?;
    if summary {
        println!("Model: {:?}", m.name());
        for i in m.inputs() {
            println!("  input {} {:?} {}", i.name, i.shape, i.dtype);
        }
        let layers = m.summary().map_err(|e| e.to_string())?;
        let shape = |s: &Vec<Option<usize>>| {
            let dims: Vec<String> = s
                .iter()
                .map(|d| d.map_or("None".to_string(), |v| v.to_string()))
                .collect();
            format!("({})", dims.join(", "))
        };
        println!(
            "{:<40} {:<28} {:>10}  path",
            "Layer (type)", "Output Shape", "Param #"
        );
        let mut total = 0;
        for l in &layers {
            let shapes: Vec<String> = l.output_shapes.iter().map(shape).collect();
            println!(
                "{:<40} {:<28} {:>10}  {}",
                format!("{} ({})", l.name, l.class),
                shapes.join(", "),
                l.params,
                if l.gpu { "CPU, GPU" } else { "CPU" }
            );
            total += l.params;
        }
        println!("Total params: {total}");
        if layers.iter().all(|l| l.gpu) {
            println!("The whole model runs on the CPU path and on the GPU path (one submission per forward).");
        } else {
            println!("The model runs on the CPU path (the layers marked CPU have no GPU kernel).");
        }
        return Ok(());
    }
    let Some(output) = output else {
        return Err(usage());
    };
    if inputs.len() != m.inputs().len() {
        let names: Vec<String> = m
            .inputs()
            .iter()
            .map(|i| format!("{} {:?} {}", i.name, i.shape, i.dtype))
            .collect();
        return Err(format!(
            "the model takes {} inputs ({}), {} --input given",
            names.len(),
            names.join("; "),
            inputs.len()
        ));
    }
    let xs: Vec<ModelInput> = inputs
        .iter()
        .map(|p| read_input(p))
        .collect::<Result<_, _>>()?;
    let ctx = match backend.as_str() {
        "cpu" => None,
        // an explicit GPU request may use a software adapter
        "gpu" => Some(
            GpuContext::with_options(&GpuOptions::from_env().allow_software(true))
                .map_err(|e| e.to_string())?,
        ),
        _ => match GpuContext::new() {
            Ok(ctx) => {
                eprintln!(
                    "backend: GPU {} (a hardware adapter was found)",
                    ctx.describe()
                );
                Some(ctx)
            }
            Err(e) => {
                eprintln!("backend: CPU (no hardware GPU adapter: {e})");
                None
            }
        },
    };
    let on_gpu = |ctx| -> Result<Vec<ArrayD<f32>>, lstm_wgpu::LstmError> {
        GpuNetwork::from_model(ctx, &m)?.forward_inputs(&xs)
    };
    let outputs: Vec<ArrayD<f32>> = match ctx.map(on_gpu) {
        Some(Ok(out)) => out,
        // auto: a model the GPU path cannot run falls back to the CPU, saying why
        Some(Err(e @ lstm_wgpu::LstmError::UnsupportedOnPath { .. })) if backend == "auto" => {
            eprintln!("backend: CPU (the GPU path does not run this model: {e})");
            m.predict_inputs(&xs).map_err(|e| e.to_string())?
        }
        Some(Err(e)) => return Err(e.to_string()),
        None => m.predict_inputs(&xs).map_err(|e| e.to_string())?,
    };
    let write = |path: &Path, a: &ArrayD<f32>| {
        write_npy(path, a).map_err(|e| format!("{}: {e}", path.display()))
    };
    if outputs.len() == 1 {
        write(&output, &outputs[0])?;
    } else {
        let stem = output.with_extension("");
        for (k, a) in outputs.iter().enumerate() {
            write(&PathBuf::from(format!("{}.{k}.npy", stem.display())), a)?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
