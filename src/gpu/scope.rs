//! Turning wgpu's validation and out-of-memory errors into an `Err`.

use crate::error::{LstmError, Result};

/// Runs `f`, capturing the wgpu validation and out-of-memory errors it raises on `device` as
/// an `Err` that says `what` was being done.
pub(crate) fn checked<R>(device: &wgpu::Device, what: &str, f: impl FnOnce() -> R) -> Result<R> {
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let r = f();
    let v = pollster::block_on(validation.pop());
    let o = pollster::block_on(oom.pop());
    match v.or(o) {
        Some(e) => Err(LstmError::Device {
            message: format!("{what}: {e}"),
        }),
        None => Ok(r),
    }
}
