//! Times one forward as a user's call costs it: host input in; the sequence plus final h and c
//! back in host memory.
//!
//! ```text
//! cargo run --release --example bench -- --backend cpu|gpu --batch B --steps T --input I --units H \
//!     [--cell lstm|gru|gru-reset-before|simple-rnn] [--iters N] [--warmup N] [--json]
//! cargo run --release --example bench -- --sweep [--iters N]      # standard shapes, both paths
//! cargo run --release --example bench -- --plot FILE.svg          # time vs steps and vs batch
//! cargo run --release --example bench -- --list-adapters
//! cargo run --release --example bench -- --model FILE.keras --backend cpu|gpu --batch B --steps T \
//!     [--iters N] [--warmup N] [--flops F] [--json]
//! ```
//! `--model` times a saved Keras model's forward on random inputs of its input shapes (every
//! free axis `T` long; token inputs drawn below 2); with `--flops F` (the model's FLOPs per
//! batch row and step, e.g. `scripts/record_bench_models.py`'s) it also prints GFLOP/s.
//! `LSTM_WGPU_PROFILE=1` prints where the GPU time went (timestamp queries) to stderr.
//! `LSTM_WGPU_KERNEL=step|sequence` forces the GPU's per-step or whole-sequence kernel
//! (default: chosen automatically), to compare the two.

use lstm_wgpu::gpu::{GpuContext, GpuLstm, GpuOptions, RecurrentKernel};
use lstm_wgpu::perf::{forward_flops, forward_flops_gates, STANDARD_SHAPES};
use lstm_wgpu::{Cell, Lstm, LstmConfig, LstmWeights, Result};
use ndarray::Array3;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Backend {
    Cpu,
    Gpu,
}

#[derive(Clone, Copy, Debug)]
struct Shape {
    batch: usize,
    steps: usize,
    input: usize,
    units: usize,
}

struct Measurement {
    cell: Cell,
    times: Vec<f64>,
    dispatches: u32,
    submits: u32,
    gpu_bytes: u64,
    adapter: String,
}

impl Measurement {
    fn sorted(&self) -> Vec<f64> {
        let mut t = self.times.clone();
        t.sort_by(f64::total_cmp);
        t
    }
    fn median(&self) -> f64 {
        let t = self.sorted();
        let n = t.len();
        if n % 2 == 1 {
            t[n / 2]
        } else {
            (t[n / 2 - 1] + t[n / 2]) / 2.0
        }
    }
}

fn measure(
    backend: Backend,
    gpu: Option<&Arc<GpuContext>>,
    s: Shape,
    iters: usize,
    warmup: usize,
) -> Result<Measurement> {
    measure_cell(Cell::Lstm, backend, gpu, s, iters, warmup)
}

fn measure_cell(
    cell: Cell,
    backend: Backend,
    gpu: Option<&Arc<GpuContext>>,
    s: Shape,
    iters: usize,
    warmup: usize,
) -> Result<Measurement> {
    let config = LstmConfig::new(s.units)
        .cell(cell)
        .return_sequences(true)
        .return_state(true);
    let weights = LstmWeights::<f32>::random(&config, s.input, 0)?;
    let mut cpu = Lstm::new(config, weights)?;
    let x = Array3::from_shape_fn((s.batch, s.steps, s.input), |(b, t, i)| {
        ((b * 131 + t * 17 + i) as f32 * 0.013).sin()
    });
    let mut times = Vec::with_capacity(iters);
    match backend {
        Backend::Cpu => {
            for k in 0..warmup + iters {
                let t0 = Instant::now();
                let out = cpu.forward(x.view(), None, None)?;
                let dt = t0.elapsed().as_secs_f64();
                std::hint::black_box(out);
                if k >= warmup {
                    times.push(dt);
                }
            }
            Ok(Measurement {
                cell,
                times,
                dispatches: 0,
                submits: 0,
                gpu_bytes: 0,
                adapter: "cpu".into(),
            })
        }
        Backend::Gpu => {
            let ctx = gpu.ok_or_else(|| lstm_wgpu::LstmError::NoGpuAdapter {
                tried: "see --list-adapters".into(),
            })?;
            let mut layer = GpuLstm::new(ctx.clone(), &cpu)?;
            let profiling = std::env::var("LSTM_WGPU_PROFILE").is_ok_and(|v| v == "1");
            layer.set_profiling(profiling);
            let mut profiles = Vec::new();
            match std::env::var("LSTM_WGPU_KERNEL").as_deref() {
                Ok("step") => layer.set_recurrent_kernel(RecurrentKernel::PerStep),
                Ok("sequence") => layer.set_recurrent_kernel(RecurrentKernel::WholeSequence),
                _ => {}
            }
            for k in 0..warmup.max(1) + iters {
                let t0 = Instant::now();
                let out = layer.forward(x.view(), None, None)?;
                let dt = t0.elapsed().as_secs_f64();
                std::hint::black_box(out);
                if k >= warmup.max(1) {
                    times.push(dt);
                    profiles.extend(layer.profile());
                }
            }
            if profiling {
                report_profile(&profiles);
            }
            let st = layer.stats();
            Ok(Measurement {
                cell,
                times,
                dispatches: st.dispatches,
                submits: st.submits,
                gpu_bytes: layer.gpu_bytes(),
                adapter: ctx.adapter_info().name.clone(),
            })
        }
    }
}

/// Prints the median of each part of the GPU profiles (LSTM_WGPU_PROFILE=1) to stderr.
fn report_profile(profiles: &[lstm_wgpu::gpu::ForwardProfile]) {
    if profiles.is_empty() {
        eprintln!("profile: this adapter has no timestamp queries inside passes");
        return;
    }
    let median = |f: &dyn Fn(&lstm_wgpu::gpu::ForwardProfile) -> f64| {
        let mut v: Vec<f64> = profiles.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2] * 1e3
    };
    eprintln!(
        "profile (median ms of {} runs): upload {:.3}, projection {:.3}, steps {:.3}, merge {:.3}, wait {:.3}, readback {:.3}",
        profiles.len(),
        median(&|p| p.upload_s),
        median(&|p| p.projection_s),
        median(&|p| p.steps_s),
        median(&|p| p.merge_s),
        median(&|p| p.wait_s),
        median(&|p| p.readback_s),
    );
}

fn json(backend: Backend, s: Shape, m: &Measurement) -> String {
    let t = m.sorted();
    let median = m.median();
    let flops = cell_flops(m.cell, s) as f64;
    format!(
        "{{\"peer\":\"lstm-wgpu\",\"cell\":\"{}\",\"backend\":\"{}\",\"adapter\":{:?},\"batch\":{},\"steps\":{},\"input\":{},\"units\":{},\"median_s\":{:e},\"min_s\":{:e},\"max_s\":{:e},\"gflops\":{:.3},\"runs\":{},\"dispatches\":{},\"submits\":{},\"gpu_bytes\":{}}}",
        cell_name(m.cell),
        if backend == Backend::Cpu { "cpu" } else { "gpu" },
        m.adapter,
        s.batch,
        s.steps,
        s.input,
        s.units,
        median,
        t[0],
        t[t.len() - 1],
        flops / median / 1e9,
        t.len(),
        m.dispatches,
        m.submits,
        m.gpu_bytes
    )
}

fn cell_name(cell: Cell) -> &'static str {
    match cell {
        Cell::Lstm => "lstm",
        Cell::Gru { reset_after: true } => "gru",
        Cell::Gru { reset_after: false } => "gru-reset-before",
        Cell::SimpleRnn => "simple-rnn",
    }
}

/// FLOPs of one forward: `2·T·B·G·H·(I+H)` (`forward_flops` for an LSTM).
fn cell_flops(cell: Cell, s: Shape) -> u64 {
    forward_flops_gates(cell.gates(), s.batch, s.steps, s.input, s.units)
}

/// The GPU to measure: a software adapter too when there is no hardware one (the figures
/// then show correctness costs, not what a GPU does).
fn open_gpu() -> Option<Arc<GpuContext>> {
    match GpuContext::with_options(&GpuOptions::from_env().allow_software(true)) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("no GPU: {e}");
            None
        }
    }
}

fn sweep(iters: usize, warmup: usize) -> Result<()> {
    let gpu = open_gpu();
    println!(
        "GPU: {}\n",
        gpu.as_ref().map_or("none".to_string(), |g| g.describe())
    );
    println!("| B,T,I,H | CPU ms | CPU GFLOP/s | GPU ms | GPU GFLOP/s | GPU dispatches |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (b, t, i, h) in STANDARD_SHAPES {
        let s = Shape {
            batch: b,
            steps: t,
            input: i,
            units: h,
        };
        let flops = forward_flops(b, t, i, h) as f64;
        let c = measure(Backend::Cpu, None, s, iters, warmup)?;
        let g = match &gpu {
            Some(_) => Some(measure(Backend::Gpu, gpu.as_ref(), s, iters, warmup)?),
            None => None,
        };
        let cell = |m: &Option<Measurement>| match m {
            Some(m) => format!("{:.3} | {:.1}", m.median() * 1e3, flops / m.median() / 1e9),
            None => "- | -".into(),
        };
        println!(
            "| {b},{t},{i},{h} | {} | {} | {} |",
            cell(&Some(c)),
            cell(&g),
            g.as_ref().map_or("-".into(), |m| m.dispatches.to_string())
        );
    }
    Ok(())
}

/// A line of the plot: its label, (steps, ms) points and (batch, ms) points.
type Series = (String, Vec<(f64, f64)>, Vec<(f64, f64)>);

fn plot(
    path: &str,
    iters: usize,
    warmup: usize,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let gpu = open_gpu();
    let steps_axis = [10usize, 25, 50, 100, 200];
    let batch_axis = [1usize, 4, 16, 64, 256];
    let base = Shape {
        batch: 16,
        steps: 50,
        input: 64,
        units: 128,
    };
    // (label, ms by steps, ms by batch)
    let mut series: Vec<Series> = Vec::new();
    let backends: Vec<Backend> = if gpu.is_some() {
        vec![Backend::Cpu, Backend::Gpu]
    } else {
        vec![Backend::Cpu]
    };
    for be in backends {
        let mut by_steps = Vec::new();
        for &t in &steps_axis {
            let m = measure(be, gpu.as_ref(), Shape { steps: t, ..base }, iters, warmup)?;
            by_steps.push((t as f64, m.median() * 1e3));
        }
        let mut by_batch = Vec::new();
        for &b in &batch_axis {
            let m = measure(be, gpu.as_ref(), Shape { batch: b, ..base }, iters, warmup)?;
            by_batch.push((b as f64, m.median() * 1e3));
        }
        let label = match be {
            Backend::Cpu => "CPU".to_string(),
            Backend::Gpu => format!(
                "GPU ({})",
                gpu.as_ref().map_or("", |g| g.adapter_info().name.as_str())
            ),
        };
        eprintln!("{label}: by steps {by_steps:?}; by batch {by_batch:?}");
        series.push((label, by_steps, by_batch));
    }
    let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(550);
    let colors = [RED, BLUE];
    for (area, title, xlabel, xs, pick) in [
        (
            &left,
            format!(
                "time per forward vs steps (B={}, I={}, H={})",
                base.batch, base.input, base.units
            ),
            "timesteps T",
            &steps_axis[..],
            0,
        ),
        (
            &right,
            format!(
                "time per forward vs batch (T={}, I={}, H={})",
                base.steps, base.input, base.units
            ),
            "batch B",
            &batch_axis[..],
            1,
        ),
    ] {
        let ymax = series
            .iter()
            .flat_map(|s| if pick == 0 { s.1.iter() } else { s.2.iter() })
            .map(|p| p.1)
            .fold(0.0f64, f64::max)
            * 1.1;
        let xmax = *xs.last().unwrap_or(&1) as f64;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..xmax * 1.05, 0f64..ymax.max(1e-3))?;
        chart
            .configure_mesh()
            .x_desc(xlabel)
            .y_desc("ms per forward")
            .draw()?;
        for (k, s) in series.iter().enumerate() {
            let pts = if pick == 0 { s.1.clone() } else { s.2.clone() };
            let color = colors[k % colors.len()];
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(s.0.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart.draw_series(
                pts.iter()
                    .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()?;
    }
    root.present()?;
    println!("wrote {path}");
    Ok(())
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: bench --backend cpu|gpu --batch B --steps T --input I --units H [--cell lstm|gru|gru-reset-before|simple-rnn] [--iters N] [--warmup N] [--json]\n       bench --sweep [--iters N] [--warmup N]\n       bench --plot FILE.svg [--iters N]\n       bench --list-adapters\n       bench --model FILE.keras --backend cpu|gpu --batch B --steps T [--iters N] [--warmup N] [--flops F] [--json]"
    );
    ExitCode::from(2)
}

/// Times a saved Keras model (see `--model` in the header).
fn bench_model(
    path: &str,
    backend: Backend,
    (batch, steps): (usize, usize),
    (iters, warmup): (usize, usize),
    flops: Option<usize>,
    as_json: bool,
) -> std::result::Result<(), String> {
    use lstm_wgpu::model::{KerasModel, ModelInput};
    let mut model = KerasModel::load(path.as_ref()).map_err(|e| e.to_string())?;
    let mut seed = 1u64;
    let inputs: Vec<ModelInput> = model
        .inputs()
        .iter()
        .map(|spec| {
            let mut shape = vec![batch];
            shape.extend(spec.shape.iter().map(|d| d.unwrap_or(steps)));
            if spec.dtype.starts_with("int") {
                ndarray::ArrayD::<i64>::from_shape_fn(ndarray::IxDyn(&shape), |_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    ((seed >> 33) % 2) as i64
                })
                .into()
            } else {
                ndarray::ArrayD::<f32>::from_shape_fn(ndarray::IxDyn(&shape), |_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
                })
                .into()
            }
        })
        .collect();
    let mut gpu = match backend {
        Backend::Gpu => {
            let ctx = open_gpu().ok_or("no GPU adapter")?;
            Some(lstm_wgpu::gpu::GpuNetwork::from_model(ctx, &model).map_err(|e| e.to_string())?)
        }
        Backend::Cpu => None,
    };
    let mut times = Vec::new();
    for k in 0..warmup + iters {
        let t0 = Instant::now();
        match &mut gpu {
            Some(g) => g.forward_inputs(&inputs).map(drop),
            None => model.predict_inputs(&inputs).map(drop),
        }
        .map_err(|e| e.to_string())?;
        if k >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let gflops = flops.map(|f| (f * batch * steps) as f64 / median / 1e9);
    let dispatches = gpu.as_ref().map_or(0, |g| g.stats().dispatches);
    if as_json {
        println!(
            "{{\"model\":{path:?},\"backend\":\"{}\",\"batch\":{batch},\"steps\":{steps},\"median_ms\":{},\"gflops\":{},\"dispatches\":{dispatches}}}",
            if gpu.is_some() { "gpu" } else { "cpu" },
            median * 1e3,
            gflops.map_or("null".to_string(), |g| format!("{g:.3}"))
        );
    } else {
        println!(
            "{path} {} B={batch} T={steps}: median {:.3} ms{} ({dispatches} dispatches)",
            if gpu.is_some() { "gpu" } else { "cpu" },
            median * 1e3,
            gflops.map_or(String::new(), |g| format!(", {g:.2} GFLOP/s"))
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut backend = None;
    let (mut batch, mut steps, mut input, mut units) = (None, None, None, None);
    let (mut iters, mut warmup) = (10usize, 2usize);
    let (mut as_json, mut do_sweep, mut list) = (false, false, false);
    let mut plot_path = None;
    let mut cell = Cell::Lstm;
    let (mut model, mut flops) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let num = |v: Option<String>| v.and_then(|s| s.parse::<usize>().ok());
        match a.as_str() {
            "--backend" => {
                backend = match args.next().as_deref() {
                    Some("cpu") => Some(Backend::Cpu),
                    Some("gpu") => Some(Backend::Gpu),
                    _ => return usage(),
                }
            }
            "--batch" => batch = num(args.next()),
            "--steps" => steps = num(args.next()),
            "--input" => input = num(args.next()),
            "--units" => units = num(args.next()),
            "--cell" => {
                cell = match args.next().as_deref() {
                    Some("lstm") => Cell::Lstm,
                    Some("gru") => Cell::Gru { reset_after: true },
                    Some("gru-reset-before") => Cell::Gru { reset_after: false },
                    Some("simple-rnn") => Cell::SimpleRnn,
                    _ => return usage(),
                }
            }
            "--iters" => match num(args.next()) {
                Some(n) if n > 0 => iters = n,
                _ => return usage(),
            },
            "--warmup" => match num(args.next()) {
                Some(n) => warmup = n,
                None => return usage(),
            },
            "--json" => as_json = true,
            "--sweep" => do_sweep = true,
            "--plot" => plot_path = args.next(),
            "--list-adapters" => list = true,
            "--model" => model = args.next(),
            "--flops" => flops = num(args.next()),
            _ => return usage(),
        }
    }
    if let Some(path) = model {
        let (Some(backend), Some(batch), Some(steps)) = (backend, batch, steps) else {
            return usage();
        };
        return match bench_model(
            &path,
            backend,
            (batch, steps),
            (iters, warmup),
            flops,
            as_json,
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if list {
        for line in GpuContext::list_adapters(wgpu::Backends::all()) {
            println!("{line}");
        }
        return ExitCode::SUCCESS;
    }
    if do_sweep {
        return match sweep(iters, warmup) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(path) = plot_path {
        return match plot(&path, iters, warmup) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let (Some(backend), Some(batch), Some(steps), Some(input), Some(units)) =
        (backend, batch, steps, input, units)
    else {
        return usage();
    };
    let s = Shape {
        batch,
        steps,
        input,
        units,
    };
    let gpu = if backend == Backend::Gpu {
        open_gpu()
    } else {
        None
    };
    match measure_cell(cell, backend, gpu.as_ref(), s, iters, warmup) {
        Ok(m) => {
            if as_json {
                println!("{}", json(backend, s, &m));
            } else {
                let flops = cell_flops(cell, s) as f64;
                println!(
                    "{:?} {} on {}: B={batch} T={steps} I={input} H={units}: median {:.3} ms, {:.2} GFLOP/s ({} runs, {} dispatches, {} submits, {} GPU bytes)",
                    backend,
                    cell_name(cell),
                    m.adapter,
                    m.median() * 1e3,
                    flops / m.median() / 1e9,
                    m.times.len(),
                    m.dispatches,
                    m.submits,
                    m.gpu_bytes
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
