//! What a layer returns: its output and, when asked, its final state. Shared by the CPU and
//! GPU paths.

use ndarray::{Array2, ArrayD};

/// The hidden and cell state of a layer, each `[B, H]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LstmState<T> {
    /// Hidden state h (the last step's output when nothing was masked).
    pub h: Array2<T>,
    /// Cell state c.
    pub c: Array2<T>,
}

/// What one call returns, exactly as Keras returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct LstmOutput<T> {
    /// `[B, T, H]` when `return_sequences`, else `[B, H]` (the last processed step's output).
    pub output: ArrayD<T>,
    /// The final state when `return_state`.
    pub state: Option<LstmState<T>>,
}

impl<T: Clone> LstmOutput<T> {
    /// The returned tensors in Keras's order: `[output]` or `[output, h, c]`.
    pub fn into_keras(self) -> Vec<ArrayD<T>> {
        let mut v = vec![self.output];
        if let Some(s) = self.state {
            v.push(s.h.into_dyn());
            v.push(s.c.into_dyn());
        }
        v
    }
}
