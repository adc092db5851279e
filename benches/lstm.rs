//! Criterion benchmarks of one forward (host input in; sequence, final h and c back in host
//! memory) on the standard shapes, CPU and GPU, with throughput in FLOPs.
//!
//! `LSTM_WGPU_BENCH_QUICK=1` runs only the smallest shape with a short measurement. The GPU
//! group runs when an adapter is found (and says so when not).

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use lstm_wgpu::gpu::{GpuContext, GpuLstm, GpuOptions};
use lstm_wgpu::perf::{forward_flops, STANDARD_SHAPES};
use lstm_wgpu::{Lstm, LstmConfig, LstmWeights};
use ndarray::Array3;
use std::time::Duration;

fn quick() -> bool {
    std::env::var_os("LSTM_WGPU_BENCH_QUICK").is_some()
}

fn shapes() -> &'static [(usize, usize, usize, usize)] {
    if quick() {
        &STANDARD_SHAPES[..1]
    } else {
        &STANDARD_SHAPES
    }
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group.sample_size(10);
    if quick() {
        group
            .measurement_time(Duration::from_secs(1))
            .warm_up_time(Duration::from_millis(200));
    } else {
        group.measurement_time(Duration::from_secs(5));
    }
}

fn layer(b: usize, t: usize, i: usize, h: usize) -> (Lstm<f32>, Array3<f32>) {
    let config = LstmConfig::new(h).return_sequences(true).return_state(true);
    let weights = LstmWeights::<f32>::random(&config, i, 0).expect("valid shape");
    let layer = Lstm::new(config, weights).expect("valid weights");
    let x = Array3::from_shape_fn((b, t, i), |(p, q, r)| ((p + q + r) as f32 * 0.01).sin());
    (layer, x)
}

fn name(b: usize, t: usize, i: usize, h: usize) -> BenchmarkId {
    BenchmarkId::from_parameter(format!("B{b}_T{t}_I{i}_H{h}"))
}

fn cpu_forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu_forward");
    configure(&mut group);
    for &(b, t, i, h) in shapes() {
        let (mut layer, x) = layer(b, t, i, h);
        group.throughput(Throughput::Elements(forward_flops(b, t, i, h)));
        group.bench_with_input(name(b, t, i, h), &x, |bench, x| {
            bench.iter(|| layer.forward(x.view(), None, None).expect("forward"))
        });
    }
    group.finish();
}

fn gpu_forward(c: &mut Criterion) {
    let ctx = match GpuContext::with_options(&GpuOptions::from_env().allow_software(true)) {
        Ok(ctx) => ctx,
        Err(e) => {
            eprintln!("gpu_forward skipped: {e}");
            return;
        }
    };
    let mut group = c.benchmark_group(format!("gpu_forward/{}", ctx.adapter_info().name));
    configure(&mut group);
    for &(b, t, i, h) in shapes() {
        let (cpu, x) = layer(b, t, i, h);
        let mut gpu = GpuLstm::new(ctx.clone(), &cpu).expect("upload");
        group.throughput(Throughput::Elements(forward_flops(b, t, i, h)));
        group.bench_with_input(name(b, t, i, h), &x, |bench, x| {
            bench.iter(|| gpu.forward(x.view(), None, None).expect("forward"))
        });
    }
    group.finish();
}

criterion_group!(benches, cpu_forward, gpu_forward);
criterion_main!(benches);
