//! The layers of several inputs a functional graph trains: the merges (`Add`, `Subtract`,
//! `Multiply`, `Average`, `Maximum`, `Minimum`, `Concatenate`) with Keras's masks and
//! TensorFlow's gradients (a tie of `Maximum`/`Minimum` gives the gradient to the earlier
//! operand, as `tf.maximum`'s), and the op layers Keras saves for a functional `Masking`
//! (`NotEqual`, `Any`, `LogicalAnd`, `LogicalOr`: comparisons, no gradient). Their inference
//! twins are in `src/graph/combine.rs`.

use super::{MergeForward, MergeOp, OpCache};
use crate::element::Element;
use crate::error::{LstmError, Result};
use ndarray::{Array2, ArrayD, ArrayViewD, Axis, IxDyn};

/// Which merge.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Add,
    Subtract,
    Multiply,
    Average,
    Maximum,
    Minimum,
}

/// A merge of same-shaped (or numpy-broadcast) tensors.
#[derive(Debug, Clone)]
pub(super) struct Merge {
    kind: Kind,
    class: &'static str,
}

/// What a merge keeps: its inputs (broadcast to the output's shape) and their shapes.
struct MergeCache<T> {
    inputs: Vec<ArrayD<T>>,
    shapes: Vec<Vec<usize>>,
}

impl Merge {
    pub(super) fn new(class: &str) -> Option<Self> {
        let (kind, class) = match class {
            "Add" => (Kind::Add, "Add"),
            "Subtract" => (Kind::Subtract, "Subtract"),
            "Multiply" => (Kind::Multiply, "Multiply"),
            "Average" => (Kind::Average, "Average"),
            "Maximum" => (Kind::Maximum, "Maximum"),
            "Minimum" => (Kind::Minimum, "Minimum"),
            _ => return None,
        };
        Some(Merge { kind, class })
    }
}

/// The inputs broadcast to one shape (numpy's rule), or an error naming the layer.
fn broadcast_all<T: Element>(xs: &[ArrayViewD<'_, T>], name: &str) -> Result<Vec<ArrayD<T>>> {
    let shape =
        crate::gpu::plan::broadcast_shape(xs.iter().map(|x| x.shape()), &format!("layer {name}"))?;
    xs.iter()
        .map(|x| {
            x.broadcast(IxDyn(&shape))
                .map(|b| b.to_owned())
                .ok_or_else(|| {
                    LstmError::shape(format!("input of layer {name}"), &shape, x.shape())
                })
        })
        .collect()
}

/// `d` (of a broadcast result) summed back to `shape`: over the leading axes `shape` lacks,
/// and keeping the axes where `shape` has 1.
pub(super) fn unbroadcast<T: Element>(mut d: ArrayD<T>, shape: &[usize]) -> ArrayD<T> {
    while d.ndim() > shape.len() {
        d = d.sum_axis(Axis(0));
    }
    for (k, &n) in shape.iter().enumerate() {
        if n == 1 && d.shape()[k] != 1 {
            d = d.sum_axis(Axis(k)).insert_axis(Axis(k));
        }
    }
    d
}

impl<T: Element> MergeOp<T> for Merge {
    fn class(&self) -> &'static str {
        self.class
    }

    fn forward(
        &self,
        name: &str,
        xs: &[ArrayViewD<'_, T>],
        masks: &[Option<&Array2<bool>>],
    ) -> Result<MergeForward<T>> {
        if xs.is_empty() || (self.kind == Kind::Subtract && xs.len() != 2) {
            return Err(LstmError::invalid(
                format!("layer {name}"),
                format!(
                    "{} takes {}, got {} tensors",
                    self.class,
                    if self.kind == Kind::Subtract {
                        "exactly 2 inputs"
                    } else {
                        "at least 1 input"
                    },
                    xs.len()
                ),
            ));
        }
        let inputs = broadcast_all(xs, name)?;
        // (pairwise from the first, as Keras's merges compute)
        let mut y = inputs[0].clone();
        for x in &inputs[1..] {
            let f: fn(T, T) -> T = match self.kind {
                Kind::Add | Kind::Average => |a, b| a + b,
                Kind::Subtract => |a, b| a - b,
                Kind::Multiply => |a, b| a * b,
                Kind::Maximum => |a, b| if a >= b || a.to_f64().is_nan() { a } else { b },
                Kind::Minimum => |a, b| if a <= b || a.to_f64().is_nan() { a } else { b },
            };
            ndarray::Zip::from(&mut y)
                .and(x)
                .for_each(|a, &b| *a = f(*a, b));
        }
        if self.kind == Kind::Average {
            let n = T::from_f64(xs.len() as f64);
            y.mapv_inplace(|v| v / n);
        }
        let shapes: Vec<&[usize]> = xs.iter().map(|x| x.shape()).collect();
        let mask = crate::graph::merge_mask(self.class, -1, &shapes, masks, name)?;
        Ok(MergeForward {
            y,
            mask,
            extra: Vec::new(),
            cache: Box::new(MergeCache {
                shapes: shapes.iter().map(|s| s.to_vec()).collect(),
                inputs,
            }),
        })
    }

    fn backward(
        &self,
        name: &str,
        cache: &OpCache,
        d: ArrayD<T>,
    ) -> Result<(Vec<Option<ArrayD<T>>>, Vec<ArrayD<T>>)> {
        let c = cache
            .downcast_ref::<MergeCache<T>>()
            .ok_or_else(|| LstmError::invalid(format!("layer {name}"), "cache mismatch"))?;
        let n = c.inputs.len();
        let full: Vec<ArrayD<T>> = match self.kind {
            Kind::Add => vec![d; n],
            Kind::Average => {
                let s = T::one() / T::from_f64(n as f64);
                vec![d.mapv(|v| v * s); n]
            }
            Kind::Subtract => vec![d.clone(), d.mapv(|v| -v)],
            Kind::Multiply => (0..n)
                .map(|k| {
                    let mut g = d.clone();
                    for (j, x) in c.inputs.iter().enumerate() {
                        if j != k {
                            g = &g * x;
                        }
                    }
                    g
                })
                .collect(),
            Kind::Maximum | Kind::Minimum => {
                // the running result `acc = op(acc, x_k)` passes the cotangent to acc where
                // acc >= x_k (<= for Minimum; a tie included), to x_k elsewhere, as
                // `tf.maximum`'s gradient; back from the last operand
                let max = self.kind == Kind::Maximum;
                let keep = |a: T, b: T| if max { a >= b } else { a <= b };
                let mut accs = vec![c.inputs[0].clone()];
                for x in &c.inputs[1..] {
                    let mut next = accs.last().expect("one").clone();
                    ndarray::Zip::from(&mut next).and(x).for_each(|a, &b| {
                        if !keep(*a, b) {
                            *a = b;
                        }
                    });
                    accs.push(next);
                }
                let mut out = vec![ArrayD::<T>::zeros(d.raw_dim()); n];
                let mut g = d;
                for k in (1..n).rev() {
                    let acc = &accs[k - 1];
                    let x = &c.inputs[k];
                    let mut gx = ArrayD::<T>::zeros(g.raw_dim());
                    ndarray::Zip::from(&mut gx)
                        .and(&mut g)
                        .and(acc)
                        .and(x)
                        .for_each(|gx, g, &a, &b| {
                            if !keep(a, b) {
                                *gx = *g;
                                *g = T::zero();
                            }
                        });
                    out[k] = gx;
                }
                out[0] = g;
                out
            }
        };
        Ok((
            full.into_iter()
                .zip(&c.shapes)
                .map(|(g, s)| Some(unbroadcast(g, s)))
                .collect(),
            Vec::new(),
        ))
    }

    fn clone_box(&self) -> Box<dyn MergeOp<T>> {
        Box::new(self.clone())
    }
}

/// `Concatenate(axis)`.
#[derive(Debug, Clone)]
pub(super) struct Concatenate {
    pub(super) axis: i64,
}

impl Concatenate {
    fn axis_of(&self, ndim: usize, name: &str) -> Result<usize> {
        let a = if self.axis < 0 {
            ndim as i64 + self.axis
        } else {
            self.axis
        };
        if (1..ndim as i64).contains(&a) {
            Ok(a as usize)
        } else {
            Err(LstmError::invalid(
                format!("axis of layer {name}"),
                format!(
                    "{} is not a non-batch axis of a rank-{ndim} input",
                    self.axis
                ),
            ))
        }
    }
}

impl<T: Element> MergeOp<T> for Concatenate {
    fn class(&self) -> &'static str {
        "Concatenate"
    }

    fn forward(
        &self,
        name: &str,
        xs: &[ArrayViewD<'_, T>],
        masks: &[Option<&Array2<bool>>],
    ) -> Result<MergeForward<T>> {
        let first = xs.first().ok_or_else(|| {
            LstmError::invalid(format!("layer {name}"), "a Concatenate of no tensors")
        })?;
        let axis = self.axis_of(first.ndim(), name)?;
        let y = ndarray::concatenate(Axis(axis), xs)
            .map_err(|e| LstmError::invalid(format!("layer {name}"), e.to_string()))?;
        let shapes: Vec<&[usize]> = xs.iter().map(|x| x.shape()).collect();
        let mask = crate::graph::merge_mask("Concatenate", self.axis, &shapes, masks, name)?;
        let widths: Vec<usize> = xs.iter().map(|x| x.shape()[axis]).collect();
        Ok(MergeForward {
            y,
            mask,
            extra: Vec::new(),
            cache: Box::new((axis, widths)),
        })
    }

    fn backward(
        &self,
        name: &str,
        cache: &OpCache,
        d: ArrayD<T>,
    ) -> Result<(Vec<Option<ArrayD<T>>>, Vec<ArrayD<T>>)> {
        let (axis, widths) = cache
            .downcast_ref::<(usize, Vec<usize>)>()
            .ok_or_else(|| LstmError::invalid(format!("layer {name}"), "cache mismatch"))?;
        let mut at = 0;
        let parts = widths
            .iter()
            .map(|&w| {
                let part = d.slice_axis(Axis(*axis), (at..at + w).into()).to_owned();
                at += w;
                Some(part)
            })
            .collect();
        Ok((parts, Vec::new()))
    }

    fn clone_box(&self) -> Box<dyn MergeOp<T>> {
        Box::new(self.clone())
    }
}

/// The op layers of a functional `Masking`: `NotEqual(x, scalar)`, `Any(axis, keepdims)`,
/// `LogicalAnd`, `LogicalOr` (0/1 values; no mask, no gradient).
#[derive(Debug, Clone)]
pub(super) enum Compare {
    NotEqual,
    Any { axis: i64, keepdims: bool },
    And,
    Or,
}

impl<T: Element> MergeOp<T> for Compare {
    fn class(&self) -> &'static str {
        match self {
            Compare::NotEqual => "NotEqual",
            Compare::Any { .. } => "Any",
            Compare::And => "LogicalAnd",
            Compare::Or => "LogicalOr",
        }
    }

    fn forward(
        &self,
        name: &str,
        xs: &[ArrayViewD<'_, T>],
        _masks: &[Option<&Array2<bool>>],
    ) -> Result<MergeForward<T>> {
        let one = |v: bool| if v { T::one() } else { T::zero() };
        let want = match self {
            Compare::NotEqual | Compare::Any { .. } => 1,
            Compare::And | Compare::Or => 2,
        };
        if xs.len() != want {
            return Err(LstmError::invalid(
                format!("layer {name}"),
                format!("takes {want} tensors, got {}", xs.len()),
            ));
        }
        let y = match self {
            // (the scalar operand is given to `forward_with_scalars`)
            Compare::NotEqual => {
                return Err(LstmError::invalid(
                    format!("layer {name}"),
                    "compares a tensor with a scalar argument",
                ))
            }
            Compare::Any { axis, keepdims } => {
                let x = &xs[0];
                let nd = x.ndim() as i64;
                let a = if *axis < 0 { nd + axis } else { *axis };
                if !(0..nd).contains(&a) {
                    return Err(LstmError::invalid(
                        format!("axis of layer {name}"),
                        format!("{axis} on a rank-{nd} input"),
                    ));
                }
                let ax = Axis(a as usize);
                let y = x.map_axis(ax, |lane| one(lane.iter().any(|&v| v != T::zero())));
                if *keepdims {
                    y.insert_axis(ax)
                } else {
                    y
                }
            }
            Compare::And | Compare::Or => {
                let and = matches!(self, Compare::And);
                let b = broadcast_all(xs, name)?;
                let mut y = b[0].clone();
                ndarray::Zip::from(&mut y).and(&b[1]).for_each(|a, &c| {
                    let (p, q) = (*a != T::zero(), c != T::zero());
                    *a = one(if and { p && q } else { p || q });
                });
                y
            }
        };
        Ok(MergeForward {
            y,
            mask: None,
            extra: Vec::new(),
            cache: Box::new(xs.len()),
        })
    }

    fn forward_with_scalars(
        &self,
        name: &str,
        xs: &[ArrayViewD<'_, T>],
        masks: &[Option<&Array2<bool>>],
        scalars: &[f64],
    ) -> Result<MergeForward<T>> {
        match self {
            Compare::NotEqual => {
                let [x] = xs else {
                    return Err(LstmError::invalid(
                        format!("layer {name}"),
                        format!("takes 1 tensor and a scalar, got {} tensors", xs.len()),
                    ));
                };
                let c = T::from_f64(*scalars.first().ok_or_else(|| {
                    LstmError::invalid(format!("layer {name}"), "compares with no scalar")
                })?);
                Ok(MergeForward {
                    y: x.mapv(|v| if v != c { T::one() } else { T::zero() }),
                    mask: None,
                    extra: Vec::new(),
                    cache: Box::new(1usize),
                })
            }
            _ => self.forward(name, xs, masks),
        }
    }

    fn backward(
        &self,
        name: &str,
        cache: &OpCache,
        _d: ArrayD<T>,
    ) -> Result<(Vec<Option<ArrayD<T>>>, Vec<ArrayD<T>>)> {
        let n = cache
            .downcast_ref::<usize>()
            .ok_or_else(|| LstmError::invalid(format!("layer {name}"), "cache mismatch"))?;
        Ok((vec![None; *n], Vec::new()))
    }

    fn clone_box(&self) -> Box<dyn MergeOp<T>> {
        Box::new(self.clone())
    }
}

/// The other op layers Keras saves for masks: `ExpandDims(axis)` (its gradient the
/// cotangent with that axis dropped), `ZerosLike` / `OnesLike` (constants: no gradient) and
/// `ConvertToTensor` without a dtype (the identity).
#[derive(Debug, Clone)]
pub(super) enum OpLayer {
    ExpandDims(i64),
    Fill(f64),
    Identity,
}

impl<T: Element> MergeOp<T> for OpLayer {
    fn class(&self) -> &'static str {
        match self {
            OpLayer::ExpandDims(_) => "ExpandDims",
            OpLayer::Fill(v) if *v == 0.0 => "ZerosLike",
            OpLayer::Fill(_) => "OnesLike",
            OpLayer::Identity => "ConvertToTensor",
        }
    }

    fn forward(
        &self,
        name: &str,
        xs: &[ArrayViewD<'_, T>],
        _masks: &[Option<&Array2<bool>>],
    ) -> Result<MergeForward<T>> {
        let [x] = xs else {
            return Err(LstmError::invalid(
                format!("layer {name}"),
                format!("takes 1 tensor, got {}", xs.len()),
            ));
        };
        let (y, axis) = match self {
            OpLayer::ExpandDims(axis) => {
                let nd = x.ndim() as i64 + 1;
                let a = if *axis < 0 { nd + axis } else { *axis };
                if a < 1 || a >= nd {
                    return Err(LstmError::invalid(
                        format!("axis of layer {name}"),
                        format!("{axis} is not a non-batch axis of a rank-{nd} result"),
                    ));
                }
                (x.to_owned().insert_axis(Axis(a as usize)), Some(a as usize))
            }
            OpLayer::Fill(v) => (ArrayD::from_elem(x.raw_dim(), T::from_f64(*v)), None),
            OpLayer::Identity => (x.to_owned(), None),
        };
        Ok(MergeForward {
            y,
            mask: None,
            extra: Vec::new(),
            cache: Box::new(axis),
        })
    }

    fn backward(
        &self,
        name: &str,
        cache: &OpCache,
        d: ArrayD<T>,
    ) -> Result<(Vec<Option<ArrayD<T>>>, Vec<ArrayD<T>>)> {
        let axis = cache
            .downcast_ref::<Option<usize>>()
            .ok_or_else(|| LstmError::invalid(format!("layer {name}"), "cache mismatch"))?;
        let dx = match (self, axis) {
            (OpLayer::Identity, _) => Some(d),
            (_, Some(a)) => Some(d.index_axis_move(Axis(*a), 0)),
            (_, None) => None,
        };
        Ok((vec![dx], Vec::new()))
    }

    fn clone_box(&self) -> Box<dyn MergeOp<T>> {
        Box::new(self.clone())
    }
}
