//! Loop-iteration limits of shader invocations, and how many iterations each kernel runs.
//!
//! Some drivers end a shader invocation's loops after a fixed number of iterations without
//! any error: Mesa's llvmpipe/lavapipe (gallivm's `LP_MAX_TGSI_LOOP_ITERATIONS`, 65,535)
//! counts every loop iteration of one invocation, across all its loops, and breaks out of
//! every loop once the count is spent. A kernel that runs more iterations than that computes
//! a wrong answer silently. [`probe`] measures the limit of an adapter by running a loop
//! longer than any known limit and reading back how many iterations ran; the plan builders
//! keep every dispatch within half of it (the whole-sequence kernel splits its time loop into
//! several dispatches; the other kernels refuse shapes they could not finish).

use crate::error::{LstmError, Result};

/// Iterations the probe asks for: more than any limit known to cut loops short.
const PROBE_ITERATIONS: u32 = 1 << 22;

const PROBE_WGSL: &str = "
@group(0) @binding(0) var<storage, read_write> io: array<u32, 2>;

@compute @workgroup_size(1, 1, 1)
fn main() {
    // The trip count comes from memory, so the compiler cannot fold the loop away.
    let n = io[0];
    var count = 0u;
    for (var i = 0u; i < n; i++) {
        count += 1u;
    }
    io[1] = count;
}
";

/// Runs a loop of [`PROBE_ITERATIONS`] iterations in one invocation and returns how many
/// ran: `Some(n)` when the driver stopped it early (its limit), `None` when it ran to the end.
pub(crate) fn probe(device: &wgpu::Device, queue: &wgpu::Queue) -> Result<Option<u64>> {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("loop limit probe"),
        source: wgpu::ShaderSource::Wgsl(PROBE_WGSL.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("loop limit probe"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let io = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("loop limit probe"),
        size: 8,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("loop limit probe readback"),
        size: 8,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(&io, 0, bytemuck::cast_slice(&[PROBE_ITERATIONS, 0u32]));
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("loop limit probe"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[wgpu::BindGroupEntry {
            binding: 0,
            resource: io.as_entire_binding(),
        }],
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }
    encoder.copy_buffer_to_buffer(&io, 0, &staging, 0, 8);
    queue.submit([encoder.finish()]);
    let (tx, rx) = std::sync::mpsc::channel();
    staging.map_async(wgpu::MapMode::Read, .., move |r| {
        let _ = tx.send(r);
    });
    let device_error = |what: &str, e: &dyn std::fmt::Display| LstmError::Device {
        message: format!("probing the loop limit: {what}: {e}"),
    };
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| device_error("waiting", &e))?;
    rx.recv()
        .map_err(|e| device_error("no map result", &e))?
        .map_err(|e| device_error("mapping", &e))?;
    let words: Vec<u32> = {
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| device_error("reading", &e))?;
        bytemuck::pod_collect_to_vec(&view)
    };
    staging.unmap();
    let ran = words[1];
    log::debug!("loop limit probe: {ran} of {PROBE_ITERATIONS} iterations ran");
    Ok((ran < PROBE_ITERATIONS).then_some(u64::from(ran)))
}

/// The iterations one dispatch of a kernel may run on an adapter whose invocations stop
/// after `cap` iterations: half of it, a margin for the loops the model below does not see
/// (a compiler may also add none, so the model counts every loop as written).
pub(crate) fn budget(cap: Option<u64>) -> u64 {
    cap.map_or(u64::MAX, |c| c / 2)
}

/// Loop iterations one invocation of `sequence.wgsl` runs for `steps` timesteps of a
/// `batch` x `units` state (the loops as written there; `per_thread` = its `nq`);
/// `reset_first`: a GRU without reset_after (one more q loop with its k loop per step).
pub(crate) fn sequence_iterations(
    batch: usize,
    units: usize,
    steps: usize,
    reset_first: bool,
) -> u64 {
    let per_thread = (batch * units).div_ceil(super::params::SEQUENCE_THREADS) as u64;
    let k_loop = step_iterations(units);
    // load + store loops, then per step: the step loop itself, the q loop with its k loop and
    // the cell (five activations: a `switch` may be compiled as a loop), and the q loop that
    // publishes h. Measured on llvmpipe (H = 128, B = 1): the 65,535th iteration fell in step
    // 851, 77 a step, where this counts 79.
    let reset = if reset_first {
        per_thread * (1 + k_loop + 2)
    } else {
        0
    };
    2 * per_thread + steps as u64 * (1 + per_thread * (1 + k_loop + 5) + per_thread + reset)
}

/// The most timesteps one dispatch of `sequence.wgsl` may cover within `budget`, or 0 when
/// not even one fits.
pub(crate) fn sequence_steps_per_dispatch(
    batch: usize,
    units: usize,
    reset_first: bool,
    budget: u64,
) -> usize {
    let fixed = sequence_iterations(batch, units, 0, reset_first);
    let per_step = sequence_iterations(batch, units, 1, reset_first) - fixed;
    (budget.saturating_sub(fixed) / per_step).min(usize::MAX as u64) as usize
}

/// Loop iterations one invocation of `step.wgsl` runs for `units` units.
pub(crate) fn step_iterations(units: usize) -> u64 {
    if units.is_multiple_of(4) {
        (units / 4) as u64
    } else {
        units as u64
    }
}

/// Loop iterations one invocation of `projection.wgsl` runs for `k` inputs (the row loops
/// counted as loops, the k loop with its row loop inside).
pub(crate) fn projection_iterations(k: usize) -> u64 {
    let rows = super::params::PROJECTION_ROWS as u64;
    let k_loop = if k.is_multiple_of(4) { k / 4 } else { k } as u64;
    // xo and acc set-up, the k loop with its row loop, the stores with their column loop.
    2 * rows + k_loop * (1 + rows) + rows * (1 + 4)
}

/// Loop iterations one invocation of `dense.wgsl` runs on rows of `n` values.
pub(crate) fn dense_iterations(n: usize, softmax: bool) -> u64 {
    if softmax {
        4 * n as u64
    } else {
        n as u64
    }
}

/// Loop iterations one invocation of `mask.wgsl` runs on rows of `width` values.
pub(crate) fn mask_iterations(width: usize) -> u64 {
    2 * width as u64
}

/// unary.wgsl in a row mode (softmax: three loops over the row; Any: one).
pub(crate) fn unary_row_iterations(width: usize) -> u64 {
    3 * width as u64
}

/// norm.wgsl: two statistics loops and the output loop over the row.
pub(crate) fn norm_iterations(width: usize) -> u64 {
    3 * width as u64
}

/// pool.wgsl: the loops over the window's rows and, in each, its columns.
pub(crate) fn pool_iterations([size_h, size_w]: [usize; 2]) -> u64 {
    size_h as u64 * (size_w as u64 + 1)
}

/// conv.wgsl: per round of 16 reduction values, the staging loop (4) and the product
/// loop (16); then the 16 stores.
pub(crate) fn conv_iterations(k: usize) -> u64 {
    k.div_ceil(16) as u64 * (1 + 4 + 16 * 5) + 4 * 5
}

/// attention.wgsl: the scores over the features, the softmax's three loops over the value
/// steps, the weighted sum over them; the longest of the three dispatches.
pub(crate) fn attention_iterations(dim: usize, tv: usize) -> u64 {
    (dim as u64).max(3 * tv as u64)
}

/// mha.wgsl: the scores (over the value steps, each over the key dimension), the softmax's
/// two loops, the weighted sum (each value dimension over the value steps).
pub(crate) fn mha_iterations(key_dim: usize, value_dim: usize, tv: usize) -> u64 {
    let tv = tv as u64;
    tv * (1 + key_dim as u64) + 2 * tv + value_dim as u64 * (1 + tv)
}

/// train_forward.wgsl and train_backward.wgsl: the recurrent product's loop (over the `units`
/// of h forward, over the `gates · units` of dZh backward), then the row loop with each row's
/// masked-step gate loop (and a `switch`, counted as a loop of 4).
pub(crate) fn train_step_iterations(units: usize, gates: usize) -> u64 {
    (gates * units + super::params::TRAIN_STEP_ROWS * (1 + gates + 4)) as u64
}

/// train_gemm.wgsl on a reduction of `k` values: per round of 16, the round, the staging
/// loop (4) and the product loop (16, counted as conv.wgsl's: 5 each); then the 16 stores.
#[cfg(test)]
pub(crate) fn gemm_iterations(k: usize) -> u64 {
    k.div_ceil(16) as u64 * GEMM_ROUND + GEMM_FIXED
}

const GEMM_ROUND: u64 = 1 + 4 + 16 * 5;
const GEMM_FIXED: u64 = 4 * 5;

/// The longest reduction one train_gemm.wgsl dispatch may run within `budget` (a multiple
/// of 16; at least 16).
pub(crate) fn gemm_k_per_dispatch(budget: u64) -> usize {
    let rounds = (budget.saturating_sub(GEMM_FIXED) / GEMM_ROUND).clamp(1, 1 << 24);
    rounds as usize * 16
}

/// An error unless `iterations` fit the budget of an adapter whose loops stop after `cap`:
/// `what` names the layer and its size.
pub(crate) fn check(what: &str, iterations: u64, cap: Option<u64>) -> Result<()> {
    if iterations <= budget(cap) {
        return Ok(());
    }
    Err(LstmError::invalid(
        what,
        format!(
            "one GPU invocation would run {iterations} loop iterations, but this adapter \
             stops a shader's loops after {} iterations (a software rasterizer's limit); \
             run this model on the CPU path or on a hardware GPU",
            cap.unwrap_or(u64::MAX)
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_chunks_fit_the_budget() {
        for budget in [105u64, 1000, 32_767, 1 << 40] {
            let k = gemm_k_per_dispatch(budget);
            assert!(k >= 16);
            {
                assert!(gemm_iterations(k) <= budget, "{budget}: {k}");
            }
        }
    }

    #[test]
    fn sequence_chunks_fit_the_budget() {
        for (b, h) in [(1, 64), (1, 128), (2, 256), (1, 1024), (4, 3)] {
            for budget in [1000u64, 32_767, 1 << 30] {
                for two in [false, true] {
                    let n = sequence_steps_per_dispatch(b, h, two, budget);
                    assert!(
                        sequence_iterations(b, h, n, two) <= budget,
                        "{b} {h} {budget}"
                    );
                    assert!(
                        sequence_iterations(b, h, n + 1, two) > budget,
                        "{b} {h} {budget}"
                    );
                }
            }
        }
        assert_eq!(budget(None), u64::MAX);
        assert_eq!(budget(Some(65_535)), 32_767);
    }
}
