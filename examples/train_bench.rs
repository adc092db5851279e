//! Times one CPU training step of `LSTM(units) → Dense(1)` (MSE, Adam) next to the
//! inference forward pass of the same LSTM, on random data: medians over `--iters` runs.
//!
//! ```text
//! cargo run --release --example train_bench -- --batch 32 --steps 100 --input 32 --units 128 \
//!     [--iters 10] [--warmup 2] [--gpu] [--json] [--recompute STEPS]
//! ```
//!
//! `--recompute STEPS`: the CPU step in recompute mode (`FitOptions::recompute`: tapes of
//! STEPS steps at a time). `peak_rss_mb` is the process's peak resident memory
//! (`VmHWM`, Linux; 0 elsewhere), to compare the two modes' activation memory run by run.
//!
//! `forward_ms`: `cpu::Lstm::forward` (the inference path); `step_ms`: the loss, its
//! gradients (the recorded forward and backpropagation through time) and one Adam update;
//! `step_over_forward` their ratio. With `--gpu`: `gpu::GpuLstm::forward` and a
//! `train::GpuSequential` step (the LSTM's forward and backward on the GPU, one submission
//! each; Dense, loss and Adam on the CPU; the new weights written back), on the adapter
//! `GpuOptions::from_env` chooses (software ones allowed).

use lstm_wgpu::model::DenseActivation;
use lstm_wgpu::train::{FitOptions, GpuSequential, Loss, Optimizer, Sequential, TrainLayer};
use lstm_wgpu::{Activation, LstmConfig, LstmWeights};
use ndarray::{Array1, Array2, Array3};
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut b, mut t, mut i, mut h, mut iters, mut warmup, mut json, mut gpu) = (
        32usize, 100usize, 32usize, 128usize, 10usize, 2usize, false, false,
    );
    let mut recompute: Option<usize> = None;
    while let Some(a) = args.next() {
        let mut num = |what: &str| -> usize {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{what} needs a positive integer"))
        };
        match a.as_str() {
            "--batch" => b = num("--batch"),
            "--steps" => t = num("--steps"),
            "--input" => i = num("--input"),
            "--units" => h = num("--units"),
            "--iters" => iters = num("--iters").max(1),
            "--warmup" => warmup = num("--warmup"),
            "--json" => json = true,
            "--gpu" => gpu = true,
            "--recompute" => recompute = Some(num("--recompute")),
            other => panic!("unknown argument {other}"),
        }
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
    };
    let cfg = LstmConfig::new(h);
    let weights = LstmWeights::new(
        &cfg,
        i,
        Array2::from_shape_fn((i, 4 * h), |_| next()),
        Array2::from_shape_fn((h, 4 * h), |_| next()),
        Some(Array1::from_shape_fn(4 * h, |_| next())),
    )
    .expect("weights");
    let layer = lstm_wgpu::cpu::Lstm::new(cfg.clone(), weights.clone()).expect("layer");
    let mut net = Sequential {
        layers: vec![
            (
                "lstm".to_string(),
                TrainLayer::Recurrent {
                    config: cfg,
                    weights,
                    dropout: 0.0,
                    recurrent_dropout: 0.0,
                },
            ),
            (
                "dense".to_string(),
                TrainLayer::Dense {
                    kernel: Array2::from_shape_fn((h, 1), |_| next()),
                    bias: Some(Array1::zeros(1)),
                    time_distributed: false,
                    activation: DenseActivation::Elementwise(Activation::Linear),
                },
            ),
        ],
        carried: Default::default(),
    };
    let x = Array3::from_shape_fn((b, t, i), |_| next() * 5.0);
    let y = Array2::from_shape_fn((b, 1), |_| next()).into_dyn();
    let mut opt = Optimizer::adam(1e-3);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let time = |f: &mut dyn FnMut()| {
        for _ in 0..warmup {
            f();
        }
        median(
            (0..iters)
                .map(|_| {
                    let s = Instant::now();
                    f();
                    s.elapsed().as_secs_f64() * 1e3
                })
                .collect(),
        )
    };
    let (forward, step) = if gpu {
        let ctx = lstm_wgpu::gpu::GpuContext::with_options(
            &lstm_wgpu::gpu::GpuOptions::from_env().allow_software(true),
        )
        .expect("a GPU adapter");
        eprintln!("adapter: {}", ctx.describe());
        let mut lstm = lstm_wgpu::gpu::GpuLstm::new(ctx.clone(), &layer).expect("GPU layer");
        let forward = time(&mut || {
            std::hint::black_box(lstm.forward(x.view(), None, None).expect("forward"));
        });
        let mut trainer = GpuSequential::new(net, ctx).expect("GPU trainer");
        let options = FitOptions::new(Loss::MeanSquaredError, b, 1);
        let step = time(&mut || {
            trainer
                .fit(x.view(), y.view(), &options, &mut opt)
                .expect("step");
        });
        (forward, step)
    } else {
        let mut layer = layer;
        let forward = time(&mut || {
            std::hint::black_box(layer.forward(x.view(), None, None).expect("forward"));
        });
        let step = time(&mut || match recompute {
            // (one batch: one step of fit, in recompute mode)
            Some(steps) => {
                let options = FitOptions::new(Loss::MeanSquaredError, b, 1).recompute(steps);
                net.fit(x.view(), y.view(), &options, &mut opt)
                    .expect("step");
            }
            None => {
                let g = net
                    .gradients(x.view(), y.view(), Loss::MeanSquaredError)
                    .expect("gradients");
                opt.apply_views(&mut net.weights_mut(), &g.weights)
                    .expect("update");
            }
        });
        (forward, step)
    };
    let path = if gpu { "gpu" } else { "cpu" };
    let rss = peak_rss_mb();
    let rc = recompute.map_or("null".to_string(), |s| s.to_string());
    if json {
        println!(
            "{{\"path\":\"{path}\",\"batch\":{b},\"steps\":{t},\"input\":{i},\"units\":{h},\"forward_ms\":{forward},\"step_ms\":{step},\"step_over_forward\":{},\"recompute\":{rc},\"peak_rss_mb\":{rss:.1}}}",
            step / forward
        );
    } else {
        println!(
            "{path} B={b} T={t} I={i} H={h}: forward {forward:.2} ms, training step {step:.2} ms ({:.2}x), recompute {rc}, peak RSS {rss:.1} MB",
            step / forward
        );
    }
}

/// The process's peak resident memory in MB (`VmHWM` of `/proc/self/status`; 0 where that
/// is not there).
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
