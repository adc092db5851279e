//! What Rust and the WGSL kernels must agree on, defined once: the kernels' parameter blocks
//! (`#[repr(C)]` structs mirrored member for member by the WGSL structs of the same name) and
//! the workgroup shapes. The unit test at the end reads every kernel with naga and checks each
//! struct's size and member offsets, each `workgroup_size` and each named WGSL constant
//! against these definitions, so a change on one side alone fails the tests.

use bytemuck::{Pod, Zeroable};

/// Bytes of every parameter block (each is 8 four-byte members; one binding layout serves all).
pub(crate) const PARAMS_SIZE: u64 = 32;

/// Threads of a projection workgroup (`WG` in projection.wgsl); each covers 4 columns.
pub(crate) const PROJECTION_THREADS: usize = 64;
/// Columns of the output one projection workgroup covers.
pub(crate) const PROJECTION_COLUMNS: usize = 4 * PROJECTION_THREADS;
/// Rows one projection workgroup covers (`RB` in projection.wgsl).
pub(crate) const PROJECTION_ROWS: usize = 8;
/// Units one step workgroup covers, one per thread (`WG` in step.wgsl).
pub(crate) const STEP_THREADS: usize = 64;
/// Batch rows one step workgroup covers (`BT` in step.wgsl).
pub(crate) const STEP_ROWS: usize = 4;
/// Threads of the whole-sequence kernel's one workgroup (`WG` in sequence.wgsl).
pub(crate) const SEQUENCE_THREADS: usize = 64;
/// State elements each of them holds in registers (`PER` in sequence.wgsl).
pub(crate) const SEQUENCE_PER_THREAD: usize = 16;
/// Threads of a merge workgroup (merge.wgsl).
pub(crate) const MERGE_THREADS: usize = 256;
/// Threads (rows) of a Masking workgroup (mask.wgsl).
pub(crate) const MASK_THREADS: usize = 64;
/// Threads (rows) of a Dense-activation workgroup (dense.wgsl).
pub(crate) const DENSE_THREADS: usize = 64;

/// Threads of a gather.wgsl workgroup.
pub(crate) const GATHER_THREADS: usize = 256;
/// Threads of a unary.wgsl workgroup (values, or rows in the row modes).
pub(crate) const UNARY_THREADS: usize = 64;
/// Threads of a binary.wgsl workgroup.
pub(crate) const BINARY_THREADS: usize = 256;
/// Threads of an embedding.wgsl workgroup.
pub(crate) const EMBEDDING_THREADS: usize = 256;
/// Threads (rows) of a norm.wgsl workgroup.
pub(crate) const NORM_THREADS: usize = 64;
/// Threads of a pool.wgsl workgroup.
pub(crate) const POOL_THREADS: usize = 64;
/// Rows and columns of the output tile of a conv.wgsl workgroup (`TM`, `TN`).
pub(crate) const CONV_TILE: usize = 64;
/// Threads per workgroup of conv_lstm.wgsl (one per state value).
pub(crate) const CONV_LSTM_THREADS: usize = 64;
/// Threads of an attention.wgsl workgroup.
pub(crate) const ATTENTION_THREADS: usize = 64;
/// Threads of an mha.wgsl workgroup (one (b, head, query step) each).
pub(crate) const MHA_THREADS: usize = 64;

/// The cells of step.wgsl (its `CELL` override; the constants of cell.wgsl).
pub(crate) const CELL_LSTM: u32 = 0;
/// A GRU with `reset_after`.
pub(crate) const CELL_GRU: u32 = 1;
/// A GRU without `reset_after`, first dispatch of a step (the reset gate).
pub(crate) const CELL_GRU_RESET: u32 = 2;
/// A GRU without `reset_after`, second dispatch (the candidate and the update).
pub(crate) const CELL_GRU_CANDIDATE: u32 = 3;
/// SimpleRNN.
pub(crate) const CELL_SIMPLE_RNN: u32 = 4;

/// The most state elements (B·H) the whole-sequence kernel holds (its workgroup array `hs`).
pub const PERSISTENT_MAX_STATE: usize = SEQUENCE_THREADS * SEQUENCE_PER_THREAD;

/// projection.wgsl: `proj[B·tc, N] = x[rows, K] · W + bias` for one chunk of timesteps (an
/// LSTM's input projection), or a Dense layer (`tc = seq_len` = rows per batch row).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct ProjParams {
    pub rows: u32,
    pub k: u32,
    pub n: u32,
    pub tc: u32,
    pub seq_len: u32,
    pub t_lo: u32,
    pub has_bias: u32,
    pub _pad: u32,
}

/// Threads of a training step workgroup (`WG` in train_step.wgsl), one unit each.
pub(crate) const TRAIN_STEP_THREADS: usize = 64;
/// Batch rows per training step thread (`RB` in train_step.wgsl).
pub(crate) const TRAIN_STEP_ROWS: usize = 4;
/// The side of a training GEMM's output tile (`TILE` in train_gemm.wgsl; 16 x 16 threads,
/// 4 x 4 outputs each).
pub(crate) const TRAIN_GEMM_TILE: usize = 64;

/// train_forward.wgsl and train_backward.wgsl: one timestep.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct TrainStepParams {
    pub batch: u32,
    pub units: u32,
    pub steps: u32,
    pub s: u32,
    pub t: u32,
    pub t_prev: u32,
    pub has_prev: u32,
    pub finish: u32,
}

/// train_gemm.wgsl: one product on strided views (element offsets and strides in floats).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct GemmParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub accumulate: u32,
    pub a_off: u32,
    pub a_rs: u32,
    pub a_cs: u32,
    pub b_off: u32,
    pub b_rs: u32,
    pub b_cs: u32,
    pub c_off: u32,
    pub _pad: u32,
}

/// step.wgsl: one timestep.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct StepParams {
    pub batch: u32,
    pub units: u32,
    pub tc: u32,
    pub t_local: u32,
    pub t_abs: u32,
    pub s_out: u32,
    pub seq_len: u32,
    pub _pad: u32,
}

/// sequence.wgsl: steps `[s_begin, s_end)` of one projection chunk.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct SeqParams {
    pub batch: u32,
    pub units: u32,
    pub tc: u32,
    pub t_lo: u32,
    pub s_begin: u32,
    pub s_end: u32,
    pub seq_len: u32,
    pub go_backwards: u32,
}

/// merge.wgsl: a Bidirectional layer's two directions into one tensor.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct MergeParams {
    pub batch: u32,
    pub steps: u32,
    pub units_fwd: u32,
    pub units_bwd: u32,
    pub flip: u32,
    pub width: u32,
    pub _pad0: u32,
    pub _pad1: u32,
}

/// mask.wgsl: Keras `Masking`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct MaskParams {
    pub batch: u32,
    pub steps: u32,
    pub width: u32,
    pub value: f32,
    pub _pad0: u32,
    pub _pad1: u32,
    pub _pad2: u32,
    pub _pad3: u32,
}

/// dense.wgsl: a Dense layer's activation over `rows` rows of `n` values.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct DenseParams {
    pub rows: u32,
    pub n: u32,
    pub _pad0: u32,
    pub _pad1: u32,
    pub _pad2: u32,
    pub _pad3: u32,
    pub _pad4: u32,
    pub _pad5: u32,
}

/// gather.wgsl: a strided copy of a box of up to 4 axes (see `plan::gather::Gather`).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct GatherParams {
    pub count: u32,
    pub out_base: u32,
    pub in_base: u32,
    pub _pad0: u32,
    pub box_dims: [u32; 4],
    pub out_stride: [u32; 4],
    pub in_stride: [u32; 4],
    pub in_dims: [u32; 4],
    pub pad: [i32; 4],
    pub div: [u32; 4],
}

/// unary.wgsl: one value (or row) in, one out.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct UnaryParams {
    pub count: u32,
    pub width: u32,
    pub period: u32,
    pub has_max: u32,
    pub a: f32,
    pub b: f32,
    pub c: f32,
    pub _pad0: u32,
}

/// binary.wgsl: two tensors of one shape, value by value.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BinaryParams {
    pub count: u32,
    pub _pad0: u32,
    pub _pad1: u32,
    pub _pad2: u32,
    pub _pad3: u32,
    pub _pad4: u32,
    pub _pad5: u32,
    pub _pad6: u32,
}

/// embedding.wgsl: a table row per token id.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct EmbeddingParams {
    pub count: u32,
    pub dim: u32,
    pub vocab: u32,
    pub mask_zero: u32,
    pub _pad0: u32,
    pub _pad1: u32,
    pub _pad2: u32,
    pub _pad3: u32,
}

/// norm.wgsl: layer or batch normalization over the last axis.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct NormParams {
    pub rows: u32,
    pub width: u32,
    pub eps: f32,
    pub has_gamma: u32,
    pub has_beta: u32,
    pub _pad0: u32,
    pub _pad1: u32,
    pub _pad2: u32,
}

/// pool.wgsl: pooling over `[H, W]` (`H` = 1 over time).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct PoolParams {
    pub batch: u32,
    pub in_h: u32,
    pub in_w: u32,
    pub channels: u32,
    pub out_h: u32,
    pub out_w: u32,
    pub size_h: u32,
    pub size_w: u32,
    pub stride_h: u32,
    pub stride_w: u32,
    pub top: u32,
    pub left: u32,
}

/// conv.wgsl: one group of a Conv2D layer (a Conv1D one on `[B, 1, T, C]`).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct ConvParams {
    pub rows: u32,
    pub out_h: u32,
    pub out_w: u32,
    pub in_h: u32,
    pub in_w: u32,
    pub cin: u32,
    pub k: u32,
    pub kw: u32,
    pub cg: u32,
    pub n: u32,
    pub filters: u32,
    pub stride_h: u32,
    pub stride_w: u32,
    pub dil_h: u32,
    pub dil_w: u32,
    pub top: u32,
    pub left: u32,
    pub c0: u32,
    pub f0: u32,
    pub has_bias: u32,
    pub _pad0: u32,
    pub _pad1: u32,
    pub _pad2: u32,
    pub _pad3: u32,
}

/// conv_lstm.wgsl: one step of a ConvLSTM layer (one block per step, dynamic offsets).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct ConvLstmParams {
    pub rows: u32,
    pub pixels: u32,
    pub filters: u32,
    pub steps: u32,
    pub t: u32,
    pub s_out: u32,
    pub has_mask: u32,
    pub write_sequence: u32,
}

/// attention.wgsl: scores, softmax, weighted sum (and Dot).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct AttentionParams {
    pub batch: u32,
    pub tq: u32,
    pub tv: u32,
    pub dim: u32,
    pub vdim: u32,
    pub q_b: u32,
    pub q_i: u32,
    pub q_k: u32,
    pub k_b: u32,
    pub k_j: u32,
    pub k_k: u32,
    pub has_scale: u32,
    pub causal: u32,
    pub has_mask: u32,
    pub scale: f32,
    pub concat_weight: f32,
}

/// mha.wgsl: MultiHeadAttention's attention over its projections.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct MhaParams {
    pub batch: u32,
    pub tq: u32,
    pub tv: u32,
    pub heads: u32,
    pub key_dim: u32,
    pub value_dim: u32,
    pub causal: u32,
    pub has_qmask: u32,
    pub has_vmask: u32,
    pub has_kmask: u32,
    pub scores_path: u32,
    pub masked: u32,
    pub scale: f32,
    pub fill: f32,
    pub _pad0: u32,
    pub _pad1: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    fn module(kernel: &str) -> naga::Module {
        let src = crate::gpu::kernel_sources()
            .into_iter()
            .find(|(name, _)| *name == kernel)
            .unwrap_or_else(|| panic!("no kernel {kernel}"))
            .1;
        naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{kernel}: {e}"))
    }

    /// Checks the WGSL struct `name` of `kernel` against a Rust struct's size and members.
    fn check_struct(kernel: &str, name: &str, size: usize, members: &[(&str, usize)]) {
        let m = module(kernel);
        let ty = m
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{kernel}: no struct {name}"))
            .1;
        let naga::TypeInner::Struct {
            members: wgsl,
            span,
        } = &ty.inner
        else {
            panic!("{kernel}: {name} is not a struct");
        };
        assert_eq!(*span as usize, size, "{kernel}: size of {name}");
        // dynamic-offset blocks are PARAMS_SIZE apart; every uniform block a multiple of 16
        if [
            "projection",
            "step",
            "sequence",
            "train_forward",
            "train_backward",
        ]
        .contains(&kernel)
        {
            assert_eq!(size as u64, PARAMS_SIZE, "{name}");
        }
        assert_eq!(size % 16, 0, "{name}");
        let wgsl: Vec<(&str, usize)> = wgsl
            .iter()
            .map(|m| (m.name.as_deref().unwrap_or(""), m.offset as usize))
            .collect();
        assert_eq!(wgsl, members, "{kernel}: members of {name}");
    }

    macro_rules! members {
        ($t:ty: $($f:ident),*) => {
            (size_of::<$t>(), vec![$((stringify!($f), offset_of!($t, $f))),*])
        };
    }

    #[test]
    fn parameter_blocks_match_the_wgsl_structs() {
        let cases = [
            (
                "projection",
                "ProjParams",
                members!(ProjParams: rows, k, n, tc, seq_len, t_lo, has_bias, _pad),
            ),
            (
                "step",
                "StepParams",
                members!(StepParams: batch, units, tc, t_local, t_abs, s_out, seq_len, _pad),
            ),
            (
                "sequence",
                "SeqParams",
                members!(SeqParams: batch, units, tc, t_lo, s_begin, s_end, seq_len, go_backwards),
            ),
            (
                "merge",
                "MergeParams",
                members!(MergeParams: batch, steps, units_fwd, units_bwd, flip, width, _pad0, _pad1),
            ),
            (
                "mask",
                "MaskParams",
                members!(MaskParams: batch, steps, width, value, _pad0, _pad1, _pad2, _pad3),
            ),
            (
                "dense",
                "DenseParams",
                members!(DenseParams: rows, n, _pad0, _pad1, _pad2, _pad3, _pad4, _pad5),
            ),
            (
                "gather",
                "GatherParams",
                members!(GatherParams: count, out_base, in_base, _pad0, box_dims, out_stride,
                    in_stride, in_dims, pad, div),
            ),
            (
                "unary",
                "UnaryParams",
                members!(UnaryParams: count, width, period, has_max, a, b, c, _pad0),
            ),
            (
                "binary",
                "BinaryParams",
                members!(BinaryParams: count, _pad0, _pad1, _pad2, _pad3, _pad4, _pad5, _pad6),
            ),
            (
                "embedding",
                "EmbeddingParams",
                members!(EmbeddingParams: count, dim, vocab, mask_zero, _pad0, _pad1, _pad2,
                    _pad3),
            ),
            (
                "norm",
                "NormParams",
                members!(NormParams: rows, width, eps, has_gamma, has_beta, _pad0, _pad1, _pad2),
            ),
            (
                "pool",
                "PoolParams",
                members!(PoolParams: batch, in_h, in_w, channels, out_h, out_w, size_h, size_w,
                    stride_h, stride_w, top, left),
            ),
            (
                "conv",
                "ConvParams",
                members!(ConvParams: rows, out_h, out_w, in_h, in_w, cin, k, kw, cg, n,
                    filters, stride_h, stride_w, dil_h, dil_w, top, left, c0, f0, has_bias,
                    _pad0, _pad1, _pad2, _pad3),
            ),
            (
                "conv_lstm",
                "ConvLstmParams",
                members!(ConvLstmParams: rows, pixels, filters, steps, t, s_out, has_mask,
                    write_sequence),
            ),
            (
                "attention",
                "AttentionParams",
                members!(AttentionParams: batch, tq, tv, dim, vdim, q_b, q_i, q_k, k_b, k_j,
                    k_k, has_scale, causal, has_mask, scale, concat_weight),
            ),
            (
                "mha",
                "MhaParams",
                members!(MhaParams: batch, tq, tv, heads, key_dim, value_dim, causal, has_qmask,
                    has_vmask, has_kmask, scores_path, masked, scale, fill, _pad0, _pad1),
            ),
            (
                "train_forward",
                "TrainStepParams",
                members!(TrainStepParams: batch, units, steps, s, t, t_prev, has_prev, finish),
            ),
            (
                "train_backward",
                "TrainStepParams",
                members!(TrainStepParams: batch, units, steps, s, t, t_prev, has_prev, finish),
            ),
            (
                "train_gemm",
                "GemmParams",
                members!(GemmParams: m, n, k, accumulate, a_off, a_rs, a_cs, b_off, b_rs, b_cs,
                    c_off, _pad),
            ),
        ];
        for (kernel, name, (size, members)) in cases {
            check_struct(kernel, name, size, &members);
        }
    }

    /// The value of the `u32` constant `name` in `kernel`.
    fn constant(kernel: &str, name: &str) -> usize {
        let m = module(kernel);
        let c = m
            .constants
            .iter()
            .find(|(_, c)| c.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{kernel}: no constant {name}"))
            .1;
        match m.global_expressions[c.init] {
            naga::Expression::Literal(naga::Literal::U32(v)) => v as usize,
            ref other => panic!("{kernel}: {name} = {other:?}"),
        }
    }

    fn workgroup_size(kernel: &str) -> [u32; 3] {
        let m = module(kernel);
        m.entry_points
            .iter()
            .find(|e| e.name == "main")
            .unwrap_or_else(|| panic!("{kernel}: no main"))
            .workgroup_size
    }

    #[test]
    fn workgroup_shapes_match_the_wgsl() {
        let threads = |n: usize| [n as u32, 1, 1];
        assert_eq!(workgroup_size("projection"), threads(PROJECTION_THREADS));
        assert_eq!(constant("projection", "WG"), PROJECTION_THREADS);
        assert_eq!(constant("projection", "RB"), PROJECTION_ROWS);
        assert_eq!(workgroup_size("step"), threads(STEP_THREADS));
        assert_eq!(constant("step", "WG"), STEP_THREADS);
        assert_eq!(constant("step", "BT"), STEP_ROWS);
        assert_eq!(workgroup_size("sequence"), threads(SEQUENCE_THREADS));
        assert_eq!(constant("sequence", "WG"), SEQUENCE_THREADS);
        assert_eq!(constant("sequence", "PER"), SEQUENCE_PER_THREAD);
        for (name, value) in [
            ("CELL_LSTM", CELL_LSTM),
            ("CELL_GRU", CELL_GRU),
            ("CELL_GRU_RESET", CELL_GRU_RESET),
            ("CELL_GRU_CANDIDATE", CELL_GRU_CANDIDATE),
            ("CELL_SIMPLE_RNN", CELL_SIMPLE_RNN),
        ] {
            assert_eq!(constant("step", name), value as usize, "{name}");
        }
        assert_eq!(workgroup_size("merge"), threads(MERGE_THREADS));
        assert_eq!(workgroup_size("mask"), threads(MASK_THREADS));
        assert_eq!(workgroup_size("dense"), threads(DENSE_THREADS));
        assert_eq!(workgroup_size("gather"), threads(GATHER_THREADS));
        assert_eq!(workgroup_size("unary"), threads(UNARY_THREADS));
        assert_eq!(workgroup_size("binary"), threads(BINARY_THREADS));
        assert_eq!(workgroup_size("embedding"), threads(EMBEDDING_THREADS));
        assert_eq!(workgroup_size("norm"), threads(NORM_THREADS));
        assert_eq!(workgroup_size("pool"), threads(POOL_THREADS));
        assert_eq!(workgroup_size("attention"), threads(ATTENTION_THREADS));
        assert_eq!(workgroup_size("mha"), threads(MHA_THREADS));
        assert_eq!(workgroup_size("conv_lstm"), threads(CONV_LSTM_THREADS));
        for k in ["train_forward", "train_backward"] {
            assert_eq!(workgroup_size(k), threads(TRAIN_STEP_THREADS), "{k}");
            assert_eq!(constant(k, "WG"), TRAIN_STEP_THREADS, "{k}");
            assert_eq!(constant(k, "RB"), TRAIN_STEP_ROWS, "{k}");
            for (name, value) in [
                ("CELL_LSTM", CELL_LSTM),
                ("CELL_GRU", CELL_GRU),
                ("CELL_SIMPLE_RNN", CELL_SIMPLE_RNN),
            ] {
                assert_eq!(constant(k, name), value as usize, "{k}: {name}");
            }
        }
        assert_eq!(workgroup_size("train_gemm"), [16, 16, 1]);
        assert_eq!(constant("train_gemm", "TILE"), TRAIN_GEMM_TILE);
        // conv: 16 x 16 threads, 4 x 4 outputs each: a CONV_TILE x CONV_TILE tile
        assert_eq!(workgroup_size("conv"), [16, 16, 1]);
        assert_eq!(constant("conv", "TM"), CONV_TILE);
        assert_eq!(constant("conv", "TN"), CONV_TILE);
        // The whole-sequence kernel's workgroup array holds PERSISTENT_MAX_STATE values.
        let m = module("sequence");
        let hs = m
            .global_variables
            .iter()
            .find(|(_, v)| v.name.as_deref() == Some("hs"))
            .expect("sequence.wgsl keeps h in `hs`")
            .1;
        match m.types[hs.ty].inner {
            naga::TypeInner::Array {
                size: naga::ArraySize::Constant(n),
                ..
            } => assert_eq!(n.get() as usize, PERSISTENT_MAX_STATE),
            ref other => panic!("hs is {other:?}"),
        }
    }
}
