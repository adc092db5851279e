//! What a layer returns: its output and, when asked, its final state. Shared by the CPU and
//! GPU paths.

use ndarray::{Array2, ArrayD};

/// The state of a recurrent layer: h `[B, H]`, and for an LSTM the cell state c `[B, H]` (a
/// GRU or SimpleRNN carries h only: its `c` is an empty `[B, 0]` array).
#[derive(Debug, Clone, PartialEq)]
pub struct LstmState<T> {
    /// Hidden state h (the last step's output when nothing was masked).
    pub h: Array2<T>,
    /// Cell state c (`[B, 0]` for GRU and SimpleRNN).
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
    /// The returned tensors in Keras's order: `[output]`, or `[output, h, c]` for an LSTM
    /// with `return_state`, `[output, h]` for a GRU or SimpleRNN.
    pub fn into_keras(self) -> Vec<ArrayD<T>> {
        let mut v = vec![self.output];
        if let Some(s) = self.state {
            let has_c = s.c.ncols() > 0;
            v.push(s.h.into_dyn());
            if has_c {
                v.push(s.c.into_dyn());
            }
        }
        v
    }
}
