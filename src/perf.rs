//! The figures the benchmarks share: the standard shapes and the FLOP count of a forward.

/// The standard benchmark shapes `(B, T, I, H)`: batch, timesteps, input width, units.
pub const STANDARD_SHAPES: [(usize, usize, usize, usize); 5] = [
    (1, 100, 32, 64),
    (32, 100, 128, 256),
    (64, 50, 256, 512),
    (1, 1000, 64, 128),
    (256, 20, 64, 128),
];

/// Floating-point operations of one LSTM forward: `2·T·B·4H·(I+H)` (the two matrix products;
/// the element-wise work is not counted, as the peers' figures do not count it).
///
/// ```
/// assert_eq!(lstm_wgpu::perf::forward_flops(1, 100, 32, 64), 2 * 100 * 4 * 64 * 96);
/// ```
pub fn forward_flops(batch: usize, steps: usize, input: usize, units: usize) -> u64 {
    2 * steps as u64 * batch as u64 * 4 * units as u64 * (input + units) as u64
}

/// Floating-point operations of one forward of a recurrent layer with `gates` gate blocks (4
/// for an LSTM, 3 for a GRU, 1 for a SimpleRNN): `2·T·B·G·H·(I+H)`, counted as the peers count
/// them.
///
/// ```
/// use lstm_wgpu::perf::{forward_flops, forward_flops_gates};
/// assert_eq!(forward_flops_gates(4, 2, 10, 3, 5), forward_flops(2, 10, 3, 5));
/// ```
pub fn forward_flops_gates(
    gates: usize,
    batch: usize,
    steps: usize,
    input: usize,
    units: usize,
) -> u64 {
    2 * steps as u64 * batch as u64 * gates as u64 * units as u64 * (input + units) as u64
}
