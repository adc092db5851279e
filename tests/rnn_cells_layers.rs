//! `RNN(cell)` and `RNN(StackedRNNCells([...]))` layers (`tests/data/rnn_cells`, recorded
//! from Keras 3.15.1 by `scripts/record_rnn_cells.py`) on both paths.

use lstm_wgpu::model::{KerasModel, ModelInput};
use ndarray::{ArrayD, Axis};
use ndarray_npy::read_npy;
use std::path::PathBuf;

mod common;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/rnn_cells")
}

fn npy(f: &str) -> ArrayD<f32> {
    read_npy(dir().join(f)).unwrap()
}

fn check(name: &str, inputs: Vec<ModelInput>, want: Vec<ArrayD<f32>>) {
    let mut model = KerasModel::load(&dir().join(format!("{name}.keras"))).unwrap();
    common::check_both_paths(name, &mut model, &inputs, &want);
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
