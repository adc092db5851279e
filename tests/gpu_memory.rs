//! Device memory across many input shapes. Its own test binary, so that the process's
//! resident memory (where lavapipe's buffers live) sees no other test.

use lstm_wgpu::gpu::{GpuNetwork, DEFAULT_PLAN_CAPACITY};
use lstm_wgpu::{LayerConfig, LstmConfig, LstmError, Network};
use ndarray::Array3;

mod common;
use common::gpu;

fn input(b: usize, t: usize, i: usize, seed: u64) -> Array3<f32> {
    common::xorshift_input(b, t, i, seed, 1.0)
}

/// Resident memory of this process in bytes (Linux), for the record.
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[test]
fn memory_stays_bounded_over_300_shapes() {
    let Some(ctx) = gpu("memory_stays_bounded_over_300_shapes") else {
        return;
    };
    let config = LayerConfig::Lstm(
        LstmConfig::new(64)
            .return_sequences(true)
            .return_state(true),
    );
    let cpu = Network::<f32>::random(&config, 16, 3).unwrap();
    let mut net = GpuNetwork::new(ctx.clone(), &cpu).unwrap();
    // What the largest shape alone holds.
    net.forward(input(8, 300, 16, 0).view(), None, None)
        .unwrap();
    let largest = net.gpu_bytes();
    net.clear_plans();
    let weights_and_state = net.gpu_bytes();
    assert!(weights_and_state < largest);

    let rss_before = rss();
    let mut peak = 0;
    let mut created = 0;
    for t in 1..=300 {
        let x = input(8, t, 16, t as u64);
        let out = net.forward(x.view(), None, None).unwrap();
        assert_eq!(out[0].shape(), &[8, t, 64]);
        created += net.stats().buffers_created;
        peak = peak.max(net.gpu_bytes());
    }
    // The working buffers are shared and grow by doubling: together with the parameter
    // blocks of the cached plans they stay within a few times the largest shape's own.
    assert!(
        peak <= 3 * largest,
        "peak {peak} bytes over 300 shapes, the largest shape alone {largest}"
    );
    // Parameter blocks of at most DEFAULT_PLAN_CAPACITY plans, and log2(300) regrowths of
    // each working buffer, not one buffer set per shape.
    let live_plans = DEFAULT_PLAN_CAPACITY as u32;
    assert!(
        created <= 300 + 10 * 8 + live_plans,
        "{created} buffers created"
    );
    let rss_after = rss();
    if let (Some(a), Some(b)) = (rss_before, rss_after) {
        // Measured: 22 MB on lavapipe (91 -> 478 MB before the plans were bounded).
        assert!(b < a + (100 << 20), "RSS grew from {a} to {b} bytes");
    }
    println!(
        "300 shapes (B = 8, T = 1..300, H = 64): gpu_bytes peak {peak} B, largest shape alone \
         {largest} B, {created} buffers created; RSS {:?} -> {:?} MB",
        rss_before.map(|b| b / (1 << 20)),
        rss_after.map(|b| b / (1 << 20))
    );
    // Dropping the plans frees the working buffers.
    net.clear_plans();
    assert_eq!(net.gpu_bytes(), weights_and_state);

    // A larger cache keeps more shapes; a smaller one evicts at once, and 0 is refused.
    net.set_plan_capacity(1).unwrap();
    net.forward(input(2, 5, 16, 0).view(), None, None).unwrap();
    net.forward(input(2, 6, 16, 0).view(), None, None).unwrap();
    net.forward(input(2, 5, 16, 0).view(), None, None).unwrap();
    assert!(net.stats().buffers_created > 0, "capacity 1 keeps one plan");
    net.set_plan_capacity(8).unwrap();
    net.forward(input(2, 6, 16, 0).view(), None, None).unwrap();
    net.forward(input(2, 5, 16, 0).view(), None, None).unwrap();
    assert_eq!(net.stats().buffers_created, 0, "both shapes cached");
    assert!(matches!(
        net.set_plan_capacity(0),
        Err(LstmError::InvalidArgument { .. })
    ));
}

/// A model graph (`tests/data/keras/nested.*`: Masking, nested Sequential and functional
/// models, GRU, Dense) over 150 sequence lengths in one process: the GPU memory stays within
/// a few times what the largest shape alone holds, and the outputs match the CPU path.
#[test]
fn graph_memory_stays_bounded_over_150_shapes() {
    let Some(ctx) = gpu("graph_memory_stays_bounded_over_150_shapes") else {
        return;
    };
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras");
    let mut model = lstm_wgpu::model::KerasModel::load(&dir.join("nested.keras")).unwrap();
    let mut net = GpuNetwork::from_model(ctx, &model).unwrap();
    net.forward(input(4, 150, 3, 0).view(), None, None).unwrap();
    let largest = net.gpu_bytes();
    net.clear_plans();
    let mut peak = 0;
    for t in 1..=150 {
        let x = input(4, t, 3, t as u64);
        let got = net.forward(x.view(), None, None).unwrap();
        peak = peak.max(net.gpu_bytes());
        if t % 37 == 0 {
            let want = model.predict(x.view()).unwrap();
            let e = common::max_abs(&got, &want);
            assert!(e <= 1e-4, "T = {t}: {e}");
        }
    }
    assert!(
        peak <= 3 * largest,
        "peak {peak} bytes over 150 shapes, the largest shape alone {largest}"
    );
    println!("nested model, T = 1..150: gpu_bytes peak {peak} B, largest shape alone {largest} B");
}
