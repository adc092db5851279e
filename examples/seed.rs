//! The four models of the "return sequences vs. return states" tutorial: one LSTM with
//! `units=1` on the input `[0.1, 0.2, 0.3]` shaped `(1, 3, 1)` — plain, with
//! `return_sequences`, with `return_state`, and with both — then the shape example
//! (`units=3` on input `(batch, 2, 10)`).
//!
//! ```text
//! cargo run --release --example seed
//! ```

use lstm_wgpu::gpu::{GpuContext, GpuLstm};
use lstm_wgpu::{Lstm, LstmConfig, LstmWeights, Result};
use ndarray::{Array3, ArrayD, Axis};
use std::sync::Arc;

/// Formats an array the way numpy (and so Keras) prints it: nested brackets.
fn numpy_style(a: &ArrayD<f32>) -> String {
    fn rec(a: ndarray::ArrayViewD<f32>, depth: usize, out: &mut String) {
        if a.ndim() == 0 {
            out.push_str(&format!("{:.8}", a.iter().next().copied().unwrap_or(0.0)));
            return;
        }
        out.push('[');
        let n = a.len_of(Axis(0));
        for (k, sub) in a.axis_iter(Axis(0)).enumerate() {
            rec(sub, depth + 1, out);
            if k + 1 < n {
                if a.ndim() == 1 {
                    out.push(' ');
                } else {
                    out.push('\n');
                    out.push_str(&" ".repeat(depth + 1));
                }
            }
        }
        out.push(']');
    }
    let mut s = String::new();
    rec(a.view(), 0, &mut s);
    s
}

fn shape(a: &ArrayD<f32>) -> String {
    let dims: Vec<String> = a.shape().iter().map(|d| d.to_string()).collect();
    format!(
        "({}{})",
        dims.join(", "),
        if dims.len() == 1 { "," } else { "" }
    )
}

/// Runs `layer` on the GPU when there is one, else on the CPU; returns Keras's outputs.
fn run(
    gpu: Option<&Arc<GpuContext>>,
    layer: Lstm<f32>,
    x: ndarray::ArrayView3<f32>,
) -> Result<Vec<ArrayD<f32>>> {
    match gpu {
        Some(ctx) => Ok(GpuLstm::new(ctx.clone(), &layer)?
            .forward(x, None, None)?
            .into_keras()),
        None => Ok(layer.clone().forward(x, None, None)?.into_keras()),
    }
}

fn main() -> Result<()> {
    // A hardware GPU if there is one (software adapters are slower than the CPU path and
    // are used only when LSTM_WGPU_ALLOW_SOFTWARE=1 asks for them), else the CPU path.
    let gpu = match GpuContext::new() {
        Ok(ctx) => {
            println!("device: GPU {} (a GPU adapter was found)", ctx.describe());
            Some(ctx)
        }
        Err(e) => {
            println!("device: CPU (no hardware GPU adapter: {e})");
            None
        }
    };
    let x = Array3::from_shape_vec((1, 3, 1), vec![0.1f32, 0.2, 0.3]).expect("3 values");
    let variants = [
        ("LSTM(1)", false, false),
        ("LSTM(1, return_sequences=True)", true, false),
        ("LSTM(1, return_state=True)", false, true),
        (
            "LSTM(1, return_sequences=True, return_state=True)",
            true,
            true,
        ),
    ];
    // One set of weights (seeded, Keras initializers) shared by the four models, as in the
    // tutorial's fixed-seed runs, so their outputs can be compared with each other.
    let weights = LstmWeights::<f32>::random(&LstmConfig::new(1), 1, 2026)?;
    let names = ["lstm", "state_h", "state_c"];
    for (title, seq, state) in variants {
        let config = LstmConfig::new(1).return_sequences(seq).return_state(state);
        let layer = Lstm::new(config, weights.clone())?;
        let outputs = run(gpu.as_ref(), layer, x.view())?;
        println!("\n{title}");
        for (name, out) in names.iter().zip(&outputs) {
            println!("{name} {}:\n{}", shape(out), numpy_style(out));
        }
    }

    println!("\nShape example: LSTM(3) on input (batch, 2, 10), batch = 4");
    let x = Array3::from_shape_fn((4, 2, 10), |(b, t, i)| ((b + t + i) as f32 * 0.1).sin());
    let weights = LstmWeights::<f32>::random(&LstmConfig::new(3), 10, 7)?;
    for (title, seq, state) in variants {
        let title = title.replace("LSTM(1", "LSTM(3");
        let config = LstmConfig::new(3).return_sequences(seq).return_state(state);
        let layer = Lstm::new(config, weights.clone())?;
        let outputs = run(gpu.as_ref(), layer, x.view())?;
        let shapes: Vec<String> = outputs.iter().map(shape).collect();
        println!("{title:<52} -> {}", shapes.join(", "));
    }
    Ok(())
}
