//! Input checks shared by the CPU and GPU paths: every call validates its arguments here, so
//! both paths give the same errors.

use crate::error::{LstmError, Result};
use ndarray::{ArrayView2, ArrayView3};

/// Validates `x [B, T, I]` (non-empty, I = `input_dim`) and the mask `[B, T]`; returns (B, T, I).
pub(crate) fn check_inputs<T>(
    input_dim: usize,
    x: ArrayView3<T>,
    mask: Option<ArrayView2<bool>>,
) -> Result<(usize, usize, usize)> {
    let (b, t, i) = x.dim();
    if b == 0 {
        return Err(LstmError::invalid("x", "batch size is 0"));
    }
    if t == 0 {
        return Err(LstmError::invalid("x", "number of timesteps is 0"));
    }
    if i != input_dim {
        return Err(LstmError::shape("x", &[b, t, input_dim], x.shape()));
    }
    if let Some(m) = mask {
        if m.dim() != (b, t) {
            return Err(LstmError::shape("mask", &[b, t], m.shape()));
        }
    }
    Ok((b, t, i))
}

/// Checks that the initial state `name` is `[batch, units]`.
pub(crate) fn check_state<T>(
    name: &str,
    state: ArrayView2<T>,
    batch: usize,
    units: usize,
) -> Result<()> {
    if state.dim() != (batch, units) {
        return Err(LstmError::shape(
            format!("initial_state {name}"),
            &[batch, units],
            state.shape(),
        ));
    }
    Ok(())
}
