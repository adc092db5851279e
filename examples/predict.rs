//! Runs a saved Keras model on an input and writes its predictions.
//!
//! ```text
//! cargo run --release --example predict -- --model FILE.keras --input X.npy --output Y.npy [--backend auto|cpu|gpu] [--weights FILE]
//! ```
//! `--weights` takes the weights from a `.weights.h5` or a sharded `.weights.json` index, with
//! `--model` (a `.keras` or JSON file) supplying the configuration.
//! `--backend auto` (the default) runs on a hardware GPU when there is one, else on the CPU
//! path, and says which and why in one line on stderr; `gpu` takes a software adapter
//! (llvmpipe, lavapipe, ...) too when no hardware one is found.
//! A model with several outputs writes `Y.0.npy`, `Y.1.npy`, ... in the model's output order.
//! Any error: a one-line reason on stderr and a non-zero exit code.

use lstm_wgpu::gpu::{GpuContext, GpuNetwork, GpuOptions};
use lstm_wgpu::model::KerasModel;
use ndarray::{Array3, ArrayD};
use ndarray_npy::{read_npy, write_npy};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn usage() -> String {
    "usage: predict --model FILE.keras --input X.npy --output Y.npy [--backend auto|cpu|gpu] \
     [--weights FILE.weights.h5|FILE.weights.json]"
        .into()
}

fn run() -> Result<(), String> {
    let (mut model, mut input, mut output, mut backend) = (None, None, None, "auto".to_string());
    let mut weights: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(usage);
        match a.as_str() {
            "--model" => model = Some(PathBuf::from(value()?)),
            "--input" => input = Some(PathBuf::from(value()?)),
            "--output" => output = Some(PathBuf::from(value()?)),
            "--backend" => backend = value()?,
            "--weights" => weights = Some(PathBuf::from(value()?)),
            _ => return Err(usage()),
        }
    }
    let (Some(model), Some(input), Some(output)) = (model, input, output) else {
        return Err(usage());
    };
    if !matches!(backend.as_str(), "auto" | "cpu" | "gpu") {
        return Err(format!("unknown backend {backend:?} (auto, cpu or gpu)"));
    }
    let mut m = match &weights {
        Some(w) => KerasModel::load_weights(&model, w),
        None => KerasModel::load(&model),
    }
    .map_err(|e| e.to_string())?;
    let x: Array3<f32> = read_npy(&input).map_err(|e| {
        format!(
            "{}: {e} (expected a float32 array of shape (B, T, I))",
            input.display()
        )
    })?;
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
    let outputs: Vec<ArrayD<f32>> = if let Some(ctx) = ctx {
        let mut gpu = GpuNetwork::from_model(ctx, &m).map_err(|e| e.to_string())?;
        gpu.forward(x.view(), None, None)
            .map_err(|e| e.to_string())?
    } else {
        m.predict(x.view()).map_err(|e| e.to_string())?
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
