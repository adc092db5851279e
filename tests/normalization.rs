//! Keras's `Normalization` preprocessing layer inside recorded time-series models
//! (`tests/data/normalization`, `scripts/record_normalization.py`, Keras 3.15.1): adapted
//! statistics read from the weights (their int64 `count` too), statistics in the config, two
//! kept axes, a scalar, a zero variance at the epsilon floor, `invert`; both paths.

use lstm_wgpu::model::KerasModel;
use ndarray::{Array3, ArrayD};
use ndarray_npy::read_npy;
use std::path::PathBuf;

mod common;
use common::{gpu, max_abs};

#[test]
fn normalization_models_match_keras_on_both_paths() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/normalization");
    for name in ["adapted", "config_axes_invert"] {
        let mut model = KerasModel::load(&dir.join(format!("{name}.keras"))).unwrap();
        let x: Array3<f32> = read_npy(dir.join(format!("{name}.input.npy"))).unwrap();
        let want: ArrayD<f32> = read_npy(dir.join(format!("{name}.expected.npy"))).unwrap();
        let got = model.predict(x.view()).unwrap();
        let e = max_abs(&got, std::slice::from_ref(&want));
        assert!(e <= 1e-5, "{name} cpu: {e}");
        if let Some(ctx) = gpu(name) {
            let mut g = lstm_wgpu::gpu::GpuNetwork::from_model(ctx, &model).unwrap();
            let on_gpu = g.forward(x.view(), None, None).unwrap();
            let eg = max_abs(&on_gpu, std::slice::from_ref(&want));
            assert!(eg <= 1e-4, "{name} gpu: {eg}");
            assert_eq!(g.stats().submits, 1);
            println!("{name}: cpu {e:.1e}, gpu {eg:.1e}");
        }
    }
}
