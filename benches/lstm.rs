//! Criterion benchmarks of the forward pass on the standard shapes.
//!
//! `LSTM_WGPU_BENCH_QUICK=1` runs only the smallest shape with a short measurement.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lstm_wgpu::{Lstm, LstmConfig, LstmWeights};
use ndarray::Array3;
use std::time::Duration;

/// (B, T, I, H)
const SHAPES: [(usize, usize, usize, usize); 5] = [
    (1, 100, 32, 64),
    (32, 100, 128, 256),
    (64, 50, 256, 512),
    (1, 1000, 64, 128),
    (256, 20, 64, 128),
];

fn quick() -> bool {
    std::env::var_os("LSTM_WGPU_BENCH_QUICK").is_some()
}

fn flops(b: usize, t: usize, i: usize, h: usize) -> u64 {
    (2 * t * b * 4 * h * (i + h)) as u64
}

fn cpu_forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu_forward");
    if quick() {
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(1))
            .warm_up_time(Duration::from_millis(200));
    } else {
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(5));
    }
    let shapes: &[_] = if quick() { &SHAPES[..1] } else { &SHAPES };
    for &(b, t, i, h) in shapes {
        let config = LstmConfig::new(h).return_sequences(true).return_state(true);
        let weights = LstmWeights::<f32>::random(&config, i, 0).expect("valid shape");
        let mut layer = Lstm::new(config, weights).expect("valid weights");
        let x = Array3::from_shape_fn((b, t, i), |(p, q, r)| ((p + q + r) as f32 * 0.01).sin());
        group.throughput(Throughput::Elements(flops(b, t, i, h)));
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("B{b}_T{t}_I{i}_H{h}")),
            &x,
            |bench, x| bench.iter(|| layer.forward(x.view(), None, None).expect("forward")),
        );
    }
    group.finish();
}

criterion_group!(benches, cpu_forward);
criterion_main!(benches);
