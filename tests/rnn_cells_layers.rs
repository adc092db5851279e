//! `RNN(cell)` and `RNN(StackedRNNCells([...]))` layers (`tests/data/rnn_cells`, recorded
//! from Keras 3.15.1 by `scripts/record_rnn_cells.py`) on both paths.

use lstm_wgpu::model::{KerasModel, ModelInput};
use ndarray::{ArrayD, Axis};
use ndarray_npy::read_npy;
use std::path::PathBuf;

mod common;
use common::{gpu, max_abs};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/rnn_cells")
}

fn npy(f: &str) -> ArrayD<f32> {
    read_npy(dir().join(f)).unwrap()
}

fn check(name: &str, inputs: Vec<ModelInput>, want: Vec<ArrayD<f32>>) {
    let mut model = KerasModel::load(&dir().join(format!("{name}.keras"))).unwrap();
    let got = model.predict_inputs(&inputs).unwrap();
    assert_eq!(got.len(), want.len(), "{name}: outputs");
    let e = max_abs(&got, &want);
    assert!(e <= 1e-5, "{name} cpu: {e}");
    if let Some(ctx) = gpu(name) {
        let mut g = lstm_wgpu::gpu::GpuNetwork::from_model(ctx, &model).unwrap();
        let on_gpu = g.forward_inputs(&inputs).unwrap();
        let eg = max_abs(&on_gpu, &want);
        assert!(eg <= 1e-4, "{name} gpu: {eg}");
        assert_eq!(g.stats().submits, 1);
        println!("{name}: cpu {e:.1e}, gpu {eg:.1e}");
    }
}

#[test]
fn one_cell_rnns_are_their_layers() {
    // RNN(LSTMCell(hard_sigmoid)) -> RNN(GRUCell(reset_after=False), go_backwards) ->
    // RNN(SimpleRNNCell(relu), return_state), behind a Masking layer
    check(
        "single_cells",
        vec![npy("single_cells.input.npy").into()],
        vec![npy("single_cells.expected.npy")],
    );
}

#[test]
fn stacked_cells_give_the_last_output_and_every_state() {
    // [sequence, [h, c] of the LSTMCell (Keras returns them nested), h of the GRUCell,
    // h of the SimpleRNNCell]
    let hc = npy("stacked_cells.expected.1.npy");
    let want = vec![
        npy("stacked_cells.expected.0.npy"),
        hc.index_axis(Axis(0), 0).to_owned(),
        hc.index_axis(Axis(0), 1).to_owned(),
        npy("stacked_cells.expected.2.npy"),
        npy("stacked_cells.expected.3.npy"),
    ];
    check(
        "stacked_cells",
        vec![npy("stacked_cells.input.npy").into()],
        want,
    );
    let name = "stacked_initial_state";
    let inputs = (0..4)
        .map(|k| npy(&format!("{name}.input.{k}.npy")).into())
        .collect();
    check(name, inputs, vec![npy(&format!("{name}.expected.npy"))]);
}
